"""What a Recording says: neuron usage, the token × neuron gating matrix, tokens with similar
gating patterns (with their text), and co-activation of neurons."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .record import Recording


def usage_stats(rec: Recording) -> list[dict[str, float]]:
    """Per layer: fraction of (channel, neuron) ever picked; usage entropy / log N (1 = uniform)."""
    out = []
    n_layers, _, n_channels, _ = rec.indices.shape
    for layer in range(n_layers):
        used, ent = [], []
        for c in range(n_channels):
            counts = np.bincount(rec.indices[layer, :, c].ravel(), minlength=rec.n_neurons)
            p = counts / counts.sum()
            nz = p[p > 0]
            used.append((counts > 0).mean())
            ent.append(float(-(nz * np.log(nz)).sum() / math.log(rec.n_neurons)))
        out.append({"layer": layer, "fraction_used": float(np.mean(used)),
                    "min_fraction_used": float(np.min(used)),
                    "normalized_entropy": float(np.mean(ent)),
                    "mean_score": float(rec.scores[layer].mean()),
                    "fraction_negative_scores": float((rec.scores[layer] < 0).mean())})
    return out


def gating_matrix(rec: Recording, layers: list[int] | None = None) -> Any:
    """Sparse token × (layer, channel, neuron) matrix of raw gate scores (scipy CSR)."""
    from scipy.sparse import csr_matrix

    n_layers, n, n_channels, k = rec.indices.shape
    layers = list(range(n_layers)) if layers is None else layers
    cols, vals = [], []
    for li, layer in enumerate(layers):
        offset = (li * n_channels + np.arange(n_channels)[None, :, None]) * rec.n_neurons
        cols.append((rec.indices[layer] + offset).reshape(n, -1))
        vals.append(rec.scores[layer].reshape(n, -1))
    col = np.concatenate(cols, axis=1)
    val = np.concatenate(vals, axis=1)
    rows = np.repeat(np.arange(n), col.shape[1])
    return csr_matrix((val.ravel(), (rows, col.ravel())),
                      shape=(n, len(layers) * n_channels * rec.n_neurons))


def context_text(tokenizer, tokens: np.ndarray, i: int, window: int, before: int = 10,
                 after: int = 2) -> str:
    """The text around token i, the token itself in [[ ]]; never crosses its window."""
    start = max((i // window) * window, i - before)
    end = min((i // window + 1) * window, i + 1 + after)
    left = tokenizer.decode(tokens[start:i].tolist())
    mid = tokenizer.decode([int(tokens[i])])
    right = tokenizer.decode(tokens[i + 1:end].tolist())
    return f"{left}[[{mid}]]{right}".replace("\n", " ⏎ ")


def nearest_contexts(rec: Recording, tokenizer, queries: list[int], top: int = 5
                     ) -> list[dict[str, Any]]:
    """For each query token, the tokens (in other windows) whose gating pattern over all layers
    has the highest cosine similarity."""
    g = gating_matrix(rec)
    norms = np.sqrt(np.asarray(g.multiply(g).sum(axis=1)).ravel()) + 1e-12
    out = []
    for q in queries:
        sims = (g @ g[q].T).toarray().ravel() / (norms * norms[q])
        w = q // rec.window  # neighbours from other windows only: no trivially shared context
        sims[w * rec.window:(w + 1) * rec.window] = -np.inf
        best = np.argsort(-sims)[:top]
        out.append({
            "query": q, "text": context_text(tokenizer, rec.tokens, q, rec.window),
            "neighbours": [{"token": int(j), "cosine": float(sims[j]),
                            "text": context_text(tokenizer, rec.tokens, int(j), rec.window)}
                           for j in best],
        })
    return out


def pick_queries(rec: Recording, tokenizer, n: int = 6) -> list[int]:
    """Evenly spaced tokens that are whole alphabetic words of 4+ letters (readable examples)."""
    picks = []
    for i in np.linspace(20, len(rec.tokens) - 20, 40 * n).astype(int):
        text = tokenizer.decode([int(rec.tokens[i])])
        if text.startswith(" ") and text.strip().isalpha() and len(text.strip()) >= 4:
            if all(abs(i - p) > 200 for p in picks):
                picks.append(int(i))
        if len(picks) == n:
            break
    return picks


def coactivation(rec: Recording, layer: int = 0, channel: int = 0, top: int = 48
                 ) -> tuple[np.ndarray, np.ndarray]:
    """P(j picked | i picked) for the `top` most used neurons of one (layer, channel)."""
    idx = rec.indices[layer, :, channel]  # [n, k]
    counts = np.bincount(idx.ravel(), minlength=rec.n_neurons)
    neurons = np.argsort(-counts)[:top]
    onehot = np.zeros((idx.shape[0], rec.n_neurons), dtype=np.float32)
    np.put_along_axis(onehot, idx, 1.0, axis=1)
    sub = onehot[:, neurons]
    co = sub.T @ sub
    return co / np.maximum(np.diag(co)[:, None], 1), neurons
