#!/usr/bin/env bash
# Runs a command on a view of this machine where the named Debian packages were never installed, to show what CI
# does on a machine that lacks a tool (issue 20: "CI=true bash .ci/run on a machine without Chromium fails, then
# passes once system-deps.sh ran"), without uninstalling anything for the other users of this machine.
#
#   sudo scripts/without-packages.sh chromium chromium-common chromium-driver -- bash -c 'cd /x && CI=true bash .ci/run'
#   scripts/without-packages.sh --no-apt chromium ... -- CMD   # and apt has no package source either
#
# How: in a private mount namespace, an overlay of / whose upper layer (a fresh directory under /var/tmp, removed at
# the end) whites out every file the packages own (`dpkg -L`) and holds a dpkg status without them, so apt and dpkg
# see them as not installed and `command -v` does not find them; /proc, /sys, /dev and /run/netns are the real ones.
# The command runs chrooted there: whatever it writes or installs lands in the upper layer, never on the machine.
# Needs root (mount namespaces, overlayfs, mknod).
set -euo pipefail

usage="usage: scripts/without-packages.sh [--no-apt] PACKAGE... -- COMMAND..."
no_apt=0
packages=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --no-apt) no_apt=1 ;;
    -*) echo "[without-packages] unknown option '$1'; $usage" >&2; exit 2 ;;
    *) packages+=("$1") ;;
  esac
  shift
done
[ "${1:-}" = "--" ] && [ $# -ge 2 ] && [ ${#packages[@]} -gt 0 ] || { echo "[without-packages] $usage" >&2; exit 2; }
shift
[ "$(id -u)" -eq 0 ] || { echo "[without-packages] needs root (a mount namespace and an overlay of /)" >&2; exit 2; }
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || { echo "[without-packages] '$p' is not an installed Debian package" >&2; exit 2; }
done

state=$(mktemp -d /var/tmp/without-packages.XXXXXX)
trap 'rm -rf "$state"' EXIT
mkdir -p "$state/upper" "$state/work" "$state/root"
upper=$state/upper

whiteout() {  # an overlayfs whiteout: a 0/0 character device in the upper layer hides that path of the lower one
  mkdir -p "$upper$(dirname "$1")"
  mknod "$upper$1" c 0 0
}
for p in "${packages[@]}"; do
  # Files and links only: a directory may hold other packages' files too.
  while IFS= read -r path; do
    if [ -L "$path" ] || [ -f "$path" ]; then whiteout "$path"; fi
  done < <(dpkg -L "$p")
  for info in /var/lib/dpkg/info/"$p".* /var/lib/dpkg/info/"$p":*.*; do
    [ -e "$info" ] && whiteout "$info"
  done
done
mkdir -p "$upper/var/lib/dpkg"
# The status file without the packages' paragraphs (RS="" reads a paragraph at a time).
awk -v drop=" ${packages[*]} " 'BEGIN { RS = ""; ORS = "\n\n" }
  { split($0, lines, "\n"); name = substr(lines[1], 10) }
  lines[1] ~ /^Package: / && index(drop, " " name " ") { next }
  { print }' /var/lib/dpkg/status >"$upper/var/lib/dpkg/status"
if [ "$no_apt" = 1 ]; then
  for src in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
    [ -e "$src" ] && whiteout "$src"
  done
  # apt's cached package lists would still name the packages: hide them, so nothing can be installed.
  for lst in /var/lib/apt/lists/*; do
    [ -f "$lst" ] && whiteout "$lst"
  done
fi

echo "[without-packages] hidden: ${packages[*]}$([ "$no_apt" = 1 ] && echo ', and every apt source')" >&2
unshare -m --propagation private bash -c '
  set -e
  root=$1 upper=$2 work=$3 cwd=$4; shift 4
  mount -t overlay without-packages -o "lowerdir=/,upperdir=$upper,workdir=$work" "$root"
  for m in /proc /sys /dev /run/netns; do
    [ -d "$m" ] && mkdir -p "$root$m" && mount --rbind "$m" "$root$m"
  done
  cd /
  exec chroot "$root" /usr/bin/env -C "$cwd" "$@"
' without-packages "$state/root" "$upper" "$state/work" "$PWD" "$@"
