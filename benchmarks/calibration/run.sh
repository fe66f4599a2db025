#!/usr/bin/env bash
# SparseGPT 70% and 16-expert expansion at 70% on SmolLM2's first 2 layers, 128 x 2048 calibration,
# one thread each, process CPU time by phase; with OLD_SRC the same two against an older checkout.
#   benchmarks/calibration/run.sh OUT [OLD_SRC]     (OLD_SRC: `git archive <commit> src | tar -x -C DIR`)
#   ROUNDS=2 benchmarks/calibration/run.sh OUT      (the pair alternated, rows named -r1, -r2, ...)
# then: python benchmarks/calibration/table.py OUT/results.jsonl > OUT/table.md
set -eu
out=$1; old=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$here/../../.venv/bin/python}   # PYTHON: another interpreter (default: this checkout's venv)
mkdir -p "$out"
run() { OMP_NUM_THREADS=1 nice -n 5 "$python" "$here/calibration_speed.py" --layers 2 --windows 128 --seqlen 2048 \
          --out "$out/results.jsonl" "$@"; }
rounds=${ROUNDS:-1}
for round in $(seq "$rounds"); do
  for version in after ${old:+before}; do
    src=$here/../../src; [ "$version" = before ] && src=$old
    name=$version; [ "$rounds" -gt 1 ] && name=r$round; [ "$rounds" -gt 1 ] && [ -n "$old" ] && name=$version.r$round
    PYTHONPATH=$src run --name "sparsegpt70-$name" -- prune --method sparsegpt --sparsity 0.7
    PYTHONPATH=$src run --name "se16-70-$name" -- expand --experts 16 --sparsity 0.7
  done
done
