"""PNG figures for the neurons report, each readable on its own (titles, axis labels, legends)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RULE_COLORS = {"wd": "#c0392b", "random": "#7f8c8d", "mean": "#2980b9", "variance": "#27ae60", "norm": "#8e44ad"}


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def wd_by_layer(path: Path, wd: dict[int, np.ndarray], module: str, noise_floor: float, top_fraction: float,
                model: str) -> None:
    """Violin of WD over neurons for every layer, with the top-fraction threshold and the noise floor."""
    layers = sorted(wd)
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(layers) + 2), 4.5))
    data = [wd[i][np.isfinite(wd[i])] for i in layers]
    parts = ax.violinplot(data, positions=range(len(layers)), showmedians=True, widths=0.8)
    for body in parts["bodies"]:
        body.set_alpha(0.5)
    thresholds = [np.quantile(d, 1 - top_fraction) for d in data]
    ax.plot(range(len(layers)), thresholds, "r_", markersize=12, mew=2,
            label=f"top {top_fraction:.0%} threshold")
    ax.axhline(noise_floor, color="k", ls=":", label=f"normal-sample floor ({noise_floor:.3f})")
    ax.set_xticks(range(len(layers)), [str(i) for i in layers])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("WD to N(0,1) of z-scored outputs")
    ax.set_title(f"{model}: Wasserstein distance of every {module} neuron, per layer")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wd_histograms(path: Path, wd: dict[int, np.ndarray], module: str, noise_floor: float) -> None:
    """One small histogram of neuron WDs per layer (log counts), the same x range for all."""
    layers = sorted(wd)
    cols = min(6, len(layers))
    rows = math.ceil(len(layers) / cols)
    hi = max(float(np.nanmax(wd[i])) for i in layers)
    bins = np.linspace(0, hi * 1.02, 40)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.9 * rows), squeeze=False, sharex=True)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    for ax, i in zip(axes.flat, layers):
        ax.hist(wd[i][np.isfinite(wd[i])], bins=bins, color="#34495e")
        ax.axvline(noise_floor, color="r", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"layer {i}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"WD over {module} neurons (x: WD, y: neurons, log; red: normal-sample floor)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def top_neuron_histograms(path: Path, neurons: list[dict[str, Any]]) -> None:
    """z-scored output histograms of the highest-WD neurons against the N(0,1) density."""
    cols = min(3, len(neurons))
    rows = math.ceil(len(neurons) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(neurons):]:
        ax.axis("off")
    grid = np.linspace(-4, 4, 200)
    for ax, n in zip(axes.flat, neurons):
        y = np.asarray(n["outputs"], dtype=float)
        z = (y - y.mean()) / (y.std() or 1.0)
        ax.hist(z, bins=60, density=True, color="#c0392b", alpha=0.7, label="z-scored outputs")
        ax.plot(grid, _normal_pdf(grid), "k", lw=1.2, label="N(0,1)")
        ax.set_title(f"layer {n['layer']} {n['module']} #{n['neuron']}  WD {n['wd']:.3f}", fontsize=9)
        ax.set_xlabel("z-scored pre-activation")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Highest-WD neurons: output distribution vs a Gaussian", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ablation_bars(path: Path, rows: list[dict[str, Any]], sparsity: str, model: str) -> None:
    """Perplexity per selection rule and fraction; random = mean over seeds with min-max bars."""
    dense = next(r["perplexity"] for r in rows if r["rule"] == "dense")
    fractions = sorted({r["fraction"] for r in rows if r["rule"] != "dense"})
    rules = [r for r in ("wd", "random", "mean", "variance", "norm") if any(x["rule"] == r for x in rows)]
    width = 0.8 / len(rules)
    fig, ax = plt.subplots(figsize=(2.2 * len(fractions) + 3, 4.5))
    for k, rule in enumerate(rules):
        means, lows, highs = [], [], []
        for f in fractions:
            vals = [r["perplexity"] for r in rows if r["rule"] == rule and r["fraction"] == f]
            means.append(np.mean(vals))
            lows.append(np.mean(vals) - min(vals))
            highs.append(max(vals) - np.mean(vals))
        xs = np.arange(len(fractions)) + (k - (len(rules) - 1) / 2) * width
        label = "random (mean, min-max over seeds)" if rule == "random" else f"highest {rule}"
        ax.bar(xs, means, width, color=RULE_COLORS[rule], label=label,
               yerr=[lows, highs] if rule == "random" else None, capsize=3)
    ax.axhline(dense, color="k", ls="--", label=f"dense ({dense:.2f})")
    ax.set_xticks(range(len(fractions)), [f"{f:.0%} of neurons" for f in fractions])
    ax.set_ylabel("perplexity (lower is better)")
    lo = min(r["perplexity"] for r in rows)
    ax.set_ylim(bottom=lo * 0.95)
    ax.set_title(f"{model}: SparseGPT at sparsity {sparsity}\non only the chosen neurons' rows, in every layer",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def untangle_scatter(path: Path, dense: np.ndarray, expert: np.ndarray, high: np.ndarray, k: int) -> None:
    """Each neuron's dense WD (x) against the cluster-weighted WD of its experts (y)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ok = np.isfinite(dense) & np.isfinite(expert)
    ax.scatter(dense[ok & ~high], expert[ok & ~high], s=2, c="#95a5a6", alpha=0.4, label="all neurons")
    ax.scatter(dense[ok & high], expert[ok & high], s=6, c="#c0392b", label="high-WD neurons")
    hi = float(max(np.nanmax(dense), np.nanmax(expert)))
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="no change")
    ax.set_xlabel("dense WD")
    ax.set_ylabel(f"cluster-weighted WD of its {k} experts")
    ax.set_title("Below the diagonal: expansion lowered the neuron's WD")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def untangle_histograms(path: Path, neurons: list[dict[str, Any]]) -> None:
    """Per neuron: the dense output histogram beside its experts' histograms (each on its cluster)."""
    fig, axes = plt.subplots(len(neurons), 2, figsize=(10, 2.8 * len(neurons)), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for row, n in zip(axes, neurons):
        dense = np.asarray(n["dense"], dtype=float)
        expert = np.asarray(n["expert"], dtype=float)
        labels = np.asarray(n["labels"])
        lo = min(dense.min(), expert.min())
        hi = max(dense.max(), expert.max())
        bins = np.linspace(lo, hi, 70)
        row[0].hist(dense, bins=bins, color="#34495e")
        row[0].set_title(f"layer {n['layer']} {n['module']} #{n['neuron']}: dense, WD {n['wd_dense']:.3f}",
                         fontsize=9)
        for e in np.unique(labels):
            vals = expert[labels == e]
            if len(vals) >= 8:
                row[1].hist(vals, bins=bins, histtype="step", lw=1.3, color=cmap(int(e) % 20))
        row[1].set_title(f"its experts, each on its own cluster: weighted WD {n['wd_expert']:.3f}", fontsize=9)
        for ax in row:
            ax.set_xlim(lo, hi)
            ax.set_xlabel("pre-activation output")
            ax.set_ylabel("tokens")
    fig.suptitle("High-WD neurons before and after Sparse Expansion (same x axis)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
