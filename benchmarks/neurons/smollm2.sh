#!/usr/bin/env bash
# Wasserstein neurons of the shipped SmolLM2-135M (de-quantized Q4_1) on the held-out plays:
# WD/MD of all 30 layers, then the ablation (x = 1%, 3%, 10%; SparseGPT at 90% on the chosen rows).
# Usage: benchmarks/neurons/smollm2.sh OUT_DIR   (about 40 min on 2 shared, busy CPU cores)
set -euo pipefail
OUT=${1:?usage: smollm2.sh OUT_DIR}
export HF_HUB_OFFLINE=1
cd "$(dirname "$0")/../.."
/usr/bin/time -v .venv/bin/sparse-expansion neurons smollm2-135m --data shakespeare:test --out "$OUT" \
  --windows 16 --seqlen 512 --tokens 4096 --pairs 2000 --seed 0 \
  --ablate --fractions 0.01,0.03,0.1 --ablate-sparsity 0.9 --random-seeds 3 --hessians dense \
  --calib shakespeare:train --calib-windows 8 --eval-data shakespeare:test --eval-windows 4
