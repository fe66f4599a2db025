"""Does Sparse Expansion untangle neurons? Compare each neuron's dense WD with the cluster-weighted
WD of its expert copies.

For neuron j of an expanded projection, expert e computes experts[e][j]·x (+ bias) on the tokens
the router sends to e. Its outputs on that cluster are z-scored within the cluster, their WD to
N(0, 1) taken, and the per-cluster WDs averaged with cluster sizes as weights. The dense neuron
(the source model's weights) sees the very same inputs. A control separates the clustering from
the new weights: the dense weights, z-scored per cluster in the same way ("dense_clustered") -
z-scoring per cluster alone removes the spread between cluster means.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..metrics.wasserstein import mapping_difficulty, wasserstein_to_gaussian
from .collect import projection_outputs
from .measure import top_neurons

MIN_CLUSTER_TOKENS = 8  # smaller clusters give no meaningful distribution; left out of the weights


def is_expanded(module: nn.Module) -> bool:
    return hasattr(module, "experts") and hasattr(module, "router")


@torch.no_grad()
def routed_outputs(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert label per token [tokens], each token's output from its own expert [tokens, out], float64)."""
    labels = module.router(x.to(module.value_dtype)).reshape(-1).cpu()
    experts = module.dense_experts()
    y = torch.empty(x.shape[0], module.out_features, dtype=torch.float64)
    for expert in labels.unique().tolist():
        idx = (labels == expert).nonzero().squeeze(1)
        y[idx] = x[idx].to(torch.float64) @ experts[expert].to(torch.float64).t()
    if module.bias is not None:
        y += module.bias.detach().to(torch.float64)
    return labels, y


def clustered_wd(outputs: torch.Tensor, labels: torch.Tensor, min_tokens: int = MIN_CLUSTER_TOKENS) -> torch.Tensor:
    """Cluster-size-weighted mean of per-cluster WD, per neuron: [tokens, neurons] -> [neurons].

    Clusters with fewer than `min_tokens` tokens, and neurons constant within a cluster (e.g. a
    row pruned to zero), are left out of that neuron's average; no valid cluster at all gives NaN.
    """
    total = torch.zeros(outputs.shape[1], dtype=torch.float64)
    weight = torch.zeros(outputs.shape[1], dtype=torch.float64)
    for cluster in labels.unique().tolist():
        idx = (labels == cluster).nonzero().squeeze(1)
        if idx.numel() < min_tokens:
            continue
        wd = wasserstein_to_gaussian(outputs[idx])
        ok = torch.isfinite(wd)
        total[ok] += idx.numel() * wd[ok]
        weight[ok] += idx.numel()
    return torch.where(weight > 0, total / weight.clamp_min(1), torch.full_like(total, float("nan")))


def untangle_projection(dense: nn.Module, expanded: nn.Module, x: torch.Tensor,
                        pairs: tuple[torch.Tensor, torch.Tensor], top_fraction: float) -> dict[str, Any]:
    """Per-neuron WD and MD of the dense projection and of its experts on the same inputs x [tokens, in]."""
    y_dense = projection_outputs(dense, x)
    labels, y_expert = routed_outputs(expanded, x)
    wd_dense = wasserstein_to_gaussian(y_dense)
    wd_expert = clustered_wd(y_expert, labels)
    wd_control = clustered_wd(y_dense, labels)
    md_dense = mapping_difficulty(x, y_dense, pairs)
    md_expert = mapping_difficulty(x, y_expert, pairs)
    high = top_neurons(wd_dense, top_fraction)
    return {"wd_dense": wd_dense, "wd_expert": wd_expert, "wd_dense_clustered": wd_control,
            "md_dense": md_dense, "md_expert": md_expert, "high": high, "labels": labels,
            "cluster_sizes": torch.bincount(labels, minlength=expanded.num_experts).tolist(),
            "y_dense": y_dense, "y_expert": y_expert}


def _drop_summary(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    ok = torch.isfinite(before) & torch.isfinite(after) & (before > 0)
    if not ok.any():
        return {"fraction_lower": math.nan, "median_relative_drop": math.nan, "neurons": 0}
    drop = (before[ok] - after[ok]) / before[ok]
    return {"fraction_lower": float((after[ok] < before[ok]).double().mean()),
            "median_relative_drop": float(drop.median()), "neurons": int(ok.sum())}


def summarize_untangling(result: dict[str, Any]) -> dict[str, Any]:
    """Fraction of high-WD neurons whose WD drops, median relative drop; all neurons too; MD medians."""
    high = result["high"]
    wd_d, wd_e, wd_c = result["wd_dense"], result["wd_expert"], result["wd_dense_clustered"]
    return {
        "high_wd": _drop_summary(wd_d[high], wd_e[high]),
        "high_wd_control": _drop_summary(wd_d[high], wd_c[high]),
        "all": _drop_summary(wd_d, wd_e),
        "md_dense_median": torch.nanmedian(result["md_dense"]).item(),
        "md_expert_median": torch.nanmedian(result["md_expert"]).item(),
        "md_high_dense_median": torch.nanmedian(result["md_dense"][high]).item(),
        "md_high_expert_median": torch.nanmedian(result["md_expert"][high]).item(),
        "cluster_sizes": result["cluster_sizes"],
    }
