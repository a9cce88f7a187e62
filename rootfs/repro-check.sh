#!/usr/bin/env bash
# Builds wardd and the initrd twice, from two checkouts of HEAD in two directories with their own
# target directories and caches, one after the other, and compares every output's SHA-256.
# With --rootfs, builds the debootstrap-style rootfs (rootfs/build-rootfs.sh, mmdebstrap) twice
# instead, from one wardd, and compares the two tarballs and the two trees entry by entry.
#
#   rootfs/repro-check.sh [WORKDIR]     (default: a new directory under /tmp; removed on success)
#   sudo rootfs/repro-check.sh --rootfs [--wardd PATH] [--mirror URL] [WORKDIR]
#
# Uncommitted changes are not built (git worktree of HEAD). Each round is a full release build of
# wardd (about 20 minutes on 2 cores): too long for CI, so this is `just repro-initrd`, not part
# of `just test`. The same CARGO_HOME is shared (the registry's sources), the paths of which are
# remapped anyway. Exits 1 and prints the differing files when the rounds differ.
#
# --rootfs (`just repro-rootfs`; root and network, not in CI): wardd is built once
# (rootfs/build-wardd.sh) unless --wardd, so only the rootfs tooling is compared; each round is
# about 1.5 to 2 minutes on 2 cores. Both rounds use HEAD's commit time as SOURCE_DATE_EPOCH
# unless it is set, and fetch from --mirror (default: build-rootfs.sh's, live Debian): a package
# updated on the mirror between the rounds shows up as a difference; a snapshot.debian.org URL
# pins it. out-ROUND/tree-meta.txt lists every entry (path, type, mode, uid, gid, mtime, link
# target) and out-ROUND/tree-sha256.txt every regular file's digest.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mode=initrd
wardd=""
mirror=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rootfs) mode=rootfs ;;
    --wardd) wardd=$(realpath "${2:?--wardd needs a path}"); shift ;;
    --mirror) mirror=(--mirror "${2:?--mirror needs a URL}"); shift ;;
    -*) echo "repro-check: unknown argument $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
work="${1:-$(mktemp -d /tmp/ward-repro.XXXXXX)}"
mkdir -p "$work"
work=$(realpath "$work")
log() { echo "repro-check: $*" >&2; }

# Every entry of a tree, in two listings: metadata, and the digest of each regular file.
list_tree() {
  (cd "$1" && find . -xdev -printf '%p\t%y\t%m\t%U\t%G\t%T@\t%l\n' | LC_ALL=C sort) > "$2/tree-meta.txt"
  (cd "$1" && find . -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) > "$2/tree-sha256.txt"
}

if [ "$mode" = rootfs ]; then
  [ "$(id -u)" -eq 0 ] || { log "--rootfs needs root (rootfs/build-rootfs.sh)"; exit 1; }
  if [ -z "$wardd" ]; then
    log "building wardd once, for both rounds"
    wardd=$(CARGO_TARGET_DIR="$work/target" "$root/rootfs/build-wardd.sh")
  fi
fi

for round in a b; do
  src="$work/src-$round"
  rm -rf "$src"
  git -C "$root" worktree add -q --detach "$src" HEAD
  log "round $round in $src"
  if [ "$mode" = rootfs ]; then
    rm -rf "$work/rootfs-$round" "$work/out-$round"
    mkdir -p "$work/out-$round"
    start=$(date +%s)
    "$src/rootfs/build-rootfs.sh" --wardd "$wardd" "${mirror[@]}" --out "$work/rootfs-$round" \
      --tar "$work/out-$round/rootfs.tar.gz" >&2
    log "round $round: $(( $(date +%s) - start )) s"
    list_tree "$work/rootfs-$round" "$work/out-$round"
  else
    CARGO_TARGET_DIR="$work/target-$round" WARD_CACHE="$work/cache-$round" \
      "$src/rootfs/build-initrd.sh" --measure --out "$work/out-$round" >&2
    cp "$work/target-$round/release/wardd" "$work/out-$round/wardd.unstripped" 2>/dev/null \
      || cp "$work/target-$round/x86_64-unknown-linux-musl/release/wardd" "$work/out-$round/wardd.unstripped"
  fi
  git -C "$root" worktree remove --force "$src"
done

status=0
for f in "$work"/out-a/*; do
  name=$(basename "$f")
  a=$(sha256sum < "$f" | awk '{print $1}')
  b=$(sha256sum < "$work/out-b/$name" | awk '{print $1}')
  if [ "$a" = "$b" ]; then
    echo "same      $a  $name"
  else
    echo "DIFFERENT $a $b  $name"
    status=1
  fi
done
if [ "$status" -ne 0 ] && [ "$mode" = rootfs ]; then
  diff "$work/out-a/tree-meta.txt" "$work/out-b/tree-meta.txt" | head -n 50 || true
  diff "$work/out-a/tree-sha256.txt" "$work/out-b/tree-sha256.txt" | head -n 50 || true
fi
if [ "$status" -eq 0 ]; then
  rm -rf "$work"
else
  log "kept $work for inspection (diffoscope out-a out-b)"
fi
exit "$status"
