"""Sparse Expansion as a compressor of the layer-sequential engine, on streaming statistics.

Per group of linears sharing an input (gate+up, or down): the router is fit on a seeded subsample
of the group's calibration tokens (`router_tokens`, drawn from the first batches), then every batch
is routed and added to its cluster's Hessian and dropped. What a layer holds is the subsample, one
Hessian per cluster and a few scalars: memory does not grow with the calibration size. The cluster
Hessians are shrunk toward the layer's Hessian (a rule per config), and every expert of every linear
is solved with the foundation's SparseGPT, all k at once (batched).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..arch import linear_weight
from ..engine import Groups, LayerCompressor
from ..errors import UsageError
from ..prune.allocation import TokenSample, block_counts
from ..prune.compressors import STORED_BITS, AllocationFields
from ..prune.sparsegpt import sparsegpt_solve
from ..prune.sparsity import Sparsity, check_divisible
from ..prune.stats import HessianStat
from .module import SparseExpertLinear
from .router import Router, default_pca_dim

SHRINK_RULES = ("blend", "prior", "lw", "none")


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


def cluster_hessians(batches: list[torch.Tensor], labels: list[torch.Tensor], k: int) -> tuple[torch.Tensor, list[int]]:
    """H_c = 2/n_c sum over cluster c's tokens of x x^T for labelled batches (empty -> zeros);
    `ClusterHessianStat` does the same batch by batch."""
    stat = ClusterHessianStat(k)
    for x, lab in zip(batches, labels):
        stat.add(x, lab)
    return stat.hessians(), stat.counts


class ClusterHessianStat:
    """Per cluster: sum of x x^T, token count and sum of |x|^4 (for Ledoit-Wolf), added batch by batch.

    Its size is k Hessians and 2k scalars whatever the number of tokens. Each cluster's sum is
    accumulated exactly as the plain SparseGPT statistic (`HessianStat`) accumulates it, so one
    cluster reproduces SparseGPT's Hessian bit for bit.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.stats = [HessianStat() for _ in range(k)]
        self.fourth = torch.zeros(k, dtype=torch.float64)

    @property
    def counts(self) -> list[int]:
        return [s.count for s in self.stats]

    def add(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        x = x.float()
        counts = torch.bincount(labels, minlength=self.k)
        sq = x.pow(2).sum(1).double()
        self.fourth += torch.zeros(self.k, dtype=torch.float64).index_add_(0, labels.cpu(), sq.cpu().pow(2))
        full = int(counts.argmax())
        if counts[full] == x.shape[0]:  # the whole batch in one cluster (always so for k = 1)
            self.stats[full].add(x)
            return
        order = torch.argsort(labels, stable=True)
        for c, chunk in enumerate(torch.split(x.index_select(0, order), counts.tolist())):
            if chunk.shape[0]:
                self.stats[c].add(chunk)

    def totals(self, d: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """[k, d, d] sums of x x^T (zeros for empty clusters)."""
        out = torch.zeros(self.k, d, d, dtype=torch.float32, device=device)
        for c, stat in enumerate(self.stats):
            if stat.count:
                out[c] = stat.total
        return out

    def hessians(self) -> torch.Tensor:
        d = next(s.total.shape[0] for s in self.stats if s.count)
        out = torch.zeros(self.k, d, d, dtype=torch.float32, device=next(s.total.device for s in self.stats if s.count))
        for c, stat in enumerate(self.stats):
            if stat.count:
                out[c] = stat.value()
        return out

    def nbytes(self) -> int:
        return sum(s.total.numel() * s.total.element_size() for s in self.stats if s.total is not None) + \
            self.fourth.numel() * self.fourth.element_size()


def shrinkage(rule: str, counts: list[int], *, min_tokens: float = 0.0, fourth: torch.Tensor | None = None,
              totals: torch.Tensor | None = None) -> list[float]:
    """lam_c for H_c -> (1 - lam_c) H_c + lam_c H, per cluster (1 for an empty cluster).

    `lw` (Ledoit & Wolf 2004, with the layer's matrix as the target as in Schaefer & Strimmer
    2005): with S_c = (1/n_c) sum x x^T and S = the layer's, lam_c = min(1, beta_c / delta_c),
    beta_c = (1/n_c) [(1/n_c) sum |x|^4 - |S_c|_F^2] (the summed variance of S_c's entries) and
    delta_c = |S_c - S|_F^2 (how far the cluster's matrix is from the layer's). A small cluster, or one
    that looks like the layer anyway, is pulled in; a large distinct one keeps its own Hessian.
    """
    lam = []
    if rule == "lw":
        assert fourth is not None and totals is not None
        n_all = sum(counts)
        full = totals.sum(0) / n_all
    for c, n in enumerate(counts):
        if n == 0:
            lam.append(1.0)
        elif rule == "none":
            lam.append(0.0)
        elif rule == "blend":
            lam.append(max(0.0, 1.0 - n / min_tokens) if min_tokens > 0 else 0.0)
        elif rule == "prior":
            lam.append(min_tokens / (n + min_tokens))
        elif rule == "lw":
            s_c = totals[c].double() / n
            beta = (float(fourth[c]) / n - float(s_c.pow(2).sum())) / n
            delta = float((s_c - full.double()).pow(2).sum())
            lam.append(1.0 if delta <= 0 else min(1.0, max(0.0, beta / delta)))
        else:
            raise ValueError(f"unknown shrink rule {rule!r}")
    return lam


def blend_small_clusters(hessians: torch.Tensor, counts: list[int], full: torch.Tensor,
                         min_tokens: int) -> list[int]:
    """Mix the full-layer Hessian into clusters with fewer than min_tokens tokens, in proportion
    to what they lack: H_c <- (n_c H_c + (m - n_c) H) / m. Returns the blended cluster indices."""
    lam = shrinkage("blend", counts, min_tokens=min_tokens)
    apply_shrinkage(hessians, full, lam)
    return [c for c, v in enumerate(lam) if v > 0]


def apply_shrinkage(hessians: torch.Tensor, full: torch.Tensor, lam: list[float]) -> None:
    """In place: H_c <- (1 - lam_c) H_c + lam_c H for every lam_c > 0."""
    for c, v in enumerate(lam):
        if v >= 1.0:
            hessians[c] = full
        elif v > 0:
            hessians[c] = (1.0 - v) * hessians[c] + v * full


@dataclass
class _GroupState:
    """What one input group holds during a layer: the batches seen before its router is fit (at
    most `router_tokens` plus one batch), then the router and the cluster statistic."""

    buffer: list[torch.Tensor] = field(default_factory=list)
    buffered: int = 0
    router: Router | None = None
    sample_size: int = 0
    stat: ClusterHessianStat | None = None
    row_sample: torch.Tensor | None = None  # for row allocation by wd / variance


class ExpandCompressor(LayerCompressor):
    """Replaces each target linear by a SparseExpertLinear (k SparseGPT experts + a router)."""

    def __init__(self, config: ExpandConfig) -> None:
        if config.experts < 1:
            raise ValueError("need at least one expert")
        self.config = config
        self._records: dict[str, dict[str, Any]] = {}
        self.times = {"clustering": 0.0, "hessians": 0.0, "solves": 0.0}
        self.allocator = config.allocator(config.seed) if config.layer_alloc != "uniform" or \
            config.row_alloc != "uniform" else None

    def prepare(self, model: nn.Module, windows: torch.Tensor | None, *, targets: str = "mlp",
                batch_size: int = 8) -> None:
        """Before the layer-sequential pass: fix every linear's zero count (and OWL's layer sparsities)."""
        if self.allocator is not None:
            start = time.perf_counter()
            self.allocator.prepare(model, windows, targets=targets, batch_size=batch_size)
            self.times["allocation"] = time.perf_counter() - start

    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        self.index, self.layer, self.groups = index, layer, groups
        for group in groups:
            for name in group:
                check_divisible(linear_weight(layer.get_submodule(name)).shape[1], self.config.sparsity,
                                f"layer {index} {name}")
        self.state: dict[tuple[str, ...], _GroupState] = {g: _GroupState() for g in groups}

    def observe(self, group: tuple[str, ...], inputs: torch.Tensor) -> None:
        state = self.state[group]
        x = inputs.float()
        if state.router is not None:
            self._accumulate(state, x)
            return
        state.buffer.append(x)
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
        state.stat = ClusterHessianStat(s.experts)
        buffer, state.buffer, state.buffered = state.buffer, [], 0
        for batch in buffer:
            self._accumulate(state, batch)

    def _accumulate(self, state: _GroupState, x: torch.Tensor) -> None:
        t0 = time.perf_counter()
        assert state.router is not None and state.stat is not None
        labels = state.router(x) if self.config.experts > 1 else torch.zeros(x.shape[0], dtype=torch.long,
                                                                              device=x.device)
        state.stat.add(x, labels)
        self.times["hessians"] += time.perf_counter() - t0

    def finish_layer(self) -> dict[str, nn.Module]:
        s = self.config
        out: dict[str, nn.Module] = {}
        for group in self.groups:
            state = self.state.pop(group)
            if state.router is None:
                if not state.buffer:
                    raise RuntimeError(f"layer {self.index}: no inputs were observed for {group}")
                self._fit_router(group, state)
            router, stat, sample_size, row_sample = state.router, state.stat, state.sample_size, state.row_sample
            assert router is not None and stat is not None
            t0 = time.perf_counter()
            counts = stat.counts
            hessians = stat.hessians()
            d = hessians.shape[-1]
            min_tokens = s.blend_below * d
            lam = [0.0] * s.experts
            if s.experts > 1:
                totals = stat.totals(d, hessians.device) if s.shrink == "lw" else None
                lam = shrinkage(s.shrink, counts, min_tokens=round(min_tokens) if s.shrink == "blend" else min_tokens,
                                fourth=stat.fourth, totals=totals)
                del totals
                if any(v > 0 for v in lam):
                    # The layer's Hessian: every token is in exactly one cluster.
                    full = sum(st.total for st in stat.stats if st.count) * (2.0 / sum(counts))
                    apply_shrinkage(hessians, full, lam)
                    del full
            del stat, state
            self.times["hessians"] += time.perf_counter() - t0

            for name in group:
                module = self.layer.get_submodule(name)
                weight = linear_weight(module).detach().float()
                t0 = time.perf_counter()
                mine = distributed.my_share(s.experts)  # all experts unless run under torchrun
                zeros, rows, allocated = None, None, {}
                if self.allocator is not None:
                    rows = self.allocator.row_zeros(self.index, name, weight, row_sample)
                    count = torch.tensor(self.allocator.linear_zeros(self.index, name))
                    zeros = block_counts(count if rows is None else rows, weight.shape[1], s.blocksize)
                    allocated = self.allocator.record(self.index, name, rows)
                local, info = sparsegpt_solve(weight.expand(len(mine), *weight.shape), hessians[mine], s.sparsity,
                                              bits=s.bits, group_size=s.group_size, blocksize=s.blocksize,
                                              percdamp=s.percdamp, zeros=zeros, zeros_per_row=rows is not None)
                experts = distributed.gather_shares(local, s.experts)
                grid = None
                if s.bits in STORED_BITS:  # the experts' codes on exactly the grid the solve used
                    scale, zero = (distributed.gather_shares(t, s.experts) for t in info["grid"])
                    grid = (scale, zero, s.bits, s.group_size or weight.shape[1])
                damping = distributed.gather_lists(info["damping"], s.experts)
                self.times["solves"] += time.perf_counter() - t0
                bias = getattr(module, "bias", None)
                replacement = SparseExpertLinear.build(router, experts if grid else experts.to(module.weight.dtype),
                                                       None if bias is None else bias.detach(), grid=grid)
                out[name] = replacement
                nnz = replacement.expert_nonzeros()
                numel = weight.numel()
                expert_sparsity = [1 - n / numel for n in nnz]
                self._records[f"{self.index}.{name}"] = {
                    "sparsity": sum(expert_sparsity) / len(expert_sparsity),
                    "cluster_tokens": counts, "pca_dim": router.components.shape[1],
                    "router_tokens": sample_size,
                    "shrink": s.shrink, "shrinkage": [round(v, 4) for v in lam],
                    "blended_clusters": [c for c, v in enumerate(lam) if v > 0],
                    "expert_sparsity": expert_sparsity,
                    "router_flops_per_token": router.flops_per_token(),
                    "damping": damping, **allocated,
                }
        return out

    def record(self) -> dict[str, Any]:
        return dict(self._records)
