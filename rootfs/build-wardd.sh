#!/usr/bin/env bash
# Builds wardd (release) so that the same source gives the same bytes wherever and whenever it
# is built, and prints the binary's path on stdout.
#
#   rootfs/build-wardd.sh
#
# What would otherwise differ between two builds, and what pins it:
# - absolute paths (panic locations, file!() in our crates and in the registry crates, OUT_DIR
#   code such as the generated protos, __FILE__ in the C of aws-lc-sys and zstd-sys):
#   `--remap-path-prefix` for rustc and `-ffile-prefix-map` for cc, mapping the checkout to
#   /ward, the target directory to /ward/target, CARGO_HOME to /cargo and RUSTUP_HOME to /rustup;
# - the toolchain: rust-toolchain.toml is not used; the manifest (build-provenance.sh) records
#   `rustc -vV`, and a different rustc gives a different binary;
# - Cargo.lock: `--locked`;
# - timestamps: none are embedded by rustc; SOURCE_DATE_EPOCH is exported for build scripts.
# The glibc build links dynamically: the initrd then carries the build host's libc, recorded by
# digest in the manifest. A static musl build (when the target is installed) avoids that.
# Environment: CARGO_TARGET_DIR (default <checkout>/target), SOURCE_DATE_EPOCH (default: the
# commit time of HEAD).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-$root/target}")
cargo_home=$(realpath -m "${CARGO_HOME:-$HOME/.cargo}")
rustup_home=$(realpath -m "${RUSTUP_HOME:-$HOME/.rustup}")
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

# rustc tries the last --remap-path-prefix first: the target directory (often inside the
# checkout) comes after the checkout.
remap=(
  "--remap-path-prefix=$root=/ward"
  "--remap-path-prefix=$target_dir=/ward/target"
  "--remap-path-prefix=$cargo_home=/cargo"
  "--remap-path-prefix=$rustup_home=/rustup"
)
cmap="-ffile-prefix-map=$root=/ward -ffile-prefix-map=$target_dir=/ward/target -ffile-prefix-map=$cargo_home=/cargo"
RUSTFLAGS="${remap[*]}"
export RUSTFLAGS
export CFLAGS="${CFLAGS:+$CFLAGS }$cmap" CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }$cmap"
export CARGO_TARGET_DIR="$target_dir"
# The same crate graph: no incremental state, the lock file as committed.
export CARGO_INCREMENTAL=0

if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  echo "build-wardd: static wardd (x86_64-unknown-linux-musl, release)" >&2
  cargo build -q --locked --release --target x86_64-unknown-linux-musl -p ward-agent --bin wardd >&2
  echo "$target_dir/x86_64-unknown-linux-musl/release/wardd"
else
  echo "build-wardd: no musl target installed: the glibc release build" >&2
  cargo build -q --locked --release -p ward-agent --bin wardd >&2
  echo "$target_dir/release/wardd"
fi
