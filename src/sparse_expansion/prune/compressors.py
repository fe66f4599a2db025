"""Magnitude, Wanda and SparseGPT: one config dataclass each, and one engine compressor for all.

A pruning method is its config (what the user chooses), the input statistic it needs (none,
Wanda's squared input norms, SparseGPT's Hessian) and a pure function that prunes one weight.
The method registry (`sparse_expansion.methods`) names these configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..arch import linear_weight
from ..engine import Groups, LayerCompressor
from .magnitude import magnitude_prune
from .sparsegpt import sparsegpt_solve
from .sparsity import Sparsity, check_divisible
from .stats import HessianStat, SquaredNormStat
from .wanda import wanda_prune


@dataclass(frozen=True)
class MagnitudeConfig:
    sparsity: Sparsity
    needs_calibration: ClassVar[bool] = False  # data-free: no calibration corpus is read


@dataclass(frozen=True)
class WandaConfig:
    sparsity: Sparsity


@dataclass(frozen=True)
class SparseGPTConfig:
    sparsity: Sparsity
    bits: int | None = None  # fused GPTQ-style per-channel quantization
    blocksize: int = 128
    percdamp: float = 0.01


PruneConfig = MagnitudeConfig | WandaConfig | SparseGPTConfig


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


def prune_weight(config: PruneConfig, weight: torch.Tensor, statistic: torch.Tensor | None
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
    """(pruned weight, facts for the record) for one [out, in] weight."""
    if isinstance(config, MagnitudeConfig):
        return magnitude_prune(weight, config.sparsity), {}
    if isinstance(config, WandaConfig):
        return wanda_prune(weight, statistic, config.sparsity), {}
    new, solve = sparsegpt_solve(weight, statistic, config.sparsity, bits=config.bits,
                                 blocksize=config.blocksize, percdamp=config.percdamp)
    return new, {"damping": solve["damping"][0]}


_STATISTICS = {MagnitudeConfig: None, WandaConfig: SquaredNormStat, SparseGPTConfig: HessianStat}


class PruneCompressor(LayerCompressor):
    """Prunes every target linear of a layer with one method; one input statistic per group."""

    def __init__(self, config: PruneConfig) -> None:
        if type(config) not in _STATISTICS:
            raise TypeError(f"not a pruning config: {config!r}")
        self.config = config
        self.statistic = _STATISTICS[type(config)]
        self.needs_calibration = self.statistic is not None
        self._records: dict[str, dict[str, Any]] = {}

    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        self.index, self.layer, self.groups = index, layer, groups
        for group in groups:
            for name in group:
                check_divisible(linear_weight(layer.get_submodule(name)).shape[1], self.config.sparsity,
                                f"layer {index} {name}")
        self.stats = {group: self.statistic() for group in groups} if self.statistic else {}

    def observe(self, group: tuple[str, ...], inputs: torch.Tensor) -> None:
        self.stats[group].add(inputs)

    def finish_layer(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for group in self.groups:
            statistic = self.stats[group].value() if self.stats else None
            for name in group:
                weight = linear_weight(self.layer.get_submodule(name)).detach()
                new, info = prune_weight(self.config, weight, statistic)
                out[name] = new
                self._records[f"{self.index}.{name}"] = {"sparsity": zero_fraction(new), **info}
        self.stats = {}
        return out

    def record(self) -> dict[str, Any]:
        return dict(self._records)
