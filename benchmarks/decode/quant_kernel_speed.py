"""One linear at decode (1 token, 1 thread): float values against int8 / int4 codes, CPU time.

    PYTHONPATH=src python benchmarks/decode/quant_kernel_speed.py            # 1536x576, 70% bitmask and dense
    PYTHONPATH=src python benchmarks/decode/quant_kernel_speed.py --out 576 --in 1536 --sparsity 0.5
    PYTHONPATH=src python benchmarks/decode/quant_kernel_speed.py --act8-only --out 49152 --in 576  # the LM head
    benchmarks/decode/quant_kernel_speed.sh      # the three SmolLM2 shapes, act8 rows, into results/

"act8" rows are what the fast decode step runs for int8 / int4 values (ops.quant_decode_linear; the
input rounded to int8 in blocks of 32, the codes dotted with it by AVX-512 VNNI, csrc/quant.h); the
other int8 / int4 rows are the exact de-quantizing kernels modules call (ops.sparse_linear).
`--act8-only` keeps the bfloat16 rows and the act8 rows (the comparison the decode step makes).

Every variant cycles through copies of its weight, enough for `--working-set-mb` bytes, so that its
weights come from DRAM as in a decoding model (SmolLM2's linears do not fit the cache), and also runs
one copy over and over ("in cache"). Variants alternate inside every repeat; the table gives the
median CPU time (time.process_time, so other processes on a shared machine count less than in wall
time) per matvec. Sparse variants run kernels.sparse_linear, dense ones F.linear, kernels.dense_linear
(the AVX512-BF16 decode kernel) or QuantizedLinear's kernel; int4 in groups of --group columns.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=int, default=1536)
    parser.add_argument("--in", dest="cols", type=int, default=576)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--working-set-mb", type=float, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--act8-only", action="store_true", help="bfloat16 and act8 rows only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sparse_expansion.kernels import formats, ops
    from sparse_expansion.prune.quantize import fit_grid

    g = torch.Generator().manual_seed(0)
    rows, cols = args.out, args.cols
    dense = torch.randn(rows, cols, generator=g)
    sparse = dense * (torch.rand(rows, cols, generator=g) >= args.sparsity)

    def quantized(w: torch.Tensor, fmt: str, bits: int, group: int | None) -> formats.CompressedWeight:
        group = cols if group is None else group
        return formats.quantize(w, fmt, bits, group, *fit_grid(w, bits, group))

    x32 = torch.randn(1, cols, generator=g)
    x16 = x32.bfloat16()
    pct = f"{args.sparsity:.0%} bitmask"
    variants: list[tuple[str, object, Callable]] = [
        ("dense fp32, F.linear", dense, lambda w: torch.nn.functional.linear(x32, w)),
        ("dense bf16, AVX512-BF16 decode kernel", dense.bfloat16(), lambda w: ops.dense_linear(x16, w)),
        ("dense int8 per row", quantized(dense, "dense", 8, None), lambda w: ops.sparse_linear(x32, w)),
        (f"dense int4 g{args.group}", quantized(dense, "dense", 4, args.group), lambda w: ops.sparse_linear(x32, w)),
        (f"{pct} fp32", formats.compress(sparse, "bitmask", torch.float32), lambda w: ops.sparse_linear(x32, w)),
        (f"{pct} bf16, fp32 input", formats.compress(sparse, "bitmask", torch.bfloat16),
         lambda w: ops.sparse_linear(x32, w)),
        (f"{pct} bf16, bf16 input (BF16 dot)", formats.compress(sparse, "bitmask", torch.bfloat16),
         lambda w: ops.sparse_linear(x16, w)),
        (f"{pct} int8 per row", quantized(sparse, "bitmask", 8, None), lambda w: ops.sparse_linear(x32, w)),
        (f"{pct} int4 g{args.group}", quantized(sparse, "bitmask", 4, args.group), lambda w: ops.sparse_linear(x32, w)),
        (f"{pct} int4 per row", quantized(sparse, "bitmask", 4, None), lambda w: ops.sparse_linear(x32, w)),
    ]
    act8 = [
        ("dense int8 per row, act8", quantized(dense, "dense", 8, None), lambda w: ops.quant_decode_linear(x32, w)),
        ("dense int4 g32, act8", quantized(dense, "dense", 4, 32), lambda w: ops.quant_decode_linear(x32, w)),
        (f"dense int4 g{args.group}, act8", quantized(dense, "dense", 4, args.group),
         lambda w: ops.quant_decode_linear(x32, w)),
        (f"{pct} int8 per row, act8", quantized(sparse, "bitmask", 8, None), lambda w: ops.quant_decode_linear(x32, w)),
        (f"{pct} int4 g32, act8", quantized(sparse, "bitmask", 4, 32), lambda w: ops.quant_decode_linear(x32, w)),
        (f"{pct} int4 g{args.group}, act8", quantized(sparse, "bitmask", 4, args.group),
         lambda w: ops.quant_decode_linear(x32, w)),
    ]
    if args.act8_only:
        variants = [v for v in variants if "bf16" in v[0] and "fp32 input" not in v[0]]
    variants = variants + [v for v in act8 if v[0] not in {name for name, *_ in variants}]
    copies = {}
    for name, weight, _ in variants:
        size = weight.numel() * weight.element_size() if isinstance(weight, torch.Tensor) else weight.nbytes()
        count = max(2, int(args.working_set_mb * 2**20 / size))
        copies[name] = (size, [_copy(weight) for _ in range(count)])
    times: dict[str, dict[str, list[float]]] = {name: {"dram": [], "cache": []} for name, *_ in variants}
    for repeat in range(args.repeats):
        order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
        for name, weight, run in order:
            _, pool = copies[name]
            start = time.process_time()
            for w in pool:
                run(w)
            times[name]["dram"].append((time.process_time() - start) / len(pool))
            start = time.process_time()
            for _ in range(len(pool)):
                run(weight)
            times[name]["cache"].append((time.process_time() - start) / len(pool))
    print(f"# {rows}x{cols}, 1 token, 1 thread, backend {ops.backend()}, CPU time (median of {args.repeats}); "
          f"working set {args.working_set_mb:g} MB per variant")
    first = variants[0][0].split(",")[0]
    print(f"| weights | bytes | us from DRAM | vs {first} | us in cache |\n|---|---|---|---|---|")
    base = statistics.median(times[variants[0][0]]["dram"])  # the first row: dense fp32, or dense bf16
    for name, *_ in variants:
        dram, cache = (statistics.median(times[name][k]) for k in ("dram", "cache"))
        print(f"| {name} | {copies[name][0] / 1e6:.3f} MB | {dram * 1e6:.1f} | {base / dram:.2f}x | "
              f"{cache * 1e6:.1f} |")


def _copy(weight):
    from dataclasses import fields, replace

    from sparse_expansion.kernels import formats

    if isinstance(weight, torch.Tensor):
        return weight.clone()
    tensors = {f.name: getattr(weight, f.name).clone() for f in fields(formats.CompressedWeight)
               if isinstance(getattr(weight, f.name), torch.Tensor)}
    return replace(weight, **tensors)


if __name__ == "__main__":
    main()
