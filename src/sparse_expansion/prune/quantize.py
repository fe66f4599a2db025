"""GPTQ-style asymmetric per-output-channel uniform quantization (min/max grid per row)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowQuantizer:
    """A b-bit grid per output row: q = scale * (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero)."""

    scale: torch.Tensor  # [..., out, 1]
    zero: torch.Tensor  # [..., out, 1]
    maxq: int

    @classmethod
    def fit(cls, weight: torch.Tensor, bits: int) -> RowQuantizer:
        maxq = 2**bits - 1
        lo = weight.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = weight.amax(dim=-1, keepdim=True).clamp(min=0)
        flat = (lo == 0) & (hi == 0)
        lo = torch.where(flat, torch.full_like(lo, -1), lo)
        hi = torch.where(flat, torch.ones_like(hi), hi)
        scale = (hi - lo) / maxq
        zero = torch.round(-lo / scale)
        return cls(scale=scale, zero=zero, maxq=maxq)

    def __call__(self, column: torch.Tensor) -> torch.Tensor:
        """Quantize a column [..., out] (or block [..., out, cols]) onto the row grids."""
        scale, zero = self.scale, self.zero
        if column.dim() == scale.dim() - 1:
            scale, zero = scale.squeeze(-1), zero.squeeze(-1)
        q = torch.clamp(torch.round(column / scale) + zero, 0, self.maxq)
        return scale * (q - zero)
