#!/usr/bin/env bash
# The end-to-end demo on embedded defaults: start wardd with a generated development config on
# a unix socket, ask it for its health, stop it, and verify the audit chain it wrote.
# Expects the debug binaries (`just demo` builds them first).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="${WARD_BIN_DIR:-$root/target/debug}"
work="$root/.work/demo"
rm -rf "$work" && mkdir -p "$work"
sock="$work/ward.sock"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "generated development config ($work/ward.toml)"
cat > "$work/ward.toml" <<TOML
[log]
level = "info"

[audit]
path = "$work/audit.jsonl"

[[listener]]
address = "unix://$sock"
services = ["all"]
TOML
cat "$work/ward.toml"

step "start wardd"
"$bin/wardd" --config "$work/ward.toml" --cmdline /dev/null 2> "$work/wardd.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  [ -S "$sock" ] && break
  kill -0 $pid 2>/dev/null || { cat "$work/wardd.log"; echo "wardd exited early"; exit 1; }
  sleep 0.05
done

step "ward health --addr unix://$sock"
"$bin/ward" health --addr "unix://$sock"

step "stop wardd (SIGTERM) and wait"
kill -TERM $pid
wait $pid
trap - EXIT
sed 's/\x1b\[[0-9;]*m//g' "$work/wardd.log"

step "the audit log it left, and its chain"
cat "$work/audit.jsonl"
"$bin/ward" audit verify "$work/audit.jsonl"

step "demo finished"
