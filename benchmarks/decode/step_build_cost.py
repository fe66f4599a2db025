"""What building the fast decode step costs for a folder: seconds and resident memory, and the bytes of the
int4 bitmask codes' act8 layout (csrc/quant.h, Act8Layout) against the codes as stored.

    python benchmarks/decode/step_build_cost.py FOLDER [FOLDER ...]
    PYTHONPATH=/tmp/old/src python benchmarks/decode/step_build_cost.py FOLDER   # an older tree

One thread. `build s` and `step adds MB` are FastDecoder(model, 256) on the loaded model: wall seconds and
the process's RSS after minus before. `layout MB` / `codes MB`: what the act8 layout of every int4 bitmask
module takes against its stored code stream (0 where no module has int4 bitmask codes, or on a CPU without
the act8 vector kernels, where no layout is built)."""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sparse_expansion import decode
    from sparse_expansion.kernels import ops
    from sparse_expansion.kernels.linear import _Compressed
    from sparse_expansion.models import load_model
    from sparse_expansion.resources import rss_mb

    lib, isa = ops._library()
    build_layout = getattr(lib, "act8_layout", None)  # (a tree older than the layout has none)
    print("| folder | build s | step adds MB | layout MB | codes MB |\n|---|---|---|---|---|")
    for folder in args.folders:
        loaded = load_model(folder)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        before, start = rss_mb(), time.perf_counter()
        step = decode.FastDecoder(model, 256)
        seconds, added = time.perf_counter() - start, rss_mb() - before
        del step
        layout = codes = 0
        for module in model.modules():
            if isinstance(module, _Compressed) and module.bits == 4:
                weight = module.compressed()
                if weight.format == "bitmask" and build_layout is not None:
                    built = build_layout(weight.format, *ops._quant_args(weight), isa)
                    layout += built[0].numel() - 32 if built else 0
                    codes += weight.values.numel() if built else 0
        print(f"| {folder} | {seconds:.2f} | {added:.0f} | {layout / 1e6:.1f} | {codes / 1e6:.1f} |")


if __name__ == "__main__":
    main()
