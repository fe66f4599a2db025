#!/usr/bin/env bash
# Two versions of the library decoding one folder, A B A B in one run: each round runs `generate --json`
# (greedy, end-of-text ignored, the fast step) on the old source tree, then on this one, at the given
# threads; a table row per round (decode tokens/s). Each tree builds its kernels in an untimed run first.
#   git archive <commit> src | tar -x -C /tmp/old
#   benchmarks/decode/model_ab.sh /tmp/old/src FOLDER OUT.md [THREADS] [ROUNDS] [NEW_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/../.."
old=$1 folder=$2 out=$3 threads=${4:-1} rounds=${5:-2} new=${6:-64}
python=${PYTHON:-python}
prompt="HAMLET, PRINCE OF DENMARK by William Shakespeare. PERSONS REPRESENTED. Claudius, King of Denmark."
run() {  # run SRC: one generate, prints its decode tokens/s
  PYTHONPATH=$1 OMP_NUM_THREADS=$threads HF_HUB_OFFLINE=1 "$python" -m sparse_expansion.cli generate "$folder" \
    --prompt "$prompt" --max-new-tokens "$new" --ignore-eos --json --device cpu \
    | "$python" -c 'import json, sys; print("%.1f" % json.loads(sys.stdin.read())["decode_tokens_per_second"])'
}
for src in "$old" src; do run "$src" > /dev/null; done  # build each tree's kernels before timing
{
  echo "# $folder, $threads thread(s), $new new tokens: old = $old, new = $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes'), $rounds rounds alternated"
  echo
  echo "| round | old tok/s | new tok/s |"
  echo "|---|---|---|"
  for round in $(seq "$rounds"); do
    echo "| $round | $(run "$old") | $(run src) |"
  done
} > "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
