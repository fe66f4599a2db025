"""`sparse-expansion prune`: one-shot magnitude / Wanda / SparseGPT, saved as a loadable folder."""

from __future__ import annotations

from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("prune", help="prune a model one-shot (magnitude, wanda, sparsegpt)",
                              description="Prune the MLP linears (or all linears) of a model, "
                                          "layer by layer, and save it.")
    common.add_model_arg(p)
    p.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt"), required=True)
    p.add_argument("--sparsity", required=True, help="fraction of zeros in [0, 1), or N:M like 2:4")
    p.add_argument("--bits", type=int, default=None, help="fused per-channel quantization (sparsegpt)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    common.add_calibration_args(p)
    common.add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UsageError
    from ..prune import PruneCompressor, parse_sparsity

    sparsity = parse_sparsity(args.sparsity)
    if args.bits is not None and (args.method != "sparsegpt" or not 2 <= args.bits <= 8):
        raise UsageError("--bits needs --method sparsegpt and a value from 2 to 8")
    fields = {"kind": "pruned", "method": args.method, "sparsity": sparsity.to_json(), "bits": args.bits}
    return common.run_compression(
        args, lambda model: PruneCompressor(args.method, sparsity, bits=args.bits), fields,
        f"pruned ({args.method}, {sparsity})")
