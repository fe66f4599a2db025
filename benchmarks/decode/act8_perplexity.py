"""Perplexity of int8 / int4 models two ways: as `eval` computes it (the de-quantized weights, exact) and
as the fast decode step computes it (the act8 arithmetic: each linear's input rounded to int8 in blocks
of 32, csrc/quant.h; kernels.linear.decode_arithmetic runs it token by token). shakespeare:test, the
same windows as `sparse-expansion eval` (16 x 512 by default), --dtype bfloat16 as issue 20's table.

    PYTHONPATH=src python benchmarks/decode/act8_perplexity.py runs/sg70 runs/sg70-int8 runs/sg70-int4g32 \\
        smollm2-135m:int8 smollm2-135m:int4 --out benchmarks/decode/results/DATE-MACHINE/act8_perplexity.jsonl

A MODEL:int8 / MODEL:int4 argument quantizes on load (`--weights int8|int4`); MODEL:int4:mse the same with
the mse grid (`convert --grid mse`; on load the default grid is used). One JSON row per model and
arithmetic is appended to --out (the float folder's "act8" row is skipped: it has no quantized linear).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+",
                        help="folders or shipped names; MODEL:int8 / MODEL:int4[:GRID] quantize on load")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--exact-only", action="store_true", help="skip the act8 (slow, token by token) rows")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from sparse_expansion.benchmarking import append_row
    from sparse_expansion.evaluate import evaluate_model
    from sparse_expansion.kernels.linear import decode_arithmetic
    from sparse_expansion.models import load_causal_lm
    from sparse_expansion.storage import default_group_size, quantize_weights, set_weights

    for spec in args.models:
        name, _, weights = spec.partition(":")
        weights, _, grid = weights.partition(":")
        if grid:  # what set_weights does for int8 / int4, with this grid
            model, tokenizer = load_causal_lm(name, "cpu", torch.bfloat16, weights="dense")
            bits = int(weights[3:])
            quantize_weights(model, bits, default_group_size(bits), grid=grid)
            set_weights(model, "auto")
        else:
            model, tokenizer = load_causal_lm(name, "cpu", torch.bfloat16, weights=weights or "auto")
        quantized = any(getattr(m, "bits", None) for m in model.modules())
        for arithmetic in ("exact", "act8"):
            if arithmetic == "act8" and (args.exact_only or not quantized):
                continue
            start = time.process_time()
            with torch.no_grad():
                if arithmetic == "act8":
                    with decode_arithmetic(model):
                        result = evaluate_model(model, tokenizer, "shakespeare:test", args.windows, args.seqlen,
                                                progress=False)
                else:
                    result = evaluate_model(model, tokenizer, "shakespeare:test", args.windows, args.seqlen,
                                            progress=False)
            row = {"model": spec, "arithmetic": arithmetic, "perplexity": result["perplexity"],
                   "windows": result["windows"], "seqlen": args.seqlen, "dtype": "bfloat16",
                   "cpu_seconds": time.process_time() - start}
            print(json.dumps(row), flush=True)
            append_row(args.out, row)


if __name__ == "__main__":
    main()
