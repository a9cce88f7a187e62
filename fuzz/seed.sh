#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seeds: the evidence fixtures beside the checkout
# (../shared/fixtures/evidence, skipped when absent), the test keys' JWE of image-rs, generated
# inputs (a small layer tar, a GGUF header), and the hand-written seeds under fuzz/seeds/.
# Existing corpus files are kept: the corpus grows across runs. Usage: fuzz/seed.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
fixtures="$repo/../shared/fixtures/evidence"
corpus="$here/corpus"

# add TARGET FILE...: copies each existing FILE into the target's corpus.
add() {
    local target=$1
    shift
    mkdir -p "$corpus/$target"
    local f
    for f in "$@"; do
        [[ -f $f ]] && cp -f "$f" "$corpus/$target/seed-$(basename "$f")"
    done
    return 0
}

# Every target gets its own folder, even with no seed (libFuzzer starts from empty input).
while IFS= read -r t; do
    mkdir -p "$corpus/$t"
done < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$here/Cargo.toml" | grep -v '^ward-fuzz$')

# Hand-written seeds.
for d in "$here"/seeds/*/; do
    add "$(basename "$d")" "$d"*
done

# Evidence fixtures.
if [[ -d $fixtures ]]; then
    add snp_report "$fixtures"/snp/*.bin
    add tdx_quote "$fixtures"/tdx/*.dat "$fixtures"/tdx-dcap/tdx_quote "$fixtures"/tdx-dcap/tdx_quote_outdated
    add verify_evidence "$fixtures"/tdx/*.dat "$fixtures"/tdx-dcap/tdx_quote "$fixtures"/snp/*.bin \
        "$fixtures"/snp/*.der
    # The CCEL table is 1 MiB of which the first ~6 KiB are events (the rest 0xff).
    mkdir -p "$corpus/ccel_log"
    head -c 8192 "$fixtures/ccel/CCEL_data" > "$corpus/ccel_log/seed-CCEL_data"
    add azure_evidence "$fixtures"/az-snp-vtpm/*.json "$fixtures"/az-tdx-vtpm/*.json
    add nvidia_cert_chain "$fixtures"/nvidia/hopper_cert_chain_case1.txt \
        "$fixtures"/nvidia/hopper_coco_certs1.txt "$fixtures"/snp/*.der
    mkdir -p "$corpus/nvidia_report"
    for r in hopperAttestationReport hopper_coco_report1; do
        tr -d ' \n' < "$fixtures/nvidia/$r.txt" | xxd -r -p > "$corpus/nvidia_report/seed-$r"
    done
    add explain "$fixtures"/snp/*.bin "$fixtures"/tdx/*.dat "$fixtures"/tdx-dcap/tdx_quote \
        "$fixtures"/az-snp-vtpm/*.json "$fixtures"/az-tdx-vtpm/*.json \
        "$fixtures"/nvidia/hopperAttestationReport.txt "$corpus/ccel_log/seed-CCEL_data" \
        "$corpus"/nvidia_report/seed-* "$here"/seeds/nvidia_evidence/*
else
    echo "seed.sh: no $fixtures; evidence targets start without fixtures" >&2
fi

# ocicrypt: skopeo's JWE to the test keys, and the keys' PEM for the key parsers.
add ocicrypt_jwe "$repo"/image-rs/src/ocicrypt/testdata/skopeo-1.9.3-jwe.json \
    "$repo"/image-rs/src/ocicrypt/testdata/*.pem

# A small layer: a directory, a file, a symlink, a hard link, a whiteout and an opaque whiteout.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/l/etc/sub" "$tmp/l/gone"
echo hello > "$tmp/l/etc/file"
ln -s ../etc/file "$tmp/l/etc/sub/link"
ln "$tmp/l/etc/file" "$tmp/l/etc/hard"
: > "$tmp/l/etc/.wh.old"
: > "$tmp/l/gone/.wh..wh..opq"
mkdir -p "$corpus/tar_layer"
tar --sort=name --owner=0 --group=0 --mtime=@0 -C "$tmp/l" -cf "$corpus/tar_layer/seed-layer.tar" .
tar --format=pax --owner=0 --group=0 --mtime=@0 -C "$tmp/l" -cf "$corpus/tar_layer/seed-pax.tar" etc

# A GGUF v3 header: no tensors, general.architecture = "llama", general.alignment = 32.
{
    printf 'GGUF\x03\x00\x00\x00'
    printf '\x00\x00\x00\x00\x00\x00\x00\x00' # tensors
    printf '\x02\x00\x00\x00\x00\x00\x00\x00' # key-values
    printf '\x14\x00\x00\x00\x00\x00\x00\x00' # key length 20
    printf 'general.architecture\x08\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00llama'
    printf '\x11\x00\x00\x00\x00\x00\x00\x00' # key length 17
    printf 'general.alignment\x04\x00\x00\x00\x20\x00\x00\x00'
} > "$corpus/gguf_header/seed-header.gguf"

echo "seed.sh: $(find "$corpus" -type f | wc -l) inputs in $corpus"
