#!/usr/bin/env bash
# What the browser end-to-end test (tests/e2e) needs beyond .venv: Debian's chromium.
# Playwright's Python package drives it at /usr/bin/chromium; it never downloads a browser.
#   .ci/e2e-deps.sh      (exit 1 when chromium is missing and cannot be installed)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "e2e-deps: $*" >&2; }

if [[ -x /usr/bin/chromium ]]; then
  log "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
else
  if ! command -v apt-get >/dev/null || [[ $(id -u) -ne 0 ]]; then
    log "/usr/bin/chromium is missing and cannot be installed here (needs root and apt-get)"
    exit 1
  fi
  log "installing chromium with apt-get"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi

if [[ -x .venv/bin/python ]] && ! .venv/bin/python -c "import playwright" 2>/dev/null; then
  log "the playwright package is missing from .venv; run .ci/setup.sh (the test extra has it)"
  exit 1
fi
