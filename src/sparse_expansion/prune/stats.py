"""Streaming statistics of a linear's inputs: the memory cost is fixed, not proportional to tokens."""

from __future__ import annotations

import torch

from ..errors import UsageError

NO_INPUTS = ("no calibration token reached this linear (a mixture-of-experts expert no token was routed to); "
             "raise --calib-windows or --seqlen")


class HessianStat:
    """H = 2/n * sum_x x x^T over every calibration token, accumulated batch by batch; given the dense
    model's inputs of the same tokens (`reference`, asymmetric calibration), also C = 2/n * sum x_dense x^T."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.cross_total: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor, scratch: torch.Tensor | None = None, reference: torch.Tensor | None = None) -> None:
        """`scratch` ([d, d] float32): where to put the batch's product instead of a new tensor (Sparse
        Expansion adds k small chunks per batch, and a fresh [d, d] each costs as much as a small
        product). The product is then added, as without it: adding it inside the GEMM (addmm_) is
        faster still but rounds differently once a chunk spans several of the BLAS library's blocks.
        `reference` [n, d]: the same tokens' inputs in the dense model (every batch or none)."""
        x = x.float()
        if self.total is None:
            self.total = x.t() @ x
        else:
            self.total.add_(x.t() @ x if scratch is None else torch.mm(x.t(), x, out=scratch))
        if reference is not None:
            cross = reference.float().t() @ x  # the same product as x.t() @ x when the two streams agree
            self.cross_total = cross if self.cross_total is None else self.cross_total.add_(cross)
        self.count += x.shape[0]

    def value(self) -> torch.Tensor:
        if self.total is None:
            raise UsageError(NO_INPUTS)
        return self.total * (2.0 / self.count)

    def cross(self) -> torch.Tensor | None:
        """C = 2/n * sum x_dense x^T [d, d], or None without references."""
        return None if self.cross_total is None else self.cross_total * (2.0 / self.count)


def gram(x: torch.Tensor, block: int = 384) -> torch.Tensor:
    """x^T x [d, d] for x [n, d], computing only the blocks on and below the diagonal and mirroring
    them: about (1 + d/block) / (2 d/block) of the full product's FLOPs (62% at 1536 wide), for the
    one large Gram matrix of the router's PCA (expand/router.py). Exactly symmetric; its lower
    triangle, all that torch.linalg.eigh reads, came out bit-equal to x.t() @ x's in our runs."""
    d = x.shape[1]
    out = torch.empty(d, d, dtype=x.dtype, device=x.device)
    xt = x.t()
    for i in range(0, d, block):
        i2 = min(i + block, d)
        out[i:i2, :i2] = xt[i:i2] @ x[:, :i2]
    upper = torch.triu_indices(d, d, 1, device=x.device)
    out[upper[0], upper[1]] = out[upper[1], upper[0]]
    return out


class SquaredNormStat:
    """Mean of x_j^2 per input feature (Wanda's ||X_j||^2 up to a constant)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        update = x.float().pow(2).sum(0)
        self.total = update if self.total is None else self.total.add_(update)
        self.count += x.shape[0]

    def value(self) -> torch.Tensor:
        if self.total is None:
            raise UsageError(NO_INPUTS)
        return self.total / self.count
