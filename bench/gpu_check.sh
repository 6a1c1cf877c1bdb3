#!/usr/bin/env bash
# GPU evidence in one prepared call (issue 22): bench/gpu_step.py's table, bench/offload_copies.py, the CUDA-only tests
# (pytest, OUT_DIR/cuda_tests.log), then a 2-process `peer join` swarm on the one GPU for up to ~3 minutes; samples/s, MFU, GPU utilisation and peak memory printed and written to
# OUT_DIR/gpu_check.json (what each figure is: bench/gpu_check.py). Within ~8 minutes, offline: every package comes
# from the repository's .venv (else this machine's python3) and the tokenizer from the packaged MiniLM.
#   bench/gpu_check.sh OUT_DIR             # on a GPU machine
#   bench/gpu_check.sh OUT_DIR --dry-run   # the same pipeline on the CPU at a tiny size (2-4 min on a loaded 2-core box)
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ] || [[ "$1" == -* ]] || { [ $# -eq 2 ] && [ "$2" != --dry-run ]; }; then
  echo "usage: bench/gpu_check.sh OUT_DIR [--dry-run]" >&2
  exit 2
fi
out=$(realpath -m "$1")
shift
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
if ! "$python" -c "import torch, hivemind, transformers, psutil" 2>/dev/null; then
  echo "error: $python lacks torch, hivemind, transformers or psutil: run scripts/setup.sh (it makes .venv)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$python" bench/gpu_check.py "$out" "$@"
