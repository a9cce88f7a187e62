#!/usr/bin/env bash
# The end-to-end demo on embedded defaults: start the development KBS holding a secret, start
# wardd with the sample TEE on a generated development config (a unix socket), ask its health,
# fetch the secret through wardd's CoCo-compatible GetResource (wardd attests to the KBS once),
# show what `ward attest` sees, stop wardd, and verify the audit chain it wrote.
# Expects the debug binaries (`just demo` builds them first).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="${WARD_BIN_DIR:-$root/target/debug}"
work="$root/.work/demo"
rm -rf "$work" && mkdir -p "$work"
sock="$work/ward.sock"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start the development KBS (sample verifier; a test double for Trustee) with one secret"
"$bin/dev-kbs" --url-file "$work/kbs.url" \
  --resource default/key/demo="a secret only an attested guest gets" \
  --deny default/key/forbidden=never > "$work/kbs.log" 2>&1 &
kbs_pid=$!
for _ in $(seq 1 100); do [ -s "$work/kbs.url" ] && break; sleep 0.05; done
kbs_url=$(cat "$work/kbs.url")
cat "$work/kbs.log"

step "generated development config ($work/ward.toml)"
cat > "$work/ward.toml" <<TOML
[log]
level = "info"

[attestation]
tee = "sample"      # development only: refused on real TEE hardware
eventlog = "$work/eventlog"

[images]
store = "$work/images"

[kbs]
url = "$kbs_url"

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
trap 'kill $pid $kbs_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  [ -S "$sock" ] && break
  kill -0 $pid 2>/dev/null || { cat "$work/wardd.log"; echo "wardd exited early"; exit 1; }
  sleep 0.05
done

step "ward health --addr unix://$sock"
"$bin/ward" health --addr "unix://$sock"

step "ward get-resource --addr unix://$sock kbs:///default/key/demo (through wardd's GetResource)"
"$bin/ward" get-resource --addr "unix://$sock" kbs:///default/key/demo
echo

step "a resource the KBS policy denies gives a clear error"
"$bin/ward" get-resource --addr "unix://$sock" kbs:///default/key/forbidden || true

step "ward attest --kbs $kbs_url --tee sample (the handshake run by the CLI itself)"
"$bin/ward" attest --kbs "$kbs_url" --tee sample | head -40

step "stop wardd (SIGTERM) and wait"
kill -TERM $pid
wait $pid
trap - EXIT
sed 's/\x1b\[[0-9;]*m//g' "$work/wardd.log"

step "the audit log it left, and its chain"
cat "$work/audit.jsonl"
"$bin/ward" audit verify "$work/audit.jsonl"

kill -TERM $kbs_pid; wait $kbs_pid || true
trap - EXIT
cat "$work/kbs.log"

step "demo finished"
