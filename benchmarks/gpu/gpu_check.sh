#!/usr/bin/env bash
# The GPU checks of one session on a CUDA machine (issue 12): the gpu-marked tests (every command on
# CUDA equals its CPU result; torchrun with NCCL), the tests of the loaders a GPU user meets, and the
# 7B-shaped scale run (seconds per decoder layer and peak GPU memory at 128 x 2048 calibration).
#   OUT=some/folder bash benchmarks/gpu/gpu_check.sh
# Needs torch with CUDA, transformers, pytest; runs from the repository root without installing.
set -uo pipefail
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/machine.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/machine.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/end_to_end/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_remote_code.py tests/test_runtime.py 2>&1 | tail -5 | tee "$OUT/cpu_side_tests.log"
timeout 240 python3 benchmarks/gpu/scale_7b.py --device cuda --layers 2 --windows 128 --seqlen 2048 2>&1 | tee "$OUT/scale_7b.jsonl"
