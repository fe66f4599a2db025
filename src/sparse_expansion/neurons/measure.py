"""Per-layer neuron statistics of a dense model: WD, MD, output mean/spread, weight norm, and the
FPE polysemanticity metrics (feature capacity per neuron, mean |cosine| between neuron weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import linear_weight
from ..metrics.polysemanticity import feature_capacity, mean_pairwise_cosine
from ..metrics.wasserstein import mapping_difficulty, wasserstein_to_gaussian
from .collect import projection_outputs


@dataclass
class ProjectionStats:
    """One neuron projection of one layer; every tensor has one entry per neuron (row)."""

    module: str
    wd: torch.Tensor
    md: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    norm: torch.Tensor
    capacity: torch.Tensor
    mean_abs_cosine: float

    def scores(self) -> dict[str, torch.Tensor]:
        """The per-neuron scores the ablation ranks by (highest first)."""
        return {"wd": self.wd, "mean": self.mean.abs(), "variance": self.variance, "norm": self.norm}


def top_neurons(wd: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ceil(fraction x n) highest-WD neurons, highest first (NaN never ranks)."""
    count = max(1, math.ceil(fraction * wd.numel()))
    return torch.nan_to_num(wd, nan=-math.inf).argsort(descending=True, stable=True)[:count]


def measure_projection(name: str, module: nn.Module, x: torch.Tensor,
                       pairs: tuple[torch.Tensor, torch.Tensor]) -> ProjectionStats:
    """All per-neuron statistics of one projection, from its inputs x [tokens, in]."""
    y = projection_outputs(module, x)
    weight = linear_weight(module).detach()
    return ProjectionStats(
        module=name,
        wd=wasserstein_to_gaussian(y),
        md=mapping_difficulty(x, y, pairs),
        mean=y.mean(0),
        variance=y.var(0, correction=0),
        norm=weight.double().norm(dim=1),
        capacity=feature_capacity(weight.t()).double(),  # columns of W^T are the neurons
        mean_abs_cosine=mean_pairwise_cosine(weight, absolute=True),
    )


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two score vectors (NaNs dropped)."""
    keep = torch.isfinite(a) & torch.isfinite(b)
    if keep.sum() < 3:
        return float("nan")
    ra = a[keep].argsort().argsort().double()
    rb = b[keep].argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def summarize(stats: ProjectionStats, top_fraction: float, noise_floor: float) -> dict:
    """Numbers that describe a layer's WD distribution and how WD relates to the other scores."""
    wd = stats.wd[torch.isfinite(stats.wd)]
    top = top_neurons(stats.wd, top_fraction)
    quantile = torch.quantile(wd, 1 - top_fraction).item() if wd.numel() else float("nan")
    return {
        "wd_mean": wd.mean().item(),
        "wd_median": wd.median().item(),
        "wd_max": wd.max().item(),
        "wd_top_threshold": quantile,
        "wd_top_mean": stats.wd[top].mean().item(),
        "above_3x_noise": float((wd > 3 * noise_floor).double().mean()),
        "md_median": torch.nanmedian(stats.md).item(),
        "md_top_median": torch.nanmedian(stats.md[top]).item(),
        "capacity_mean": stats.capacity.mean().item(),
        "capacity_top_mean": stats.capacity[top].mean().item(),
        "mean_abs_cosine": stats.mean_abs_cosine,
        "spearman_wd_md": spearman(stats.wd, stats.md),
        "spearman_wd_capacity": spearman(stats.wd, stats.capacity),
        "spearman_wd_variance": spearman(stats.wd, stats.variance),
        "spearman_wd_norm": spearman(stats.wd, stats.norm),
    }
