#!/usr/bin/env bash
# Run named configurations one at a time through the grid driver (one process each, one thread,
# nice $NICE, default 10), appending to OUT/results.jsonl; finished names are skipped, so a queue
# resumes.
#   benchmarks/quality/run_queue.sh OUT QUEUE_FILE [QUEUE_FILE ...]     (queues: benchmarks/quality/configs/)
# QUEUE_FILE: one configuration a line, "NAME | CALIB_ARGS | CLI COMMAND", e.g.
#   sg70-16x256 | --calib-windows 16 --seqlen 256 | prune --method sparsegpt --sparsity 0.7
# Before each run the runner takes the first line (in queue order) that nobody has claimed and
# whose memory is available: 16-expert lines wait for $SE16_FREE_GIB (default 10) GiB of
# MemAvailable, other lines are taken meanwhile. Two runners may share queues: a name is claimed
# with mkdir OUT/.claims/NAME (remove it to rerun a failed name). Runs get oom_score_adj 1000, so
# on a shared machine the kernel kills them before anyone else's work. $MODEL (default smollm2-135m)
# names the model every line compresses, e.g. MODEL=gemma3-270m; $EVAL_DATA the corpora each result is
# evaluated on (default "shakespeare:test pydoc"; the first is the row's `perplexity`). $KEEP: names
# whose model folders stay in OUT/model-NAME after evaluation (space-separated; default none).
set -u
out=$1; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}   # PYTHON: another interpreter (default: this checkout's venv)
niceness=${NICE:-10}
# this checkout's code, not whatever the venv's editable install points at
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
echo 1000 > /proc/self/oom_score_adj 2>/dev/null || true
mkdir -p "$out/.claims"
avail_gib() { awk '/MemAvailable/ {print int($2 / 1048576)}' /proc/meminfo; }

# Claims and prints the next runnable line ("NAME|CALIB|CMD"); status 1: nothing left, 2: all left wait for memory.
next_job() {
  local waiting=0 queue name calib cmd need
  for queue in "$@"; do
    while IFS='|' read -r name calib cmd; do
      name=${name//[[:space:]]/}; [ -z "$name" ] && continue; case $name in \#*) continue;; esac
      [ -d "$out/.claims/$name" ] && continue
      need=0; case "$cmd" in *"--experts 16"*) need=${SE16_FREE_GIB:-10};; esac
      if [ "$(avail_gib)" -lt "$need" ]; then waiting=1; continue; fi
      mkdir "$out/.claims/$name" 2>/dev/null || continue
      echo "$name|$calib|$cmd"; return 0
    done < "$queue"
  done
  return $((1 + waiting))
}

while true; do
  job=$(next_job "$@"); status=$?
  if [ $status -eq 1 ]; then break; elif [ $status -eq 2 ]; then sleep 60; continue; fi
  IFS='|' read -r name calib cmd <<< "$job"
  echo "$(date +%H:%M) start $name (MemAvailable $(avail_gib) GiB)"
  keep=(); case " ${KEEP:-} " in *" $name "*) keep=(--keep);; esac
  OMP_NUM_THREADS=1 nice -n "$niceness" "$python" "$root/benchmarks/pruning/compression.py" run --out "$out" --name "$name" "${keep[@]}" \
    --model "${MODEL:-smollm2-135m}" \
    --eval-data ${EVAL_DATA:-shakespeare:test pydoc} -- $cmd $calib < /dev/null
done
