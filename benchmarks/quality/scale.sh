#!/usr/bin/env bash
# 128 x 2048 calibration on the first 2 layers of SmolLM2: SparseGPT, 16 experts (streaming), 16
# experts at commit 4c2541e (every token kept).
#   benchmarks/quality/scale.sh OUT OLD_SRC      (OLD_SRC: `git archive 4c2541e src | tar -x -C DIR`)
set -eu
out=$1; old=$2
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$here/../../.venv/bin/python}   # PYTHON: another interpreter (default: this checkout's venv)
[ -d "$out/smollm2-2layers" ] || "$python" "$here/truncated_model.py" --layers 2 --out "$out/smollm2-2layers"
big="--calib-windows 128 --seqlen 2048"
run() { OMP_NUM_THREADS=1 nice -n 5 "$python" "$here/scale.py" --model "$out/smollm2-2layers" --out "$out" "$@"; }
run --name sparsegpt70 -- prune --method sparsegpt --sparsity 0.7 $big
run --name se16-70 -- expand --experts 16 --sparsity 0.7 $big
PYTHONPATH=$old run --name se16-70-4c2541e -- expand --experts 16 --sparsity 0.7 $big
