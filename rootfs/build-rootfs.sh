#!/usr/bin/env bash
# Builds a Debian guest root filesystem with mmdebstrap, with wardd as a systemd service.
#
#   sudo rootfs/build-rootfs.sh [--wardd PATH] [--out DIR] [--suite SUITE] [--mirror URL] [--tar FILE]
#
# mmdebstrap (minbase, merged /usr made as debootstrap makes it) installs systemd, udev, dbus,
# kmod, iproute2, ca-certificates, cryptsetup-bin and e2fsprogs into DIR (default .work/rootfs);
# wardd goes to /usr/bin/wardd (rootfs/build-wardd.sh's release build unless --wardd; stripped),
# rootfs/systemd/ward.service and ward-guest.target to /etc/systemd/system, and a config to
# /etc/ward/ward.toml. ward.service is enabled and ward-guest.target made the default target
# (`systemctl --root`, nothing runs inside the tree). --tar FILE also packs DIR into a tarball.
# Needs root, mmdebstrap and network access to the mirror; not run in CI.
#
# Reproducible (rootfs/README.md, "Reproducibility"; `sudo rootfs/repro-check.sh --rootfs`): the
# same wardd, SOURCE_DATE_EPOCH (default: the commit time of HEAD) and mirror content give the same
# tree (content, modes, owners, link targets, mtimes) and the same tarball:
# - mmdebstrap with SOURCE_DATE_EPOCH: no apt lists or .deb cache, no dpkg/alternatives logs, no
#   ldconfig aux-cache, no /var/lib/dbus/machine-id, nothing in /run and /tmp, an empty
#   /etc/machine-id (systemd makes a fresh one at every boot and does not treat it as a first
#   boot), and /etc/shadow's last-change days from SOURCE_DATE_EPOCH;
# - removed here: /etc/resolv.conf and /etc/hostname, which mmdebstrap (like debootstrap) copies
#   from the build host;
# - every mtime later than SOURCE_DATE_EPOCH (files the build wrote, directories it changed) is
#   set to it; files unpacked from packages keep their packaged mtimes;
# - the tarball: sorted, pax without atime/ctime, numeric owners as in the tree (not 0:0: the
#   tree has files of other users and groups), mtimes clamped, `gzip -n`.
# Not pinned: the package set. The default mirror is live Debian; for the same packages later,
# pass a snapshot, e.g. --mirror http://snapshot.debian.org/archive/debian/20250520T000000Z/.
# The build host's mmdebstrap, apt, dpkg, tar, gzip and strip versions are inputs too.
set -euo pipefail
umask 022

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.work/rootfs"
wardd=""
suite=bookworm
mirror=http://deb.debian.org/debian
tar=""
packages=systemd,systemd-sysv,udev,dbus,kmod,iproute2,ca-certificates,cryptsetup-bin,e2fsprogs
merged_usr_hooks=/usr/share/mmdebstrap/hooks/merged-usr

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
[ "$(id -u)" -eq 0 ] || { log "needs root (mmdebstrap, files of other owners)"; exit 1; }
command -v mmdebstrap >/dev/null 2>&1 || { log "missing mmdebstrap (apt-get install mmdebstrap)"; exit 1; }
[ -d "$merged_usr_hooks" ] || { log "missing $merged_usr_hooks (mmdebstrap >= 1.0)"; exit 1; }
command -v systemctl >/dev/null 2>&1 || { log "missing systemctl (the systemd package)"; exit 1; }

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
# Files this build writes are clamped down to SOURCE_DATE_EPOCH; one in the future would leave
# them at the time they were written.
if [ "$SOURCE_DATE_EPOCH" -gt "$(date +%s)" ]; then
  log "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH is later than now"
  exit 1
fi

if [ -z "$wardd" ]; then
  wardd=$("$root/rootfs/build-wardd.sh")
fi
[ -x "$wardd" ] || { log "$wardd is not an executable"; exit 1; }

if [ -e "$out/etc/debian_version" ]; then
  log "reusing the tree in $out"
else
  log "mmdebstrap $suite into $out ($mirror, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
  mkdir -p "$out"
  # The merged-usr hook makes /bin, /lib, /sbin symlinks into /usr and installs usr-is-merged,
  # as debootstrap does; without it mmdebstrap installs the usrmerge package (and perl).
  mmdebstrap --mode=root --format=directory --variant=minbase \
    --hook-dir="$merged_usr_hooks" --include="$packages" \
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

# The build host's resolver and name are no property of the guest (DNS and the hostname come
# from the VM's network setup at run time); both would make two hosts' trees differ.
rm -f "$out/etc/resolv.conf" "$out/etc/hostname"
# Last, so that nothing written after it escapes: the build's own mtimes down to the epoch.
find "$out" -xdev -newermt "@$SOURCE_DATE_EPOCH" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

if [ -n "$tar" ]; then
  tar --create --file=- --directory="$out" --format=pax --xattrs --numeric-owner \
    --sort=name --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime . \
    | gzip -n > "$tar"
  log "packed $tar ($(stat -c %s "$tar") bytes, sha256 $(sha256sum < "$tar" | cut -d' ' -f1))"
fi
echo "rootfs: $out ($(du -sh "$out" | cut -f1))"
