"""Magnitude, Wanda and SparseGPT: one config dataclass each, and one engine compressor for all.

A pruning method is its config (what the user chooses), the input statistic it needs (none,
Wanda's squared input norms, SparseGPT's Hessian) and a pure function that prunes one weight.
The method registry (`sparse_expansion.methods`) names these configs. `SparsityCompressor` is what
this compressor and Sparse Expansion's (expand/compressor.py) share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..arch import linear_weight
from ..engine import Groups, LayerCompressor
from .allocation import AllocationFields, TokenSample, block_counts, exact_counts
from .asymmetric import asymmetric_target
from .magnitude import magnitude_prune
from .sparsegpt import sparsegpt_solve
from .sparsity import Sparsity
from .stats import HessianStat, SquaredNormStat
from .wanda import wanda_prune


@dataclass(frozen=True)
class MagnitudeConfig:
    sparsity: Sparsity  # data-free: its compressor reads no calibration corpus


@dataclass(frozen=True)
class WandaConfig(AllocationFields):
    sparsity: Sparsity


@dataclass(frozen=True)
class SparseGPTConfig(AllocationFields):
    sparsity: Sparsity
    bits: int | None = None  # fused GPTQ-style quantization; 4 and 8 are stored as codes (kernels/formats.py)
    group_size: int | None = None  # quantization grid per row (None) or per row and this many columns
    grid: str = "minmax"  # how each grid is placed: its min/max range, or "mse" (clipped: formats.fit_grid)
    blocksize: int = 128
    percdamp: float = 0.01


PruneConfig = MagnitudeConfig | WandaConfig | SparseGPTConfig


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


def prune_weight(config: PruneConfig, weight: torch.Tensor, statistic: torch.Tensor | None, *,
                 zeros: int | None = None, row_zeros: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
    """(pruned weight, facts for the record) for one [out, in] weight.

    `zeros` fixes the weight's exact number of zeros (non-uniform allocation), `row_zeros` [out]
    how many of them each row takes; without them the method prunes at config.sparsity as published.
    """
    if isinstance(config, MagnitudeConfig):
        return magnitude_prune(weight, config.sparsity), {}
    out_features, in_features = weight.shape
    if isinstance(config, WandaConfig):
        if zeros is not None and row_zeros is None:
            row_zeros = exact_counts(torch.full((out_features,), zeros / weight.numel()), in_features, zeros)
        return wanda_prune(weight, statistic, config.sparsity, row_zeros=row_zeros), {}
    block = None
    if row_zeros is not None:
        block = block_counts(row_zeros, in_features, config.blocksize)
    elif zeros is not None:
        block = block_counts(torch.tensor(zeros), in_features, config.blocksize)
    stored = config.bits in STORED_BITS
    new, solve = sparsegpt_solve(weight.float() if stored else weight, statistic, config.sparsity, bits=config.bits,
                                 group_size=config.group_size, grid=config.grid, blocksize=config.blocksize,
                                 percdamp=config.percdamp, zeros=block, zeros_per_row=row_zeros is not None)
    info = {"damping": solve["damping"][0]}
    if stored:  # float32 on the grid, with the grid: the caller stores the codes
        info["grid"] = (*solve["grid"], config.bits, config.group_size or weight.shape[1])
    return new, info


STORED_BITS = (4, 8)  # --bits stored as int4 / int8 codes; other widths stay floats on their grid


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None,
                     grid: tuple[torch.Tensor, torch.Tensor, int, int]) -> nn.Module:
    """The module that stores a weight SparseGPT put on `grid` (scale, zero, bits, group size) as codes:
    a CompressedLinear (bitmask or N:M) when it is sparse enough to pay for its index, else a dense
    QuantizedLinear. Refuses (ValueError) a weight that is not exactly on the grid."""
    from ..kernels import CompressedLinear, QuantizedLinear
    from ..kernels.formats import COMPRESS_FROM_SPARSITY, choose_format, quantize

    scale, zero, bits, group = grid
    fmt = "dense" if zero_fraction(weight) < COMPRESS_FROM_SPARSITY else choose_format(weight)
    packed = quantize(weight, fmt, bits, group, scale, zero, exact=True)
    keep = None if bias is None else bias.detach().float()
    return QuantizedLinear(packed, keep) if fmt == "dense" else CompressedLinear(packed, keep)


_STATISTICS = {MagnitudeConfig: None, WandaConfig: SquaredNormStat, SparseGPTConfig: HessianStat}


class SparsityCompressor(LayerCompressor):
    """What every compressor that prunes each target linear to `config.sparsity` shares (pruning
    and Sparse Expansion): the config, the allocation planned over the whole model before the pass,
    the per-linear record and the timings of its own steps. (N:M against the layer widths is checked
    before any of it: methods.check_widths.)"""

    def __init__(self, config: Any, seed: int = 0) -> None:
        self.config = config
        allocator = config.allocator(seed) if isinstance(config, AllocationFields) else None
        self.allocator = allocator if allocator is not None and allocator.active else None
        self.times: dict[str, float] = {}
        self._records: dict[str, dict[str, Any]] = {}

    def prepare(self, model: nn.Module, windows: torch.Tensor | None, *, targets: str = "mlp",
                batch_size: int = 8) -> None:
        """Before the layer-sequential pass: fix every linear's zero count (and OWL's layer sparsities)."""
        if self.allocator is not None:
            start = time.perf_counter()
            self.allocator.prepare(model, windows, targets=targets, batch_size=batch_size)
            self.times["allocation"] = time.perf_counter() - start

    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        self.index, self.layer, self.groups = index, layer, groups

    def record(self) -> dict[str, Any]:
        return dict(self._records)

    def timings(self) -> dict[str, float]:
        return dict(self.times)


class PruneCompressor(SparsityCompressor):
    """Prunes every target linear of a layer with one method; one input statistic per group."""

    def __init__(self, config: PruneConfig) -> None:
        if type(config) not in _STATISTICS:
            raise TypeError(f"not a pruning config: {config!r}")
        super().__init__(config)
        self.statistic = _STATISTICS[type(config)]
        self.needs_calibration = self.statistic is not None

    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        super().start_layer(index, layer, groups)
        self.stats = {group: self.statistic() for group in groups} if self.statistic else {}
        self.samples: dict[tuple[str, ...], TokenSample | None] = {
            g: self.allocator.sampler(index, gi) if self.allocator else None for gi, g in enumerate(groups)}

    def observe(self, group: tuple[str, ...], inputs: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        if reference is None:
            self.stats[group].add(inputs)
        else:  # asymmetric calibration (engine.calibrate): SparseGPT's Hessian also keeps the cross term
            self.stats[group].add(inputs, reference=reference)
        sample = self.samples[group]
        if sample is not None:
            sample.add(inputs)

    def finish_layer(self) -> dict[str, torch.Tensor]:
        out = self.finish_groups(tuple(group for group in self.groups if group in self.samples))
        self.stats, self.samples = {}, {}
        return out

    def finish_groups(self, groups: Groups) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for group in groups:
            stat = self.stats.pop(group) if self.statistic else None
            statistic = stat.value() if stat is not None else None
            cross = stat.cross() if isinstance(stat, HessianStat) else None
            sample = self.samples.pop(group)
            for name in group:
                weight = linear_weight(self.layer.get_submodule(name)).detach()
                if cross is not None:  # aim at the dense model's outputs (prune/asymmetric.py)
                    weight = asymmetric_target(weight, statistic, cross, self.config.percdamp)
                if self.allocator is None:
                    new, info = prune_weight(self.config, weight, statistic)
                else:
                    rows = self.allocator.row_zeros(self.index, name, weight, sample.value() if sample else None)
                    new, info = prune_weight(self.config, weight, statistic,
                                             zeros=self.allocator.linear_zeros(self.index, name), row_zeros=rows)
                    info.update(self.allocator.record(self.index, name, rows))
                grid = info.pop("grid", None)
                module = self.layer.get_submodule(name)
                out[name] = new if grid is None else quantized_linear(new, getattr(module, "bias", None), grid)
                self._records[f"{self.index}.{name}"] = {"sparsity": zero_fraction(new), **info}
        return out
