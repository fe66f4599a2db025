#!/usr/bin/env bash
# The whole peer benchmark: both sides side by side (ours and llm-compressor's run at the same time,
# one configuration each, so every pair shares the machine's load), one thread each, then the table.
#   benchmarks/peer_llmcompressor/peer_llmcompressor.sh runs/peer [CONFIG ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: benchmarks/peer_llmcompressor/peer_llmcompressor.sh OUT [CONFIG ...]}
shift || true
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
[ -f "$OUT/calib.safetensors" ] || "$PY" benchmarks/peer_llmcompressor/peer_llmcompressor.py prepare --out "$OUT"
ONLY=(); [ $# -gt 0 ] && ONLY=(--only "$@")
nice -n 5 "$PY" benchmarks/peer_llmcompressor/peer_llmcompressor.py run --out "$OUT" --side theirs "${ONLY[@]}" > "$OUT/theirs.out" 2>&1 &
THEIRS=$!
nice -n 5 "$PY" benchmarks/peer_llmcompressor/peer_llmcompressor.py run --out "$OUT" --side ours "${ONLY[@]}" > "$OUT/ours.out" 2>&1 &
OURS=$!
wait "$THEIRS" "$OURS"
"$PY" benchmarks/peer_llmcompressor/peer_llmcompressor.py table --out "$OUT"
