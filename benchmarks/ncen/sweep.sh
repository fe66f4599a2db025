#!/usr/bin/env bash
# Modest tuning of NCEn's weights on digits (seeds 1,2,3; NCEn only — the baselines do not change).
# Usage: benchmarks/ncen/sweep.sh OUT. Each line: --ncen-direction --ncen-magnitude --ncen-ce.
set -euo pipefail
out=${1:?usage: sweep.sh OUT}
cd "$(dirname "$0")/../.."
se="${SE:-.venv/bin/sparse-expansion}"
mkdir -p "$out"
for v in "0.1 0.1 members" "1 1 members" "2 0 members" "0 1 members" "0.5 0.5 ensemble" "2 2 members"; do
    set -- $v
    "$se" ncen --data digits --methods ncen --tie-in none --ncen-direction "$1" --ncen-magnitude "$2" \
        --ncen-ce "$3" --out "$out/d$1_m$2_$3"
done
for d in "$out"/*/; do printf '%s ' "$(basename "$d")"; grep -m1 '^| `ncen`' "$d/report.md"; done
