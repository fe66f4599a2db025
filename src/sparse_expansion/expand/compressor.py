"""Sparse Expansion as a compressor of the layer-sequential engine, on streaming statistics.

Per group of linears sharing an input (gate+up, or down): the router is fit on a seeded subsample
of the group's calibration tokens (`router_tokens`, drawn from the first batches), then every batch
is routed and added to its cluster's Hessian and dropped. What a layer holds is the subsample, one
Hessian per cluster and a few scalars: memory does not grow with the calibration size. The cluster
Hessians are shrunk toward the layer's Hessian (a rule per config), and every expert of every linear
is solved with the foundation's SparseGPT, all k at once (batched).

This module is the lifecycle (what is held when, what runs in which step); the cluster statistics and
the shrinkage are pure functions in hessians.py, the shared config and allocation handling is
prune.compressors.SparsityCompressor's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..arch import linear_weight
from ..engine import Groups
from ..errors import UsageError
from ..prune.allocation import AllocationFields, TokenSample, block_counts
from ..prune.asymmetric import asymmetric_target
from ..prune.compressors import STORED_BITS, SparsityCompressor
from ..prune.sparsegpt import sparsegpt_solve
from ..prune.sparsity import Sparsity
from .hessians import SHRINK_RULES, ClusterHessianStat, shrunk_hessians
from .module import SparseExpertLinear
from .router import Router, default_pca_dim


@dataclass(frozen=True)
class ExpandConfig(AllocationFields):
    """Sparse Expansion: `experts` SparseGPT experts per linear, each at `sparsity`, behind a router.

    The allocation fields (`layer_alloc`, `row_alloc`, ...) apply to every expert alike: all experts
    of a linear get the linear's zero count and, with a row rule, the same row quotas, scored on the
    router's token sample.
    """

    experts: int
    sparsity: Sparsity
    pca_dim: int | None = None  # default: in_features // 32, at least 8
    bits: int | None = None  # fused GPTQ-style quantization; 4 and 8 are stored as codes (kernels/formats.py)
    group_size: int | None = None  # quantization grid per row (None) or per row and this many columns
    grid: str = "minmax"  # how each grid is placed: its min/max range, or "mse" (clipped: formats.fit_grid)
    seed: int = 0
    n_init: int = 10
    # Cluster Hessian H_c -> (1 - lam_c) H_c + lam_c H (H: the layer's): `shrink` picks lam_c.
    #   prior: lam = R d / (n_c + R d), the layer's Hessian as a prior worth R d tokens (R = blend_below;
    #          the default: best in and out of domain at 4 and 16 experts, BENCHMARKS issue 13);
    #   blend: lam = 1 - n_c / (R d) below R d tokens, else 0 (the first rule);
    #   lw:    Ledoit-Wolf's estimate of the shrinkage that minimises the expected squared error of
    #          H_c, from each cluster's own spread (no parameter); none: lam = 0.
    shrink: str = "prior"
    blend_below: float = 1.0  # R above: a multiple of in_features
    router_tokens: int = 32768  # the router is fit on at most this many tokens per layer (seeded)
    balance: float = 0.0  # >= 1: cluster sizes within [n/(k b), b n/k] on the router's sample; 0 = plain k-means
    blocksize: int = 128
    percdamp: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shrink not in SHRINK_RULES:
            raise UsageError(f"unknown shrink rule '{self.shrink}'; choose from {', '.join(SHRINK_RULES)}")
        if self.router_tokens < self.experts:
            raise UsageError(f"router_tokens {self.router_tokens} is fewer than the {self.experts} experts")
        if self.balance and self.balance < 1:
            raise UsageError(f"balance {self.balance:g} must be 0 (off) or at least 1")


def budget_sparsity(budget: float, experts: int) -> float:
    """Per-expert sparsity at which k experts together store `budget` x one dense layer's weights."""
    sparsity = 1.0 - budget / experts
    if not budget > 0 or not 0.0 <= sparsity < 1.0:
        raise UsageError(f"--memory-budget {budget:g} with {experts} experts gives sparsity {sparsity:g}; "
                         f"choose a budget in (0, {experts}]")
    return sparsity


@dataclass
class _GroupState:
    """What one input group holds during a layer: the batches seen before its router is fit (at
    most `router_tokens` plus one batch), then the router and the cluster statistic."""

    buffer: list[torch.Tensor] = field(default_factory=list)
    references: list[torch.Tensor] = field(default_factory=list)  # the buffer's dense inputs (asymmetric)
    buffered: int = 0
    router: Router | None = None
    sample_size: int = 0
    stat: ClusterHessianStat | None = None
    row_sample: torch.Tensor | None = None  # for row allocation by wd / variance


class ExpandCompressor(SparsityCompressor):
    """Replaces each target linear by a SparseExpertLinear (k SparseGPT experts + a router)."""

    def __init__(self, config: ExpandConfig) -> None:
        if config.experts < 1:
            raise ValueError("need at least one expert")
        super().__init__(config, seed=config.seed)
        self.times.update(clustering=0.0, hessians=0.0, solves=0.0)

    def check_calibration(self, tokens: int) -> None:
        """k-means needs at least one token per expert."""
        if self.config.experts > tokens:
            raise UsageError(f"{self.config.experts} experts need at least {self.config.experts} calibration "
                             f"tokens per layer, the calibration set has {tokens}; lower --experts or raise "
                             "--calib-windows")

    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        super().start_layer(index, layer, groups)
        self.state: dict[tuple[str, ...], _GroupState] = {g: _GroupState() for g in groups}

    def observe(self, group: tuple[str, ...], inputs: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        """A batch of the group's inputs (and, under asymmetric calibration, the dense model's for the same tokens:
        each expert then aims at the dense outputs, prune/asymmetric.py)."""
        state = self.state[group]
        x = inputs.float()
        if state.router is not None:
            self._accumulate(state, x, reference)
            return
        state.buffer.append(x)
        if reference is not None:
            state.references.append(reference)
        state.buffered += x.shape[0]
        if state.buffered >= self.config.router_tokens:
            self._fit_router(group, state)

    def state_bytes(self) -> int:
        """Bytes of calibration state held for the current layer (buffers, samples, statistics)."""
        total = 0
        for state in self.state.values():
            total += sum(b.numel() * b.element_size() for b in state.buffer)
            if state.stat is not None:
                total += state.stat.nbytes()
        return total

    def _fit_router(self, group: tuple[str, ...], state: _GroupState) -> None:
        """Fit on a seeded subsample of the buffered tokens, then route and add every buffered batch."""
        s = self.config
        t0 = time.perf_counter()
        gi = self.groups.index(group)
        seed = s.seed + 1000 * self.index + gi
        x = torch.cat(state.buffer) if len(state.buffer) > 1 else state.buffer[0]
        if x.shape[0] > s.router_tokens:
            generator = torch.Generator().manual_seed(seed)
            keep = torch.randperm(x.shape[0], generator=generator)[: s.router_tokens].sort().values
            x = x[keep.to(x.device)]
        d = x.shape[1]
        pca_dim = min(s.pca_dim or default_pca_dim(d), d)
        state.router, _ = Router.fit(x, s.experts, pca_dim, seed=seed, n_init=s.n_init, balance=s.balance)
        state.sample_size = x.shape[0]
        if self.allocator is not None and self.allocator.needs_sample:
            rows = TokenSample(self.allocator.row_tokens, seed)
            rows.add(x)
            state.row_sample = rows.value()
        del x
        self.times["clustering"] += time.perf_counter() - t0
        state.stat = ClusterHessianStat(s.experts, fourth=s.shrink == "lw")
        buffer, state.buffer, state.buffered = state.buffer, [], 0
        references, state.references = state.references or [None] * len(buffer), []
        for batch, reference in zip(buffer, references, strict=True):
            self._accumulate(state, batch, reference)

    def _accumulate(self, state: _GroupState, x: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        t0 = time.perf_counter()
        assert state.router is not None and state.stat is not None
        labels = state.router(x) if self.config.experts > 1 else torch.zeros(x.shape[0], dtype=torch.long,
                                                                              device=x.device)
        state.stat.add(x, labels, reference=reference)
        self.times["hessians"] += time.perf_counter() - t0

    def finish_layer(self) -> dict[str, nn.Module]:
        return self.finish_groups(tuple(group for group in self.groups if group in self.state))

    def finish_groups(self, groups: Groups) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for group in groups:
            state = self._closed(group)
            t0 = time.perf_counter()
            counts = state.stat.counts
            target = None
            if state.stat.has_cross():  # asymmetric: one target for every expert, from the layer's statistics
                target = (state.stat.layer_hessian(), state.stat.layer_cross())
            hessians, lam = shrunk_hessians(state.stat, self.config.shrink, self.config.blend_below)
            state.stat = None  # the per-cluster sums go before the solves
            self.times["hessians"] += time.perf_counter() - t0
            for name in group:
                out[name], solve = self._expand_linear(name, state, hessians, target)
                self._records[f"{self.index}.{name}"] = {**self._linear_record(out[name], state, counts, lam),
                                                         **solve}
        return out

    def _closed(self, group: tuple[str, ...]) -> _GroupState:
        """The group's state with its router fit (a layer seen in fewer than router_tokens tokens
        fits it on what it saw)."""
        state = self.state.pop(group)
        if state.router is None:
            if not state.buffer:
                raise RuntimeError(f"layer {self.index}: no inputs were observed for {group}")
            self._fit_router(group, state)
        assert state.router is not None and state.stat is not None
        return state

    def _expand_linear(self, name: str, state: _GroupState, hessians: torch.Tensor,
                       target: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[SparseExpertLinear, dict[str, Any]]:
        """(the linear's k experts behind the group's router, facts of the solve): each expert solved
        with SparseGPT on its cluster's Hessian (this rank's share under torchrun), from the weight itself or,
        under asymmetric calibration, from the target weight of the layer's statistics (H, C): the upstream
        errors it works off are the layer's, and a target per cluster, fit on ~1/k of the tokens, overfit (a build
        that did so broke 16 experts of SmolLM2 down on pydoc, the corpus it was not calibrated on)."""
        s = self.config
        module = self.layer.get_submodule(name)
        weight = linear_weight(module).detach().float()
        t0 = time.perf_counter()
        mine = distributed.my_share(s.experts)  # all experts unless run under torchrun
        zeros, rows, allocated = None, None, {}
        if self.allocator is not None:
            rows = self.allocator.row_zeros(self.index, name, weight, state.row_sample)
            count = torch.tensor(self.allocator.linear_zeros(self.index, name))
            zeros = block_counts(count if rows is None else rows, weight.shape[1], s.blocksize)
            allocated = self.allocator.record(self.index, name, rows)
        start = weight if target is None else asymmetric_target(weight, *target, s.percdamp)
        local, info = sparsegpt_solve(start.expand(len(mine), *start.shape), hessians[mine], s.sparsity,
                                      bits=s.bits, group_size=s.group_size, grid=s.grid, blocksize=s.blocksize,
                                      percdamp=s.percdamp, zeros=zeros, zeros_per_row=rows is not None)
        weights = distributed.gather_shares(local, s.experts)
        grid = None
        if s.bits in STORED_BITS:  # the experts' codes on exactly the grid the solve used
            scale, zero = (distributed.gather_shares(t, s.experts) for t in info["grid"])
            grid = (scale, zero, s.bits, s.group_size or weight.shape[1])
        damping = distributed.gather_lists(info["damping"], s.experts)
        self.times["solves"] += time.perf_counter() - t0
        bias = getattr(module, "bias", None)
        replacement = SparseExpertLinear.build(state.router, weights if grid else weights.to(module.weight.dtype),
                                               None if bias is None else bias.detach(), grid=grid)
        return replacement, {"damping": damping, **allocated}

    def _linear_record(self, replacement: SparseExpertLinear, state: _GroupState, counts: list[int],
                       lam: list[float]) -> dict[str, Any]:
        numel = replacement.in_features * replacement.out_features
        expert_sparsity = [1 - n / numel for n in replacement.expert_nonzeros()]
        return {
            "sparsity": sum(expert_sparsity) / len(expert_sparsity),
            "cluster_tokens": counts, "pca_dim": state.router.components.shape[1],
            "router_tokens": state.sample_size,
            "shrink": self.config.shrink, "shrinkage": [round(v, 4) for v in lam],
            "blended_clusters": [c for c, v in enumerate(lam) if v > 0],
            "expert_sparsity": expert_sparsity,
            "router_flops_per_token": state.router.flops_per_token(),
        }
