#!/usr/bin/env bash
# Create .venv (Python 3.11) and install HepaScreen with the given extras.
# Usage: bash scripts/setup.sh [EXTRAS]   e.g. "dev" (default) or "train"
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1-dev}"   # "" = runtime dependencies only
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade "pip>=23"
fi
if [ -n "$EXTRAS" ]; then
    .venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
else
    .venv/bin/python -m pip install -q -e .
fi
