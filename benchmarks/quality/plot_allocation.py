"""Perplexity against sparsity, one line per method and allocation, on each evaluation corpus.

    python benchmarks/quality/plot_allocation.py --out runs/q runs/q6080 --png docs/allocation.png

Reads the results.jsonl of every OUT: rows named METHOD{60,70,80}-ALLOC (e.g. wanda70-owl,
sparsegpt60-wd; plain sparsegpt70 / wanda70-uniform = uniform) and 16-expert rows se16-{60,70,80}-prior
(uniform rows) / se16-{60,70,80}-variance. One panel per corpus (Shakespeare held-out plays, pydoc),
log perplexity axis.
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
EXPERTS = re.compile(r"^se16-(\d\d)-(prior|variance)$")
COLOR = {"sparsegpt": "tab:blue", "wanda": "tab:orange", "16 experts": "tab:green"}
STYLE = {"uniform": "-", "owl": "--", "wd": "-", "variance": ":", "norm": "-.", "equal": (0, (1, 3))}
MARK = {"uniform": "o", "owl": "s", "wd": "*", "variance": "v", "norm": "^", "equal": "x"}


def series(rows: list[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        m = NAME.match(r["name"])
        if m:
            out.setdefault((m.group(1), m.group(3) or "uniform"), {})[int(m.group(2))] = r["perplexity_by_data"]
        m = EXPERTS.match(r["name"])
        if m:
            alloc = "uniform" if m.group(2) == "prior" else m.group(2)
            out.setdefault(("16 experts", alloc), {})[int(m.group(1))] = r["perplexity_by_data"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, nargs="+", required=True, help="result folders (rows by name, later wins)")
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--sparsities", type=int, nargs="+", default=[60, 70, 80],
                        help="points to draw (%%); a row at another sparsity is left out")
    args = parser.parse_args()
    rows = [json.loads(line) for out in args.out for line in (out / "results.jsonl").read_text().splitlines()]
    lines = series(rows)
    corpora = sorted({d for points in lines.values() for p in points.values() for d in p},
                     key=lambda d: (d != "shakespeare:test", d))
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 5), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        for (method, alloc), points in sorted(lines.items()):
            xs = sorted(s for s in points if corpus in points[s] and s in args.sparsities)
            if not xs:
                continue
            ax.plot(xs, [points[s][corpus] for s in xs], linestyle=STYLE.get(alloc, "-"),
                    marker=MARK.get(alloc, "o"), color=COLOR[method],
                    label=f"{method} {alloc}")
        ax.set_yscale("log")
        ax.set_xlabel("sparsity of the MLP linears (%)")
        ax.set_ylabel(f"perplexity on {corpus}")
        ax.set_title(corpus + (" (held-out plays)" if corpus.startswith("shakespeare") else " (out of domain)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M (de-quantized Q4_1): where the zeros go, same total; calibration 32 x 512 Shakespeare;\n"
                 "16 experts (prior shrinkage) have the same non-zeros per token as one pruned layer")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
