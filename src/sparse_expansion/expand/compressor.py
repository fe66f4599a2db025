"""Sparse Expansion as a compressor of the layer-sequential engine.

Per group of linears sharing an input (gate+up, or down): fit one router on the group's
calibration inputs, build one Hessian per cluster, and solve every expert of every linear with
the foundation's SparseGPT, all k at once (batched). Clusters with fewer tokens than a sound
Hessian needs are blended with the layer's full Hessian, and the record says which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..arch import linear_weight
from ..engine import Groups, LayerCompressor
from ..errors import UsageError
from ..prune.sparsegpt import sparsegpt_solve
from ..prune.sparsity import Sparsity, check_divisible
from ..prune.stats import HessianStat
from .module import SparseExpertLinear
from .router import Router, default_pca_dim


@dataclass(frozen=True)
class ExpandConfig:
    """Sparse Expansion: `experts` SparseGPT experts per linear, each at `sparsity`, behind a router."""

    experts: int
    sparsity: Sparsity
    pca_dim: int | None = None  # default: in_features // 32, at least 8
    bits: int | None = None
    seed: int = 0
    n_init: int = 10
    blend_below: float = 1.0  # clusters with fewer than this x in_features tokens get the full Hessian mixed in
    blocksize: int = 128
    percdamp: float = 0.01


def budget_sparsity(budget: float, experts: int) -> float:
    """Per-expert sparsity at which k experts together store `budget` x one dense layer's weights."""
    sparsity = 1.0 - budget / experts
    if not budget > 0 or not 0.0 <= sparsity < 1.0:
        raise UsageError(f"--memory-budget {budget:g} with {experts} experts gives sparsity {sparsity:g}; "
                         f"choose a budget in (0, {experts}]")
    return sparsity


def cluster_hessians(batches: list[torch.Tensor], labels: list[torch.Tensor], k: int) -> tuple[torch.Tensor, list[int]]:
    """H_c = 2/n_c sum over cluster c's tokens of x x^T, accumulated batch by batch exactly as the
    plain SparseGPT statistic is (so one cluster reproduces it bit for bit). Empty -> zeros."""
    stats = [HessianStat() for _ in range(k)]
    for x, lab in zip(batches, labels):
        for c in range(k):
            rows = (lab == c).nonzero().squeeze(1)
            if rows.numel():
                stats[c].add(x if rows.numel() == x.shape[0] else x[rows])
    d = batches[0].shape[1]
    out = torch.zeros(k, d, d, dtype=torch.float32, device=batches[0].device)
    for c, stat in enumerate(stats):
        if stat.count:
            out[c] = stat.value()
    return out, [s.count for s in stats]


def blend_small_clusters(hessians: torch.Tensor, counts: list[int], full: torch.Tensor,
                         min_tokens: int) -> list[int]:
    """Mix the full-layer Hessian into clusters with fewer than min_tokens tokens, in proportion
    to what they lack: H_c <- (n_c H_c + (m - n_c) H) / m. Returns the blended cluster indices."""
    blended = []
    for c, n in enumerate(counts):
        if n < min_tokens:
            w = n / min_tokens
            hessians[c] = w * hessians[c] + (1 - w) * full
            blended.append(c)
    return blended


class ExpandCompressor(LayerCompressor):
    """Replaces each target linear by a SparseExpertLinear (k SparseGPT experts + a router)."""

    def __init__(self, config: ExpandConfig) -> None:
        if config.experts < 1:
            raise ValueError("need at least one expert")
        self.config = config
        self._records: dict[str, dict[str, Any]] = {}
        self.times = {"clustering": 0.0, "hessians": 0.0, "solves": 0.0}

    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        self.index, self.layer, self.groups = index, layer, groups
        for group in groups:
            for name in group:
                check_divisible(linear_weight(layer.get_submodule(name)).shape[1], self.config.sparsity,
                                f"layer {index} {name}")
        self.inputs: dict[tuple[str, ...], list[torch.Tensor]] = {g: [] for g in groups}

    def observe(self, group: tuple[str, ...], inputs: torch.Tensor) -> None:
        self.inputs[group].append(inputs.float())

    def finish_layer(self) -> dict[str, nn.Module]:
        s = self.config
        out: dict[str, nn.Module] = {}
        for gi, group in enumerate(self.groups):
            batches = self.inputs.pop(group)
            d = batches[0].shape[1]
            pca_dim = min(s.pca_dim or default_pca_dim(d), d)
            t0 = time.perf_counter()
            # One pass for sum x x^T over all tokens: the PCA's covariance and the blending Hessian.
            total = HessianStat()
            for b in batches:
                total.add(b)
            self.times["hessians"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            x = torch.cat(batches)
            router, labels = Router.fit(x, s.experts, pca_dim, seed=s.seed + 1000 * self.index + gi,
                                        n_init=s.n_init, second_moment=total.total)
            self.times["clustering"] += time.perf_counter() - t0
            del x

            t0 = time.perf_counter()
            per_batch = list(torch.split(labels, [b.shape[0] for b in batches]))
            hessians, counts = cluster_hessians(batches, per_batch, s.experts)
            min_tokens = round(s.blend_below * d)
            blended: list[int] = []
            if s.experts > 1 and any(n < min_tokens for n in counts):
                blended = blend_small_clusters(hessians, counts, total.value(), min_tokens)
            self.times["hessians"] += time.perf_counter() - t0
            del batches, total

            for name in group:
                module = self.layer.get_submodule(name)
                weight = linear_weight(module).detach().float()
                t0 = time.perf_counter()
                mine = distributed.my_share(s.experts)  # all experts unless run under torchrun
                local, info = sparsegpt_solve(weight.expand(len(mine), *weight.shape), hessians[mine], s.sparsity,
                                              bits=s.bits, blocksize=s.blocksize, percdamp=s.percdamp)
                experts = distributed.gather_shares(local, s.experts)
                damping = distributed.gather_lists(info["damping"], s.experts)
                self.times["solves"] += time.perf_counter() - t0
                bias = getattr(module, "bias", None)
                replacement = SparseExpertLinear.build(router, experts.to(module.weight.dtype),
                                                       None if bias is None else bias.detach())
                out[name] = replacement
                nnz = replacement.expert_nonzeros()
                numel = weight.numel()
                expert_sparsity = [1 - n / numel for n in nnz]
                self._records[f"{self.index}.{name}"] = {
                    "sparsity": sum(expert_sparsity) / len(expert_sparsity),
                    "cluster_tokens": counts, "blended_clusters": blended, "pca_dim": pca_dim,
                    "expert_sparsity": expert_sparsity,
                    "router_flops_per_token": router.flops_per_token(),
                    "damping": damping,
                }
        return out

    def record(self) -> dict[str, Any]:
        return dict(self._records)
