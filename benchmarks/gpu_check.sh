#!/usr/bin/env bash
# The GPU check in one command (< 10 minutes on one GPU): the CUDA tests, then the speed ratios on CUDA.
#   bash benchmarks/gpu_check.sh          # from the repository root, with the project's venv
# Fails (exit 1) when torch sees no CUDA device, so it can never pass by skipping.
# Writes benchmarks/results/speed_cuda.{md,csv}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "error: torch sees no CUDA device; nothing checked")'
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)'
timeout 300 "$PY" -m pytest -q -m cuda -rs tests/test_cuda.py tests/test_divergences.py
timeout 240 "$PY" benchmarks/speed.py --device cuda --only a --reps 7
