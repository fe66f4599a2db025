"""Magnitude, Wanda and SparseGPT as compressors of the layer-sequential engine."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..arch import linear_weight
from ..engine import Groups, LayerCompressor
from .magnitude import magnitude_prune
from .sparsegpt import sparsegpt_solve
from .sparsity import Sparsity, check_divisible
from .stats import HessianStat, SquaredNormStat
from .wanda import wanda_prune

METHODS = ("magnitude", "wanda", "sparsegpt")


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


class PruneCompressor(LayerCompressor):
    """Prunes every target linear of a layer with one method; one input statistic per group."""

    def __init__(self, method: str, sparsity: Sparsity, *, bits: int | None = None,
                 blocksize: int = 128, percdamp: float = 0.01) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        if bits is not None and method != "sparsegpt":
            raise ValueError("fused quantization (--bits) is only available with sparsegpt")
        self.method = method
        self.sparsity = sparsity
        self.bits = bits
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.needs_calibration = method != "magnitude"
        self._records: dict[str, dict[str, Any]] = {}

    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        self.index, self.layer, self.groups = index, layer, groups
        for group in groups:
            for name in group:
                check_divisible(linear_weight(layer.get_submodule(name)).shape[1], self.sparsity,
                                f"layer {index} {name}")
        stat = {"wanda": SquaredNormStat, "sparsegpt": HessianStat}.get(self.method)
        self.stats = {group: stat() for group in groups} if stat else {}

    def observe(self, group: tuple[str, ...], inputs: torch.Tensor) -> None:
        self.stats[group].add(inputs)

    def finish_layer(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for group in self.groups:
            statistic = self.stats[group].value() if self.stats else None
            for name in group:
                weight = linear_weight(self.layer.get_submodule(name)).detach()
                info: dict[str, Any] = {}
                if self.method == "magnitude":
                    new = magnitude_prune(weight, self.sparsity)
                elif self.method == "wanda":
                    new = wanda_prune(weight, statistic, self.sparsity)
                else:
                    new, solve = sparsegpt_solve(weight, statistic, self.sparsity, bits=self.bits,
                                                 blocksize=self.blocksize, percdamp=self.percdamp)
                    info["damping"] = solve["damping"][0]
                out[name] = new
                self._records[f"{self.index}.{name}"] = {"sparsity": zero_fraction(new), **info}
        self.stats = {}
        return out

    def record(self) -> dict[str, Any]:
        return dict(self._records)
