#!/usr/bin/env bash
# The GPU suite (see benchmarks/gpu_suite.py): on a machine with one CUDA GPU it runs in under 8 minutes and
# writes benchmarks/results/gpu_suite.json and .md; --dry-run runs every part at a toy size on the CPU.
#   bash benchmarks/gpu_suite.sh              # on the GPU machine
#   bash benchmarks/gpu_suite.sh --dry-run    # anywhere (the test suite runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_suite.py "$@"
