#!/usr/bin/env bash
# A CUDA 13.0 build toolchain from PyPI, for machines with Rust but no CUDA toolkit (CI and this
# project's build machines): NVIDIA publishes nvcc, its compiler back end, the headers and the
# libraries candle links (cuBLAS, cuRAND, NVRTC) as wheels. Unpacks them under the cache, adds the
# unversioned .so names the linker wants and a link-time stub of libcuda.so.1 (the driver comes
# with the GPU machine's NVIDIA driver, never with the toolkit), then prints the environment to
# source. Idempotent.
#   Cache: ${WARD_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ward/cuda13}
#   Use:   eval "$(scripts/cuda-toolchain.sh)"; cargo build --features cuda ...
# The binaries it builds need, at run time, libcuda.so.1 (the driver) and libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 (the CUDA 13 runtime libraries).
set -euo pipefail

cache="${WARD_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ward/cuda13}"
root="$cache/nvidia/cu13"
# CUDA 13.0, matching the GPU machines' driver (580) and their cuBLAS 13.
wheels=(
  "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.5.25"
)

if [ ! -e "$cache/.complete" ]; then
  mkdir -p "$cache/wheels"
  pip=(pip)
  command -v pip >/dev/null || pip=(python3 -m pip)
  "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
    -d "$cache/wheels" "${wheels[@]}" >&2
  python3 - "$cache" "$cache"/wheels/*.whl <<'PY'
import os, sys, zipfile
out = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.startswith("nvidia/"):
                continue
            path = z.extract(info, out)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
PY
  chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
  for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
    ln -sf "$lib" "$root/lib/${lib%.so.*}.so"
  done
  ln -sfn lib "$root/lib64"
  # The driver API's symbols, as cudarc declares them: a stub that satisfies the linker and
  # records the soname libcuda.so.1, which the real driver provides at run time.
  registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
  sys=$(find "$registry" -path '*/cudarc-*/src/driver/sys/mod.rs' 2>/dev/null | sort -V | tail -1)
  if [ -z "$sys" ]; then
    echo "cuda-toolchain: cudarc's sources are not in $registry: run 'cargo fetch' first" >&2
    exit 1
  fi
  grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' |
    sort -u | sed 's/.*/int &(void) { return 999; }/' >"$cache/libcuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/libcuda.so" "$cache/libcuda-stub.c"
  rm -rf "$cache/wheels"
  touch "$cache/.complete"
fi

"$root/bin/nvcc" --version >&2
cat <<ENV
export CUDA_ROOT="$root" CUDA_HOME="$root" CUDA_PATH="$root"
export PATH="$root/bin:\$PATH" LIBRARY_PATH="$root/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
ENV
