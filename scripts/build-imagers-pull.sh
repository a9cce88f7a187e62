#!/usr/bin/env bash
# Builds `imagers-pull` (image-rs/baseline/imagers-pull): one image pull with CoCo's image-rs from
# guest-components 8246e5e0, made as confidential-data-hub makes it, the baseline of
# `bench-pull --image-rs-bin` (image-rs/README.md, "Against CoCo's image-rs").
#
#   scripts/build-imagers-pull.sh [DIR]      # prints the binary's path; DIR default .work/imagers
#
# Clones guest-components and image-rs's two git dependencies at the revisions its Cargo.toml
# names (from GitHub, or from local mirrors: GC_REPO, LOOPDEV_REPO, OCI_CLIENT_REPO may name any
# git URL or path), points cargo at them with [patch] (guest-components itself is not changed),
# uses guest-components' own Cargo.lock, and builds with CDH's features (`kata-cc-rustls-tls`,
# plus `keywrap-jwe` for a local key). About 12 minutes on 2 cores. Needs git, cargo and
# libclang-dev (loopdev's bindgen). Not run in CI (network to GitHub; the bench needs root).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.work/imagers}
gc_rev=8246e5e0977f6322f0a1b0f77e0739cf1c3e1f74
loopdev_rev=c9f91e8f0326ce8a3364ac911e81eb32328a5f27
oci_client_rev=83092a67ebcaeed832eae090895a1c178d867344

log() { echo "build-imagers-pull: $*" >&2; }

# checkout URL REV DEST: DEST at REV (cloned once, reused when already there).
checkout() {
  local url=$1 rev=$2 dest=$3
  if [ "$(git -C "$dest" rev-parse HEAD 2>/dev/null)" != "$rev" ]; then
    rm -rf "$dest"
    log "cloning $url at $rev"
    git clone -q "$url" "$dest"
    git -C "$dest" checkout -q "$rev"
  fi
}

mkdir -p "$dir/src" "$dir/deps"
checkout "${GC_REPO:-https://github.com/confidential-containers/guest-components}" "$gc_rev" \
  "$dir/guest-components"
checkout "${LOOPDEV_REPO:-https://github.com/mdaffin/loopdev}" "$loopdev_rev" "$dir/deps/loopdev"
checkout "${OCI_CLIENT_REPO:-https://github.com/oras-project/rust-oci-client}" "$oci_client_rev" \
  "$dir/deps/rust-oci-client"
cp "$root/image-rs/baseline/imagers-pull/Cargo.toml" "$dir/Cargo.toml"
cp "$root/image-rs/baseline/imagers-pull/src/main.rs" "$dir/src/main.rs"
# CoCo's locked versions for every crate image-rs resolves to.
[ -f "$dir/Cargo.lock" ] || cp "$dir/guest-components/Cargo.lock" "$dir/Cargo.lock"
log "building (release)"
(cd "$dir" && cargo build -q --release >&2)
echo "$dir/target/release/imagers-pull"
