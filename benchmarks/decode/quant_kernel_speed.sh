#!/usr/bin/env bash
# One linear at decode, 1 token, 1 thread: bfloat16 against the act8 int8 / int4 kernels the fast decode
# step runs (issue 20 part 2), on SmolLM2-135M's three shapes: the MLP up/gate (1536x576), the MLP down
# (576x1536) and the LM head (49152x576). Median process CPU time of --repeats passes; markdown tables.
#   benchmarks/decode/quant_kernel_speed.sh [OUT.md] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-benchmarks/decode/results/act8_kernel_speed.md}
repeats=${2:-5}
python=${PYTHON:-python}
export PYTHONPATH=src OMP_NUM_THREADS=1
{
  for shape in "1536 576" "576 1536" "49152 576"; do
    set -- $shape
    "$python" benchmarks/decode/quant_kernel_speed.py --act8-only --out "$1" --in "$2" --repeats "$repeats" \
      --working-set-mb 128
    echo
  done
} > "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
