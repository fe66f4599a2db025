"""`sparse-expansion export`: write a pruned model in a format serving engines read."""

from __future__ import annotations

FORMATS = ("compressed-tensors",)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a pruned model as a compressed-tensors checkpoint (transformers, vLLM)",
        description="Write a pruned model in the compressed-tensors format that llm-compressor writes and vLLM "
                    "reads. Pruned weights are stored dense (the format has had no sparse storage since "
                    "compressed-tensors 0.15); a model pruned with --bits is stored packed (W4A16 or W8A16).",
        epilog="example: sparse-expansion export runs/sg24 --format compressed-tensors --out runs/sg24-ct")
    p.add_argument("model", metavar="DIR", help="a folder written by `sparse-expansion prune` (or any Hugging Face "
                   "folder of a causal language model)")
    p.add_argument("--format", choices=FORMATS, required=True, help="output format")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export.compressed_tensors import export_compressed_tensors

    summary = export_compressed_tensors(args.model, args.out)
    made = f"{summary['method']}, {summary['sparsity']}" if summary["method"] else "not made by sparse-expansion"
    storage = (f"{summary['linears']} linears quantized, stored {summary['quantization']}" if summary["quantization"]
               else "weights stored dense, zeros included (no sparse storage exists in the format any more)")
    print(f"exported {args.model} ({made}) -> {args.out} as {summary['format']}: {storage}")
    return 0
