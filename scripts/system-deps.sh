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
apt_opts=(-qq -o DPkg::Lock::Timeout=300)  # wait for another apt run rather than fail on its lock
if ! { apt-get "${apt_opts[@]}" update >/dev/null && \
       apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null; }; then
  # Best effort, as scripts/setup.sh expects: the tests that need these tools skip with a reason that says so.
  echo "[system-deps] could not install ${missing[*]}; the Prometheus/Chromium tests will skip" >&2
fi
