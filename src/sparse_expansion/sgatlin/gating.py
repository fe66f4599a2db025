"""A look inside a trained sgatlin model: which neurons the router picks, for which tokens, and
whether those picks carry facts.

Record (layer, channel, token) -> top-k neurons and raw scores with forward hooks on each
layer's `ffn.router` (a named hook site); usage statistics; the token × neuron gating matrix;
nearest neighbours of gating patterns with their text; a co-activation picture; and one causal
test: patch the router outputs at the subject position with those of a counterfactual prompt and
measure how much of the logit difference at the next token moves.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from .layers import SparselyGatedLinear
from .transformer import Transformer


def routers(model: Transformer) -> list[torch.nn.Module]:
    """The router of every layer, in order; refuses models without sgatlin layers."""
    found = [b.ffn.router for b in model.blocks if isinstance(b.ffn, SparselyGatedLinear)]
    if not found:
        raise UsageError(f"the run's FFN is {model.cfg.ffn!r}; the gating look needs --ffn sgatlin")
    return found


@contextlib.contextmanager
def record_routing(model: Transformer) -> Iterator[list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Collect (scores, indices) [B, T, C, k] per layer for every forward inside the block.

    Hooks are removed on exit, even after an error.
    """
    store: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in routers(model)]
    handles = []
    for i, router in enumerate(routers(model)):
        def hook(_m, _inp, out, i=i):
            store[i].append((out[0].detach(), out[1].detach()))
        handles.append(router.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def patch_routing(model: Transformer, position: int,
                  source: list[tuple[torch.Tensor, torch.Tensor]],
                  layers: list[int] | None = None) -> Iterator[None]:
    """Replace every listed layer's router output at `position` by `source[layer]` there."""
    handles = []
    for i, router in enumerate(routers(model)):
        if layers is not None and i not in layers:
            continue

        def hook(_m, _inp, out, i=i):
            scores, indices = out[0].clone(), out[1].clone()
            scores[:, position] = source[i][0][:, position]
            indices[:, position] = source[i][1][:, position]
            return scores, indices
        handles.append(router.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Recording:
    tokens: np.ndarray  # [n] token ids (windows concatenated)
    window: int  # tokens per window (contexts never cross a window)
    scores: np.ndarray  # [L, n, C, k]
    indices: np.ndarray  # [L, n, C, k]
    n_neurons: int


@torch.no_grad()
def record(model: Transformer, windows: torch.Tensor, batch_size: int = 16) -> Recording:
    """Run the model over windows [W, T]; keep every layer's routing for every token."""
    model.eval()
    with record_routing(model) as store:
        for i in range(0, len(windows), batch_size):
            model(windows[i:i + batch_size])
    scores = np.stack([torch.cat([s for s, _ in layer]).flatten(0, 1).numpy() for layer in store])
    indices = np.stack([torch.cat([j for _, j in layer]).flatten(0, 1).numpy() for layer in store])
    n_neurons = model.blocks[0].ffn.n_neurons
    return Recording(windows.flatten().numpy(), windows.shape[1], scores, indices.astype(np.int32),
                     n_neurons)


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


# ---------------------------------------------------------------- causal test


FUNCTION_WORDS = frozenset(
    "the and for with into unto that this thee thou them they their there shall will from "
    "upon have were what which when then than your you his her him not but all are was".split())


def find_facts(stream: np.ndarray, tokenizer, min_count: int = 25, min_prob: float = 0.6,
               limit: int = 24) -> list[tuple[int, int, float, int]]:
    """(subject, answer, P(answer | subject), count): whole-word bigrams that are near-certain in
    the training stream and whose answer is a content word, e.g. 'unleavened' -> ' bread'.
    These are the 'facts' a small LM can learn."""
    pairs = Counter(zip(stream[:-1].tolist(), stream[1:].tolist(), strict=True))
    firsts = Counter(stream[:-1].tolist())
    facts = []
    for (s, a), count in pairs.most_common():
        if count < min_count:
            break
        ts, ta = tokenizer.decode([s]), tokenizer.decode([a])
        if not (ts.startswith(" ") and ta.startswith(" ") and ts.strip().isalpha()
                and ta.strip().isalpha() and len(ts.strip()) >= 3 and len(ta.strip()) >= 3
                and ta.strip().lower() not in FUNCTION_WORDS):
            continue
        p = count / firsts[s]
        if p >= min_prob:
            facts.append((s, a, p, count))
        if len(facts) == limit:
            break
    return facts


@torch.no_grad()
def causal_patching(model: Transformer, stream: np.ndarray, facts: list[tuple[int, int, float, int]],
                    context: int = 24, per_fact: int = 3, seed: int = 0) -> dict[str, Any]:
    """Clean prompt: real context ending in subject s1 (answer a1). Counterfactual: the same
    context with s1 replaced by s2 (answer a2 != a1). Logit difference LD = logit a1 - logit a2
    at the subject position. Patch the routers there with the counterfactual's routing and report
    the fraction (LD_clean - LD_patched) / (LD_clean - LD_counterfactual): 1 means routing at the
    subject carries the whole fact, 0 none. Control: patch in the routing of the same subject
    taken from another context (should move little if the routing is subject-specific).
    """
    model.eval()
    rng = np.random.default_rng(seed)
    n_layers = len(routers(model))
    prompts = []
    for fi, (s1, a1, _, _) in enumerate(facts):
        others = [f for f in facts if f[1] != a1 and f[0] != s1]
        if not others:
            continue
        where = np.flatnonzero(stream[context:] == s1) + context
        for pos in rng.choice(where, size=min(per_fact, len(where)), replace=False):
            s2, a2 = others[(fi + int(pos)) % len(others)][:2]
            clean = torch.from_numpy(stream[pos - context + 1:pos + 1].astype(np.int64))[None]
            prompts.append((clean, s1, a1, s2, a2))
    rows = []
    last = context - 1
    for pi, (clean, s1, a1, s2, a2) in enumerate(prompts):
        corrupt = clean.clone()
        corrupt[0, last] = s2

        def ld(logits, a1=a1, a2=a2):
            return float(logits[0, last, a1] - logits[0, last, a2])

        with record_routing(model) as cstore:
            ld_corrupt = ld(model(corrupt))
        source = [layer[0] for layer in cstore]
        ld_clean = ld(model(clean))
        with patch_routing(model, last, source):
            ld_all = ld(model(clean))
        per_layer = []
        for layer in range(n_layers):
            with patch_routing(model, last, source, [layer]):
                per_layer.append(ld(model(clean)))
        # control: the routing of the same subject in another context. If the fact rides on
        # subject-specific routing this moves ~nothing; if any routing change breaks the
        # prediction it moves as much as the counterfactual does.
        sibling = next((p[0] for pj, p in enumerate(prompts) if pj != pi and p[1] == s1), None)
        ld_control = None
        if sibling is not None:
            with record_routing(model) as sstore:
                model(sibling)
            with patch_routing(model, last, [layer[0] for layer in sstore]):
                ld_control = ld(model(clean))
        rows.append({"subject": s1, "answer": a1, "cf_subject": s2, "cf_answer": a2,
                     "ld_clean": ld_clean, "ld_counterfactual": ld_corrupt,
                     "ld_patched": ld_all, "ld_patched_per_layer": per_layer,
                     "ld_control": ld_control, "prompt": clean[0].tolist()})
    known = [r for r in rows if r["ld_clean"] > 0 and r["ld_counterfactual"] < 0]

    def frac(r, key):
        return (r["ld_clean"] - r[key]) / (r["ld_clean"] - r["ld_counterfactual"])

    summary: dict[str, Any] = {"prompts": len(rows), "known": len(known)}
    # A softer, pooled measure over every prompt where swapping the subject moves LD by > 0.5:
    # Σ(LD_clean - LD_patched) / Σ(LD_clean - LD_counterfactual).
    moved = [r for r in rows if r["ld_clean"] - r["ld_counterfactual"] > 0.5]
    summary["effect_prompts"] = len(moved)
    if moved:
        denom = sum(r["ld_clean"] - r["ld_counterfactual"] for r in moved)
        summary["pooled_fraction_moved"] = sum(r["ld_clean"] - r["ld_patched"]
                                               for r in moved) / denom
        ctrl = [r for r in moved if r["ld_control"] is not None]
        summary["pooled_fraction_moved_control"] = (
            sum(r["ld_clean"] - r["ld_control"] for r in ctrl)
            / sum(r["ld_clean"] - r["ld_counterfactual"] for r in ctrl) if ctrl else None)
        summary["mean_ld_shift_from_subject_swap"] = denom / len(moved)
    if known:
        summary["fraction_moved_all_layers"] = float(np.mean([frac(r, "ld_patched") for r in known]))
        summary["fraction_moved_per_layer"] = [
            float(np.mean([(r["ld_clean"] - r["ld_patched_per_layer"][i])
                           / (r["ld_clean"] - r["ld_counterfactual"]) for r in known]))
            for i in range(n_layers)]
        ctrl = [frac(r, "ld_control") for r in known if r["ld_control"] is not None]
        summary["fraction_moved_control"] = float(np.mean(ctrl)) if ctrl else None
        summary["fraction_flipped"] = float(np.mean([r["ld_patched"] < 0 for r in known]))
    return {"summary": summary, "rows": rows}


# ---------------------------------------------------------------- the whole look, as files


def _plots(rec: Recording, out: Path, layer: int, channel: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # usage: how often each neuron is picked, sorted, per layer (channel-averaged)
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
    fig.tight_layout()
    fig.savefig(out / "usage.png", dpi=120)
    plt.close(fig)

    # token × neuron gating matrix for one (layer, channel): first 120 tokens, neurons they use
    n_tok = min(120, rec.indices.shape[1])
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
    fig.tight_layout()
    fig.savefig(out / "gating_matrix.png", dpi=120)
    plt.close(fig)

    co, neurons = coactivation(rec, layer, channel)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(co, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(neurons)))
    ax.set_xticklabels(neurons, rotation=90, fontsize=5)
    ax.set_yticks(range(len(neurons)))
    ax.set_yticklabels(neurons, fontsize=5)
    ax.set_title(f"co-activation P(col | row), layer {layer} channel {channel}, top {len(neurons)}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "coactivation.png", dpi=120)
    plt.close(fig)


def look_inside(run_dir: str | Path, data: str, out: Path, max_tokens: int = 16384,
                layer: int = 0, channel: int = 0, seed: int = 0) -> dict[str, Any]:
    """Write gating.safetensors, usage.json, neighbours.json, causal.json, PNGs and report.md."""
    from safetensors.numpy import save_file

    from ..io import write_json
    from .data import encode_documents, load_tokenizer, split_documents, val_windows
    from .training import load_model

    run_dir = Path(run_dir)
    model = load_model(run_dir)
    routers(model)
    tok = load_tokenizer(run_dir / "tokenizer.json")
    train_docs, val_docs = split_documents()
    train_stream = encode_documents(tok, train_docs)
    if data in ("val", "train"):
        stream = encode_documents(tok, val_docs) if data == "val" else train_stream
    else:
        path = Path(data)
        if not path.is_file():
            raise UsageError(f"--data {data}: use 'val', 'train' or a text file")
        stream = encode_documents(tok, {"text": path.read_text(encoding="utf-8")})
    seq = model.cfg.seq_len
    if len(stream) < seq + 1:
        raise UsageError(f"--data has {len(stream)} tokens; need at least {seq + 1}")
    windows = val_windows(stream, max(1, max_tokens // seq), seq)[:, :-1]
    n_layers = model.cfg.n_layers
    if not (0 <= layer < n_layers and 0 <= channel < model.blocks[0].ffn.n_channels):
        raise UsageError(f"--layer/--channel out of range ({n_layers} layers)")
    rec = record(model, windows)
    save_file({"tokens": rec.tokens.astype(np.int32), "indices": rec.indices,
               "scores": rec.scores.astype(np.float32)}, str(out / "gating.safetensors"))
    stats = usage_stats(rec)
    write_json(out / "usage.json", stats)
    neighbours = nearest_contexts(rec, tok, pick_queries(rec, tok))
    write_json(out / "neighbours.json", neighbours)
    _plots(rec, out, layer, channel)
    facts = find_facts(train_stream, tok)
    ctx_stream = stream if all((stream == f[0]).sum() >= 3 for f in facts) else train_stream
    causal = causal_patching(model, ctx_stream, facts, context=min(24, seq), seed=seed)
    write_json(out / "causal.json", {**causal, "facts": [
        {"subject": tok.decode([s]), "answer": tok.decode([a]), "p": p, "count": c}
        for s, a, p, c in facts]})
    (out / "report.md").write_text(_report(run_dir, data, rec, stats, neighbours, causal, facts,
                                           tok, layer, channel))
    return {"usage": stats, "causal": causal["summary"]}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _report(run_dir, data, rec, stats, neighbours, causal, facts, tok, layer, channel) -> str:
    s = causal["summary"]
    lines = [
        "# sgatlin: a look inside", "",
        f"Run `{run_dir}`, data `{data}`: {rec.indices.shape[1]:,} tokens in windows of "
        f"{rec.window}; {rec.indices.shape[0]} layers × {rec.indices.shape[2]} channels × "
        f"top-{rec.indices.shape[3]} of N = {rec.n_neurons} neurons.", "",
        "Raw routing: `gating.safetensors` (`indices`, `scores` [layer, token, channel, k], "
        "`tokens`).", "",
        "## Neuron usage", "",
        "| layer | fraction of neurons ever picked | min over channels | usage entropy / log N "
        "| mean gate score | fraction of negative gates |", "|---|---|---|---|---|---|",
    ]
    for st in stats:
        lines.append(f"| {st['layer']} | {st['fraction_used']:.3f} | {st['min_fraction_used']:.3f}"
                     f" | {st['normalized_entropy']:.3f} | {st['mean_score']:.3f} | "
                     f"{st['fraction_negative_scores']:.3f} |")
    lines += ["", "![usage](usage.png)", "",
              f"## Gating matrix (layer {layer}, channel {channel})", "",
              "![gating matrix](gating_matrix.png)", "",
              "## Tokens with the most similar gating patterns (cosine over all layers)", ""]
    for q in neighbours:
        lines.append(f"- query: `{q['text']}`")
        for nb in q["neighbours"]:
            lines.append(f"    - {nb['cosine']:.2f} `{nb['text']}`")
    lines += ["", f"## Co-activation (layer {layer}, channel {channel})", "",
              "![co-activation](coactivation.png)", "",
              "## Causal test: patching router outputs at the subject position", "",
              "Facts: whole-word bigrams that are near-certain in the training split "
              f"({len(facts)} found), e.g. " + ", ".join(
                  f"`{tok.decode([a]).strip()}` after `{tok.decode([b]).strip()}`"
                  for b, a, _, _ in facts[:6]) + ".",
              "Clean prompt: a real context ending in subject s1; counterfactual: the same with "
              "s1 replaced by another subject s2 whose answer differs. LD = logit(a1) - logit(a2) "
              "at the subject position. Patched: clean run with the counterfactual's router "
              "outputs (indices and scores) at the subject position.", "",
              f"- prompts: {s['prompts']}; the model knows the fact in both directions "
              f"(LD_clean > 0 > LD_counterfactual) on {s['known']}"]
    if s.get("effect_prompts"):
        lines += [
            f"- pooled over the {s['effect_prompts']} prompts where the subject swap shifts LD by "
            f"more than 0.5 (mean shift {s['mean_ld_shift_from_subject_swap']:.2f}): patching the "
            f"routers at the subject moves **{s['pooled_fraction_moved']:.3f}** of it; control "
            f"(same subject's routing from another context): "
            f"{_fmt(s['pooled_fraction_moved_control'])}"]
    if s.get("known"):
        lines += [
            f"- fraction of the logit difference moved, all layers patched: "
            f"**{s['fraction_moved_all_layers']:.3f}**",
            "- per layer: " + ", ".join(f"layer {i}: {v:.3f}"
                                        for i, v in enumerate(s["fraction_moved_per_layer"])),
            f"- control (same subject's routing from another context): "
            f"{_fmt(s['fraction_moved_control'])}",
            f"- prompts whose prediction flips to the counterfactual answer: "
            f"{s['fraction_flipped']:.3f}",
        ]
    return "\n".join(lines) + "\n"
