#!/usr/bin/env bash
# Creates .venv (if missing) and installs warmswarm with its dev extras. Idempotent: a second run is quick.
# Used by scripts/demo.sh and scripts/test.sh so that each README command works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.warmswarm-installed
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing warmswarm and its dependencies (first run takes a few minutes)"
  # pip's own exit status decides, not grep's (grep exits 1 when it prints nothing): an install that was cut off
  # must not be stamped as done, or every later run starts on a half-installed .venv
  set +e
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[dev]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || { echo "[setup] pip install failed (exit $rc); run this again" >&2; exit 1; }
  .venv/bin/python -c "import peer, coordinator, protos, hivemind, torch, transformers" \
    || { echo "[setup] install incomplete; run this again" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# The external tools the integration tests drive (scripts/system-deps.txt). Best effort on a dev machine (those tests
# skip, with the reason); with CI=true a tool it could not install stops here, since those tests would fail anyway.
if [ "${WARMSWARM_SYSTEM_DEPS:-1}" = "1" ] && [ -x scripts/system-deps.sh ]; then
  scripts/system-deps.sh
fi
