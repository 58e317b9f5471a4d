#!/usr/bin/env bash
# Set up and run every test: unit, integration, PostgreSQL store tests and the browser e2e test.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup.sh ui,serve,test
.ci/e2e-deps.sh || echo "test.sh: chromium unavailable; the e2e test will skip with its reason" >&2
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
