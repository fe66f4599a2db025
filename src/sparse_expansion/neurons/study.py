"""The whole neurons study as one library call: measure, optionally ablate and compare with an
expanded model, then write neurons.json, the PNGs and report.md into a folder."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..arch import decoder_layers, linear_weight
from ..io import write_json
from ..metrics.wasserstein import gaussian_noise_floor, random_pairs
from ..progress import progress_bar
from . import plots
from .collect import iter_layer_inputs, neuron_projections, projection_outputs
from .measure import ProjectionStats, measure_projection, summarize, top_neurons
from .untangle import is_expanded, summarize_untangling, untangle_projection

FIGURE_NEURONS = 6


@dataclass
class StudySettings:
    model: str
    data: str
    windows: int
    seqlen: int
    tokens: int
    pairs: int = 2000
    seed: int = 0
    top_fraction: float = 0.03
    memory_mb: float = 512
    batch_size: int = 4
    layers: list[int] = field(default_factory=list)


def _floats(t: torch.Tensor) -> list[float | None]:
    """JSON-safe list: 6 significant digits, NaN -> null."""
    return [None if not math.isfinite(v) else float(f"{v:.6g}") for v in t.tolist()]


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _row(module: nn.Module, j: int) -> nn.Module:
    """A 1-neuron linear holding row j of `module` (weight and bias), for recomputing one output."""
    weight = linear_weight(module).detach()[j : j + 1]
    single = nn.Linear(weight.shape[1], 1, bias=getattr(module, "bias", None) is not None)
    single.weight.data = weight.clone()
    if single.bias is not None:
        single.bias.data = module.bias.detach()[j : j + 1].clone()
    return single


def measure_model(model: nn.Module, windows: torch.Tensor, settings: StudySettings,
                  pairs: tuple[torch.Tensor, torch.Tensor], progress: bool = True
                  ) -> tuple[dict[int, dict[str, ProjectionStats]], list[dict[str, Any]]]:
    """Stats per layer and projection, plus the outputs of each layer's highest-WD neuron (for a figure)."""
    blocks = decoder_layers(model)
    stats: dict[int, dict[str, ProjectionStats]] = {}
    samples: list[dict[str, Any]] = []
    layers = iter_layer_inputs(model, windows, settings.layers, settings.tokens, seed=settings.seed,
                               batch_size=settings.batch_size, memory_mb=settings.memory_mb, progress=progress)
    for i, x in progress_bar(layers, total=len(settings.layers), desc="measure", unit="layer", disable=not progress):
        stats[i] = {}
        for name in neuron_projections(model):
            module = blocks[i].get_submodule(name)
            st = measure_projection(name, module, x, pairs)
            stats[i][name] = st
            j = int(top_neurons(st.wd, 0.0)[0])
            y = projection_outputs(_row(module, j), x)[:, 0]  # just the one neuron
            samples.append({"layer": i, "module": name, "neuron": j, "wd": float(st.wd[j]), "outputs": y.tolist()})
    samples.sort(key=lambda s: -s["wd"])
    return stats, samples[:FIGURE_NEURONS]


def untangle_model(dense: nn.Module, expanded: nn.Module, windows: torch.Tensor, settings: StudySettings,
                   pairs: tuple[torch.Tensor, torch.Tensor], progress: bool = True) -> dict[str, Any]:
    """Part 4 over every measured layer whose neuron projections were expanded."""
    dense_blocks, exp_blocks = decoder_layers(dense), decoder_layers(expanded)
    layers_out: dict[str, Any] = {}
    pooled = {"wd_dense": [], "wd_expert": [], "wd_dense_clustered": [], "high": [], "md_dense": [], "md_expert": []}
    figure: list[dict[str, Any]] = []
    k = 0
    layers = iter_layer_inputs(expanded, windows, settings.layers, settings.tokens, seed=settings.seed,
                               batch_size=settings.batch_size, memory_mb=settings.memory_mb, progress=progress)
    for i, x in progress_bar(layers, total=len(settings.layers), desc="untangle", unit="layer", disable=not progress):
        entry = {}
        for name in neuron_projections(dense):
            module = exp_blocks[i].get_submodule(name)
            if not is_expanded(module):
                continue
            k = module.num_experts
            result = untangle_projection(dense_blocks[i].get_submodule(name), module, x, pairs,
                                         settings.top_fraction)
            mask = torch.zeros(result["wd_dense"].numel(), dtype=torch.bool)
            mask[result["high"]] = True
            for key in pooled:
                pooled[key].append(mask if key == "high" else result[key])
            entry[name] = {"summary": summarize_untangling(result),
                           "wd_dense": _floats(result["wd_dense"]), "wd_expert": _floats(result["wd_expert"]),
                           "wd_dense_clustered": _floats(result["wd_dense_clustered"]),
                           "high": result["high"].tolist()}
            j = int(result["high"][0])
            figure.append({"layer": i, "module": name, "neuron": j, "wd_dense": float(result["wd_dense"][j]),
                           "wd_expert": float(result["wd_expert"][j]), "dense": result["y_dense"][:, j].tolist(),
                           "expert": result["y_expert"][:, j].tolist(), "labels": result["labels"].tolist()})
        if entry:
            layers_out[str(i)] = entry
    if not layers_out:
        return {}
    cat = {key: torch.cat(v) for key, v in pooled.items()}
    overall = summarize_untangling({**cat, "high": cat["high"].nonzero().squeeze(1), "cluster_sizes": []})
    overall.pop("cluster_sizes")
    figure.sort(key=lambda n: -n["wd_dense"])
    return {"experts": k, "layers": layers_out, "overall": overall, "_figure": figure[:4],
            "_pooled": {key: v.numpy() for key, v in cat.items()}}


def layer_json(stats: dict[str, ProjectionStats], settings: StudySettings, noise: float) -> dict[str, Any]:
    """The per-layer entry of neurons.json: the first projection at the top level, all under 'projections'."""
    projections = {}
    for name, st in stats.items():
        projections[name] = {
            "wd": _floats(st.wd), "md": _floats(st.md), "mean": _floats(st.mean), "variance": _floats(st.variance),
            "norm": _floats(st.norm), "capacity": _floats(st.capacity),
            "top": top_neurons(st.wd, max(settings.top_fraction, 0.1)).tolist(),
            "summary": summarize(st, settings.top_fraction, noise)}
    first = next(iter(stats))
    p = projections[first]
    return {"module": first, "wd": p["wd"], "md": p["md"], "top": p["top"], "summary": p["summary"],
            "projections": projections}


def study_summary(layers: dict[str, Any]) -> dict[str, Any]:
    """Across layers, for the first projection: how concentrated high WD is."""
    rows = [v["summary"] for v in layers.values()]
    ratio = [r["wd_top_mean"] / r["wd_median"] for r in rows if r["wd_median"] > 0]
    return {
        "layers": len(rows),
        "wd_median_over_layers": float(np.median([r["wd_median"] for r in rows])),
        "wd_top_mean_over_layers": float(np.median([r["wd_top_mean"] for r in rows])),
        "top_to_median_ratio_median": float(np.median(ratio)) if ratio else None,
        "top_to_median_ratio_min": float(np.min(ratio)) if ratio else None,
        "wd_max": float(max(r["wd_max"] for r in rows)),
        "spearman_wd_md_median": float(np.nanmedian([r["spearman_wd_md"] for r in rows])),
        "spearman_wd_capacity_median": float(np.nanmedian([r["spearman_wd_capacity"] for r in rows])),
    }


def run_study(model: nn.Module, tokenizer, windows: torch.Tensor, settings: StudySettings, out: Path, *,
              expanded: nn.Module | None = None, source_model: str | None = None,
              ablation: dict[str, Any] | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Measure `model` (the dense one), optionally ablate and untangle; write everything into `out`."""
    from .report import write_report

    times: dict[str, float] = {}
    kept = min(settings.tokens, windows.numel())
    pairs = random_pairs(kept, min(settings.pairs, kept // 2), seed=settings.seed)
    noise = gaussian_noise_floor(kept, seed=settings.seed)
    t0 = time.perf_counter()
    stats, samples = measure_model(model, windows, settings, pairs, progress)
    times["measure"] = time.perf_counter() - t0
    layers = {str(i): layer_json(stats[i], settings, noise) for i in sorted(stats)}
    result: dict[str, Any] = {
        "model": settings.model, "data": settings.data, "windows": int(windows.shape[0]), "seqlen": settings.seqlen,
        "tokens": kept, "pairs": int(pairs[0].numel()), "seed": settings.seed, "top_fraction": settings.top_fraction,
        "noise_floor": noise, "summary": study_summary(layers), "layers": layers}

    first = neuron_projections(model)[0]
    wd = {i: stats[i][first].wd.numpy() for i in stats}
    plots.wd_by_layer(out / "wd_by_layer.png", wd, first, noise, settings.top_fraction, settings.model)
    plots.wd_histograms(out / "wd_histograms.png", wd, first, noise)
    plots.top_neuron_histograms(out / "top_neurons.png", samples)

    if ablation is not None:
        from .ablation import run_ablation

        t0 = time.perf_counter()
        rows = run_ablation(model, stats, ablation["calib"], ablation["eval"], fractions=ablation["fractions"],
                            sparsity=ablation["sparsity"], random_seeds=ablation["random_seeds"],
                            hessians=ablation["hessians"], batch_size=settings.batch_size, progress=progress)
        times["ablation"] = time.perf_counter() - t0
        result["ablation"] = rows
        result["ablation_settings"] = ablation["record"]
        plots.ablation_bars(out / "ablation.png", rows, str(ablation["sparsity"]), settings.model)

    if expanded is not None:
        t0 = time.perf_counter()
        untangling = untangle_model(model, expanded, windows, settings, pairs, progress)
        times["untangle"] = time.perf_counter() - t0
        if untangling:
            figure, pooled = untangling.pop("_figure"), untangling.pop("_pooled")
            plots.untangle_scatter(out / "untangle_scatter.png", pooled["wd_dense"], pooled["wd_expert"],
                                   pooled["high"], untangling["experts"])
            plots.untangle_histograms(out / "untangle_histograms.png", figure)
            untangling["source_model"] = source_model
            result["untangling"] = untangling
    result["seconds"] = times
    result = _clean(result)
    write_json(out / "neurons.json", result)
    write_report(out / "report.md", result)
    return result
