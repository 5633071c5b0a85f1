#!/usr/bin/env bash
# The CUDA path in one command, under 5 minutes on one H200, one JSON file out
# (benchmarks/results/gpu-check.json): `pytest -m cuda`, bf16 training MFU of ~100M-parameter
# chatgpt and sora against the measured bf16 matmul peak, an FSDP smoke run on the one GPU, and
# batched generation tokens/s. See scripts/gpu_check.py.
# Usage: bash scripts/gpu_check.sh [--dry-run] [--output FILE]   (from anywhere; the project installed)
#   --dry-run: on CPU with tiny sizes, to check the script where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 300 "$PY" scripts/gpu_check.py --python "$PY" --textgen "${TEXTGEN:-$(dirname "$PY")/textgen}" "$@"
