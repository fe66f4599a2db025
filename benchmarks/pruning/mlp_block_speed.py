"""Time one expanded MLP block against the dense block at 1 token and at 512 tokens (CPU).

Builds the expanded block from a real layer of the shipped model: k experts at a given sparsity,
router fitted on that layer's real inputs, experts compressed in --dtype values and computed by
the sparse kernels (--weights dense: a dense copy and grouped torch matmuls, as before the
kernels). The timed inputs are that layer's real MLP inputs on a held-out window
(shakespeare:test), so tokens spread over experts as they do in use: 512 tokens = the whole
window, 1 token = its last position. Reports the median of repeated timings and the ratio to
the dense block in the same dtype.

The block is timed over and over, so its weights sit in the cache: a decoding model reads every
layer from DRAM once per token. Whole-model decode is benchmarks/decode/decode_speed.py.

    python benchmarks/pruning/mlp_block_speed.py --experts 16 --sparsity 0.7 --layer 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def median_seconds(fn, x, repeats: int) -> float:
    for _ in range(3):
        fn(x)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--sparsity", default="0.7")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--weights", choices=["compressed", "dense"], default="compressed")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from sparse_expansion.data import calibration_windows, corpus_tokens, evaluation_windows
    from sparse_expansion.engine import calibrate
    from sparse_expansion.expand import ExpandCompressor, ExpandConfig
    from sparse_expansion.models import load_model
    from sparse_expansion.prune import parse_sparsity

    model, tok = load_model("smollm2-135m")
    layers = model.model.layers
    dense_mlp = __import__("copy").deepcopy(layers[args.layer].mlp)
    # Expand only the chosen layer, calibrated on its real inputs (earlier layers left dense).
    del layers[args.layer + 1 :]
    windows = calibration_windows(corpus_tokens("shakespeare:train", tok), 8, 512, seed=0)

    class OnlyLast(ExpandCompressor):
        def finish_layer(self):
            out = super().finish_layer()
            return out if self.index == args.layer else {}

    calibrate(model, windows, OnlyLast(ExpandConfig(args.experts, parse_sparsity(args.sparsity))),
              progress=False)
    expanded_mlp = layers[args.layer].mlp
    dtype = getattr(torch, args.dtype)
    dense_mlp.to(dtype)
    for module in expanded_mlp.modules():
        if hasattr(module, "use_dense_weights"):
            module.to_storage_dtype(dtype).use_dense_weights(args.weights == "dense")
    captured = []
    hook = expanded_mlp.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    model(evaluation_windows(corpus_tokens("shakespeare:test", tok), 512, 1))
    hook.remove()
    real = captured[0]  # [1, 512, hidden]
    labels = expanded_mlp.gate_proj.router(real[0])
    rows = []
    for tokens in (1, 512):
        x = real[:, -tokens:].contiguous().to(dtype)
        # A fresh copy per call, for both: the shared router remembers the last tensor it routed.
        dense = median_seconds(lambda v: dense_mlp(v.clone()), x, args.repeats)
        expanded = median_seconds(lambda v: expanded_mlp(v.clone()), x, args.repeats)
        rows.append({"tokens": tokens, "dense_ms": dense * 1e3, "expanded_ms": expanded * 1e3,
                     "ratio": expanded / dense})
    print(json.dumps({"experts": args.experts, "sparsity": args.sparsity, "threads": args.threads,
                      "weights": args.weights, "dtype": args.dtype,
                      "layer": args.layer, "experts_used_by_512_tokens": int(labels.unique().numel()),
                      "rows": rows}))


if __name__ == "__main__":
    main()
