#!/usr/bin/env bash
# Remove what install.sh installed. Configuration (/etc/mnemomd) and data
# (/var/lib/mnemomd) are kept unless --purge is given; the mnemomd user is kept (its id
# may still own files, such as backups).
#
#   ./uninstall.sh [--prefix DIR] [--purge]    (default prefix: where install.sh put it)
#   DESTDIR=/stage ./uninstall.sh              remove from a staged root
set -euo pipefail

default_prefix=/usr/local
prefix=$default_prefix
purge=0
destdir=${DESTDIR:-}

usage() {
  sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "uninstall.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$prefix" in
  /*) prefix=${prefix%/} ;;
  *) echo "uninstall.sh: --prefix must be an absolute path" >&2; exit 2 ;;
esac

root=${destdir%/}
say() { printf 'uninstall.sh: %s\n' "$*"; }

units=(mnemomd.service mnemomd@.service)
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl disable --now mnemomd.service 'mnemomd@*.service' >/dev/null 2>&1 || true
fi

for unit in "${units[@]}"; do
  rm -f "$root/etc/systemd/system/$unit"
done
rm -f "$root/etc/sysusers.d/mnemomd.conf" "$root/etc/tmpfiles.d/mnemomd.conf"
if [ "$(readlink "$root$prefix/bin/mnemomd" 2>/dev/null)" = ../lib/mnemomd/mnemomd ]; then
  rm -f "$root$prefix/bin/mnemomd"
fi
rm -rf "$root$prefix/lib/mnemomd" "$root$prefix/share/doc/mnemomd" "$root$prefix/share/mnemomd"
say "removed the binary, units and docs under $prefix"

if [ "$purge" = 1 ]; then
  rm -rf "$root/etc/mnemomd" "$root/var/lib/mnemomd"
  say "removed /etc/mnemomd and /var/lib/mnemomd"
else
  say "kept /etc/mnemomd and /var/lib/mnemomd (--purge removes them)"
fi
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
fi
