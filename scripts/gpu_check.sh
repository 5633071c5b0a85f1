#!/usr/bin/env bash
# The CUDA path in a few minutes: the tests marked `cuda`, both families trained a few hundred steps
# in bf16, generation, then tokens/s, MFU against the measured bf16 matmul peak, and peak memory.
# Usage: bash scripts/gpu_check.sh   (from the repository root, with the project installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TEXTGEN=${TEXTGEN:-.venv/bin/textgen}
export HF_HUB_OFFLINE=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
"$PY" -m pytest -q -m cuda tests/test_cuda.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for recipe in sora chatgpt; do
  "$TEXTGEN" pretrain --recipe "$recipe.yaml" --json run.root="$work/runs" train.device=cuda train.precision=bf16 \
    model.layers=4 model.hidden=512 model.heads=8 model.ffn=2048 model.context=256 train.batch_size=32 \
    pretrain.steps=300 train.eval_every=300 train.log_every=50 checkpoint.every=0 > "$work/$recipe.json"
  "$TEXTGEN" generate --model "$work/runs/$recipe/pretrain/final" --prompt "Call me Ishmael." generate.max_new_tokens=64 generate.device=cuda > /dev/null
done
"$PY" scripts/gpu_report.py "$work/sora.json" "$work/chatgpt.json"
