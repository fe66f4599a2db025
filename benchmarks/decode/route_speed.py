"""A folded router's scoring of one token (`kernels.ops.route`, what an expanded module calls at decode;
the fast step scores with the same kernel), on SmolLM2's router shapes: in cache, and cycling through
copies of the matrix so that each call reads it from memory, as a decode step does.

    python benchmarks/decode/route_speed.py
    PYTHONPATH=/tmp/old/src python benchmarks/decode/route_speed.py     # an older tree

One thread; microseconds a call, the best of 5 passes (a call includes ~1 us of Python and torch)."""
from __future__ import annotations

import time

import torch

SHAPES = ((576, 16), (1536, 16), (1536, 64))  # gate/up and down routers of 16 experts, and 64
MEMORY_BYTES = 64 << 20  # copies of the matrix enough to leave the 32 MB last-level cache behind


def per_call_us(x: torch.Tensor, bias: torch.Tensor, matrices: list[torch.Tensor], calls: int) -> float:
    from sparse_expansion.kernels import ops

    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for i in range(calls):
            ops.route(x, bias, matrices[i % len(matrices)])
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| in x k | in cache, us | from memory, us |\n|---|---|---|")
    for inputs, k in SHAPES:
        x, bias = torch.randn(1, inputs), torch.randn(k)
        hot = [torch.randn(inputs, k)]
        cold = [torch.randn(inputs, k) for _ in range(MEMORY_BYTES // (4 * inputs * k))]
        per_call_us(x, bias, hot, 200)  # warm-up: the kernels built and loaded
        in_cache, from_memory = per_call_us(x, bias, hot, 2000), per_call_us(x, bias, cold, len(cold))
        print(f"| {inputs} x {k} | {in_cache:.2f} | {from_memory:.2f} |")


if __name__ == "__main__":
    main()
