#!/usr/bin/env bash
# Runs on an NVIDIA GPU machine with no Rust toolchain, from a bundle that scripts/gpu-bundle.sh
# built elsewhere (default ./.gpu): what NVML says of the GPUs' confidential-computing state, GPU
# evidence collection, the CUDA build's tests against the CPU, and the inference benchmark on the
# GPU next to PyTorch (bf16, same files) when python3 has torch and transformers.
#   gpu-check.sh [BUNDLE] [all|info|test|bench|batch]      (default: all)
# Benchmark models are generated on the spot (random weights, real shapes: gen-bench-model) in
# $WARD_GPU_WORK (default /tmp/ward-gpu): nothing is fetched.
set -uo pipefail

bundle="${1:-.gpu}"
what="${2:-all}"
work="${WARD_GPU_WORK:-/tmp/ward-gpu}"
mkdir -p "$work"

# Unpack gzipped binaries (the bundle travels compressed).
for f in "$bundle"/*.gz; do
  [ -e "$f" ] || continue
  out="$work/bin/$(basename "${f%.gz}")"
  mkdir -p "$work/bin"
  [ -x "$out" ] || { gzip -dc "$f" >"$out" && chmod +x "$out"; }
done
bin="$work/bin"
[ -d "$bin" ] || bin="$bundle"

# The CUDA 13 libraries the binaries link: the system's, else those of the pip wheels torch uses.
libs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for so in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so.*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step() { printf '\n=== %s\n' "$*"; }

if [ "$what" = all ] || [ "$what" = info ]; then
  step "nvidia-smi"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  nvidia-smi conf-compute -f 2>/dev/null || true
  step "ward gpu"
  "$bin/ward" gpu
  step "ward evidence --tee sample --with-gpus"
  "$bin/ward" evidence --tee sample --with-gpus \
    --report-data "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  echo "(exit $?)"
  step "the CUDA libraries the binaries resolve"
  ldd "$bin/bench-infer" | grep -E "not found|cublas|curand|nvrtc|libcuda" || true
fi

if [ "$what" = all ] || [ "$what" = test ]; then
  step "CUDA tests (inference, release build, --features cuda)"
  "$bin/inference-tests" --test-threads 1 --nocapture tests::cuda::
  step "the rest of the inference tests, CUDA build, on the CPU"
  "$bin/inference-tests" --test-threads 4 -q --skip tests::cuda:: 2>&1 | tail -3
fi

if [ "$what" = all ] || [ "$what" = bench ] || [ "$what" = batch ]; then
  for preset in smollm2-135m tinyllama-1.1b; do
    "$bin/gen-bench-model" "$preset" "$work/$preset" --dtype bf16 --gguf q4_1
  done
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  step "bench-infer on cuda:0 (bf16 safetensors, then Q4_1 GGUF against torch on its bf16 original)"
  for preset in smollm2-135m tinyllama-1.1b; do
    "$bin/bench-infer" "$work/$preset" --device cuda --prompt-tokens 128 --gen-tokens 128 --runs 3
    "$bin/bench-infer" "$work/$preset/model.q4_1.gguf" --baseline-model "$work/$preset" \
      --device cuda --prompt-tokens 128 --gen-tokens 128 --runs 3
  done
fi
if [ "$what" = all ] || [ "$what" = batch ]; then
  step "batched decode on cuda:0 (Q4_1 GGUF)"
  "$bin/bench-infer" --batch "$work/smollm2-135m/model.q4_1.gguf" --device cuda \
    --prompt-tokens 64 --gen-tokens 32 --runs 3
fi
