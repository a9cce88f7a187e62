#!/usr/bin/env bash
# Builds a Debian guest root filesystem with debootstrap, with wardd as a systemd service.
#
#   sudo rootfs/build-rootfs.sh [--wardd PATH] [--out DIR] [--suite SUITE] [--mirror URL] [--tar FILE]
#
# debootstrap (minbase) installs systemd, udev, dbus, kmod, iproute2 and ca-certificates into
# DIR (default .work/rootfs); wardd goes to /usr/bin/wardd (the release build unless --wardd),
# rootfs/systemd/ward.service and ward-guest.target to /etc/systemd/system, and a config to
# /etc/ward/ward.toml. ward.service is enabled and ward-guest.target made the default target
# (`systemctl --root`, nothing runs inside the tree). --tar FILE also packs DIR into a tarball.
# Needs root, debootstrap and network access to the mirror; not run in CI.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.work/rootfs"
wardd=""
suite=bookworm
mirror=http://deb.debian.org/debian
tar=""

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --wardd) wardd="${2:?--wardd needs a path}"; shift ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --suite) suite="${2:?--suite needs a name}"; shift ;;
    --mirror) mirror="${2:?--mirror needs a URL}"; shift ;;
    --tar) tar="${2:?--tar needs a file}"; shift ;;
    -h|--help) usage ;;
    *) echo "build-rootfs: unknown argument $1" >&2; usage ;;
  esac
  shift
done

log() { echo "build-rootfs: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap)"; exit 1; }
command -v debootstrap >/dev/null 2>&1 || { log "missing debootstrap (apt-get install debootstrap)"; exit 1; }
command -v systemctl >/dev/null 2>&1 || { log "missing systemctl (the systemd package)"; exit 1; }

if [ -z "$wardd" ]; then
  log "building wardd (release)"
  (cd "$root" && cargo build -q --release -p ward-agent --bin wardd)
  wardd="${CARGO_TARGET_DIR:-$root/target}/release/wardd"
fi
[ -x "$wardd" ] || { log "$wardd is not an executable"; exit 1; }

if [ -e "$out/etc/debian_version" ]; then
  log "reusing the debootstrap tree in $out"
else
  log "debootstrap $suite into $out ($mirror)"
  mkdir -p "$out"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,kmod,iproute2,ca-certificates,cryptsetup-bin,e2fsprogs \
    "$suite" "$out" "$mirror"
fi

install -D -m 0755 "$wardd" "$out/usr/bin/wardd"
strip "$out/usr/bin/wardd" 2>/dev/null || true
install -D -m 0644 "$root/rootfs/systemd/ward.service" "$out/etc/systemd/system/ward.service"
install -D -m 0644 "$root/rootfs/systemd/ward-guest.target" "$out/etc/systemd/system/ward-guest.target"
if [ ! -e "$out/etc/ward/ward.toml" ]; then
  # The built-in defaults, written out so the image documents what it runs with.
  install -d -m 0755 "$out/etc/ward"
  "$out/usr/bin/wardd" --print-default-config > "$out/etc/ward/ward.toml" 2>/dev/null \
    || "$wardd" --print-default-config > "$out/etc/ward/ward.toml"
  chmod 0644 "$out/etc/ward/ward.toml"
fi

systemctl --root="$out" enable ward.service
systemctl --root="$out" set-default ward-guest.target
log "ward.service enabled; default target: $(readlink "$out/etc/systemd/system/default.target")"

if [ -n "$tar" ]; then
  tar --numeric-owner --xattrs -C "$out" -czf "$tar" .
  log "packed $tar ($(stat -c %s "$tar") bytes)"
fi
echo "rootfs: $out ($(du -sh "$out" | cut -f1))"
