"""Time the pieces of a 16-expert expansion on their own, on synthetic data of SmolLM2's shapes.

    python benchmarks/pruning/expansion_parts.py            # one JSON line of seconds / microseconds

- solve_gate_s / solve_down_s: `sparsegpt_solve` of 16 experts of a 1536 x 576 (gate/up) and a
  576 x 1536 (down) linear at 70%, each expert with its own Hessian from 2048 random tokens;
- eigh64_s / eigh32_s: the router's 1536 x 1536 covariance eigenproblem in float64 and float32;
- pack_model_s: `pack_sparse` of 90 linears x 16 experts at 50% (what saving a model packed until the
  experts were kept compressed; the old layout, still read when loading old folders);
- compress_model_s: `kernels.compress` of the same into the bitmask format, float32 values (what
  building an expanded model now does once per linear; absent from checkouts without kernels/);
- route_one_token_us: one `Router` call on one token (576 inputs, 16 experts, 18 PCA dims).

Only public functions that exist since the first release are used, so the same file can be run
against an older checkout (PYTHONPATH=OLD/src) to compare versions.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from sparse_expansion.expand.module import pack_sparse
from sparse_expansion.expand.router import Router
from sparse_expansion.prune import parse_sparsity, sparsegpt_solve


def seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def hessians(experts: int, d: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(experts, 2048, d, generator=g) * (torch.rand(d, generator=g) * 3 + 0.1)
    return 2 * x.transpose(1, 2) @ x / 2048


@torch.no_grad()
def main() -> None:
    g = torch.Generator().manual_seed(0)
    result = {"threads": torch.get_num_threads()}
    sparsity = parse_sparsity("0.7")
    for name, (rows, cols) in {"solve_gate_s": (1536, 576), "solve_down_s": (576, 1536)}.items():
        weight = torch.randn(rows, cols, generator=g).expand(16, rows, cols)
        h = hessians(16, cols, g)
        result[name] = seconds(lambda w=weight, h=h: sparsegpt_solve(w, h, sparsity))
    x = torch.randn(16384, 1536, generator=g) @ (torch.randn(1536, 1536, generator=g) / 40)
    cov = torch.cov(x.t().double())
    result["eigh64_s"] = seconds(lambda: torch.linalg.eigh(cov))
    result["eigh32_s"] = seconds(lambda: torch.linalg.eigh(cov.float()))
    experts = torch.randn(16, 1536, 576, generator=g)
    experts[torch.rand(experts.shape, generator=g) < 0.5] = 0
    result["pack_model_s"] = seconds(lambda: [pack_sparse(experts) for _ in range(90)], repeats=1)
    try:
        from sparse_expansion.kernels import compress
    except ImportError:  # an older checkout
        pass
    else:
        result["compress_model_s"] = seconds(lambda: [compress(experts, "bitmask", torch.float32) for _ in range(90)],
                                             repeats=1)
    router, _ = Router.fit(torch.randn(4096, 576, generator=g), 16, 18)
    token = torch.randn(1, 576, generator=g)
    result["route_one_token_us"] = seconds(lambda: [router(token) for _ in range(1000)]) * 1e3
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
