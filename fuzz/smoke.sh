#!/usr/bin/env bash
# CI's fuzz smoke: every target for 10 seconds (FUZZ_SMOKE_SECONDS to change), two at a time (CI
# has 2 cores), after one build of all targets that fuzz/target keeps between runs (a cold build
# is ~12 minutes on 2 cores; cached, the smoke takes ~2.5 minutes). Installs cargo-fuzz when
# missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FUZZ_JOBS=${FUZZ_JOBS:-2} exec "$here/run.sh" "${FUZZ_SMOKE_SECONDS:-10}"
