"""The look's pictures: neuron usage per layer, the gating matrix of one (layer, channel), and
co-activation of its most used neurons. Each function writes one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .measure import coactivation
from .record import Recording


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot_usage(rec: Recording, path: Path) -> None:
    """How often each neuron is picked, sorted, per layer (channel-averaged)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for li in range(rec.indices.shape[0]):
        curves = [np.sort(np.bincount(rec.indices[li, :, c].ravel(), minlength=rec.n_neurons))
                  [::-1] for c in range(rec.indices.shape[2])]
        ax.plot(np.mean(curves, axis=0) + 1e-1, label=f"layer {li}")
    ax.set_yscale("log")
    ax.set_xlabel("neuron rank (per channel)")
    ax.set_ylabel("times picked (+0.1)")
    ax.set_title(f"neuron usage over {rec.indices.shape[1]:,} tokens")
    ax.legend()
    _save(fig, path)


def plot_gating_matrix(rec: Recording, path: Path, layer: int, channel: int,
                       tokens: int = 120) -> None:
    """Token × neuron gating matrix of one (layer, channel): the first tokens, the neurons they use."""
    plt = _pyplot()
    n_tok = min(tokens, rec.indices.shape[1])
    idx, sc = rec.indices[layer, :n_tok, channel], rec.scores[layer, :n_tok, channel]
    neurons = np.unique(idx)
    col = {n: j for j, n in enumerate(neurons)}
    mat = np.full((n_tok, len(neurons)), np.nan)
    for t in range(n_tok):
        for n, s in zip(idx[t], sc[t], strict=True):
            mat[t, col[n]] = s
    order = np.argsort(np.nanargmax(np.nan_to_num(np.abs(mat), nan=-1), axis=0), kind="stable")
    fig, ax = plt.subplots(figsize=(10, 6))
    lim = np.nanmax(np.abs(mat))
    im = ax.imshow(mat[:, order], aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim,
                   interpolation="nearest")
    ax.set_xlabel(f"neuron (layer {layer}, channel {channel}; {len(neurons)} used here)")
    ax.set_ylabel("token position")
    ax.set_title("gating matrix: raw router score of each picked neuron (blank = not picked)")
    fig.colorbar(im, ax=ax, label="gate score")
    _save(fig, path)


def plot_coactivation(rec: Recording, path: Path, layer: int, channel: int) -> None:
    """P(column neuron picked | row neuron picked) for the most used neurons."""
    plt = _pyplot()
    co, neurons = coactivation(rec, layer, channel)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(co, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(neurons)))
    ax.set_xticklabels(neurons, rotation=90, fontsize=5)
    ax.set_yticks(range(len(neurons)))
    ax.set_yticklabels(neurons, fontsize=5)
    ax.set_title(f"co-activation P(col | row), layer {layer} channel {channel}, top {len(neurons)}")
    fig.colorbar(im, ax=ax)
    _save(fig, path)


def write_plots(rec: Recording, out: Path, layer: int, channel: int) -> None:
    """usage.png, gating_matrix.png, coactivation.png."""
    plot_usage(rec, out / "usage.png")
    plot_gating_matrix(rec, out / "gating_matrix.png", layer, channel)
    plot_coactivation(rec, out / "coactivation.png", layer, channel)
