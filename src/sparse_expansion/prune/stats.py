"""Streaming statistics of a linear's inputs: the memory cost is fixed, not proportional to tokens."""

from __future__ import annotations

import torch

from ..errors import UsageError

NO_INPUTS = ("no calibration token reached this linear (a mixture-of-experts expert no token was routed to); "
             "raise --calib-windows or --seqlen")


class HessianStat:
    """H = 2/n * sum_x x x^T over every calibration token, accumulated batch by batch."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        update = x.t() @ x
        self.total = update if self.total is None else self.total.add_(update)
        self.count += x.shape[0]

    def value(self) -> torch.Tensor:
        if self.total is None:
            raise UsageError(NO_INPUTS)
        return self.total * (2.0 / self.count)


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
