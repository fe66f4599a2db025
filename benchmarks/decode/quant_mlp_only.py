"""Where int4 round-to-nearest loses: quantize only the pruned MLP linears of a folder (attention
projections and the LM head keep their float values), for BENCHMARKS' issue 20 table.

    PYTHONPATH=src python benchmarks/decode/quant_mlp_only.py runs/sg70 runs/sg70-int4-mlp --bits 4 --group-size 128
    sparse-expansion eval runs/sg70-int4-mlp --data shakespeare:test --windows 16 --seqlen 512 --json --dtype bfloat16
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--bits", type=int, choices=(8, 4), default=4)
    parser.add_argument("--group-size", type=int, default=128)
    args = parser.parse_args()
    from sparse_expansion.artifact import read_record, save_artifact
    from sparse_expansion.io import atomic_output_dir
    from sparse_expansion.kernels import CompressedLinear
    from sparse_expansion.kernels.linear import quantized_copy
    from sparse_expansion.models import load_causal_lm

    model, tokenizer = load_causal_lm(args.source, weights="compressed")
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, CompressedLinear) and ".mlp." in name:
            model.set_submodule(name, quantized_copy(module, args.bits, args.group_size))
            count += 1
    record = {**read_record(args.source), "converted": f"int{args.bits} g{args.group_size}, MLP linears only"}
    with atomic_output_dir(args.out) as tmp:
        save_artifact(tmp, model, tokenizer=tokenizer, record=record)
    print(f"quantized {count} MLP linears -> {args.out}")


if __name__ == "__main__":
    main()
