"""report.md of the gating look: usage table, pictures, neighbours, the causal test."""

from __future__ import annotations

from typing import Any

from .causal import Fact
from .record import Recording


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(run: str, data: str, rec: Recording, stats: list[dict[str, float]],
           neighbours: list[dict[str, Any]], causal: dict[str, Any], facts: list[Fact],
           tokenizer: Any, layer: int, channel: int) -> str:
    s = causal["summary"]
    lines = [
        "# sgatlin: a look inside", "",
        f"Run `{run}`, data `{data}`: {rec.indices.shape[1]:,} tokens in windows of "
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
                  f"`{tokenizer.decode([a]).strip()}` after `{tokenizer.decode([b]).strip()}`"
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
