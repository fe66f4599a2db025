"""The FPE schedule (docs/METHODS.md, FPE): train a dense parent `warmup` epochs → split it (every rule
from the same parent) → train `post` more epochs.

Every network, the dense baseline included, gets a fresh optimizer at the split point, so the
only difference is the split itself; the dense baseline keeps the parent's width and trains the
whole schedule.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch

from ..metrics.polysemanticity import mean_pairwise_cosine, total_feature_capacity
from .mlp import MaskedMLP, MLPConfig, MLPTrainConfig, accuracy, count_nonzeros, train_epochs
from .rules import DENSE
from .split import clause_collisions, split_and_prune

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_tr, y_tr, x_te, y_te


def polysemanticity(model: MaskedMLP) -> dict:
    """The §3 metrics on the first layer (neurons × inputs)."""
    w = model.layers[0].effective_weight()
    return {
        "feature_capacity": total_feature_capacity(w),
        "mean_abs_cosine": mean_pairwise_cosine(w, absolute=True),
        "mean_cosine": mean_pairwise_cosine(w),
    }


def schedule(
    config: MLPConfig,
    data: Data,
    rules: Sequence[str],
    alpha: int,
    seed: int,
    warmup: int,
    post: int,
    train: MLPTrainConfig,
    clauses: Sequence[Sequence[int]] | None = None,
    layers: Sequence[int] | None = None,
    keep_models: bool = False,
) -> list[dict]:
    """Warm up one dense parent, then train the dense baseline and one FPE network per rule.

    `keep_models` puts each trained network under the run's "_model" key (for saving).
    """
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    parent = MaskedMLP(config)
    t0 = time.perf_counter()
    train_epochs(parent, x_tr, y_tr, warmup, train, torch.Generator().manual_seed(seed))
    warm_seconds = time.perf_counter() - t0
    common = {
        "seed": seed,
        "depth": len(config.hidden),
        "hidden_parent": config.hidden[0],
        "warmup_test_accuracy": accuracy(parent, x_te, y_te),
        "before": polysemanticity(parent),
    }
    runs = []
    for rule in (DENSE, *rules):
        t0 = time.perf_counter()
        extra: dict = {}
        if rule == DENSE:
            net, a = copy.deepcopy(parent), 1
        else:
            net, info = split_and_prune(parent, alpha, rule, layers=layers, clauses=clauses, seed=seed)
            a = alpha
            extra["at_split_test_accuracy"] = accuracy(net, x_te, y_te)
            extra["pruned_at_split"] = info.pruned
            if clauses:
                extra["collisions_at_split"] = clause_collisions(net.layers[0].mask, clauses)
        train_epochs(net, x_tr, y_tr, post, train, torch.Generator().manual_seed(10_000 + seed))
        run = {
            "rule": rule,
            "alpha": a,
            "hidden": net.config.hidden[0],
            "test_accuracy": accuracy(net, x_te, y_te),
            "train_accuracy": accuracy(net, x_tr, y_tr),
            "nonzeros": count_nonzeros(net),
            "after": polysemanticity(net),
            "seconds": warm_seconds + time.perf_counter() - t0,
            **common,
            **extra,
        }
        if clauses:
            run["collisions"] = clause_collisions(net.layers[0].effective_weight(), clauses)
        if keep_models:
            run["_model"] = net
        runs.append(run)
    return runs
