"""FPE on real data: classifiers over frozen MiniLM embeddings and sklearn digits.

For each depth (one hidden layer, and a deeper MLP with FPE at every hidden layer) we train
- dense networks at a sweep of widths (the curve of accuracy against non-zeros), and
- FPE networks split from the dense parent at the chosen widths (same schedule, same parent
  as the dense run of that width and seed, hence the same non-zero count).
The non-zero count a dense model needs to match FPE is read off the dense curve (linear
interpolation in log non-zeros between the two widths that bracket FPE's mean accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict

from .embeddings import load_task, train_test_split
from .mlp import MLPConfig, MLPTrainConfig
from .rules import DENSE
from .schedule import schedule
from .studies import RealConfig


def run_real(
    config: RealConfig,
    rules: Sequence[str],
    seeds: Sequence[int],
    progress: Callable | None = None,
    keep_models: bool = False,
) -> list[dict]:
    """Dense width sweep plus FPE runs, for every depth and seed."""
    x, y, classes = load_task(config.task)
    data = train_test_split(x, y, seed=0)
    train = MLPTrainConfig(lr=config.lr, batch_size=config.batch_size)
    jobs = []
    for depth in config.depths:
        fpe = config.fpe_widths if depth == 1 else config.deep_fpe_widths
        for h in sorted(set(config.dense_widths) | set(fpe)):
            jobs.extend((depth, h, seed, tuple(rules) if h in fpe else ()) for seed in seeds)
    bar = progress(total=len(jobs), desc=f"{config.task} runs") if progress else None
    runs = []
    for depth, h, seed, job_rules in jobs:
        mlp = MLPConfig(x.shape[1], (h,) * depth, len(classes))
        trained = schedule(
            mlp,
            data,
            job_rules,
            config.alpha,
            seed,
            config.warmup_epochs,
            config.post_epochs,
            train,
            keep_models=keep_models,
        )
        for run in trained:
            run.update(task=config.task, config=asdict(config))
            runs.append(run)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return runs


def dense_match(runs: Sequence[dict], depth: int, target: float) -> float | None:
    """Non-zeros a dense net of this depth needs to reach `target` mean accuracy (None if never)."""
    curve: dict[int, list] = {}
    for r in runs:
        if r["rule"] == DENSE and r["depth"] == depth:
            curve.setdefault(r["nonzeros"], []).append(r["test_accuracy"])
    pts = sorted((nz, sum(a) / len(a)) for nz, a in curve.items())
    for (n0, a0), (n1, a1) in zip(pts, pts[1:], strict=False):
        if a0 >= target:
            return float(n0)
        if a0 < target <= a1:
            t = (target - a0) / (a1 - a0)
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    if pts and pts[-1][1] >= target:
        return float(pts[-1][0])
    return None
