#!/usr/bin/env bash
# Builds the fuzz targets once and runs each for SECONDS, corpus seeded first: libFuzzer,
# coverage-guided, on stable Rust with RUSTC_BOOTSTRAP=1 (no nightly); no sanitizer unless
# FUZZ_SANITIZER=address (a second full build, about half the executions per second). Prints
# one line per target (seconds, executions, corpus size) and exits non-zero if any target
# crashed; crashing inputs land in fuzz/artifacts/<target>/, logs in fuzz/logs/.
# Usage: fuzz/run.sh [SECONDS] [TARGET...] (default 60 seconds, every target). Installs
# cargo-fuzz when it is missing.
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
failed=()
for t in "${targets[@]}"; do
    log="logs/$t.log"
    start=$SECONDS
    if cargo fuzz run -s "$san" "$t" "corpus/$t" -- -max_total_time="$seconds" -timeout=30 \
        -print_final_stats=1 > "$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    printf '%-22s %-6s %5ss %12s execs %6s corpus files\n' "$t" "$status" \
        "$((SECONDS - start))" "${runs:-?}" "$(find "corpus/$t" -type f | wc -l)"
done
if ((${#failed[@]} > 0)); then
    echo "run.sh: crashed or failed: ${failed[*]} (see fuzz/logs/ and fuzz/artifacts/)" >&2
    exit 1
fi
