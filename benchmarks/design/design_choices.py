"""Time each implementation choice that a code comment justifies by speed, against the obvious
alternative, on SmolLM2's shapes (synthetic data). The comments cite the keys printed here.

    python benchmarks/design/design_choices.py            # one JSON line: key -> {ours, alternative, ratio}
    python benchmarks/design/design_choices.py --threads 1 --clock cpu    # on a machine others share

`--clock cpu` counts this process's CPU time (all its threads), so time spent descheduled by other
jobs is not charged to either side; with --threads 1 it is the work each choice does.

- inverse_factor: SparseGPT's upper Cholesky factor of H^-1 through one Cholesky of the reversed
  H and a triangular inverse (prune/sparsegpt.py), against cholesky -> cholesky_inverse ->
  cholesky (the reference's route); 4 Hessians of 1536 x 1536.
- triangular_inverse_1 / _16: the inverse of a lower-triangular matrix by halves, against
  solve_triangular with the identity; 1 and 16 matrices of 1536 x 1536.
- solve_threads / kmeans_threads: SparseGPT's column loop and k-means on one thread
  (threads.one_thread) against all threads (16 experts of 1536 x 576; 16384 tokens x 18 dims);
  meaningful only when torch has several threads (not with --threads 1).
- mask_kthvalue: the whole per-matrix mask by kthvalue and a tie fix (prune/sparsity.py) against a
  bare topk of the same count.
- pack_numpy: packing 16 experts into values + bitmask with numpy (expand/module.py) against
  torch boolean indexing and bit shifts.

Ratios are alternative / ours: above 1 means our choice is faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sparse_expansion.expand.module import pack_sparse
from sparse_expansion.expand.router import kmeans
from sparse_expansion.prune import parse_sparsity, sparsegpt_solve
from sparse_expansion.prune.sparsegpt import lower_triangular_inverse, upper_cholesky_of_inverse
from sparse_expansion.prune.sparsity import mask_lowest
from sparse_expansion.threads import one_thread

CLOCK = time.perf_counter


def seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        samples.append(CLOCK() - start)
    return statistics.median(samples)


def compare(ours, alternative, repeats: int = 3) -> dict[str, float]:
    a, b = seconds(ours, repeats), seconds(alternative, repeats)
    return {"ours_s": round(a, 4), "alternative_s": round(b, 4), "ratio": round(b / a, 2)}


def hessians(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, 2048, d, generator=g) * (torch.rand(d, generator=g) * 3 + 0.1)
    return 2 * x.transpose(1, 2) @ x / 2048 + 0.01 * torch.eye(d)


def reference_route(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def torch_pack(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = (dense != 0).flatten()
    values = dense.flatten()[mask]
    pad = (-mask.numel()) % 8
    bits = torch.cat([mask, mask.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return values, (bits * weights).sum(1).to(torch.uint8)


@torch.no_grad()
def main() -> None:
    global CLOCK
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what is timed (default wall)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    g = torch.Generator().manual_seed(0)
    result: dict = {"threads": torch.get_num_threads(), "clock": args.clock}
    h = hessians(4, 1536, g)
    result["inverse_factor"] = compare(lambda: upper_cholesky_of_inverse(h), lambda: reference_route(h), 1)
    for batch in (1, 16):  # one SparseGPT Hessian; one per expert of a 16-expert linear
        lower = torch.linalg.cholesky(hessians(batch, 1536, g))
        eye = torch.eye(1536).expand_as(lower)
        result[f"triangular_inverse_{batch}"] = compare(
            lambda lower=lower: lower_triangular_inverse(lower),
            lambda lower=lower, eye=eye: torch.linalg.solve_triangular(lower, eye, upper=False))
    weight = torch.randn(1536, 576, generator=g).expand(16, 1536, 576)
    hs = hessians(16, 576, g)
    sparsity = parse_sparsity("0.7")

    def solve_one_thread():
        with one_thread():
            sparsegpt_solve(weight, hs, sparsity)

    result["solve_threads"] = compare(solve_one_thread, lambda: sparsegpt_solve(weight, hs, sparsity), 1)
    z = torch.randn(16384, 18, generator=g)

    def kmeans_one_thread():
        with one_thread():
            kmeans(z, 16, n_init=2)

    result["kmeans_threads"] = compare(kmeans_one_thread, lambda: kmeans(z, 16, n_init=2), 1)
    scores = torch.rand(1536, 576, generator=g)
    count = int(scores.numel() * 0.7)
    result["mask_kthvalue"] = compare(lambda: mask_lowest(scores, sparsity, per_row=False),
                                      lambda: torch.topk(scores.flatten(), count, largest=False))
    experts = torch.randn(16, 1536, 576, generator=g)
    experts[torch.rand(experts.shape, generator=g) < 0.5] = 0
    result["pack_numpy"] = compare(lambda: pack_sparse(experts), lambda: torch_pack(experts))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
