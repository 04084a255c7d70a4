#!/usr/bin/env bash
# One pass of the GPU figures in BENCHMARKS.md (model, training step, planning), for a CUDA machine that has
# torch but maybe not this project's small pure-Python dependencies: wheels in .whl/ are put on PYTHONPATH.
#   bash bench/gpu_run.sh [OUT_DIR] [--plan-only]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dinowm_gpu}
[ -n "${1:-}" ] && [ "$1" != "--plan-only" ] && OUT=$1
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
# Planning first (the open target: reference-default CEM <= 3 s per plan in bf16): eager vs compiled rollout.
timeout 300 python3 bench/plan.py --device cuda --configs p196,p16 --episodes 1,10 --dtypes bf16,bf16c \
  --opt-steps 10 --no-baseline --gd-steps 0 2>&1 | grep '^{' | tee "$OUT/plan.jsonl"
[ "${1:-}" = "--plan-only" ] || [ "${2:-}" = "--plan-only" ] && exit 0
# DINOv2 parity against transformers' and timm's implementations (transformers is not installed on our CPU machines).
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/core/test_encoders.py 2>&1 | tail -4 | tee "$OUT/encoders.txt"
timeout 150 python3 bench/model.py --device cuda --dtypes bf16,fp32 --min-time 0.5 --train --quick 2>&1 \
  | grep '^{' | tee "$OUT/model.jsonl"
timeout 240 python3 bench/plan.py --device cuda --configs p196,p16 --episodes 1,10 --dtypes fp32,bf16w \
  --opt-steps 10 --no-baseline --gd-steps 10 2>&1 | grep '^{' | tee "$OUT/plan_more.jsonl"
