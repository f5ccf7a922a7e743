#!/usr/bin/env bash
# Fresh machine -> the BTS-or-EXO app with the bundled model at http://127.0.0.1:7860/ (extra args go to xory serve)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh app
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/xory serve "$@"
