"""Plots for BENCHMARKS.md from a compression.py results folder.

    python benchmarks/pruning/plot_expansion.py --out runs/bench_expansion --png docs/expansion.png

Top left: perplexity against experts, one line per sparsity (experts = 1 is SparseGPT), Wanda
and magnitude as markers at k = 1. Top right: the same as a ratio to SparseGPT. Bottom:
perplexity against stored MLP non-zeros and against FLOPs per token for every model, the
memory-budget runs joined by a line. Perplexity axes stop at 1.5x the worst SparseGPT/expansion
result, so magnitude and Wanda at high sparsity (in the thousands to millions) fall off-scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder with results.jsonl")
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.out / "results.jsonl").read_text().splitlines()]
    dense = next((r for r in rows if r["method"] == "dense"), None)

    fig, ((left, ratio), (mid, right)) = plt.subplots(2, 2, figsize=(13, 9))
    ours = [r["perplexity"] for r in rows if r["method"] in ("sparsegpt", "sparse_expansion")]
    top = 1.5 * max(ours) if ours else None
    bottom = 0.8 * min([dense["perplexity"]] if dense else ours)
    sparsities = sorted({r["sparsity"] for r in rows if r["method"] == "sparse_expansion" and r["sparsity"]})
    for s in sparsities:
        line = sorted([(1, r["perplexity"]) for r in rows if r["method"] == "sparsegpt" and r["sparsity"] == s]
                      + [(r["experts"], r["perplexity"]) for r in rows
                         if r["method"] == "sparse_expansion" and r["sparsity"] == s])
        if line:
            handle, = left.plot(*zip(*line), marker="o", label=f"SE, sparsity {s}")
            if line[0][0] == 1:
                ratio.plot([k for k, _ in line], [p / line[0][1] for _, p in line], marker="o",
                           color=handle.get_color(), label=f"sparsity {s}")
            for method, marker in (("wanda", "s"), ("magnitude", "x")):
                other = [r["perplexity"] for r in rows if r["method"] == method and r["sparsity"] == s]
                if other:
                    left.scatter([1], other, marker=marker, color=handle.get_color())
    if dense:
        left.axhline(dense["perplexity"], color="black", ls="--", lw=1, label="dense")
    left.set(xscale="log", yscale="log", xlabel="experts per linear (1 = SparseGPT; ■ Wanda, × magnitude)",
             ylabel="perplexity (shakespeare:test)", title="More experts at equal FLOPs per token")
    left.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
    left.set_ylim(bottom, top)
    left.legend(fontsize=8)
    ratio.axhline(1.0, color="black", lw=1)
    ratio.set(xscale="log", xlabel="experts per linear", ylabel="perplexity / SparseGPT's at the same sparsity",
              title="Gain over SparseGPT (below 1 = better)")
    ratio.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
    ratio.legend(fontsize=8)

    styles = {"dense": "k*", "magnitude": "x", "wanda": "s", "sparsegpt": "^", "sparse_expansion": "o"}
    for axis, key, label in ((mid, "mlp_nonzeros", "stored MLP non-zeros (millions)"),
                             (right, "flops_per_token", "FLOPs per token (millions)")):
        for method, style in styles.items():
            pts = [(r[key] / 1e6, r["perplexity"]) for r in rows if r["method"] == method]
            if pts:
                axis.plot(*zip(*pts), style, ls="none", label=method, alpha=0.8)
        budget = sorted((r[key] / 1e6, r["perplexity"]) for r in rows if r.get("memory_budget"))
        if budget:
            axis.plot(*zip(*budget), "r-", lw=1, label="SE x16, memory budget 1/2/4")
        axis.set(yscale="log", xlabel=label, ylabel="perplexity", ylim=(bottom, top))
        axis.legend(fontsize=8)
    mid.set_title("Against memory (non-zeros stored)")
    right.set_title("Against compute (FLOPs per token)")
    fig.suptitle("SmolLM2-135M (de-quantized Q4_1), MLP linears, one-shot", fontsize=10)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
