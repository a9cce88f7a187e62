#!/usr/bin/env bash
# CI's fuzz smoke: every target for 10 seconds (FUZZ_SMOKE_SECONDS to change), after one build
# of all targets that fuzz/target keeps between runs. Installs cargo-fuzz when missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/run.sh" "${FUZZ_SMOKE_SECONDS:-10}"
