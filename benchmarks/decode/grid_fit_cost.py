"""What the "mse" grid search (kernels/formats.fit_grid) costs and buys on a real model's weights: for every
linear `convert` quantizes (decoder-layer linears and the LM head), process CPU time of fitting the grids
and the squared rounding error of the weights read back, min/max against mse.

    PYTHONPATH=src python benchmarks/decode/grid_fit_cost.py runs/sg70 --out runs/grid_fit_cost.jsonl

One JSON row per (bits, group size, grid) is printed and appended to --out; --threads sets torch's
threads (default 1: on a shared machine a second OpenMP thread waiting for a descheduled one inflates
CPU time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a folder or a shipped name")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sparse_expansion.arch import decoder_layers, is_linear_like, linear_weight
    from sparse_expansion.benchmarking import append_row
    from sparse_expansion.kernels import CompressedLinear
    from sparse_expansion.kernels.formats import decompress, fit_grid, quantize
    from sparse_expansion.models import load_causal_lm

    model, _ = load_causal_lm(args.model, "cpu", torch.float32, weights="dense")
    weights = [linear_weight(m).detach().float() for layer in decoder_layers(model) for m in layer.modules()
               if is_linear_like(m) and not isinstance(m, CompressedLinear)]
    weights.append(linear_weight(model.get_output_embeddings()).detach().float())
    for bits, group in ((4, 128), (4, 32), (8, None)):
        for grid in ("minmax", "mse"):
            seconds, error, head_seconds = 0.0, 0.0, 0.0
            for i, w in enumerate(weights):
                g = w.shape[1] if group is None else min(group, w.shape[1])
                start = time.process_time()
                scales, zeros = fit_grid(w, bits, g, grid)
                spent = time.process_time() - start
                seconds += spent
                if i == len(weights) - 1:
                    head_seconds = spent
                error += float((decompress(quantize(w, "dense", bits, g, scales, zeros)) - w).square().sum())
            row = {"model": args.model, "bits": bits, "group_size": group, "grid": grid, "linears": len(weights),
                   "fit_cpu_seconds": round(seconds, 2), "lm_head_fit_cpu_seconds": round(head_seconds, 2),
                   "squared_error": error, "threads": args.threads}
            print(json.dumps(row), flush=True)
            append_row(args.out, row)


if __name__ == "__main__":
    main()
