#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (run as root), then runs the whole suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
WALKEEPER_EXTRAS=test source scripts/setup-env.sh
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest -n "${WALKEEPER_TEST_WORKERS:-2}" "$@"
