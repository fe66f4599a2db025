"""Peak memory and time of calibration at the paper's scale, per configuration, each its own process.

    python benchmarks/quality/scale.py --model runs/smollm2-2layers --out runs/scale \
        --name se16 -- expand --experts 16 --sparsity 0.7 --calib-windows 128 --seqlen 2048
    PYTHONPATH=OLD/src python benchmarks/quality/scale.py ...   # the same against an older checkout

Appends {name, wall, peak_gib, seconds (the run record's split), load, commit} to OUT/results.jsonl.
Use a truncated model (benchmarks/quality/truncated_model.py) to measure a layer's cost in minutes;
the model folder is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from sparse_expansion.benchmarking import CLI, append_row
from sparse_expansion.resources import run_measured


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / f"model-{args.name}"
    log = args.out / f"{args.name}.log"
    load_before = os.getloadavg()
    code, wall, peak_mb = run_measured([*CLI, command[0], args.model, *command[1:], "--out", str(folder)], log)
    if code != 0:
        sys.exit(f"{args.name}: failed (exit {code}), see {log}")
    record = json.loads((folder / "sparse_expansion.json").read_text())["record"]
    row = {"name": args.name, "command": command, "wall": wall, "peak_gib": peak_mb / 1024,
           "seconds": record["seconds"],
           "load_before": load_before, "load_after": os.getloadavg(), "pythonpath": os.environ.get("PYTHONPATH"),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    append_row(args.out / "results.jsonl", row)
    print(json.dumps(row))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
