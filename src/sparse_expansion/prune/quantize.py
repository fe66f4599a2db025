"""GPTQ-style asymmetric uniform quantization: a grid per output row, or per row and group of
`group_size` input columns, spanning its min/max range or clipped where rounding loses least
(`grid`, formats.fit_grid). Pure functions; SparseGPT (--bits) and `convert` (round-to-nearest) fit
the same grids, and kernels/formats.py stores their codes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.formats import fit_grid  # noqa: F401 (the grid the formats store; GPTQ fits the same)


def round_to_grid(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest onto a grid broadcast against `weight` (scale and zero per element or per
    row): scale * (clamp(round(w / scale) + zero, 0, 2^bits - 1) - zero)."""
    q = torch.clamp(torch.round(weight / scale) + zero, 0, 2**bits - 1)
    return scale * (q - zero)


@dataclass
class RowQuantizer:
    """A b-bit grid per output row: q = scale * (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero)."""

    scale: torch.Tensor  # [..., out, 1]
    zero: torch.Tensor  # [..., out, 1]
    maxq: int

    @classmethod
    def fit(cls, weight: torch.Tensor, bits: int, grid: str = "minmax") -> RowQuantizer:
        scale, zero = fit_grid(weight, bits, method=grid)
        return cls(scale=scale, zero=zero, maxq=2**bits - 1)

    def __call__(self, column: torch.Tensor) -> torch.Tensor:
        """Quantize a column [..., out] (or block [..., out, cols]) onto the row grids."""
        scale, zero = self.scale, self.zero
        if column.dim() == scale.dim() - 1:
            scale, zero = scale.squeeze(-1), zero.squeeze(-1)
        q = torch.clamp(torch.round(column / scale) + zero, 0, self.maxq)
        return scale * (q - zero)


class GroupQuantizer:
    """The grid SparseGPT quantizes onto, column by column: per row (`group_size` None: fit once on the
    whole weight, as GPTQ's per-channel quantizer) or per row and group, each group's grid fit when
    the solve reaches its first column, on the weights as the updates so far left them (GPTQ's
    group-wise rule); `grid` places each one (formats.fit_grid: "minmax" or "mse"). `scale`/`zero`
    [B, out, groups] hold the grids: what a saved folder stores."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int | None = None, grid: str = "minmax") -> None:
        self.bits, self.group_size, self.grid = bits, group_size, grid
        cols = weight.shape[-1]
        if group_size is None:
            self.scale, self.zero = fit_grid(weight, bits, method=grid)
        else:
            groups = -(-cols // group_size)
            self.scale = weight.new_zeros(*weight.shape[:-1], groups, dtype=torch.float32)
            self.zero = torch.zeros_like(self.scale)

    def group_of(self, column: int) -> int:
        return 0 if self.group_size is None else column // self.group_size

    def starts_group(self, column: int) -> bool:
        return self.group_size is not None and column % self.group_size == 0

    def fit_group(self, column: int, block: torch.Tensor) -> None:
        """Fit the grid of the group starting at `column` on block [B, out, cols of that group]."""
        scale, zero = fit_grid(block, self.bits, method=self.grid)
        g = self.group_of(column)
        self.scale[..., g], self.zero[..., g] = scale[..., 0], zero[..., 0]

    def __call__(self, column: torch.Tensor, index: int) -> torch.Tensor:
        """Column `index` [B, out] onto its rows' grids."""
        g = self.group_of(index)
        return round_to_grid(column, self.scale[..., g], self.zero[..., g], self.bits)
