#!/usr/bin/env bash
# Set up and run every test: unit, integration, PostgreSQL store tests, real-vLLM tests and the
# browser e2e test.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup.sh ui,serve,test
.ci/e2e-deps.sh || echo "test.sh: chromium unavailable; the e2e test will skip with its reason" >&2
# Real vLLM (its CPU build) in an environment of its own, for tests/real_engine.
if VLLM_PY="$(.ci/vllm.sh)"; then
  export TRADEOFF_VLLM_PYTHON="$PWD/$VLLM_PY"
else
  echo "test.sh: vLLM's CPU build could not be installed; the real-vLLM tests will skip with their reason" >&2
fi
PG_STARTED=0
if PG_ENV="$(.ci/postgres.sh start)"; then
  eval "$PG_ENV"
  PG_STARTED=1
else
  echo "test.sh: no PostgreSQL server could be started; postgres tests will skip" >&2
fi
cleanup() { [ "$PG_STARTED" = 1 ] && .ci/postgres.sh stop || true; }
trap cleanup EXIT
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra "$@"
