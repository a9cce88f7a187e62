#!/usr/bin/env bash
# Makes the Python environment with llama.cpp's OpenAI server that the external-engine test
# runs behind wardd: `llama-cpp-python[server]` from PyPI, which builds llama.cpp from its
# source on this machine (about 10 to 15 minutes on 2 cores, once; pip keeps the built wheel in
# its cache). Made aside and renamed, so a half-made environment is never taken for a good one.
# Idempotent: an environment whose server imports is kept.
#   scripts/llama-venv.sh [DIR]    (default: target/llama-venv)
# Tests find it there, or through $WARD_LLAMA_PYTHON.
#
# llama.cpp is built for x86-64-v3 (AVX2, FMA, F16C), not -march=native: a VM can report AMX
# that it does not let a guest use (llama.cpp's AMX kernels then die of SIGILL at the first
# `tilezero`, as on the development machines), and v3 is what the CPU comparison in
# inference/README.md uses. $LLAMA_CMAKE_ARGS replaces the flags. Built wheels are cached per
# flag set (pip's own cache does not tell builds with other flags apart).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="${1:-${CARGO_TARGET_DIR:-$root/target}/llama-venv}"
version="0.3.36"
cmake_args="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ward/pip-llama-$(printf '%s' "$version $cmake_args" | sha256sum | cut -c1-16)"

if "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
staging="$venv.$$"
rm -rf "$staging"
trap 'rm -rf "$staging"' EXIT
python3 -m venv "$staging"
echo "llama-venv: building llama-cpp-python $version (llama.cpp from source, $cmake_args; minutes)" >&2
CMAKE_ARGS="$cmake_args" "$staging/bin/pip" install --quiet --disable-pip-version-check \
  --timeout 60 --cache-dir "$cache" "llama-cpp-python[server]==$version" >&2
rm -rf "$venv"
mv "$staging" "$venv"
trap - EXIT
# The interpreter does not mind the rename; the server must import from its new place.
"$venv/bin/python" -c "import llama_cpp.server"
echo "$venv/bin/python"
