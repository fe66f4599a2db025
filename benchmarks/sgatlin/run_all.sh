#!/usr/bin/env bash
# The sgatlin benchmark recipe: isoflop study + activation ablation, a seed-noise check,
# throughput at matched FLOPs/token, and the gating look at a longer-trained sgatlin model.
# Results land in $OUT; the small files are copied to benchmarks/sgatlin/results/<date>-<machine>/
# (MACHINE, default cpu<cores>); then edit report.md and run python benchmarks/report.py.
# Runs at nice 10, one torch thread per run (the machine is shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/sgatlin}
export HF_HUB_OFFLINE=1
SE=".venv/bin/sparse-expansion"
RES=benchmarks/sgatlin/results/$(date +%Y-%m-%d)-${MACHINE:-cpu$(nproc)}

nice -n 10 $SE isoflop --budgets 1e11,2e11 --scales 0.5,1,1.5 --ablation-budget 1e11 \
    --jobs 2 --out "$OUT/isoflop"
for ffn in mlp sgatlin; do   # seed noise at the compute-optimal scale
    nice -n 10 $SE train --ffn $ffn --scale 0.5 --budget 1e11 --seed 1 --threads 1 \
        --data-dir "$OUT/isoflop/data" --checkpoint-every 0 --no-progress --out "$OUT/seed1_$ffn"
done
nice -n 10 .venv/bin/python benchmarks/sgatlin/throughput.py --out "$OUT/throughput.json"
nice -n 10 $SE train --ffn sgatlin --scale 0.5 --budget 6e11 --threads 1 \
    --data-dir "$OUT/isoflop/data" --no-progress --out "$OUT/gating_model"
nice -n 10 $SE gating "$OUT/gating_model" --data val --out "$OUT/gating"

mkdir -p $RES/gating
cp "$OUT"/isoflop/{results.json,table.md,ablation.md,isoflop.png} "$OUT/throughput.json" $RES/
cp "$OUT"/gating/{report.md,usage.json,causal.json,neighbours.json,*.png} $RES/gating/
cp "$OUT/gating_model/metrics.json" $RES/gating/model_metrics.json
