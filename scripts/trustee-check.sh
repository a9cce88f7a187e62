#!/usr/bin/env bash
# Manual check of ward against a real Trustee KBS (protocol 0.4.0). Never run by CI.
#
#   scripts/trustee-check.sh KBS_BIN WARD_BIN_DIR [WORK_DIR]
#
# KBS_BIN is Trustee's `kbs` (built with the builtin CoCo AS: docs/trustee-check.md says how),
# WARD_BIN_DIR holds `ward` and `wardd`. Everything runs unprivileged on 127.0.0.1: the admin
# key and token are made as Trustee's docker-compose setup.sh makes them, the TLS certificate as
# kbs/docs/self-signed-https.md makes it, and the resource policy is set through the admin API.
# One line per check: PASS or FAIL, the check, and the evidence. Exit status 1 if any failed.
# Ports: KBS_HTTP_PORT (default 18080), KBS_TLS_PORT (18443), WARDD_HTTP_PORT (18006: the first
# of three consecutive ports). Needs bash, openssl, curl, python3.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
KBS_BIN=$(realpath "$1")
WARD_DIR=$(realpath "$2")
WORK=${3:-$(mktemp -d /tmp/trustee-check.XXXXXX)}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
WARD="$WARD_DIR/ward"
WARDD="$WARD_DIR/wardd"
for b in "$KBS_BIN" "$WARD" "$WARDD"; do
    [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 2; }
done
for t in openssl curl python3; do
    command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 2; }
done

HTTP_PORT=${KBS_HTTP_PORT:-18080}
TLS_PORT=${KBS_TLS_PORT:-18443}
WHTTP=${WARDD_HTTP_PORT:-18006}
KBS_URL="http://127.0.0.1:$HTTP_PORT"
KBS_TLS_URL="https://localhost:$TLS_PORT"
export RUST_LOG=${RUST_LOG:-info}

PASSED=0
FAILED=0
PIDS=()
KBS_PID=""

report() { # STATUS ID NAME EVIDENCE
    local ev
    ev=$(printf '%s' "$4" | tr '\n' ' ' | cut -c1-400)
    printf '%-4s %-4s %-48s | %s\n' "$1" "$2" "$3" "$ev"
    if [[ $1 == PASS ]]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -CONT "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

jwt_claims() { # JWT -> its claims as JSON
    python3 -c 'import sys,base64,json
p=sys.argv[1].split(".")[1]; p+="="*(-len(p)%4)
print(json.dumps(json.loads(base64.urlsafe_b64decode(p)),sort_keys=True))' "$1"
}

wait_port() { # PORT

    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Keys, certificates, configuration
# ---------------------------------------------------------------------------------------------
K="$WORK/keys"
mkdir -p "$K" "$WORK/storage"
cd "$K"

# The admin key and token, exactly as kbs/config/docker-compose/setup.sh makes them.
openssl genpkey -algorithm ed25519 >private.key 2>/dev/null
openssl pkey -in private.key -pubout -out public.pub
header='{"alg":"EdDSA","typ":"JWT"}'
iat="$(date +%s)"
exp="$((iat + 315360000))"
payload="{\"iss\":\"TrusteeInDocker\",\"sub\":\"admin\",\"aud\":[\"KBS\"],\"role\":\"admin\",\"iat\":${iat},\"exp\":${exp}}"
h64="$(printf '%s' "${header}" | b64url)"
p64="$(printf '%s' "${payload}" | b64url)"
printf '%s' "${h64}.${p64}" >signing-input
sig="$(openssl pkeyutl -sign -inkey private.key -rawin -in signing-input | b64url)"
printf '%s.%s.%s\n' "${h64}" "${p64}" "${sig}" >admin-token
ADMIN_TOKEN=$(cat admin-token)

# The KBS certificate as kbs/docs/self-signed-https.md makes it (openssl req -x509: CA:TRUE).
cat >localhost.conf <<'EOF'
[req]
default_bits       = 2048
default_keyfile    = localhost.key
distinguished_name = req_distinguished_name
req_extensions     = req_ext
x509_extensions    = v3_ca
prompt             = no

[req_distinguished_name]
countryName            = CN
stateOrProvinceName    = Zhejiang
localityName           = Hangzhou
organizationName       = localhost
organizationalUnitName = Development
commonName             = localhost

[req_ext]
subjectAltName = @alt_names

[v3_ca]
subjectAltName = @alt_names

[alt_names]
DNS.1   = localhost
DNS.2   = 127.0.0.1
EOF
openssl req -x509 -nodes -days 365 -newkey rsa:2048 -keyout localhost.key -out localhost.crt \
    -config localhost.conf -passin pass: 2>/dev/null
# Another self-signed certificate for the same name, trusted by nobody: the wrong cacert.
openssl req -x509 -nodes -days 365 -newkey rsa:2048 -keyout other.key -out other.crt \
    -config localhost.conf -passin pass: 2>/dev/null
# The common one-liner (`openssl req -x509 -subj -addext subjectAltName`): OpenSSL's default
# v3_ca section makes it CA:TRUE, which webpki alone refuses as a server certificate.
openssl req -x509 -nodes -days 365 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout ip.key -out ip.crt -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

head -c 32 /dev/urandom >kek.bin
head -c 32 /dev/urandom >kek2.bin
printf 'trustee-secret-1' >secret1
printf 'must-not-be-released' >denied1

# KBS configuration: the docker-compose kbs-config.toml's admin section, the builtin AS, LocalFs
# storage, a one-minute session (so its cookie's expiry can be watched; the token lives five
# minutes, so only the cookie forces a new handshake), sessions in memory (so a restart forgets
# them).
kbs_config() { # SOCKET_SECTION
    cat <<EOF
session_storage_type = "Memory"

$1

[attestation_token]
insecure_header_jwk = true

[attestation_service]
type = "coco_as_builtin"
timeout = 1

[attestation_service.attestation_token_broker]
duration_min = 5

[attestation_service.rvps_config]
type = "BuiltIn"

[admin]
authorization_mode = "AuthenticatedAuthorization"

[admin.authentication.bearer_jwt]
identity_providers = [
    { issuer = "TrusteeInDocker", public_key_uri = "$K/public.pub" },
]

[admin.authorization.regex_acl]
acls = [{ role = "admin", allowed_endpoints = "^/kbs/.+\$" }]

[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"

[storage_backend]
storage_type = "LocalFs"

[storage_backend.backends.local_fs]
dir_path = "$WORK/storage"
EOF
}
kbs_config "[http_server]
sockets = [\"127.0.0.1:$HTTP_PORT\"]
insecure_http = true" >"$WORK/kbs-http.toml"
kbs_config "[http_server]
sockets = [\"127.0.0.1:$TLS_PORT\"]
insecure_http = false
private_key = \"$K/localhost.key\"
certificate = \"$K/localhost.crt\"" >"$WORK/kbs-tls.toml"
kbs_config "[http_server]
sockets = [\"127.0.0.1:$((TLS_PORT + 1))\"]
insecure_http = false
private_key = \"$K/ip.key\"
certificate = \"$K/ip.crt\"" >"$WORK/kbs-tls-ip.toml"

start_kbs() { # CONFIG LOG PORT -> pid in LAST_PID
    "$KBS_BIN" --config-file "$1" >>"$2" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$3" || { echo "KBS did not listen on $3 (see $2)" >&2; tail -20 "$2" >&2; exit 1; }
}

start_kbs "$WORK/kbs-http.toml" "$WORK/kbs-http.log" "$HTTP_PORT"
KBS_PID=$LAST_PID
echo "Trustee KBS: $KBS_BIN (pid $KBS_PID) on $KBS_URL; work dir $WORK"

admin_post() { # PATH FILE
    curl -sS -o "$WORK/admin.out" -w '%{http_code}' -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'Content-Type: application/octet-stream' --data-binary "@$2" "$KBS_URL/kbs/v0/$1"
}

# The resource policy: Trustee's default.rego refuses sample evidence; this one admits every
# resource but anything of type `denied`.
cat >"$WORK/policy.rego" <<'EOF'
package policy

default allow = false

allow if {
	data.plugin == "resource"
	data["resource-path"][1] != "denied"
}
EOF
printf '{"policy":"%s"}' "$(b64url <"$WORK/policy.rego")" >"$WORK/policy.json"
code=$(curl -sS -o "$WORK/admin.out" -w '%{http_code}' -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' --data-binary "@$WORK/policy.json" "$KBS_URL/kbs/v0/resource-policy")
[[ $code == 200 ]] || { echo "setting the resource policy: $code $(cat "$WORK/admin.out")" >&2; exit 1; }
for r in default/key/1:secret1 default/denied/1:denied1; do
    code=$(admin_post "resource/${r%%:*}" "$K/${r#*:}")
    [[ $code == 200 ]] || { echo "uploading ${r%%:*}: $code $(cat "$WORK/admin.out")" >&2; exit 1; }
done

# ---------------------------------------------------------------------------------------------
# 8. ward model kbs-put with Trustee's admin token
# ---------------------------------------------------------------------------------------------
get_direct() { # URI [ward args...]: the resource through a handshake in the ward process
    local uri=$1
    shift
    "$WARD" get-resource --kbs "$KBS_URL" --tee sample "$@" "$uri"
}

if out=$("$WARD" model kbs-put --kbs "$KBS_URL" --admin-token "$K/admin-token" \
    --kid kbs:///default/model-kek/m1 --kek-file "$K/kek.bin" 2>&1) &&
    get_direct kbs:///default/model-kek/m1 --out "$WORK/m1.out" 2>"$WORK/m1.err" &&
    cmp -s "$WORK/m1.out" "$K/kek.bin"; then
    report PASS 8a "kbs-put --admin-token (setup.sh's token)" "$out; read back 32 bytes equal"
else
    report FAIL 8a "kbs-put --admin-token (setup.sh's token)" "$out $(cat "$WORK/m1.err" 2>/dev/null)"
fi

if out=$("$WARD" model kbs-put --kbs "$KBS_URL" --admin-key "$K/private.key" --role admin \
    --issuer TrusteeInDocker --audience KBS --kid kbs:///default/model-kek/m2 \
    --kek-file "$K/kek2.bin" 2>&1) &&
    get_direct kbs:///default/model-kek/m2 --out "$WORK/m2.out" 2>"$WORK/m2.err" &&
    cmp -s "$WORK/m2.out" "$K/kek2.bin"; then
    report PASS 8b "kbs-put --admin-key --issuer --audience --role" "$out; read back equal"
else
    report FAIL 8b "kbs-put --admin-key --issuer --audience --role" "$out $(cat "$WORK/m2.err" 2>/dev/null)"
fi

if out=$("$WARD" model kbs-put --kbs "$KBS_URL" --admin-key "$K/private.key" \
    --kid kbs:///default/model-kek/m3 --kek-file "$K/kek2.bin" 2>&1); then
    report FAIL 8c "kbs-put without the issuer is refused" "accepted: $out"
else
    report PASS 8c "kbs-put without the issuer is refused" "$out"
fi

if out=$("$WARD" model kbs-put --kbs "$KBS_URL" --admin-key "$K/private.key" --role reader \
    --issuer TrusteeInDocker --kid kbs:///default/model-kek/m3 --kek-file "$K/kek2.bin" 2>&1); then
    report FAIL 8d "kbs-put with a role the ACL lacks is refused" "accepted: $out"
else
    report PASS 8d "kbs-put with a role the ACL lacks is refused" "$out"
fi

# ---------------------------------------------------------------------------------------------
# RCAR handshake (EC and RSA TEE keys), direct from the ward CLI
# ---------------------------------------------------------------------------------------------
for kind in ec rsa; do
    flag=()
    [[ $kind == rsa ]] && flag=(--rsa)
    if out=$("$WARD" attest --kbs "$KBS_URL" --tee sample "${flag[@]}" 2>&1) &&
        grep -q '"ear.status"' <<<"$out"; then
        st=$(grep -o '"ear.status": *"[a-z_]*"' <<<"$out" | head -1)
        report PASS "R-$kind" "RCAR handshake, $kind TEE key (ward attest)" "token claims: $st; submods $(grep -o '"cpu0"' <<<"$out" | head -1)"
    else
        report FAIL "R-$kind" "RCAR handshake, $kind TEE key (ward attest)" "$out"
    fi
done
if out=$(get_direct kbs:///default/key/1 2>&1) && [[ $out == trustee-secret-1 ]]; then
    report PASS R-res "resource over the EC session (ward get-resource)" "got '$out'"
else
    report FAIL R-res "resource over the EC session (ward get-resource)" "$out"
fi

# ---------------------------------------------------------------------------------------------
# wardd instances (sample TEE, unprivileged, unix ttrpc + loopback HTTP)
# ---------------------------------------------------------------------------------------------
start_wardd() { # NAME HTTP_PORT KBS_SECTION_EXTRA ATTESTATION_EXTRA [KBS_URL]
    local d="$WORK/wardd-$1"
    mkdir -p "$d"
    : >"$d/cmdline"
    cat >"$d/ward.toml" <<EOF
[log]
level = "debug"

[audit]
path = "$d/audit.jsonl"

[daemon]
shutdown_timeout_secs = 2

[attestation]
tee = "sample"
allow_sample = true
initdata = "$d/initdata.toml"
eventlog = "$d/eventlog"
$4

[images]

[kbs]
url = "${5:-$KBS_URL}"
$3

[[listener]]
address = "unix://$d/ward.sock"
services = ["all"]

[[listener]]
address = "tcp://127.0.0.1:$2"
services = ["attestation-agent", "get-resource", "health"]
EOF
    "$WARDD" --config "$d/ward.toml" --cmdline "$d/cmdline" >"$d/wardd.log" 2>&1 &
    PIDS+=("$!")

    for _ in $(seq 1 150); do
        [[ -S $d/ward.sock ]] && "$WARD" health --addr "unix://$d/ward.sock" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "wardd $1 did not come up:" >&2
    tail -20 "$d/wardd.log" >&2
    exit 1
}
attests() { grep -c '"kbs.attest"' "$WORK/wardd-$1/audit.jsonl" 2>/dev/null || true; }
reattests() { grep -c 'attesting again' "$WORK/wardd-$1/wardd.log" 2>/dev/null || true; }
via_wardd() { # NAME URI
    "$WARD" get-resource --addr "unix://$WORK/wardd-$1/ward.sock" "$2"
}

start_wardd ec "$WHTTP" 'key = "ec"' ''
start_wardd rsa "$((WHTTP + 1))" $'key = "rsa"\ncoco_token_reply = true' ''
start_wardd dev "$((WHTTP + 2))" 'key = "ec"' 'sample_device = true'

for w in ec rsa; do
    if out=$(via_wardd "$w" kbs:///default/key/1 2>&1) && [[ $out == trustee-secret-1 ]]; then
        report PASS "T-$w" "GetResource via wardd ttrpc ($w TEE key)" "got '$out'; kbs.attest entries: $(attests "$w")"
    else
        report FAIL "T-$w" "GetResource via wardd ttrpc ($w TEE key)" "$out"
    fi
done

# GetToken (api-server-rest's /aa/token, the same AttestationAgent GetToken as over ttrpc)
tok=$(curl -sS "http://127.0.0.1:$WHTTP/aa/token?token_type=kbs" 2>&1 || true)
if [[ $tok =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] && claims=$(jwt_claims "$tok" 2>&1); then
    report PASS G-jwt "GetToken: Trustee's token as a bare JWT" "iss/submods: $(grep -o '"iss": "[^"]*"' <<<"$claims") $(grep -o '"cpu0"' <<<"$claims" | head -1)"
else
    report FAIL G-jwt "GetToken: Trustee's token as a bare JWT" "$tok"
fi
tok=$(curl -sS "http://127.0.0.1:$((WHTTP + 1))/aa/token?token_type=kbs" 2>&1 || true)
if out=$(python3 -c 'import sys,json
d=json.loads(sys.argv[1]); assert list(d)==["token","tee_keypair"], list(d)
assert d["tee_keypair"].startswith("-----BEGIN"), "no PEM"
print("keys", list(d), "token parts", len(d["token"].split(".")), d["tee_keypair"].splitlines()[0])' "$tok" 2>&1); then
    report PASS G-coco "GetToken with coco_token_reply (rsa key)" "$out"
else
    report FAIL G-coco "GetToken with coco_token_reply (rsa key)" "$out ${tok:0:200}"
fi

# ---------------------------------------------------------------------------------------------
# 9. sample_device = true
# ---------------------------------------------------------------------------------------------
if out=$(via_wardd dev kbs:///default/key/1 2>&1) && [[ $out == trustee-secret-1 ]] &&
    tok=$(curl -sS "http://127.0.0.1:$((WHTTP + 2))/aa/token?token_type=kbs") &&
    claims=$(jwt_claims "$tok") && grep -q '"gpu0"' <<<"$claims"; then
    report PASS 9 "sample_device: attestation with the device" "resource released; token submods: $(grep -o '"[cg]pu0"' <<<"$claims" | sort -u | tr '\n' ' ')"
else
    report FAIL 9 "sample_device: attestation with the device" "$out $(tail -5 "$WORK/wardd-dev/wardd.log")"
fi

# ---------------------------------------------------------------------------------------------
# Policy denial and 11: missing resource
# ---------------------------------------------------------------------------------------------
if out=$(get_direct kbs:///default/denied/1 2>&1); then
    report FAIL P-cli "policy denial (ward get-resource)" "released: $out"
else
    report PASS P-cli "policy denial (ward get-resource)" "$out"
fi
if out=$(via_wardd ec kbs:///default/denied/1 2>&1); then
    report FAIL P-wardd "policy denial (via wardd)" "released: $out"
else
    report PASS P-wardd "policy denial (via wardd)" "$out"
fi
for how in cli wardd; do
    if [[ $how == cli ]]; then
        out=$(get_direct kbs:///default/key/missing 2>&1) && rc=0 || rc=$?
    else
        out=$(via_wardd ec kbs:///default/key/missing 2>&1) && rc=0 || rc=$?
    fi
    if [[ $rc != 0 ]] && grep -qi 'missing resource' <<<"$out"; then
        report PASS "11a-$how" "missing resource: a clear error ($how)" "$out"
    else
        report FAIL "11a-$how" "missing resource: a clear error ($how)" "rc=$rc $out"
    fi
done
raw=$(curl -sS -i "$KBS_URL/kbs/v0/resource/default/key/missing" 2>&1 | head -1 | tr -d '\r')
echo "     (Trustee without a session answers: $raw)"

# ---------------------------------------------------------------------------------------------
# 11. session cookie expiry (one-minute session; ward renews 30 s before) and a lost session
# ---------------------------------------------------------------------------------------------
before=$(attests ec)
reactive=$(reattests ec)
cookie=$(curl -sS -i -X POST -H 'Content-Type: application/json' \
    -d '{"version":"0.4.0","tee":"sample","extra-params":{}}' "$KBS_URL/kbs/v0/auth" |
    grep -i '^set-cookie' | tr -d '\r' || true)
echo "     (Trustee's auth cookie: $cookie)"
echo "     (waiting 35 s for the session to come within ward's 30 s renewal margin)"
sleep 35
if out=$(via_wardd ec kbs:///default/key/1 2>&1) && [[ $out == trustee-secret-1 ]] &&
    [[ $(attests ec) -gt $before && $(reattests ec) == "$reactive" ]]; then
    report PASS 11b "session expiry honoured: re-attested before use" "kbs.attest entries $before -> $(attests ec), no 401 on the way ('attesting again' lines $reactive -> $(reattests ec)); got '$out'"
else
    report FAIL 11b "session expiry honoured: re-attested before use" "kbs.attest entries $before -> $(attests ec); 'attesting again' lines $reactive -> $(reattests ec); $out"
fi

before=$(attests ec)
kill "$KBS_PID"
wait "$KBS_PID" 2>/dev/null || true
start_kbs "$WORK/kbs-http.toml" "$WORK/kbs-http.log" "$HTTP_PORT"
KBS_PID=$LAST_PID
if out=$(via_wardd ec kbs:///default/key/1 2>&1) && [[ $out == trustee-secret-1 ]] &&
    [[ $(attests ec) -gt $before ]]; then
    report PASS 11c "session lost (KBS restarted): one re-attestation" "kbs.attest entries $before -> $(attests ec); $(grep -o 'attesting again' "$WORK/wardd-ec/wardd.log" | head -1)"
else
    report FAIL 11c "session lost (KBS restarted): one re-attestation" "kbs.attest entries $before -> $(attests ec); $out"
fi

# ---------------------------------------------------------------------------------------------
# 10. HTTPS with the self-signed (CA:TRUE) certificate as cacert; a wrong cacert
# ---------------------------------------------------------------------------------------------
start_kbs "$WORK/kbs-tls.toml" "$WORK/kbs-tls.log" "$TLS_PORT"
start_kbs "$WORK/kbs-tls-ip.toml" "$WORK/kbs-tls-ip.log" "$((TLS_PORT + 1))"
has_ca() { openssl x509 -in "$1" -noout -text | grep -q 'CA:TRUE' && echo CA:TRUE || echo 'no basicConstraints CA'; }
ca_guide=$(has_ca "$K/localhost.crt")
ca_ip=$(has_ca "$K/ip.crt")
if out=$("$WARD" get-resource --kbs "$KBS_TLS_URL" --tee sample --cacert "$K/localhost.crt" kbs:///default/key/1 2>&1) &&
    [[ $out == trustee-secret-1 ]]; then
    report PASS 10a "https, self-signed-https.md's cert as cacert" "$ca_guide; $KBS_TLS_URL: got '$out'"
else
    report FAIL 10a "https, self-signed-https.md's cert as cacert" "$ca_guide; $out"
fi
if out=$("$WARD" get-resource --kbs "https://127.0.0.1:$((TLS_PORT + 1))" --tee sample --cacert "$K/ip.crt" kbs:///default/key/1 2>&1) &&
    [[ $out == trustee-secret-1 ]]; then
    report PASS 10b "https, openssl req -x509 one-liner cert as cacert" "$ca_ip; got '$out'"
else
    report FAIL 10b "https, openssl req -x509 one-liner cert as cacert" "$ca_ip; $out"
fi
start_wardd tls "$((WHTTP + 3))" "cacert = \"$K/ip.crt\"" '' "https://127.0.0.1:$((TLS_PORT + 1))"
if out=$(via_wardd tls kbs:///default/key/1 2>&1) && [[ $out == trustee-secret-1 ]]; then
    report PASS 10c "https via wardd, [kbs] cacert = the CA:TRUE cert" "$ca_ip; got '$out'"
else
    report FAIL 10c "https via wardd, [kbs] cacert = the CA:TRUE cert" "$ca_ip; $out"
fi
if out=$("$WARD" get-resource --kbs "$KBS_TLS_URL" --tee sample --cacert "$K/other.crt" kbs:///default/key/1 2>&1); then
    report FAIL 10d "wrong cacert: a certificate error" "accepted: $out"
elif grep -qi 'certificate' <<<"$out" && ! grep -qi 'unreachable' <<<"$out"; then
    report PASS 10d "wrong cacert: a certificate error" "$out"
else
    report FAIL 10d "wrong cacert: a certificate error" "$out"
fi
if out=$("$WARD" get-resource --kbs "https://127.0.0.1:$((TLS_PORT + 1))" --tee sample --cacert "$K/localhost.crt" kbs:///default/key/1 2>&1); then
    report FAIL 10f "CA:TRUE server cert, wrong cacert: refused" "accepted: $out"
elif grep -qi 'certificate' <<<"$out" && ! grep -qi 'unreachable' <<<"$out"; then
    report PASS 10f "CA:TRUE server cert, wrong cacert: refused" "$out"
else
    report FAIL 10f "CA:TRUE server cert, wrong cacert: refused" "$out"
fi
if out=$("$WARD" get-resource --kbs "https://127.0.0.1:$TLS_PORT" --tee sample --cacert "$K/localhost.crt" kbs:///default/key/1 2>&1); then
    report FAIL 10e "name mismatch (the guide's DNS:127.0.0.1 SAN)" "accepted: $out"
elif grep -qi 'certificate' <<<"$out"; then
    report PASS 10e "name mismatch (the guide's DNS:127.0.0.1 SAN)" "$out"
else
    report FAIL 10e "name mismatch (the guide's DNS:127.0.0.1 SAN)" "$out"
fi

# ---------------------------------------------------------------------------------------------
# KBS down and hung
# ---------------------------------------------------------------------------------------------
start_wardd slow "$((WHTTP + 4))" $'timeout_secs = 3\nattempts = 2' ''
kill -STOP "$KBS_PID"
t0=$(date +%s)
out=$(timeout 120 "$WARD" get-resource --addr "unix://$WORK/wardd-slow/ward.sock" kbs:///default/key/1 2>&1) && rc=0 || rc=$?
t1=$(date +%s)
kill -CONT "$KBS_PID"
if [[ $rc != 0 && $rc != 124 ]] && grep -qi 'did not answer within' <<<"$out"; then
    report PASS H-hung "KBS hung (SIGSTOP): timeout with a clear error" "$((t1 - t0)) s: $out"
else
    report FAIL H-hung "KBS hung (SIGSTOP): timeout with a clear error" "rc=$rc $((t1 - t0)) s: $out"
fi
kill "$KBS_PID"
wait "$KBS_PID" 2>/dev/null || true
t0=$(date +%s)
out=$(timeout 120 "$WARD" attest --kbs "$KBS_URL" --tee sample 2>&1) && rc=0 || rc=$?
t1=$(date +%s)
if [[ $rc != 0 && $rc != 124 ]] && grep -qi 'unreachable' <<<"$out"; then
    report PASS H-down "KBS down: a clear error" "$((t1 - t0)) s: $out"
else
    report FAIL H-down "KBS down: a clear error" "rc=$rc $((t1 - t0)) s: $out"
fi
out=$(timeout 120 "$WARD" get-resource --addr "unix://$WORK/wardd-slow/ward.sock" kbs:///default/key/1 2>&1) && rc=0 || rc=$?
if [[ $rc != 0 && $rc != 124 ]] && grep -qi 'unreachable' <<<"$out"; then
    report PASS H-down2 "KBS down via wardd: a clear error" "$out"
else
    report FAIL H-down2 "KBS down via wardd: a clear error" "rc=$rc $out"
fi

echo "passed $PASSED, failed $FAILED; logs and keys in $WORK"
[[ $FAILED == 0 ]]
