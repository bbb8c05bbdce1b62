#!/usr/bin/env bash
# The project's test command: lint, types, import contracts, then the test suite (the README names it).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"; python -m pytest "$@"
