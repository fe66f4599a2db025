"""Time compressed-weight matmuls against dense ones on SmolLM2's MLP shapes, weights from DRAM.

    python benchmarks/decode/kernel_speed.py --out runs/kernel_speed.md     # the full table, ~5 min
    python benchmarks/decode/kernel_speed.py --tokens 1 --threads 1 --repeats 5   # a quick look

A decoding model reads every weight once per token from DRAM (SmolLM2's MLPs alone are ~320 MB
in fp32, far beyond the last-level cache), so one layer timed over and over, sitting in cache,
says little. Here each variant cycles through copies of its weight, at least --copies of them
(90 = one SmolLM2's MLP linears) and at least --working-set-mb of bytes, so that they come from
DRAM. From --gemm-from tokens on, a weight is reused by so many tokens that DRAM no longer
matters: those runs cycle through --gemm-copies copies only, to keep the run short.

Variants alternate inside every repeat (A B C ... then B C ... A), each timed over one pass
through its copies; the table gives the median time per matmul and its ratio to dense fp32 at
the same tokens and threads. The sparse variants run sparse_expansion.kernels.sparse_linear
(below ops.DENSE_FROM tokens the sparse kernel, from there unpack-to-fp32 tiles + GEMM).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sparse_expansion.kernels import CompressedWeight, backend, compress, ops

SHAPES = ((1536, 576), (576, 1536))  # SmolLM2-135M: gate/up (out x in), down


@dataclass
class Variant:
    name: str
    copies: list  # weights (tensors or CompressedWeight), each a distinct copy in memory
    run: Callable[[torch.Tensor, object], torch.Tensor]
    bytes_per_copy: int
    backend: str | None = None  # ops.use_backend for the whole pass (None: as configured)
    input_dtype: torch.dtype = torch.float32


def magnitude_prune(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    threshold = w.abs().flatten().kthvalue(max(1, int(sparsity * w.numel()))).values
    return torch.where(w.abs() > threshold, w, torch.zeros_like(w))


def two_four(w: torch.Tensor) -> torch.Tensor:
    groups = w.clone().reshape(w.shape[0], -1, 4)
    groups.scatter_(-1, groups.abs().argsort(-1)[..., :2], 0.0)
    return groups.reshape(w.shape)


def copy_weight(w: torch.Tensor | CompressedWeight):
    if isinstance(w, torch.Tensor):
        return w.clone()
    return CompressedWeight(w.format, w.shape, w.values.clone(), w.index.clone(),
                            None if w.row_offsets is None else w.row_offsets.clone())


def nbytes(w: torch.Tensor | CompressedWeight) -> int:
    return w.numel() * w.element_size() if isinstance(w, torch.Tensor) else w.nbytes()


def make_variants(out: int, cols: int, sparsities: list[float], copies: int, working_set: int,
                  backends: list[str] = ()) -> list[Variant]:
    torch.manual_seed(0)
    base = torch.randn(out, cols)
    weights: dict[str, tuple[torch.Tensor | CompressedWeight, Callable]] = {
        "dense fp32": (base, lambda x, w: torch.mm(x, w.t())),
        "dense bf16": (base.bfloat16(), lambda x, w: torch.mm(x.bfloat16(), w.t())),
    }
    for dtype, label in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        for s in sparsities:
            weights[f"bitmask {label} {round(s * 100)}%"] = (compress(magnitude_prune(base, s), "bitmask", dtype),
                                                             ops.sparse_linear)
    weights["2:4 fp16"] = (compress(two_four(base), "2:4", torch.float16), ops.sparse_linear)
    weights["2:4 bf16"] = (compress(two_four(base), "2:4", torch.bfloat16), ops.sparse_linear)
    variants = []
    for name, (w, run) in weights.items():
        n = max(copies, math.ceil(working_set / nbytes(w)))
        variants.append(Variant(name, [copy_weight(w) for _ in range(n)], run, nbytes(w)))
    # bf16 inputs (a bf16 model's activations) with bf16 values: the BF16 dot kernel at decode, the
    # bf16 GEMM for big groups.
    for v in [v for v in variants if v.name.startswith(("bitmask bf16 70%", "2:4 bf16"))]:
        variants.append(Variant(v.name + ", bf16 inputs", v.copies, v.run, v.bytes_per_copy,
                                input_dtype=torch.bfloat16))
    for other in backends:  # the same weights under another backend, e.g. avx2 against avx512
        variants += [Variant(f"{v.name} [{other}]", v.copies, v.run, v.bytes_per_copy, other, v.input_dtype)
                     for v in list(variants) if v.run is ops.sparse_linear and v.backend is None]
    return variants


def time_pass(variant: Variant, x: torch.Tensor, count: int, clock: Callable[[], float]) -> float:
    """Seconds per matmul over `count` distinct copies."""
    ws = variant.copies[:count]
    x = x.to(variant.input_dtype)
    with ops.use_backend(variant.backend) if variant.backend else contextlib.nullcontext():
        start = clock()
        for w in ws:
            variant.run(x, w)
        return (clock() - start) / len(ws)


def measure(variants: list[Variant], cols: int, tokens: int, repeats: int, count: int | None,
            clock: Callable[[], float]) -> dict[str, float]:
    x = torch.randn(tokens, cols)
    for v in variants:  # warm-up: first-call costs, allocator, page faults
        time_pass(v, x, min(4, len(v.copies)), clock)
    samples: dict[str, list[float]] = {v.name: [] for v in variants}
    for rep in range(repeats):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for v in order:
            samples[v.name].append(time_pass(v, x, count or len(v.copies), clock))
    return {name: statistics.median(s) for name, s in samples.items()}


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(shape: tuple[int, int], variants: list[Variant], results: dict[tuple[int, int], dict[str, float]]) -> str:
    keys = sorted(results)
    head = "| variant | MB | " + " | ".join(f"T={t}, {n} thr" for t, n in keys) + " |"
    lines = [f"**{shape[0]}x{shape[1]}** (out x in): µs per matmul (ratio to dense fp32, same T and threads)", "",
             head, "|" + "---|" * (len(keys) + 2)]
    for v in variants:
        cells = []
        for key in keys:
            seconds, dense = results[key][v.name], results[key]["dense fp32"]
            cells.append(f"{seconds * 1e6:.0f} ({seconds / dense:.2f}x)")
        lines.append(f"| {v.name} | {v.bytes_per_copy / 2**20:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--copies", type=int, default=90)
    parser.add_argument("--working-set-mb", type=int, default=128)
    parser.add_argument("--gemm-from", type=int, default=64)
    parser.add_argument("--gemm-copies", type=int, default=8)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this thread's CPU time, for 1-thread runs on a shared, busy machine "
                             "(time spent descheduled is not counted); runs with more threads stay on wall time")
    parser.add_argument("--out", type=Path, help="also write the tables as markdown here")
    parser.add_argument("--backends", nargs="*", default=[], choices=["avx2", "scalar", "torch"],
                        help="also run every sparse variant under these backends (ops.use_backend)")
    parser.add_argument("--variants", nargs="*", help="only variants whose name starts with one of these")
    args = parser.parse_args()

    started, load_before = time.time(), load()
    sections = []
    for out, cols in SHAPES:
        variants = make_variants(out, cols, args.sparsities, args.copies, args.working_set_mb * 2**20, args.backends)
        if args.variants:
            variants = [v for v in variants if v.name.startswith(("dense fp32", *args.variants))]
        results = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            clock = time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter
            for tokens in args.tokens:
                count = args.gemm_copies if tokens >= args.gemm_from else None
                results[(tokens, threads)] = measure(variants, cols, tokens, args.repeats, count, clock)
                print(f"{out}x{cols} T={tokens} threads={threads} done (load {load()})", flush=True)
        sections.append(table((out, cols), variants, results))
        del variants
    header = [
        "# Sparse kernel speed (benchmarks/decode/kernel_speed.py)", "",
        f"`python benchmarks/decode/kernel_speed.py --repeats {args.repeats} --working-set-mb {args.working_set_mb} "
        f"--clock {args.clock} --tokens {' '.join(map(str, args.tokens))} --threads "
        f"{' '.join(map(str, args.threads))}"
        f"{' --backends ' + ' '.join(args.backends) if args.backends else ''}"
        f"{' --variants ' + ' '.join(repr(v) for v in args.variants) if args.variants else ''}` "
        f"at commit {commit()}, torch {torch.__version__}, backend `{backend()}`, GEMM path from "
        f"{ops.DENSE_FROM} tokens.",
        f"CPU: {cpu_name()}, {os.cpu_count()} cores. Load average (1/5/15 min) before: {load_before}; "
        f"after: {load()}; {time.time() - started:.0f} s.",
        f"Copies per variant: >= {args.copies} and >= {args.working_set_mb} MB (weights from DRAM); "
        f"from T={args.gemm_from}: {args.gemm_copies}. Medians of {args.repeats}, variants alternated.", "",
    ]
    text = "\n".join(header) + "\n\n".join(sections) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    with torch.no_grad():
        main()
