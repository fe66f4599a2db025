"""The causal test: does the routing at a subject token carry the fact that follows it?

Facts are whole-word bigrams that are near-certain in the training text ('unleavened' -> ' bread').
Clean prompt: a real context ending in subject s1 (answer a1). Counterfactual: the same context
with s1 replaced by s2 (answer a2 != a1). LD = logit a1 - logit a2 at the subject position.
Patch the routers there with the counterfactual's routing and see how much of
LD_clean - LD_counterfactual moves: 1 means routing at the subject carries the whole fact, 0 none.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from ..transformer import Transformer
from .record import patch_routing, record_routing, routers

FUNCTION_WORDS = frozenset(
    "the and for with into unto that this thee thou them they their there shall will from "
    "upon have were what which when then than your you his her him not but all are was".split())

Fact = tuple[int, int, float, int]  # (subject, answer, P(answer | subject), count)


def find_facts(stream: np.ndarray, tokenizer, min_count: int = 25, min_prob: float = 0.6,
               limit: int = 24) -> list[Fact]:
    """Whole-word bigrams that are near-certain in `stream` and whose answer is a content word.
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
def logit_differences(model: Transformer, clean: torch.Tensor, counterfactual: torch.Tensor,
                      answer: int, other: int, position: int) -> dict[str, Any]:
    """LD = logit(answer) - logit(other) at `position` for the clean prompt, the counterfactual,
    the clean prompt with every router patched at `position` from the counterfactual, and with one
    layer patched at a time. Patching with the clean prompt's own routing changes nothing."""
    def ld(logits: torch.Tensor) -> float:
        return float(logits[0, position, answer] - logits[0, position, other])

    with record_routing(model) as store:
        ld_counterfactual = ld(model(counterfactual))
    source = [layer[0] for layer in store]
    ld_clean = ld(model(clean))
    with patch_routing(model, position, source):
        ld_patched = ld(model(clean))
    per_layer = []
    for layer in range(len(source)):
        with patch_routing(model, position, source, [layer]):
            per_layer.append(ld(model(clean)))
    return {"ld_clean": ld_clean, "ld_counterfactual": ld_counterfactual,
            "ld_patched": ld_patched, "ld_patched_per_layer": per_layer}


def _prompts(stream: np.ndarray, facts: list[Fact], context: int, per_fact: int, seed: int
             ) -> list[tuple[torch.Tensor, int, int, int, int]]:
    """(clean prompt [1, context] ending in s1, s1, a1, s2, a2), `per_fact` per fact."""
    rng = np.random.default_rng(seed)
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
    return prompts


@torch.no_grad()
def causal_patching(model: Transformer, stream: np.ndarray, facts: list[Fact],
                    context: int = 24, per_fact: int = 3, seed: int = 0) -> dict[str, Any]:
    """Every prompt's logit differences (see module docstring) and a summary.

    Control: patch in the routing of the same subject taken from another context; it should move
    little if the fact rides on subject-specific routing, and as much as the counterfactual if any
    routing change breaks the prediction.
    """
    model.eval()
    n_layers = len(routers(model))
    prompts = _prompts(stream, facts, context, per_fact, seed)
    last = context - 1
    rows = []
    for pi, (clean, s1, a1, s2, a2) in enumerate(prompts):
        corrupt = clean.clone()
        corrupt[0, last] = s2
        row = logit_differences(model, clean, corrupt, a1, a2, last)
        sibling = next((p[0] for pj, p in enumerate(prompts) if pj != pi and p[1] == s1), None)
        ld_control = None
        if sibling is not None:
            with record_routing(model) as sstore:
                model(sibling)
            with patch_routing(model, last, [layer[0] for layer in sstore]):
                logits = model(clean)
            ld_control = float(logits[0, last, a1] - logits[0, last, a2])
        rows.append({"subject": s1, "answer": a1, "cf_subject": s2, "cf_answer": a2, **row,
                     "ld_control": ld_control, "prompt": clean[0].tolist()})
    return {"summary": summarize(rows, n_layers), "rows": rows}


def summarize(rows: list[dict[str, Any]], n_layers: int) -> dict[str, Any]:
    """Fractions of the logit difference moved, over the prompts the model knows (LD_clean > 0 >
    LD_counterfactual), and pooled over every prompt where the subject swap moves LD by > 0.5:
    Σ(LD_clean - LD_patched) / Σ(LD_clean - LD_counterfactual)."""
    known = [r for r in rows if r["ld_clean"] > 0 and r["ld_counterfactual"] < 0]

    def frac(r, key):
        return (r["ld_clean"] - r[key]) / (r["ld_clean"] - r["ld_counterfactual"])

    summary: dict[str, Any] = {"prompts": len(rows), "known": len(known)}
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
    return summary
