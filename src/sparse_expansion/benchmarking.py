"""What the benchmark recipes share: one configuration compressed by the CLI in its own measured
process, evaluated by the CLI, and appended as one row to a results.jsonl.

The recipes in benchmarks/ (the pruning grid, the quality queues, the OWL peer check, the scale
runs) import this module instead of each other's scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .resources import children_cpu_seconds, run_measured

CLI = [sys.executable, "-m", "sparse_expansion.cli"]


def evaluate(model: str, windows: int, log: Path, data: str = "shakespeare:test") -> dict[str, Any]:
    """`sparse-expansion eval --json` on `windows` x 512 tokens of `data`, in a child process."""
    out = subprocess.run([*CLI, "eval", model, "--data", data, "--windows", str(windows), "--seqlen", "512", "--json"],
                         capture_output=True, text=True, check=True)
    with log.open("a") as handle:
        handle.write(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def done_names(results: Path) -> set[str]:
    """The configuration names already in a results.jsonl (a rerun skips them)."""
    if not results.exists():
        return set()
    return {json.loads(line)["name"] for line in results.read_text().splitlines() if line.strip()}


def run_config(out: Path, cfg: dict[str, Any], windows: int, eval_data: list[str], keep: bool = False,
               model: str = "smollm2-135m") -> dict[str, Any] | None:
    """Compress `model` with cfg["cmd"] (a CLI command; None = the dense model), evaluate it on each
    corpus of eval_data, append the row to OUT/results.jsonl; returns it (None if the run failed).
    `perplexity` is on eval_data[0], `perplexity_by_data` on all; the folder is removed unless kept."""
    from .artifact import read_record

    log = out / f"{cfg['name']}.log"
    row = {k: v for k, v in cfg.items() if k != "cmd"}
    row["model"] = model
    if cfg["cmd"] is None:
        row.update(compress_seconds=0.0, peak_gib=None)
    else:
        folder = str(out / f"model-{cfg['name']}")
        cpu_before = children_cpu_seconds()
        code, wall, peak_mb = run_measured([*CLI, cfg["cmd"][0], model, *cfg["cmd"][1:], "--out", folder], log)
        if code != 0:
            print(f"{cfg['name']}: failed (exit {code}), see {log}", flush=True)
            return None
        record = read_record(folder)
        row.update(compress_seconds=wall, compress_cpu_seconds=children_cpu_seconds() - cpu_before,
                   peak_gib=peak_mb / 1024, seconds=record["seconds"],
                   sparsity_effective=record["sparsity"], calibration=record.get("calibration"),
                   load=os.getloadavg())
        clusters = [r["cluster_tokens"] for r in record["linears"].values() if "cluster_tokens" in r]
        if clusters:
            row["smallest_cluster"] = min(min(c) for c in clusters)
            row["blended_clusters"] = sum(len(r["blended_clusters"]) for r in record["linears"].values())
        row["mean_sparsity"] = record.get("mean_sparsity")
        model = folder
    by_data = {}
    for i, data in enumerate(eval_data):
        cpu_before = children_cpu_seconds()
        result = evaluate(model, windows, log, data)
        result["eval_cpu_seconds"] = children_cpu_seconds() - cpu_before
        by_data[data] = result["perplexity"]
        if i == 0:
            row.update({k: result[k] for k in ("perplexity", "flops_per_token", "nonzeros", "mlp_nonzeros",
                                                "windows", "seqlen", "tokens", "eval_seconds",
                                                "eval_cpu_seconds")})
    row.update(perplexity_by_data=by_data, date=time.strftime("%Y-%m-%d %H:%M"))
    append_row(out / "results.jsonl", row)
    print(f"{cfg['name']}: " + ", ".join(f"{d} {p:.2f}" for d, p in by_data.items())
          + f"  ({row['compress_seconds']:.0f} s)", flush=True)
    if cfg["cmd"] is not None and not keep:
        shutil.rmtree(model, ignore_errors=True)
    return row


def append_row(results: Path, row: dict[str, Any]) -> None:
    """One JSON line more in a results.jsonl (rows are never rewritten: an interrupted run resumes)."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def machine() -> str:
    """The CPU's model name and its count of CPUs, as benchmark reports name the machine they ran on."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"
