#!/usr/bin/env bash
# Fetches Debian's OVMF (the `ovmf` package, with `apt-get download`, unpacked with `dpkg-deb -x`,
# never installed) into a cache and prints the path of its firmware image on stdout.
#
#   rootfs/fetch-ovmf.sh [FILE]     FILE inside /usr/share/ovmf or /usr/share/OVMF (default OVMF.fd)
#
# Debian bookworm's ovmf (2022.11) ships OvmfX64 builds only: their SEV metadata has no
# kernel-hashes section, so under SNP they cannot measure a kernel, initrd and command line.
# The Kata direct-boot shape needs OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc (Debian trixie's
# ovmf ships it as OVMF.amdsev.fd; Kata ships its own): name it with `--firmware` instead.
# OVMF.fd also carries TDVF metadata (the TDX MRTD is computed from it).
# Environment: WARD_CACHE (default .work/cache).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${WARD_CACHE:-$root/.work/cache}"
file="${1:-OVMF.fd}"
log() { echo "fetch-ovmf: $*" >&2; }

version=$(apt-cache policy ovmf 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  log "apt knows no ovmf package (run apt-get update?)"
  exit 1
fi
dir="$cache/ovmf/$version"
if [ ! -d "$dir/usr" ]; then
  log "fetching ovmf $version (apt-get download, not installed)"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  (cd "$dir.tmp" && apt-get download -q "ovmf=$version" 2>&1 | grep -v "unsandboxed" >&2) || true
  deb=$(find "$dir.tmp" -maxdepth 1 -name '*.deb' | head -n1)
  [ -n "$deb" ] || { log "apt-get download ovmf=$version gave no .deb"; exit 1; }
  dpkg-deb -x "$deb" "$dir.tmp/root"
  sha256sum "$deb" | awk '{print $1}' > "$dir.tmp/root/deb.sha256"
  rm -f "$deb"
  rm -rf "$dir" && mv "$dir.tmp/root" "$dir" && rm -rf "$dir.tmp"
fi
for sub in usr/share/ovmf usr/share/OVMF; do
  if [ -f "$dir/$sub/$file" ]; then
    echo "$dir/$sub/$file"
    exit 0
  fi
done
log "ovmf $version has no $file"
exit 1
