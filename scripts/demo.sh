#!/usr/bin/env bash
# The end-to-end demo on embedded defaults: start the development KBS holding a secret; as owners,
# encrypt an image and seal two models (a small one, and SmolLM2 when scripts/fetch-model.sh can
# fetch it), push them to a local registry and upload their keys with the KBS admin API; start
# wardd with the sample TEE on a generated development config; ask its health, fetch the secret
# through CoCo's GetResource, pull the encrypted image through CoCo's ImagePull, watch the
# models load into guest memory, and ask SmolLM2 a question with `ward chat` (attestation
# checked, prompt encrypted end to end, answer streamed); then stop wardd and verify the audit
# chain it wrote.
# Expects the debug binaries (`just demo` builds them first).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="${WARD_BIN_DIR:-$root/target/debug}"
work="$root/.work/demo"
rm -rf "$work" && mkdir -p "$work"
sock="$work/ward.sock"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start the development KBS (sample verifier; a test double for Trustee) with a secret and an image key"
kek="0123456789abcdef0123456789abcdef"   # 32 bytes: the image owner's key-encryption key
printf '%s' "$kek" > "$work/kek"
"$bin/dev-kbs" --url-file "$work/kbs.url" --admin-key-file "$work/kbs-admin.pem" \
  --resource default/key/demo="a secret only an attested guest gets" \
  --resource default/image-kek/demo="$kek" \
  --deny default/key/forbidden=never > "$work/kbs.log" 2>&1 &
kbs_pid=$!
for _ in $(seq 1 100); do [ -s "$work/kbs.url" ] && break; sleep 0.05; done
kbs_url=$(cat "$work/kbs.url")
cat "$work/kbs.log"

# A free loopback port for the demo registry (coreutils and bash only).
while :; do
  port=$(shuf -i 20000-60000 -n 1)
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
done

have_tools=false
if command -v docker-registry >/dev/null && command -v skopeo >/dev/null && command -v umoci >/dev/null; then
  have_tools=true
fi
model_entry=""
if $have_tools; then
  step "a local registry (docker-registry on 127.0.0.1:$port)"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$work/registry" "$port" > "$work/registry.yml"
  docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
  reg_pid=$!
  trap 'kill $kbs_pid $reg_pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done

  step "owner side: build an image with umoci, encrypt it with ward (key in the KBS), push it with skopeo"
  umoci init --layout "$work/layout" && umoci new --image "$work/layout:v1"
  umoci unpack --image "$work/layout:v1" "$work/img-bundle" >/dev/null
  echo "hello from an encrypted image" > "$work/img-bundle/rootfs/hello.txt"
  umoci repack --refresh-bundle --image "$work/layout:v1" "$work/img-bundle"
  "$bin/ward" image encrypt "$work/layout:v1" --kid kbs:///default/image-kek/demo --kek-file "$work/kek"
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:v1" "docker://127.0.0.1:$port/demo/secret-app:v1"

  step "model owner: seal a small model (a new random KEK), push it, upload the KEK with the KBS admin API"
  mkdir -p "$work/tiny-model"
  head -c 8388608 /dev/urandom > "$work/tiny-model/model.safetensors"
  echo '{"architectures": ["LlamaForCausalLM"]}' > "$work/tiny-model/config.json"
  "$bin/ward" model seal "$work/tiny-model" --out "$work/tiny-model.sealed" \
    --kid kbs:///default/model-kek/demo --kek-file "$work/model.kek"
  "$bin/ward" model push "$work/tiny-model.sealed" "127.0.0.1:$port/demo/tiny-model:v1" \
    --insecure-registry "127.0.0.1:$port" | tee "$work/model-push.txt"
  "$bin/ward" model kbs-put --kbs "$kbs_url" --admin-key "$work/kbs-admin.pem" \
    --kid kbs:///default/model-kek/demo --kek-file "$work/model.kek"
  model_entry=$(sed -n '/^\[\[model\]\]/,$p' "$work/model-push.txt")

  gguf="${WARD_SMOLLM2_GGUF:-${XDG_CACHE_HOME:-$HOME/.cache}/ward/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
  [ -s "$gguf" ] || "$root/scripts/fetch-model.sh" >/dev/null 2>&1 || true
  if [ -s "$gguf" ]; then
    step "model owner: seal a real model (SmolLM2-135M, GGUF), push it, upload its KEK"
    mkdir -p "$work/smollm2"
    ln "$gguf" "$work/smollm2/model.gguf" 2>/dev/null || cp "$gguf" "$work/smollm2/model.gguf"
    "$bin/ward" model seal "$work/smollm2" --out "$work/smollm2.sealed" \
      --kid kbs:///default/model-kek/smollm2 --kek-file "$work/smollm2.kek" | head -3
    "$bin/ward" model push "$work/smollm2.sealed" "127.0.0.1:$port/demo/smollm2:v1" \
      --insecure-registry "127.0.0.1:$port" > "$work/smollm2-push.txt"
    "$bin/ward" model kbs-put --kbs "$kbs_url" --admin-key "$work/kbs-admin.pem" \
      --kid kbs:///default/model-kek/smollm2 --kek-file "$work/smollm2.kek"
    model_entry="$model_entry
$(sed -n '/^\[\[model\]\]/,$p' "$work/smollm2-push.txt")"
  else
    step "no SmolLM2 GGUF (scripts/fetch-model.sh could not fetch it): the encrypted chat step is skipped"
  fi
fi
while :; do
  api_port=$(shuf -i 20000-60000 -n 1)
  [ "$api_port" != "$port" ] || continue
  (echo > "/dev/tcp/127.0.0.1/$api_port") 2>/dev/null || break
done

step "generated development config ($work/ward.toml)"
cat > "$work/ward.toml" <<TOML
[log]
level = "info"

[attestation]
tee = "sample"      # development only: refused on real TEE hardware
eventlog = "$work/eventlog"

[images]
store = "$work/images"
insecure_registries = ["127.0.0.1:$port"]

[kbs]
url = "$kbs_url"

[audit]
path = "$work/audit.jsonl"

$model_entry

[[listener]]
address = "unix://$sock"
services = ["all"]

[[listener]]                # the OpenAI-compatible API, plain and end-to-end encrypted
address = "tcp://127.0.0.1:$api_port"
services = ["inference"]
protocol = "http"
TOML
cat "$work/ward.toml"

step "start wardd"
"$bin/wardd" --config "$work/ward.toml" --cmdline /dev/null 2> "$work/wardd.log" &
pid=$!
trap 'kill $pid $kbs_pid ${reg_pid:-} 2>/dev/null || true' EXIT
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

if $have_tools; then
  step "wardd pulls the image through CoCo's ImagePull API: the KBS releases the key to the attested guest"
  "$bin/ward" pull --addr "unix://$sock" "127.0.0.1:$port/demo/secret-app:v1" --bundle "$work/bundle"
  cat "$work/bundle/rootfs/hello.txt"

  step "wardd loaded the sealed model after READY (KEK from the KBS, decrypted in memory, digests pinned)"
  for _ in $(seq 1 200); do grep -q '"event":"model.load' "$work/audit.jsonl" 2>/dev/null && break; sleep 0.1; done
  grep '"event":"model.load' "$work/audit.jsonl"

  if grep -q smollm2 "$work/ward.toml"; then
    step "ward chat: verify the attestation, encrypt the prompt to the attested key, stream the answer"
    for _ in $(seq 1 120); do
      grep -q '"event":"model.load[^"]*","subject":"smollm2"' "$work/audit.jsonl" 2>/dev/null && break
      sleep 0.5
    done
    for _ in $(seq 1 60); do
      if "$bin/ward" chat "What is the capital of France? Answer in one sentence." \
        --url "http://127.0.0.1:$api_port/v1" --model smollm2 --allow-sample --max-tokens 32 \
        2> "$work/chat.err"; then
        break
      fi
      grep -q "does not exist" "$work/chat.err" || { cat "$work/chat.err"; break; }
      sleep 1
    done
    grep '"event":"inference.e2e"' "$work/audit.jsonl" | tail -1
  fi
  kill "$reg_pid" 2>/dev/null || true
else
  step "image and model steps skipped: docker-registry, skopeo and umoci are not installed (just deps)"
fi

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
