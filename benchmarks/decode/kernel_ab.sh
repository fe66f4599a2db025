#!/usr/bin/env bash
# Two versions of the decode kernels on one linear, A B A B in one run: each round runs
# quant_kernel_speed.py (1 token, 1 thread, bf16 and act8 int8 / int4 rows, from DRAM and in cache) on the
# old source tree, then on this one; markdown to OUT.
#   git archive <commit> src | tar -x -C /tmp/old
#   benchmarks/decode/kernel_ab.sh /tmp/old/src OUT.md [ROWS COLS] [ROUNDS]
#   GROUP=32 benchmarks/decode/kernel_ab.sh ...     (int4 rows in groups of 32 columns; default 128)
set -euo pipefail
cd "$(dirname "$0")/../.."
old=$1 out=$2 rows=${3:-5632} cols=${4:-2048} rounds=${5:-2} group=${GROUP:-128}
python=${PYTHON:-python}
{
  echo "# ${rows}x${cols}, int4 in groups of $group: old = $old, new = $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes'), $rounds rounds alternated"
  for round in $(seq "$rounds"); do
    for version in old new; do
      src=src; [ "$version" = old ] && src=$old
      echo; echo "## round $round, $version"
      PYTHONPATH=$src OMP_NUM_THREADS=1 "$python" benchmarks/decode/quant_kernel_speed.py --act8-only --out "$rows" \
        --in "$cols" --repeats 5 --working-set-mb 256 --group "$group"
    done
  done
} > "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
