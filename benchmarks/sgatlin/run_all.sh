#!/usr/bin/env bash
# The sgatlin benchmark recipe: isoflop study + activation ablation, throughput at matched
# FLOPs/token, and the gating look at the best-trained sgatlin run. Results land in $OUT and a
# copy of the small files in benchmarks/sgatlin/results/. Runs at nice 10, one thread per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/sgatlin}
export HF_HUB_OFFLINE=1
SE=".venv/bin/sparse-expansion"

nice -n 10 $SE isoflop --budgets 1e11,2e11 --scales 0.5,1,1.5 --ablation-budget 1e11 \
    --jobs 2 --out "$OUT/isoflop"
nice -n 10 .venv/bin/python benchmarks/sgatlin/throughput.py --out "$OUT/throughput.json"
nice -n 10 $SE gating "$OUT/isoflop/runs/sgatlin_s0.5_b2e11" --data val --out "$OUT/gating"

mkdir -p benchmarks/sgatlin/results/gating
cp "$OUT"/isoflop/{results.json,table.md,ablation.md,isoflop.png} "$OUT/throughput.json" \
    benchmarks/sgatlin/results/
cp "$OUT"/gating/{report.md,usage.json,causal.json,neighbours.json,*.png} \
    benchmarks/sgatlin/results/gating/
