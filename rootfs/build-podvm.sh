#!/usr/bin/env bash
# Builds the peer-pod VM image described in rootfs/mkosi/ with mkosi 14.
#
#   sudo rootfs/build-podvm.sh [--wardd PATH] [--caa-files DIR] [--out FILE]
#
# Stages an extra tree with wardd (/usr/bin/wardd; the release build unless --wardd) and
# rootfs/systemd/'s units, plus --caa-files DIR copied as is: cloud-api-adaptor's podvm files
# (kata-agent, agent-protocol-forwarder, process-user-data and their units, laid out as in the
# image). Then runs mkosi on rootfs/mkosi (Debian bookworm, UEFI, ext4 in GPT) to FILE
# (default .work/podvm/podvm.raw). Needs root and network (mkosi runs debootstrap and apt).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
wardd=""
caa=""
out="$root/.work/podvm/podvm.raw"

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --wardd) wardd="${2:?--wardd needs a path}"; shift ;;
    --caa-files) caa="${2:?--caa-files needs a directory}"; shift ;;
    --out) out="${2:?--out needs a file}"; shift ;;
    -h|--help) usage ;;
    *) echo "build-podvm: unknown argument $1" >&2; usage ;;
  esac
  shift
done

log() { echo "build-podvm: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "needs root (mkosi)"; exit 1; }
command -v mkosi >/dev/null 2>&1 || { log "missing mkosi (apt-get install mkosi)"; exit 1; }

if [ -z "$wardd" ]; then
  log "building wardd (release)"
  (cd "$root" && cargo build -q --release -p ward-agent --bin wardd)
  wardd="${CARGO_TARGET_DIR:-$root/target}/release/wardd"
fi
[ -x "$wardd" ] || { log "$wardd is not an executable"; exit 1; }

extra="$root/.work/podvm/extra"
rm -rf "$extra"
install -D -m 0755 "$wardd" "$extra/usr/bin/wardd"
strip "$extra/usr/bin/wardd" 2>/dev/null || true
install -D -m 0644 "$root/rootfs/systemd/ward.service" "$extra/etc/systemd/system/ward.service"
install -D -m 0644 "$root/rootfs/systemd/ward-guest.target" "$extra/etc/systemd/system/ward-guest.target"
if [ -n "$caa" ]; then
  [ -d "$caa" ] || { log "$caa is not a directory"; exit 1; }
  cp -a "$caa/." "$extra/"
else
  log "no --caa-files: the image has wardd but no kata-agent, forwarder or process-user-data"
fi

mkdir -p "$(dirname "$out")"
mkosi --directory "$root/rootfs/mkosi" --extra-tree "$extra" --output "$out" --force build
log "image: $out ($(stat -c %s "$out") bytes)"
