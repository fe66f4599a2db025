"""Which neurons matter: sparsify only chosen rows of the neuron projections, measure perplexity.

The paper's ablation: in every layer pick x% of the neurons by a rule (highest WD, at random,
highest |mean| output, highest output variance, highest weight norm), run SparseGPT on exactly
those rows at one sparsity, leave every other weight bit-identical, and compare perplexity. If
WD marks the neurons that matter, the `wd` rule should hurt far more than the others.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
from torch import nn

from ..arch import decoder_layers, linear_weight, set_linear_weight
from ..engine import Groups, LayerCompressor, calibrate
from ..evaluate import perplexity
from ..progress import progress_bar
from ..prune import sparsegpt_solve
from ..prune.sparsity import Sparsity
from ..prune.stats import HessianStat
from ..surgery import StopForward, flat_inputs, hooks, layer_site
from .measure import ProjectionStats

RULES = ("wd", "random", "mean", "variance", "norm")
RowChoice = dict[tuple[int, str], torch.Tensor]  # (layer index, linear name) -> row indices


def select_rows(rule: str, stats: ProjectionStats, fraction: float, seed: int = 0) -> torch.Tensor:
    """ceil(fraction x neurons) row indices by `rule`; `random` is seeded per (rule, seed)."""
    n = stats.wd.numel()
    count = max(1, math.ceil(fraction * n))
    if rule == "random":
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=generator)[:count].sort().values
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {RULES}")
    score = torch.nan_to_num(stats.scores()[rule], nan=-math.inf)
    return score.argsort(descending=True, stable=True)[:count].sort().values


def prune_rows(weight: torch.Tensor, rows: torch.Tensor, hessian: torch.Tensor, sparsity: Sparsity,
               **solve_args: Any) -> torch.Tensor:
    """A copy of weight [out, in] whose `rows` went through SparseGPT with `hessian`; the rest is untouched.

    Rows are independent in SparseGPT (each row's OBS update uses only that row and the shared
    input Hessian), so solving the sub-matrix of chosen rows is exactly SparseGPT restricted to them.
    """
    new = weight.detach().clone()
    if rows.numel():
        new[rows], _ = sparsegpt_solve(weight.detach()[rows], hessian, sparsity, **solve_args)
    return new


class RowPruneCompressor(LayerCompressor):
    """Layer-sequential SparseGPT (through the engine) on the chosen rows of chosen linears only;
    every other row is left bit-identical."""

    def __init__(self, rows: RowChoice, sparsity: Sparsity, *, blocksize: int = 128,
                 percdamp: float = 0.01) -> None:
        self.rows = rows
        self.sparsity = sparsity
        self.blocksize, self.percdamp = blocksize, percdamp
        self._records: dict[str, dict[str, Any]] = {}

    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        self.index, self.layer = index, layer
        self.groups = tuple(g for g in groups if any((index, name) in self.rows for name in g))
        self.stats = {group: HessianStat() for group in self.groups}

    def observe(self, group: tuple[str, ...], inputs: torch.Tensor) -> None:
        if group in self.stats:
            self.stats[group].add(inputs)

    def finish_layer(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for group in self.groups:
            hessian = self.stats[group].value()
            for name in group:
                rows = self.rows.get((self.index, name))
                if rows is None or rows.numel() == 0:
                    continue
                weight = linear_weight(self.layer.get_submodule(name))
                new = prune_rows(weight, rows, hessian, self.sparsity, blocksize=self.blocksize,
                                 percdamp=self.percdamp)
                out[name] = new
                self._records[f"{self.index}.{name}"] = {
                    "rows": rows.numel(), "row_sparsity": float((new[rows] == 0).double().mean())}
        self.stats = {}
        return out

    def record(self) -> dict[str, Any]:
        return dict(self._records)


def choose(stats: dict[int, dict[str, ProjectionStats]], rule: str, fraction: float, seed: int) -> RowChoice:
    """Rows for every measured layer and neuron projection; random rows differ per linear."""
    rows: RowChoice = {}
    for layer, by_name in stats.items():
        for k, (name, st) in enumerate(by_name.items()):
            rows[(layer, name)] = select_rows(rule, st, fraction, seed=seed * 100_003 + layer * 101 + k)
    return rows


@torch.no_grad()
def dense_hessians(model: nn.Module, windows: torch.Tensor, layers: list[int], *, batch_size: int = 4,
                   progress: bool = True) -> dict[int, torch.Tensor]:
    """H = 2/n sum x x^T of each layer's neuron-projection input, from one pass of the unpruned model."""
    from .collect import neuron_projections

    first = neuron_projections(model)[0]
    stats = {i: HessianStat() for i in layers}
    sites = {layer_site(model, i, first): flat_inputs(stats[i].add) for i in layers}
    with hooks(model, sites, stop_after=layer_site(model, max(layers))):
        for start in progress_bar(range(0, windows.shape[0], batch_size), desc="hessians", unit="batch",
                          disable=not progress):
            with contextlib.suppress(StopForward):
                model(windows[start : start + batch_size], use_cache=False)
    return {i: stat.value() for i, stat in stats.items()}


@torch.no_grad()
def run_ablation(model: nn.Module, stats: dict[int, dict[str, ProjectionStats]], calib: torch.Tensor,
                 evaluation: torch.Tensor, *, fractions: list[float], sparsity: Sparsity,
                 random_seeds: int = 3, hessians: str = "dense", batch_size: int = 4,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Perplexity of the dense model and of every (rule, fraction, seed); the model is restored after
    each run. Returns rows {"rule", "fraction", "seed", "perplexity", "rows", "seconds"}.

    hessians="sequential" runs the engine's layer-sequential SparseGPT for every run (each layer's
    Hessian from the already-pruned earlier layers, as SparseGPT does); "dense" computes the
    unpruned model's Hessians once and reuses them (one calibration pass in all instead of one per
    run; with only a few % of rows pruned, later layers' inputs barely move).
    """
    if hessians not in ("dense", "sequential"):
        raise ValueError(f"hessians must be 'dense' or 'sequential', not {hessians!r}")
    layers = decoder_layers(model)
    names = {(i, n) for i, by_name in stats.items() for n in by_name}
    saved = {key: linear_weight(layers[key[0]].get_submodule(key[1])).detach().clone() for key in names}
    start = time.perf_counter()
    cached = dense_hessians(model, calib, sorted(stats), batch_size=batch_size, progress=progress) \
        if hessians == "dense" else None
    dense = perplexity(model, evaluation, batch_size=batch_size, progress=False)["perplexity"]
    results: list[dict[str, Any]] = [{"rule": "dense", "fraction": 0.0, "seed": None, "perplexity": dense,
                                      "rows": 0, "seconds": time.perf_counter() - start}]
    runs = [(rule, f, s) for f in fractions for rule in RULES
            for s in (range(random_seeds) if rule == "random" else [0])]
    bar = progress_bar(runs, desc="ablation", unit="run", disable=not progress)
    for rule, fraction, seed in bar:
        bar.set_postfix_str(f"{rule} {fraction:g} seed {seed}")
        start = time.perf_counter()
        rows = choose(stats, rule, fraction, seed)
        try:
            if cached is None:
                calibrate(model, calib, RowPruneCompressor(rows, sparsity), batch_size=batch_size, progress=False)
            else:
                for (i, name), chosen in rows.items():
                    module = layers[i].get_submodule(name)
                    set_linear_weight(module, prune_rows(linear_weight(module), chosen, cached[i], sparsity))
            ppl = perplexity(model, evaluation, batch_size=batch_size, progress=False)["perplexity"]
        finally:
            for (i, name), weight in saved.items():
                set_linear_weight(layers[i].get_submodule(name), weight)
        results.append({"rule": rule, "fraction": fraction, "seed": seed if rule == "random" else None,
                        "perplexity": ppl, "rows": int(sum(r.numel() for r in rows.values())),
                        "seconds": time.perf_counter() - start})
    return results
