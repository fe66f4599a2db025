#!/usr/bin/env bash
# Every FPE study behind the BENCHMARKS.md tables. Usage: benchmarks/fpe/run_all.sh OUTDIR
# Two jobs at a time (2 cores), one torch thread each, niced so other work keeps running.
set -euo pipefail
OUT=${1:?usage: benchmarks/fpe/run_all.sh OUTDIR}
SE=${SE:-.venv/bin/sparse-expansion}
mkdir -p "$OUT"
run() { local name=$1; shift; /usr/bin/time -f "$name %e s wall" -a -o "$OUT/wall.txt" nice -n 10 "$SE" fpe "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; }
run dnf_all --task dnf --study all --seeds 5 &
( run digits --task digits --rule random,feature --seeds 5
  run plays --task plays --rule random,feature --seeds 5
  run bible --task bible --rule random,feature --seeds 5 ) &
wait
cat "$OUT/wall.txt"
