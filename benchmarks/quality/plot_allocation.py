"""Perplexity against sparsity, one line per method and allocation, on each evaluation corpus.

    python benchmarks/quality/plot_allocation.py --out runs/q --png docs/allocation.png

Reads OUT/results.jsonl rows named METHOD{60,70,80}-ALLOC (e.g. wanda70-owl, sparsegpt60-wd;
plain sparsegpt70 / wanda70-uniform = uniform). One panel per corpus (Shakespeare held-out plays,
pydoc), log perplexity axis.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAME = re.compile(r"^(wanda|sparsegpt)(\d\d)(?:-(\w+))?$")
STYLE = {"uniform": "-", "owl": "--", "wd": "-", "variance": ":", "norm": "-.", "equal": (0, (1, 3))}
MARK = {"uniform": "o", "owl": "s", "wd": "*", "variance": "v", "norm": "^", "equal": "x"}


def series(rows: list[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        m = NAME.match(r["name"])
        if m:
            out.setdefault((m.group(1), m.group(3) or "uniform"), {})[int(m.group(2))] = r["perplexity_by_data"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.out / "results.jsonl").read_text().splitlines()]
    lines = series(rows)
    corpora = sorted({d for points in lines.values() for p in points.values() for d in p},
                     key=lambda d: (d != "shakespeare:test", d))
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 5), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        for (method, alloc), points in sorted(lines.items()):
            xs = sorted(s for s in points if corpus in points[s])
            if not xs:
                continue
            ax.plot(xs, [points[s][corpus] for s in xs], linestyle=STYLE.get(alloc, "-"),
                    marker=MARK.get(alloc, "o"), color="tab:blue" if method == "sparsegpt" else "tab:orange",
                    label=f"{method} {alloc}")
        ax.set_yscale("log")
        ax.set_xlabel("sparsity of the MLP linears (%)")
        ax.set_ylabel(f"perplexity on {corpus}")
        ax.set_title(corpus + (" (held-out plays)" if corpus.startswith("shakespeare") else " (out of domain)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M (de-quantized Q4_1): where the zeros go, same total; calibration 32 x 512 Shakespeare")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
