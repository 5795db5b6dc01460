#!/usr/bin/env bash
# Install mnemomd from this unpacked tarball, with no network. Safe to run again: that is
# how an upgrade is done. An operator's /etc/mnemomd/mnemomd.yaml and mnemomd.env are never
# overwritten; the shipped templates land beside them as *.example.
#
#   ./install.sh [--prefix DIR]          (default prefix: /usr/local)
#   DESTDIR=/stage ./install.sh          stage into a root, e.g. for a package build
#
# Layout: PREFIX/lib/mnemomd (the binary and its libraries), PREFIX/bin/mnemomd,
# PREFIX/share/mnemomd (migrations, uninstall.sh), PREFIX/share/doc/mnemomd,
# /etc/mnemomd (config), /etc/systemd/system (units), /etc/sysusers.d and
# /etc/tmpfiles.d (user and directories), /var/lib/mnemomd (data).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=/usr/local
destdir=${DESTDIR:-}

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$prefix" in
  /*) prefix=${prefix%/} ;;
  *) echo "install.sh: --prefix must be an absolute path" >&2; exit 2 ;;
esac
[ -x "$here/lib/mnemomd/mnemomd" ] || { echo "install.sh: run me from the unpacked tarball" >&2; exit 1; }

root=${destdir%/}
libdir=$root$prefix/lib/mnemomd
bindir=$root$prefix/bin
sharedir=$root$prefix/share/mnemomd
docdir=$root$prefix/share/doc/mnemomd
etcdir=$root/etc/mnemomd
unitdir=$root/etc/systemd/system
statedir=$root/var/lib/mnemomd
# Only a real install (no DESTDIR, as root) creates the user and sets ownership.
live=0
if [ -z "$root" ] && [ "$(id -u)" = 0 ]; then live=1; fi

say() { printf 'install.sh: %s\n' "$*"; }

# The binary: copy beside the old one, then swap, so a failed copy leaves the old in place.
install -d -m 0755 "$root$prefix/lib" "$bindir"
rm -rf "$libdir.new"
cp -R "$here/lib/mnemomd" "$libdir.new"
chmod -R u=rwX,go=rX "$libdir.new"
rm -rf "$libdir.old"
if [ -e "$libdir" ]; then mv "$libdir" "$libdir.old"; fi
mv "$libdir.new" "$libdir"
rm -rf "$libdir.old"
ln -sfn ../lib/mnemomd/mnemomd "$bindir/mnemomd"
say "binary: $prefix/bin/mnemomd ($(cat "$here/VERSION"))"

install -d -m 0755 "$sharedir/migrations" "$docdir"
install -m 0644 "$here"/share/migrations/*.sql "$sharedir/migrations/"
cp -R "$here"/share/doc/. "$docdir/"
sed "s|^default_prefix=.*|default_prefix=$prefix|" "$here/uninstall.sh" > "$sharedir/uninstall.sh"
chmod 0755 "$sharedir/uninstall.sh"

# Units point at the binary under this prefix; everything else in them is as shipped.
install -d -m 0755 "$unitdir" "$root/etc/sysusers.d" "$root/etc/tmpfiles.d"
for unit in mnemomd.service mnemomd@.service; do
  sed -e "s|/usr/local/bin/mnemomd|$prefix/bin/mnemomd|g" \
      -e "s|/usr/local/share/doc/mnemomd|$prefix/share/doc/mnemomd|g" \
      "$here/systemd/$unit" > "$unitdir/$unit.tmp"
  chmod 0644 "$unitdir/$unit.tmp"
  mv "$unitdir/$unit.tmp" "$unitdir/$unit"
done
install -m 0644 "$here/systemd/mnemomd.sysusers" "$root/etc/sysusers.d/mnemomd.conf"
install -m 0644 "$here/systemd/mnemomd.tmpfiles" "$root/etc/tmpfiles.d/mnemomd.conf"

if [ "$live" = 1 ] && ! id mnemomd >/dev/null 2>&1; then
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers /etc/sysusers.d/mnemomd.conf
  else
    useradd --system --user-group --home-dir /var/lib/mnemomd --shell /usr/sbin/nologin \
      --comment "Mnemom integrity gateway" mnemomd
  fi
  say "created the system user mnemomd"
fi

# Configuration: templates always refreshed, the files themselves only created.
install -d -m 0750 "$etcdir"
for name in mnemomd.yaml mnemomd.env; do
  install -m 0640 "$here/etc/$name" "$etcdir/$name.example"
  if [ -e "$etcdir/$name" ]; then
    say "kept $etcdir/$name (the new template is $name.example)"
  else
    install -m 0640 "$here/etc/$name" "$etcdir/$name"
    say "created $etcdir/$name"
  fi
done
install -d -m 0750 "$statedir"
if [ "$live" = 1 ]; then
  chown root:mnemomd "$etcdir" "$etcdir"/mnemomd.yaml* "$etcdir"/mnemomd.env*
  chown mnemomd:mnemomd "$statedir"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "systemd units installed; start with: systemctl enable --now mnemomd"
  fi
fi
say "done"
