#!/usr/bin/env bash
# Builds the fuzz targets once and runs each for SECONDS, corpus seeded first: libFuzzer,
# coverage-guided, on stable Rust with RUSTC_BOOTSTRAP=1 (no nightly); no sanitizer unless
# FUZZ_SANITIZER=address (a second full build, about half the executions per second). Prints
# one line per target (seconds, executions, corpus size) and exits non-zero if any target
# crashed; crashing inputs land in fuzz/artifacts/<target>/, logs in fuzz/logs/.
# Usage: [FUZZ_JOBS=N] fuzz/run.sh [SECONDS] [TARGET...] (default 60 seconds, every target, one
# at a time). Installs cargo-fuzz when it is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
seconds=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1
san=${FUZZ_SANITIZER:-none}

if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

cd "$here"
"$here/seed.sh"
if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
# Build first (all targets in one cargo run when none were named); `cargo fuzz run` below then
# finds them up to date.
if (($# > 0)); then
    for t in "${targets[@]}"; do
        cargo fuzz build -s "$san" "$t"
    done
else
    cargo fuzz build -s "$san"
fi
mkdir -p logs
# run_one TARGET: fuzzes it for $seconds and prints its line; fails if it crashed.
run_one() {
    local t=$1 log="logs/$1.log" start=$SECONDS status=ok rc=0 runs
    cargo fuzz run -s "$san" "$t" "corpus/$t" -- -max_total_time="$seconds" -timeout=30 \
        -print_final_stats=1 > "$log" 2>&1 || { status=FAILED; rc=1; }
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    printf '%-22s %-6s %5ss %12s execs %6s corpus files\n' "$t" "$status" \
        "$((SECONDS - start))" "${runs:-?}" "$(find "corpus/$t" -type f | wc -l)"
    return "$rc"
}
run_list() {
    local t rc=0
    for t in "$@"; do
        run_one "$t" || rc=1
    done
    return "$rc"
}
# FUZZ_JOBS targets at a time (default 1), each job taking every FUZZ_JOBS-th target.
jobs=${FUZZ_JOBS:-1}
pids=()
for ((j = 0; j < jobs; j++)); do
    sub=()
    for ((i = j; i < ${#targets[@]}; i += jobs)); do
        sub+=("${targets[i]}")
    done
    run_list "${sub[@]}" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
    wait "$p" || rc=1
done
if ((rc != 0)); then
    echo "run.sh: a target crashed or failed (FAILED above; see fuzz/logs/ and fuzz/artifacts/)" >&2
    exit 1
fi
