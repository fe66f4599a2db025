#!/usr/bin/env bash
# Start-up of `generate FOLDER` with no flags (a float folder is quantized to int8 on load), for two
# versions of the library, A B A B in one run: each round runs `generate --json` (4 new tokens) on the old
# source tree, then on this one; a table row per round with the process's wall seconds and the
# load_seconds it reports (loading, quantizing on load, moving into the kernels). Each tree builds its
# kernels in an untimed run first.
#   git archive <commit> src | tar -x -C /tmp/old
#   benchmarks/decode/startup_ab.sh /tmp/old/src FOLDER OUT.md [ROUNDS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
old=$1 folder=$2 out=$3 rounds=${4:-3} threads=${5:-$(nproc)}
python=${PYTHON:-python}
run() {  # run SRC: one generate; prints "wall s | load s"
  local start end
  start=$(date +%s.%N)
  PYTHONPATH=$1 OMP_NUM_THREADS=$threads HF_HUB_OFFLINE=1 "$python" -m sparse_expansion.cli generate "$folder" \
    --prompt "To be, or not to be" --max-new-tokens 4 --json > "$out.run.json"
  end=$(date +%s.%N)
  "$python" -c 'import json, sys; r = json.load(open(sys.argv[1]))
print("%.2f | %.2f | %s" % (float(sys.argv[3]) - float(sys.argv[2]), r["load_seconds"], r["weights_chosen"]))' \
    "$out.run.json" "$start" "$end"
}
for src in "$old" src; do run "$src" > /dev/null; done  # build each tree's kernels before timing
{
  echo "# $folder, generate with no flags, $threads thread(s): old = $old, new = $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes'), $rounds rounds alternated"
  echo
  echo "| round | old wall s | old load s | old weights | new wall s | new load s | new weights |"
  echo "|---|---|---|---|---|---|---|"
  for round in $(seq "$rounds"); do
    echo "| $round | $(run "$old") | $(run src) |"
  done
} > "$out.tmp"
rm -f "$out.run.json"
mv "$out.tmp" "$out"
cat "$out"
