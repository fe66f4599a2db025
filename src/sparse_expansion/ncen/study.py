"""One study: every method × seed trained, attacked and measured on one data set."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from . import attacks as atk
from .data import Dataset
from .methods import METHODS
from .training import EnsembleTrainConfig, train_ensemble


@dataclass
class NCEnStudyConfig:
    methods: Sequence[str]
    seeds: Sequence[int]
    train: EnsembleTrainConfig
    eps: Sequence[float]
    headline_eps: float
    attacks: Sequence[str] = ("fgsm", "pgd", "apgd", "pgd_logits")
    steps: int = 20  # PGD and APGD iterations
    weights: dict = field(default_factory=dict)  # method -> its config dataclass instance


def run_one(data: Dataset, cfg: NCEnStudyConfig, method_name: str, seed: int) -> dict:
    """Train one ensemble and measure it: the `runs` entry of results.json."""
    method = METHODS[method_name]
    weights = cfg.weights.get(method_name) or method.config()
    ensemble, record = train_ensemble(method, weights, data, cfg.train, seed)
    t0 = time.perf_counter()
    x, y = data.x_test, data.y_test
    robust = atk.robust_accuracy(ensemble, x, y, list(cfg.attacks), list(cfg.eps), cfg.steps, seed)
    matrix, rate = atk.transfer_matrix(ensemble, x, y, cfg.headline_eps, cfg.steps, seed)
    grads = atk.gradient_stats(ensemble, x, y)
    members_clean = [atk.accuracy(m, x, y) for m in ensemble.members]
    return {
        "method": method_name,
        "seed": seed,
        "clean_accuracy": atk.accuracy(ensemble, x, y),
        "robust_accuracy": robust,
        "transfer_rate": rate,
        "transfer_matrix": matrix,
        "gradient_cosine": grads["gradient_cosine"],
        "gradient_norm_correlation": grads["gradient_norm_correlation"],
        "first_order_transfer": grads["first_order_transfer"],
        "member_clean_accuracy": members_clean,
        "weights": asdict(weights),
        **record,
        "attack_seconds": time.perf_counter() - t0,
    }


def run_study(data: Dataset, cfg: NCEnStudyConfig, progress: Callable | None = None) -> list[dict]:
    jobs = [(m, s) for s in cfg.seeds for m in cfg.methods]
    bar = progress(total=len(jobs), desc=f"ncen {data.name}", unit="run") if progress else None
    runs = []
    for method_name, seed in jobs:
        runs.append(run_one(data, cfg, method_name, seed))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return runs
