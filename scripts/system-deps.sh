#!/usr/bin/env bash
# Installs the tools that the integration tests drive, listed with their packages in scripts/system-deps.txt:
# Debian packages (Prometheus with promtool, headless Chromium, kubectl, systemd-analyze, curl, unshare, ip,
# iptables) via apt, and the pip
# tools of the dev extras (hadolint, playwright) into .venv. Idempotent and quiet: it installs only what is missing,
# runs `apt-get update` only then, and prints nothing when nothing is missing.
# With CI=true anything still missing afterwards is an error (exit 1, one line naming it), because the tests fail
# without it there; elsewhere it is best effort (one warning line, exit 0) and those tests skip with the reason.
#   --dry-run   say what would be installed, install nothing
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
list="$root/scripts/system-deps.txt"
venv_bin="$root/.venv/bin"
dry_run=0
case "${1:-}" in
  "") ;;
  --dry-run) dry_run=1 ;;
  *) echo "[system-deps] unknown argument '$1' (the only option is --dry-run)" >&2; exit 2 ;;
esac
case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
  true | 1 | yes) ci=1 ;;
  *) ci=0 ;;
esac

have() {  # tool source: pip tools count in .venv/bin (where the tests look first) or on PATH
  [ "$2" = pip ] && [ -x "$venv_bin/$1" ] && return 0
  command -v "$1" >/dev/null 2>&1
}

# The missing tools as "tool source package" lines.
missing_tools() {
  local tool source package
  while read -r tool source package; do
    case "$tool" in "" | "#"*) continue ;; esac
    have "$tool" "$source" || echo "$tool $source $package"
  done <"$list"
}

packages_from() {  # source, reading "tool source package" lines: that source's packages, each once
  awk -v s="$1" '$2 == s && !seen[$3]++ { printf "%s%s", sep, $3; sep = " " }'
}

missing=$(missing_tools)
[ -z "$missing" ] && exit 0
apt_packages=$(packages_from apt <<<"$missing")
pip_packages=$(packages_from pip <<<"$missing")

if [ "$dry_run" = 1 ]; then
  [ -n "$apt_packages" ] && echo "[system-deps] would install Debian packages: $apt_packages"
  [ -n "$pip_packages" ] && echo "[system-deps] would install into .venv: $pip_packages"
  exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ -n "$apt_packages" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "[system-deps] not root: cannot apt-get install $apt_packages" >&2
  else
    echo "[system-deps] installing Debian packages: $apt_packages"
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-qq -o DPkg::Lock::Timeout=300)  # wait for another apt run rather than fail on its lock
    # shellcheck disable=SC2086  # one word per package
    if ! { apt-get "${apt_opts[@]}" update && apt-get "${apt_opts[@]}" install -y --no-install-recommends $apt_packages; } \
      >"$log" 2>&1; then
      tail -n 5 "$log" >&2
    fi
  fi
fi
if [ -n "$pip_packages" ]; then
  if [ ! -x "$venv_bin/python" ]; then
    echo "[system-deps] no .venv: run scripts/setup.sh, which installs $pip_packages with the dev extras" >&2
  else
    echo "[system-deps] installing into .venv: $pip_packages"
    # shellcheck disable=SC2086  # one word per package
    if ! "$venv_bin/python" -m pip install -q --disable-pip-version-check -c "$root/requirements/constraints.txt" \
      $pip_packages >"$log" 2>&1; then
      tail -n 5 "$log" >&2
    fi
  fi
fi

still=$(missing_tools | awk '{ kind = $2 == "apt" ? "Debian package" : "PyPI package"
                                printf "%s%s (%s %s)", sep, $1, kind, $3; sep = ", " }')
[ -z "$still" ] && exit 0
if [ "$ci" = 1 ]; then
  echo "[system-deps] CI=true and still missing: $still" >&2
  exit 1
fi
echo "[system-deps] still missing: $still; the tests that need them skip with this reason" >&2
