#!/usr/bin/env bash
# Part 4: does Sparse Expansion untangle SmolLM2-135M's neurons? Expand (16 experts, 70% sparse),
# then measure every layer's neurons against their experts on the held-out plays.
# Usage: benchmarks/neurons/expanded.sh WORK_DIR   (writes WORK_DIR/se16 and WORK_DIR/neurons_se16)
set -euo pipefail
WORK=${1:?usage: expanded.sh WORK_DIR}
export HF_HUB_OFFLINE=1
cd "$(dirname "$0")/../.."
mkdir -p "$WORK"
if [ ! -f "$WORK/se16/sparse_expansion.json" ]; then
  /usr/bin/time -f "expand wall %e s, peak %M KB" .venv/bin/sparse-expansion expand smollm2-135m \
    --experts 16 --sparsity 0.7 --calib shakespeare:train --calib-windows 16 --seqlen 512 --seed 0 --out "$WORK/se16"
fi
/usr/bin/time -f "neurons wall %e s, peak %M KB" .venv/bin/sparse-expansion neurons "$WORK/se16" \
  --data shakespeare:test --out "$WORK/neurons_se16" --windows 16 --seqlen 512 --tokens 4096 --pairs 2000 --seed 0
