"""Markdown rows from results.jsonl: perplexity on each corpus, its ratio to a baseline row, time,
peak memory and the load average the run started under.

    python benchmarks/quality/table.py runs/q --base sg70-16x256 --names sg70-16x256 se4-70-16x256 ...

--also FOLDER: rows of earlier results folders (baselines) may be named too; --cpu adds the process
CPU seconds of the compression and the evaluation, which rows record since 2026-12-07.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", help="row whose perplexities the ratios divide by")
    parser.add_argument("--names", nargs="*", help="rows to print, in this order (default: all)")
    parser.add_argument("--cpu", action="store_true",
                        help="add the compression's and the first evaluation's process CPU seconds (where recorded)")
    parser.add_argument("--also", nargs="*", type=Path, default=[],
                        help="more results folders whose rows can be named (e.g. baselines run earlier)")
    args = parser.parse_args()
    rows = {}
    for folder in [*args.also, args.out]:  # a name in OUT wins
        for line in (folder / "results.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows[row["name"]] = row
    corpora = ["shakespeare:test", "pydoc"]
    base = rows.get(args.base) if args.base else None
    cpu_head = " compress CPU s | eval CPU s |" if args.cpu else ""
    print("| run | " + " | ".join(corpora) + " | compress s | peak GiB | load (1 min) |" + cpu_head)
    print("|---|" + "---|" * (len(corpora) + 3 + 2 * args.cpu))
    for name in args.names or list(rows):
        if name not in rows:
            print(f"| {name} | (not run) |")
            continue
        r = rows[name]
        cells = []
        for corpus in corpora:
            p = r.get("perplexity_by_data", {}).get(corpus)
            if p is None:
                cells.append("–")
            elif base is not None and base is not r and corpus in base.get("perplexity_by_data", {}):
                cells.append(f"{p:.2f} ({p / base['perplexity_by_data'][corpus]:.3f}×)")
            else:
                cells.append(f"{p:.2f}")
        load = r.get("load")
        peak = r.get("peak_gib")
        print(f"| {name} | " + " | ".join(cells) + f" | {r.get('compress_seconds', 0):.0f} | "
              + (f"{peak:.1f}" if peak else "–") + " | " + (f"{load[0]:.1f}" if load else "–") + " |"
              + ("".join(f" {r[k]:.0f} |" if r.get(k) is not None else " – |"
                         for k in ("compress_cpu_seconds", "eval_cpu_seconds")) if args.cpu else ""))


if __name__ == "__main__":
    main()
