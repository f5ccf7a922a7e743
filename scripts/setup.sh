#!/usr/bin/env bash
# Set up xory on a fresh machine: a virtual environment in .venv with xory installed (editable).
#   scripts/setup.sh          the app: core install (no torch)
#   scripts/setup.sh test     + what the tests need: pytest, playwright (driving Debian's chromium), the
#                             fine-tune extra (torch 2.13 CPU), node packages for the web page
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-app}"
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$what" = "test" ]; then
  .venv/bin/python -m pip install -q -e ".[test,finetune]"
  if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
  fi
  if [ -f web/package.json ] && command -v npm >/dev/null 2>&1; then
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
echo "xory set up in $(pwd)/.venv ($what)"
