#!/usr/bin/env bash
# The GPU path, checked in one go (< 5 minutes once set up): set-up, `tradeoff bench` on
# builtin:small, decode tok/s at batch 1/8/32 on builtin:0.5b (a ~0.5B Llama-shaped model with
# random weights, no hub) with the compiled decode step and eager, a short sweep with a token
# budget, and the CUDA-only tests; then ONE JSON summary on stdout (details in $OUT_DIR).
#   scripts/gpu_check.sh            (OUT_DIR=dir to keep the raw outputs; default: a temp dir)
# On a machine without an NVIDIA GPU it exits 0 at once and says so.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi finds none); nothing to check" >&2
  exit 0
fi

OUT_DIR="${OUT_DIR:-$(mktemp -d -t tradeoff-gpu-check-XXXX)}"
mkdir -p "$OUT_DIR"
[ -x .venv/bin/python ] || .ci/setup.sh ui,serve,test >&2  # set-up: minutes the first time
PY=.venv/bin/python
export OMP_WAIT_POLICY=PASSIVE XDG_CACHE_HOME="$OUT_DIR/cache"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: a GPU is present but this venv's torch has no CUDA; rebuild .venv on this machine" >&2
  exit 1
fi

FAILED=()
step() {  # step NAME SECONDS CMD...: run with a time limit, stdout to $OUT_DIR/NAME.json
  local name=$1 limit=$2; shift 2
  echo "gpu_check: $name (at most ${limit}s)" >&2
  local start=$SECONDS
  if ! timeout "$limit" "$@" >"$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.log"; then
    FAILED+=("$name"); echo "gpu_check: $name FAILED; see $OUT_DIR/$name.log" >&2
  fi
  echo "$name $((SECONDS - start))" >>"$OUT_DIR/seconds.txt"
}

step bench_small 50 $PY -m app.cli bench --model builtin:small --device cuda --repeats 1 --json
for mode in on off; do
  step "decode_0.5b_compile_$mode" 55 $PY -m app.cli bench --model builtin:0.5b --device cuda \
    --decode-batches 1,8,32 --decode-only --compile-decode "$mode" --json
done
step sweep_0.5b 55 $PY -m app.cli sweep --model builtin:0.5b --device cuda --profile rag \
  --policy continuous --batch-sizes 16 --max-wait-ms 0 --max-num-batched-tokens 512,none \
  --concurrency 16 --requests 32 --db "sqlite:///$OUT_DIR/gpu_check.db" --json
step trials_0.5b 10 $PY -m app.cli trials 1 --format json --db "sqlite:///$OUT_DIR/gpu_check.db"
step cuda_tests 60 $PY -m pytest tests/engine/test_runner_cuda.py -q -p no:cacheprovider

FAILED_LIST="${FAILED[*]:-}" $PY - "$OUT_DIR" <<'EOF'
import json, os, subprocess, sys
from pathlib import Path

out = Path(sys.argv[1])

def load(name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None

small, trials = load("bench_small"), load("trials_0.5b") or []
keep = ("policy", "batch_size", "max_num_batched_tokens", "load", "status", "output_tokens_per_s",
        "itl_ms_p99", "ttft_ms_p90", "roofline_decode", "roofline_prefill", "peak_memory_mb")
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    gpu = None
print(json.dumps({
    "gpu": gpu, "out_dir": str(out), "failed_steps": os.environ["FAILED_LIST"].split(),
    "seconds": dict(line.split() for line in (out / "seconds.txt").read_text().splitlines()),
    "bench_small": small and {k: small.get(k) for k in ("device_name", "dtype", "engine_vs_raw",
                              "continuous_vs_static", "continuous_vs_hf_generate", "tok_s")},
    "decode_tok_s_0.5b": {mode: (load(f"decode_0.5b_compile_{mode}") or {}).get("decode_tok_s")
                          for mode in ("on", "off")},
    "sweep_0.5b_rag": [{k: t.get(k) for k in keep} for t in trials],
}, indent=2))
EOF
[ ${#FAILED[@]} -eq 0 ]
