"""The markdown table of calibration_speed.py's rows: process CPU seconds by phase, and each
expansion run against the SparseGPT run of the same version (`<method>-<version>` names).

    python benchmarks/calibration/table.py OUT/results.jsonl > OUT/table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [("forward_without_hooks", "forward (no hooks)"), ("hessian_stat", "Hessian adds"),
           ("cluster_stat", "cluster statistic"), ("route", "routing (statistics)"), ("pca", "PCA"),
           ("kmeans", "k-means"), ("solve", "solves"), ("build_experts", "building experts"),
           ("expert_forward", "routed forward (2nd pass)")]


def table(rows: list[dict]) -> str:
    sparsegpt = {r["name"].split("-")[-1]: r["cpu_seconds"] for r in rows if r["name"].startswith("sparsegpt")}
    lines = ["| run | CPU s | vs SparseGPT (same version) | " + " | ".join(c for _, c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for r in rows:
        base = sparsegpt.get(r["name"].split("-")[-1])
        ratio = f"{r['cpu_seconds'] / base:.3f}x" if base and not r["name"].startswith("sparsegpt") else "-"
        cells = [f"{r['cpu_phases'].get(k, 0):.1f}" if r["cpu_phases"].get(k) else "-" for k, _ in COLUMNS]
        lines.append(f"| {r['name']} | {r['cpu_seconds']:.1f} | {ratio} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]
    sys.stdout.write(table(rows))


if __name__ == "__main__":
    main()
