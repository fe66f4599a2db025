#!/usr/bin/env bash
# Part 4: does Sparse Expansion untangle SmolLM2-135M's neurons? Expand the neuron projections
# (gate/up) of 7 layers into 16 experts at 70% sparsity (the full 30-layer expand takes over an
# hour on the shared 2-core machine), then compare every neuron with its experts on held-out plays.
# Usage: benchmarks/neurons/expanded.sh WORK_DIR   (writes WORK_DIR/se16 and WORK_DIR/neurons_se16)
set -euo pipefail
WORK=${1:?usage: expanded.sh WORK_DIR}
LAYERS=0,5,10,15,20,25,29
export HF_HUB_OFFLINE=1
cd "$(dirname "$0")/../.."
mkdir -p "$WORK"
if [ ! -f "$WORK/se16/sparse_expansion.json" ]; then
  /usr/bin/time -f "expand wall %e s, peak %M KB" .venv/bin/python benchmarks/neurons/partial_expand.py \
    "$WORK/se16" --layers $LAYERS --experts 16 --sparsity 0.7 --calib-windows 16 --seqlen 512
fi
/usr/bin/time -f "neurons wall %e s, peak %M KB" .venv/bin/sparse-expansion neurons "$WORK/se16" \
  --data shakespeare:test --out "$WORK/neurons_se16" --layers $LAYERS --windows 16 --seqlen 512 \
  --tokens 4096 --pairs 2000 --seed 0
