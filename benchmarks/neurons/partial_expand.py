"""Sparse Expansion of the neuron projections (gate/up) of a few layers only, saved as an expanded
folder that `sparse-expansion neurons` reads like any other.

Why: expanding all 30 layers x 3 linears of SmolLM2 with 16 experts takes over an hour on the
shared 2-core machine; part 4 needs only the neuron projections of the layers it measures. The
experts are made by the library's own ExpandCompressor; the other linears stay dense.

Usage: python benchmarks/neurons/partial_expand.py OUT --layers 0,5,10,15,20,25,29 --experts 16 --sparsity 0.7
"""

from __future__ import annotations

import argparse
import time

from sparse_expansion.engine import LayerCompressor, calibrate
from sparse_expansion.expand import ExpandCompressor, ExpandSettings
from sparse_expansion.io import atomic_output_dir
from sparse_expansion.models import load_model
from sparse_expansion.prune import parse_sparsity
from sparse_expansion.saving import save_model


class NeuronGroupOnly(LayerCompressor):
    """Hands the first input group (the neuron projections) of the chosen layers to `inner`."""

    def __init__(self, inner: LayerCompressor, layers: set[int]) -> None:
        self.inner, self.layers = inner, layers

    def start_layer(self, index, layer, groups):
        self.group = groups[0] if index in self.layers else None
        if self.group is not None:
            self.inner.start_layer(index, layer, (self.group,))

    def observe(self, group, inputs):
        if group == self.group:
            self.inner.observe(group, inputs)

    def finish_layer(self):
        return self.inner.finish_layer() if self.group is not None else {}

    def record(self):
        return self.inner.record()


def main() -> None:
    from sparse_expansion.data import calibration_windows, corpus_tokens

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", default="0,5,10,15,20,25,29")
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--sparsity", default="0.7")
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    args = p.parse_args()
    layers = {int(v) for v in args.layers.split(",")}
    model, tokenizer = load_model(args.model)
    windows = calibration_windows(corpus_tokens("shakespeare:train", tokenizer), args.calib_windows, args.seqlen, 0)
    sparsity = parse_sparsity(args.sparsity)
    compressor = NeuronGroupOnly(ExpandCompressor(ExpandSettings(experts=args.experts, sparsity=sparsity)), layers)
    start = time.perf_counter()
    calibrate(model, windows, compressor, batch_size=4)
    seconds = time.perf_counter() - start
    record = {"kind": "expanded", "method": "sparse_expansion", "experts": args.experts,
              "sparsity": sparsity.to_json(), "source_model": args.model,
              "partial": {"layers": sorted(layers), "linears": "neuron projections only; everything else dense"},
              "calibration": {"data": "shakespeare:train", "windows": args.calib_windows, "seqlen": args.seqlen,
                              "seed": 0},
              "linears": compressor.record(), "seconds": {"total": seconds}}
    with atomic_output_dir(args.out) as tmp:
        save_model(model, tokenizer, tmp, record)
    print(f"expanded the neuron projections of layers {sorted(layers)} in {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
