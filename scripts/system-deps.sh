#!/usr/bin/env bash
# Installs the Debian tools that the integration tests drive: Prometheus (with promtool) and headless Chromium with
# its chromedriver. Idempotent and quiet: it installs only what is missing and runs `apt-get update` only then.
# Needs root (CI and the dev machines run as root); elsewhere it says what is missing and leaves the machine alone.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "[system-deps] missing ${missing[*]}; run as root to install (tests that need them skip loudly)" >&2
  exit 0
fi
echo "[system-deps] installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
