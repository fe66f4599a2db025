#!/usr/bin/env bash
# Run named configurations one after another through the grid driver (one process each, one
# thread, nice $NICE, default 10), appending to OUT/results.jsonl; finished names are skipped, so a queue resumes.
#   benchmarks/quality/run_queue.sh OUT QUEUE_FILE
# QUEUE_FILE: one configuration a line, "NAME | CALIB_ARGS | CLI COMMAND", e.g.
#   sg70-16x256 | --calib-windows 16 --seqlen 256 | prune --method sparsegpt --sparsity 0.7
set -u
out=$1; queue=$2
python=${PYTHON:-/work/main/.venv/bin/python}
niceness=${NICE:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
# this checkout's code, not whatever the venv's editable install points at
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
while IFS='|' read -r name calib cmd; do
  name=${name//[[:space:]]/}; [ -z "$name" ] && continue; case $name in \#*) continue;; esac
  OMP_NUM_THREADS=1 nice -n "$niceness" "$python" "$here/compression.py" run --out "$out" --name "$name" \
    --eval-data shakespeare:test pydoc -- $cmd $calib
done < "$queue"
