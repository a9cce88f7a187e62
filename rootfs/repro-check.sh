#!/usr/bin/env bash
# Builds wardd and the initrd twice, from two checkouts of HEAD in two directories with their own
# target directories and caches, one after the other, and compares every output's SHA-256.
#
#   rootfs/repro-check.sh [WORKDIR]     (default: a new directory under /tmp; removed on success)
#
# Uncommitted changes are not built (git worktree of HEAD). Each round is a full release build of
# wardd (about 20 minutes on 2 cores): too long for CI, so this is `just repro-initrd`, not part
# of `just test`. The same CARGO_HOME is shared (the registry's sources), the paths of which are
# remapped anyway. Exits 1 and prints the differing files when the rounds differ.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work="${1:-$(mktemp -d /tmp/ward-repro.XXXXXX)}"
mkdir -p "$work"
log() { echo "repro-check: $*" >&2; }

for round in a b; do
  src="$work/src-$round"
  rm -rf "$src"
  git -C "$root" worktree add -q --detach "$src" HEAD
  log "round $round in $src"
  CARGO_TARGET_DIR="$work/target-$round" WARD_CACHE="$work/cache-$round" \
    "$src/rootfs/build-initrd.sh" --measure --out "$work/out-$round" >&2
  cp "$work/target-$round/release/wardd" "$work/out-$round/wardd.unstripped" 2>/dev/null \
    || cp "$work/target-$round/x86_64-unknown-linux-musl/release/wardd" "$work/out-$round/wardd.unstripped"
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
if [ "$status" -eq 0 ]; then
  rm -rf "$work"
else
  log "kept $work for inspection (diffoscope out-a out-b)"
fi
exit "$status"
