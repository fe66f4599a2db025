#!/usr/bin/env bash
# Two versions of the library running one `sparse-expansion ... --json` command, A B A B in one run: each
# round runs it on the old source tree, then on this one; a table row per round with the JSON fields named
# in FIELDS from each. Each tree runs the command once untimed first (kernels built, caches warm).
#   git archive <commit> src | tar -x -C /tmp/old
#   FIELDS=eval_seconds,perplexity benchmarks/decode/cli_ab.sh /tmp/old/src OUT.md ROUNDS \
#       eval runs/sg70 --dtype bfloat16 --json
set -euo pipefail
cd "$(dirname "$0")/../.."
old=$1 out=$2 rounds=$3
shift 3
fields=${FIELDS:?name the JSON fields to tabulate, e.g. FIELDS=eval_seconds,perplexity}
python=${PYTHON:-python}
run() {  # run SRC: the command once; prints its fields, " | " between them
  PYTHONPATH=$1 HF_HUB_OFFLINE=1 "$python" -m sparse_expansion.cli "${@:2}" 2>/dev/null \
    | "$python" -c 'import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
print(" | ".join(str(round(r[f], 4)) if isinstance(r[f], float) else str(r[f]) for f in sys.argv[1].split(",")))' "$fields"
}
for src in "$old" src; do run "$src" "$@" > /dev/null; done
header=$(echo "$fields" | tr ',' '\n' | sed 's/.*/old &/' | paste -sd'|' | sed 's/|/ | /g')
header_new=$(echo "$fields" | tr ',' '\n' | sed 's/.*/new &/' | paste -sd'|' | sed 's/|/ | /g')
{
  echo "# sparse-expansion $*: old = $old, new = $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes'), $rounds rounds alternated"
  echo
  echo "| round | $header | $header_new |"
  echo "|---$(echo "$fields,$fields" | tr ',' '\n' | sed 's/.*/|---/' | tr -d '\n')|"
  for round in $(seq "$rounds"); do
    echo "| $round | $(run "$old" "$@") | $(run src "$@") |"
  done
} > "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
