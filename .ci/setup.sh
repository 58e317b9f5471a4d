#!/usr/bin/env bash
# Set up .venv from nothing but Python. CPU-only machines get the CPU build of torch (a wheel
# on this machine's disk, else PyTorch's CPU index) instead of a multi-GB CUDA build; machines
# with an NVIDIA GPU let pip pick the CUDA build as usual.
#   .ci/setup.sh [extras]     (default extras: ui,serve,test)
#   .ci/setup.sh ui,serve     only what the dashboard needs (README's first command: no Ray, Playwright, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-ui,serve,test}"
PY="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip >/dev/null

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
if ! $VPY -c "import torch" >/dev/null 2>&1; then
  if has_gpu; then
    echo "setup: NVIDIA GPU found: installing torch with CUDA from PyPI" >&2
    $VPY -m pip install -q "torch>=2.4"
  elif ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-2.13.0+cpu-* >/dev/null 2>&1; then
    echo "setup: no GPU: installing the CPU build of torch 2.13.0 from local wheels" >&2
    $VPY -m pip install -q "torch==2.13.0"
  else
    echo "setup: no GPU: installing the CPU build of torch from download.pytorch.org" >&2
    $VPY -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# (this machine's pip config names local mirrors that may be absent: hide only those warnings)
$VPY -m pip install -q -e ".[${EXTRAS}]" 2> >(grep -v "^WARNING: Location" >&2)
$VPY -c "import torch, transformers, app.cli"
