#!/usr/bin/env bash
# Builds the CUDA binaries on a machine with Rust and no CUDA toolkit (the toolchain comes from
# PyPI: scripts/cuda-toolchain.sh) and packs them, gzipped, into a bundle that a GPU machine with
# no Rust runs through scripts/gpu-check.sh: bench-infer and gen-bench-model (ward-inference-bench)
# and the runtime's unit tests (ward-inference) built with `--features cuda`, and ward (NVML is
# loaded at run time, so it needs no CUDA).
#   gpu-bundle.sh [OUT_DIR]        (default .gpu, ignored by git)
# Kernels are built for $CUDA_COMPUTE_CAP (default 90: H100 and H200).
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-.gpu}"
target="${WARD_CUDA_TARGET_DIR:-target/cuda}"
eval "$(scripts/cuda-toolchain.sh)"
export RUSTFLAGS="${RUSTFLAGS:--C target-cpu=x86-64-v3}"

cargo build --release -p ward-inference-bench --features cuda --bins --target-dir "$target"
tests=$(cargo test --release -p ward-inference --features cuda --lib --no-run \
  --target-dir "$target" --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
# ward needs no CUDA: the workspace's ordinary release build (and its target directory).
env -u RUSTFLAGS cargo build --release -p ward-agent --bin ward
ward="${CARGO_TARGET_DIR:-target}/release/ward"

mkdir -p "$out"
for pair in "bench-infer:$target/release/bench-infer" "gen-bench-model:$target/release/gen-bench-model" \
  "inference-tests:$tests" "ward:$ward"; do
  name=${pair%%:*}
  strip -o "$out/$name" "${pair#*:}"
  gzip -f -9 "$out/$name"
done
cp scripts/gpu-check.sh "$out/"
du -ch "$out"/* | tail -n 1
