#!/usr/bin/env bash
# The NCEn studies of BENCHMARKS.md (ncen section). Usage: benchmarks/ncen/run_all.sh OUT
# digits: all five methods, seeds 1,2,3, with the tie-in on SmolLM2's layer 15 (16 experts, 70%);
# plays: the same on MiniLM embeddings; digits with CNN members; then the NCEn weight sweep (sweep.sh).
set -euo pipefail
out=${1:?usage: run_all.sh OUT}
cd "$(dirname "$0")/../.."
se="${SE:-.venv/bin/sparse-expansion}"
mkdir -p "$out"
/usr/bin/time -f "%e s wall, %M KiB peak" "$se" ncen --data digits --tie-in smollm2 --tie-in-layer 15 \
    --out "$out/digits" 2> >(tail -n 1 > "$out/digits.time")
/usr/bin/time -f "%e s wall, %M KiB peak" "$se" ncen --data plays --tie-in none \
    --out "$out/plays" 2> >(tail -n 1 > "$out/plays.time")
/usr/bin/time -f "%e s wall, %M KiB peak" "$se" ncen --data digits --arch cnn --hidden 16 --tie-in none \
    --out "$out/digits_cnn" 2> >(tail -n 1 > "$out/digits_cnn.time")
benchmarks/ncen/sweep.sh "$out/sweep"
