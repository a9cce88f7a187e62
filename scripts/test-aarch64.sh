#!/usr/bin/env bash
# The CPU kernels' aarch64 build (NEON, with and without the dot-product extension), linted and
# tested under qemu-aarch64 user-mode emulation on this x86 machine: ward-kernels' tests run
# every kernel the emulated CPU has against the scalar reference and the f32 product. Twice: on
# qemu's default CPU (`max`: dotprod, so both NEON bodies run) and on a Cortex-A53 (no dotprod:
# the widening-multiply body alone, and proof that the `sdot` body is never picked there).
# Needs rustup's aarch64-unknown-linux-gnu standard library (added here) and Debian's
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (scripts/deps.sh); says why and
# skips when one is missing. Emulation says nothing about speed: no aarch64 figures come from it.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "test-aarch64: skipped: $tool is not installed (scripts/deps.sh installs it)"
    exit 0
  fi
done
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  if ! rustup target add "$target" >&2; then
    echo "test-aarch64: skipped: rustup could not add the $target standard library"
    exit 0
  fi
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
sysroot=/usr/aarch64-linux-gnu
echo "test-aarch64: clippy"
cargo clippy -q -p ward-kernels --target "$target" --all-targets -- -D warnings
for cpu in max cortex-a53; do
  echo "test-aarch64: ward-kernels under qemu-aarch64 -cpu $cpu"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L $sysroot" \
    cargo test -q -p ward-kernels --target "$target"
done
