"""The FPE schedule and the DNF studies: one trained network per (setting, rule, seed).

Schedule (DESIGN.md §5): train the dense parent `warmup` epochs → split it (every rule from
the same parent) → train `post` more epochs. Every network, the dense baseline included,
gets a fresh optimizer at the split point, so the only difference is the split itself; the
dense baseline keeps the parent's width and trains the whole schedule.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from ..metrics.polysemanticity import mean_pairwise_cosine, total_feature_capacity
from . import dnf
from .mlp import MaskedMLP, MLPConfig, TrainConfig, accuracy, count_nonzeros, train_epochs
from .split import clause_collisions, expand

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
    train: TrainConfig,
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
    for rule in ("dense", *rules):
        t0 = time.perf_counter()
        extra: dict = {}
        if rule == "dense":
            net, a = copy.deepcopy(parent), 1
        else:
            net, info = expand(parent, alpha, rule, layers=layers, clauses=clauses, seed=seed)
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


@dataclass(frozen=True)
class DNFConfig:
    """One DNF setting. n=32 inputs, k=3 literals: see BENCHMARKS.md for why."""

    n_inputs: int = 32
    clauses: int = 8
    k: int = 3
    neurons: int = 8
    alpha: int = 2
    n_train: int = 4000
    n_test: int = 4000
    warmup_epochs: int = 30
    post_epochs: int = 60
    lr: float = 6e-3
    batch_size: int = 256


def run_dnf(config: DNFConfig, rules: Sequence[str], seed: int, keep_models: bool = False) -> list[dict]:
    """One seed of one DNF setting: the formula, the data and the init all follow the seed."""
    task = dnf.make_task(config.n_inputs, config.clauses, config.k, seed=1000 + seed)
    data = (*dnf.sample(task, config.n_train, 2000 + seed), *dnf.sample(task, config.n_test, 3000 + seed))
    runs = schedule(
        MLPConfig(config.n_inputs, (config.neurons,), 1),
        data,
        rules,
        config.alpha,
        seed,
        config.warmup_epochs,
        config.post_epochs,
        TrainConfig(lr=config.lr, batch_size=config.batch_size),
        clauses=task.clauses,
        layers=[0],
        keep_models=keep_models,
    )
    for run in runs:
        run.update(clauses=config.clauses, n_inputs=config.n_inputs, k=config.k, config=asdict(config))
    return runs


POINT_RULES = ("random", "clause", "feature", "overlapping", "dense-wide")
SWEEP_RULES = ("random", "clause")


def dnf_study(name: str, base: DNFConfig, rules: Sequence[str] | None = None) -> tuple[list, tuple, str]:
    """(configs, rules, the parameter that varies) for a named study around `base`."""
    if name == "single":
        return [base], tuple(rules or SWEEP_RULES), "clauses"
    if name == "point":
        cfg = replace(base, clauses=8, neurons=8, alpha=2)
        return [cfg], tuple(rules or POINT_RULES), "alpha"
    if name == "alpha":
        cfgs = [replace(base, clauses=8, neurons=8, alpha=a) for a in (2, 4)]
        return cfgs, tuple(rules or ("random", "clause", "overlapping", "dense-wide")), "alpha"
    if name == "clauses":
        cfgs = [replace(base, neurons=8, clauses=m) for m in (4, 8, 16, 32)]
        return cfgs, tuple(rules or SWEEP_RULES), "clauses"
    if name == "neurons":
        cfgs = [replace(base, clauses=8, neurons=h) for h in (4, 8, 16, 32)]
        return cfgs, tuple(rules or SWEEP_RULES), "neurons"
    raise ValueError(f"unknown DNF study {name!r}")


def run_grid(
    configs: Sequence[DNFConfig],
    rules: Sequence[str],
    seeds: Sequence[int],
    progress: Callable | None = None,
    keep_models: bool = False,
) -> list[dict]:
    """Every config × seed."""
    runs = []
    jobs = [(c, s) for c in configs for s in seeds]
    bar = progress(total=len(jobs), desc="DNF runs") if progress else None
    for cfg, seed in jobs:
        runs.extend(run_dnf(cfg, rules, seed, keep_models))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return runs


def gain_vs_load(runs: Sequence[dict]) -> dict:
    """Relative gain of each FPE network over its seed's dense baseline, against the load.

    Load = clauses / parent neurons. The fold changes are FPE / dense of the trained networks'
    feature capacity and mean |cos|. Least squares: gain = b0 + b1·log2(capacity fold)
    + b2·log2(|cos| fold), over every (setting, seed, rule) point.
    """
    import numpy as np

    dense = {(r["clauses"], r["hidden_parent"], r["seed"]): r for r in runs if r["rule"] == "dense"}
    points = []
    for r in runs:
        if r["rule"] == "dense":
            continue
        d = dense[(r["clauses"], r["hidden_parent"], r["seed"])]
        points.append(
            {
                "rule": r["rule"],
                "seed": r["seed"],
                "clauses": r["clauses"],
                "neurons": r["hidden_parent"],
                "load": r["clauses"] / r["hidden_parent"],
                "gain": (r["test_accuracy"] - d["test_accuracy"]) / d["test_accuracy"],
                "capacity_fold": r["after"]["feature_capacity"] / d["after"]["feature_capacity"],
                "cosine_fold": r["after"]["mean_abs_cosine"] / d["after"]["mean_abs_cosine"],
            }
        )
    out: dict = {"points": points}
    if len(points) >= 4:
        y = np.array([p["gain"] for p in points])
        X = np.column_stack(
            [
                np.ones(len(points)),
                [math.log2(p["capacity_fold"]) for p in points],
                [math.log2(p["cosine_fold"]) for p in points],
            ]
        )
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        r2 = 1 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum() or 1.0)
        load = np.array([p["load"] for p in points])
        out["fit"] = {
            "model": "gain = b0 + b1*log2(capacity_fold) + b2*log2(abs_cosine_fold)",
            "b0": float(coef[0]),
            "b1_log2_capacity_fold": float(coef[1]),
            "b2_log2_abs_cosine_fold": float(coef[2]),
            "r2": r2,
            "n_points": len(points),
            "pearson_gain_vs_log2_load": float(np.corrcoef(np.log2(load), y)[0, 1]),
        }
    return out
