"""Assemble the BENCHMARKS.md FPE tables from a run_all.sh output folder.

Usage: python benchmarks/fpe/make_section.py OUTDIR > tables.md
Takes the tables verbatim from each report.md (no number is typed by hand) and the wall times
from OUTDIR/wall.txt.
"""

import json
import platform
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
walls = dict(line.rsplit(" ", 3)[:2] for line in (out / "wall.txt").read_text().splitlines() if line)
cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")), platform.processor())


def body(report: Path) -> str:
    text = report.read_text()
    text = re.sub(r"^# .*\n", "", text, count=1)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)\n?", "", text)  # plots live in the output folder
    return text.replace("\n## ", "\n#### ").strip()


def before_after(runs: list) -> str:
    """Polysemanticity of the first layer: the dense parent at the split vs each trained network."""
    import statistics as st

    rows = ["\n#### Metrics before (parent at the split) and after (end of training), point study\n",
            "| rule | capacity before | capacity after | mean abs cos before | mean abs cos after |",
            "|---|---:|---:|---:|---:|"]
    point = [r for r in runs if r["study"] == "point"]
    for rule in dict.fromkeys(r["rule"] for r in point):
        g = [r for r in point if r["rule"] == rule]

        def ms(key, when, digits, g=g):
            vals = [r[when][key] for r in g]
            return f"{st.fmean(vals):.{digits}f} ± {st.pstdev(vals):.{digits}f}"

        rows.append(f"| {rule} | {ms('feature_capacity', 'before', 2)} | {ms('feature_capacity', 'after', 2)} "
                    f"| {ms('mean_abs_cosine', 'before', 3)} | {ms('mean_abs_cosine', 'after', 3)} |")
    return "\n".join(rows)


parts = [f"Machine: {cpu}, 2 cores shared with other jobs, torch threads 1, `nice -n 10`."]
res = json.loads((out / "dnf_all" / "results.json").read_text())
parts.append(f"\n### DNF studies — `{res['command'].replace(str(out), 'OUT')}` "
             f"({float(walls['dnf_all']):.0f} s wall in all)\n")
parts.append("Wall time per study: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["wall_seconds"].items())
             + ".\n")
parts.append(body(out / "dnf_all" / "report.md"))
parts.append(before_after(res["runs"]))
for task in ("digits", "plays", "bible"):
    r = json.loads((out / task / "results.json").read_text())
    parts.append(f"\n### Real data: {task} — `{r['command'].replace(str(out), 'OUT')}` "
                 f"({float(walls[task]):.0f} s wall)\n")
    parts.append(body(out / task / "report.md"))
print("\n".join(parts))
