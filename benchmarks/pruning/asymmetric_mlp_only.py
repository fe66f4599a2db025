"""Why `--asymmetric` needs `--quantize-dense`: SparseGPT 70% on SmolLM2 with only the MLP solved against the
dense model's outputs (the attention projections left as they are), through the engine directly, since the
command line refuses it. Perplexity in domain (shakespeare:test) and out of it (pydoc), beside the plain solve.

    python benchmarks/pruning/asymmetric_mlp_only.py [--windows 32 --seqlen 512] > runs/asym_mlp_only.jsonl

One JSON line per variant (`plain`, `asymmetric`): perplexity on each corpus (16 x 512 windows of the
in-memory model in bfloat16, its pruned weights dense; `eval --dtype bfloat16` on a saved folder runs the sparse
kernels: the plain solve reads 121.34 / 280.60 here, 121.53 / 281.32 there) and the compression's wall seconds.
~15 CPU minutes at the defaults.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sparse_expansion.data import CalibrationSpec
from sparse_expansion.engine import calibrate
from sparse_expansion.evaluate import evaluate_model
from sparse_expansion.models import load_causal_lm
from sparse_expansion.prune import PruneCompressor, SparseGPTConfig, parse_sparsity


def run(asymmetric: bool, windows: int, seqlen: int) -> dict:
    model, tokenizer = load_causal_lm("smollm2-135m")
    calib = CalibrationSpec(data="shakespeare:train", windows=windows, seqlen=seqlen, seed=0).sample(tokenizer, model)
    start = time.perf_counter()
    compressor = PruneCompressor(SparseGPTConfig(parse_sparsity("0.7")))
    calibrate(model, calib, compressor, progress=False, asymmetric=asymmetric)
    seconds = time.perf_counter() - start
    model = model.to(torch.bfloat16)
    out = {"variant": "asymmetric" if asymmetric else "plain", "compress_seconds": seconds}
    for data in ("shakespeare:test", "pydoc"):
        out[data] = evaluate_model(model, tokenizer, data, 16, 512, progress=False)["perplexity"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    args = parser.parse_args()
    for asymmetric in (False, True):
        print(json.dumps(run(asymmetric, args.windows, args.seqlen)), flush=True)


if __name__ == "__main__":
    main()
