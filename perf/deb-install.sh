#!/usr/bin/env bash
# Installs sluice's .deb as a user would: a fresh Debian 12 root made by
# debootstrap from Debian's packages (minbase + man-db) in a private
# directory, `dpkg -i` there, then `wsrep_sst_sluice --help`, `man -w` of
# the pages and `sluice demo` inside it (chroot, with /proc and /dev).
# Needs root and debootstrap. Usage: perf/deb-install.sh [package.deb]
# (default: builds one with packaging/build-deb.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
deb="${1:-}"
if [ -z "$deb" ]; then
  deb=$(packaging/build-deb.sh | grep '\.deb$' | tail -n 1)
fi
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root=$(mktemp -d /var/tmp/sluice-deb-root.XXXXXX)
chmod 755 "$root"   # the chroot's / (man-db drops to its own user)
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  umount "$root/dev" 2>/dev/null || true
  rm -rf --one-file-system "$root"
  rm -f "$root.debootstrap.log"
}
trap cleanup EXIT
t0=$(date +%s)
debootstrap --variant=minbase --include=man-db bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 \
  || { tail -n 20 "$root.debootstrap.log"; exit 1; }
echo "debootstrap: $(( $(date +%s) - t0 )) s"
cp "$deb" "$root/tmp/"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
in_root dpkg -i "/tmp/$(basename "$deb")"
in_root dpkg -s sluice | grep -E '^(Version|Depends|Recommends):'
in_root wsrep_sst_sluice --help
in_root sluice --version
in_root man -w sluice
in_root man -w wsrep_sst_sluice
in_root man -w sluice-check
test -f "$root/usr/share/bash-completion/completions/sluice"
test -f "$root/usr/share/zsh/vendor-completions/_sluice"
test -f "$root/usr/share/fish/vendor_completions.d/sluice.fish"
in_root sluice demo
echo "installed and ran in a fresh Debian 12 root: ok"
