"""Where the "mse" grid (kernels/formats.fit_grid) helps or hurts: quantize a folder by round-to-nearest
(`storage.quantize_weights`, what `convert` does) with the mse grid on some linears and min/max on the
rest, then its perplexity (shakespeare:test, 16 x 512, float32: the folder is loaded once, each variant
quantizes a copy in memory).

    PYTHONPATH=src python benchmarks/decode/grid_by_linear.py runs/sg70 --bits 4 --group-size 32 \\
        --variants minmax mse-head mse-layers --out runs/grid_by_linear.jsonl

Variants: minmax, mse (every linear), mse-head (the LM head only), mse-layers (every decoder-layer linear,
the head min/max), mse-pruned (the decoder-layer linears at least COMPRESS_FROM_SPARSITY sparse: a pruned
folder's MLP), mse-unpruned (the other decoder-layer linears: its attention projections). One JSON row
per variant is printed and appended to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

VARIANTS = ("minmax", "mse", "mse-head", "mse-layers", "mse-pruned", "mse-unpruned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from sparse_expansion.evaluate import evaluate_model
    from sparse_expansion.kernels import formats
    from sparse_expansion.kernels.formats import COMPRESS_FROM_SPARSITY
    from sparse_expansion.models import load_causal_lm
    from sparse_expansion.storage import quantize_weights

    fit_grid = formats.fit_grid
    source, tokenizer = load_causal_lm(args.model)
    head_rows = source.get_output_embeddings().weight.shape[0]

    def chooser(variant: str):
        def fit(weight, bits, group_size=None, method="minmax"):  # quantize_weights looks fit_grid up per call
            head = weight.shape[0] == head_rows
            pruned = not head and float((weight == 0).float().mean()) >= COMPRESS_FROM_SPARSITY
            use = {"minmax": False, "mse": True, "mse-head": head, "mse-layers": not head, "mse-pruned": pruned,
                   "mse-unpruned": not head and not pruned}[variant]
            return fit_grid(weight, bits, group_size, "mse" if use else "minmax")
        return fit

    for variant in args.variants:
        model = copy.deepcopy(source)
        formats.fit_grid = chooser(variant)
        try:
            quantize_weights(model, args.bits, args.group_size)
        finally:
            formats.fit_grid = fit_grid
        start = time.process_time()
        with torch.no_grad():
            result = evaluate_model(model, tokenizer, "shakespeare:test", 16, 512, progress=False)
        row = {"model": args.model, "bits": args.bits, "group_size": args.group_size, "variant": variant,
               "perplexity": result["perplexity"], "dtype": "float32", "eval_cpu_seconds": time.process_time() - start}
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        del model


if __name__ == "__main__":
    main()
