#!/usr/bin/env bash
# The GPU checks of one session on a CUDA machine: the gpu-marked tests (every command on CUDA equals
# its CPU result; torchrun with NCCL) and the tests of the loaders a GPU user meets (issue 12), the
# expanded model's eval speed against SparseGPT's with its experts as one grouped GEMM or one matmul
# per expert (issue 20, benchmarks/gpu/expert_eval.py), and the 7B-shaped scale run (seconds per
# decoder layer and peak GPU memory at 128 x 2048 calibration).
#   OUT=some/folder bash benchmarks/gpu/gpu_check.sh [tests] [experts] [scale]    (default: all three)
# Each step is capped (240 / 420 / 240 s); name fewer steps to fit a shorter device call.
# Needs torch with CUDA, transformers, pytest; runs from the repository root without installing.
set -uo pipefail
OUT=${OUT:-gpu_check}
STEPS=${*:-tests experts scale}
mkdir -p "$OUT"
export PYTHONPATH=src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/machine.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/machine.txt"
for step in $STEPS; do
  case $step in
    tests)
      timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/end_to_end/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
      timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_remote_code.py tests/test_runtime.py 2>&1 | tail -5 | tee "$OUT/cpu_side_tests.log" ;;
    experts)
      timeout 420 python3 benchmarks/gpu/expert_eval.py --device cuda --work "$OUT/expert_eval_folders" \
        --out "$OUT/expert_eval.jsonl" 2>&1 | tee "$OUT/expert_eval.log" | tail -6 ;;
    scale)
      timeout 240 python3 benchmarks/gpu/scale_7b.py --device cuda --layers 2 --windows 128 --seqlen 2048 2>&1 | tee "$OUT/scale_7b.jsonl" ;;
    *) echo "unknown step $step: use tests, experts or scale" >&2; exit 2 ;;
  esac
done
