"""Sparsity targets: unstructured fraction `s` or N:M, parsed once and validated for every method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError


@dataclass(frozen=True)
class Sparsity:
    """Either an unstructured fraction of zeros, or N:M = at most N non-zeros in every M consecutive
    input weights of a row (NVIDIA's convention: 2:4 keeps 2 of 4, i.e. 50%)."""

    fraction: float = 0.0
    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def zero_fraction(self) -> float:
        return 1.0 - self.n / self.m if self.structured else self.fraction

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else f"{self.fraction:g}"

    def to_json(self) -> str | float:
        return f"{self.n}:{self.m}" if self.structured else self.fraction


def parse_sparsity(text: str | float) -> Sparsity:
    """'0.5' -> 50% unstructured, '2:4' -> 2 non-zeros in every 4; anything else is a usage error."""
    raw = str(text).strip()
    if ":" in raw:
        parts = raw.split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            raise UsageError(f"malformed N:M sparsity '{raw}'; write two integers like 2:4") from None
        if not 0 < n < m:
            raise UsageError(f"malformed N:M sparsity '{raw}'; need 0 < N < M, e.g. 2:4")
        return Sparsity(n=n, m=m)
    try:
        fraction = float(raw)
    except ValueError:
        raise UsageError(f"sparsity '{raw}' is not a number; give a fraction in [0, 1) or N:M like 2:4") from None
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"sparsity {fraction:g} is outside [0, 1); give e.g. 0.5 for 50% zeros")
    return Sparsity(fraction=fraction)


def check_divisible(in_features: int, sparsity: Sparsity, name: str) -> None:
    if sparsity.structured and in_features % sparsity.m:
        raise UsageError(
            f"{name} has {in_features} inputs, not a multiple of M={sparsity.m}; choose another N:M"
        )


def mask_lowest(scores: torch.Tensor, sparsity: Sparsity, per_row: bool) -> torch.Tensor:
    """Boolean mask of the weights to ZERO: the lowest scores, per matrix, per row, or per N:M group.

    Works on [..., out, in] with any leading batch dims. Ties are broken by position so the
    achieved count is exact.
    """
    if sparsity.structured:
        groups = scores.reshape(*scores.shape[:-1], -1, sparsity.m)
        drop = sparsity.m - sparsity.n
        idx = torch.topk(groups, drop, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
        return mask.reshape(scores.shape)
    flat = scores if per_row else scores.reshape(*scores.shape[:-2], -1)
    count = int(flat.shape[-1] * sparsity.fraction)
    if count == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    # One kthvalue gives the threshold, faster than a topk this large (benchmarks/design/design_choices.py,
    # mask_kthvalue); ties at the threshold go by position.
    kth = flat.kthvalue(count, dim=-1, keepdim=True).values
    mask = flat < kth
    ties = flat == kth
    missing = count - mask.sum(-1, keepdim=True)
    mask |= ties & (ties.cumsum(-1) <= missing)
    return mask.reshape(scores.shape)


def mask_counts(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the `counts[...]` lowest scores along the last dim of scores [..., n]
    (counts broadcasts against the leading dims); ties by position, so each count is exact."""
    n = scores.shape[-1]
    order = scores.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=scores.device).expand_as(order))
    return ranks < counts.to(scores.device).unsqueeze(-1)
