#!/usr/bin/env bash
# The README's demo command: set up on a fresh machine, then run a coordinator and 2 local peers (Ctrl-C stops all).
set -euo pipefail
cd "$(dirname "$0")/.."
WARMSWARM_SYSTEM_DEPS=0 scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
