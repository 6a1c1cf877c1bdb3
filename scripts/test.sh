#!/usr/bin/env bash
# The README's test command: set up on a fresh machine, lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] import layers (import-linter, [tool.importlinter] in pyproject.toml)"
.venv/bin/lint-imports --no-cache --no-logo
echo "[test] pytest"
set +e
# -rfEs: the summary lists every skip with its reason (a missing tool says so; under CI=true it fails instead, see
# tests/system_tools.py), besides the failures and errors that plain -q lists (-rs alone would drop those).
# -m: the fault scenarios too (pyproject's addopts leaves them out of a plain `pytest`, for a quick local run); an
# -m of the caller's comes later and wins, e.g. `bash scripts/test.sh -m scenario` for the scenarios alone.
# --durations: CI's log names the slowest tests, the ones to look at when the suite outgrows its time.
.venv/bin/python -m pytest -q -rfEs -p no:cacheprovider --durations=25 -m "scenario or not scenario" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: that is a failure" >&2
fi
exit "$rc"
