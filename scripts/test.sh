#!/usr/bin/env bash
# Set up .venv and run the whole test suite (slow tests included). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest "$@"
