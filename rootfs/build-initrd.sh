#!/usr/bin/env bash
# Builds a guest initrd with wardd as /init, and fetches the kernel to boot it with.
#
#   rootfs/build-initrd.sh [--debug] [--wardd PATH] [--out DIR] [--modules "NAME..."] [--config FILE] [--no-ca-certs] [--secure-mount]
#                          [--measure [--firmware FILE] [--cmdline "..."] [--vcpus "1 2"] [--vcpu-type T] [--initdata FILE]
#                                     [--tdx-memory SIZE]]
#
# - The kernel is Debian's linux-image-amd64 (the real linux-image-<version> it depends on),
#   fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a cache directory
#   (never installed); `depmod -b` writes the modules.dep the package leaves to its postinst.
# - wardd: a static musl build when the x86_64-unknown-linux-musl target is installed, else the
#   glibc build with the shared libraries `ldd` names. `--wardd PATH` takes a built binary
#   (the boot test passes the debug build); it is always stripped into the initrd.
# - Kernel modules: only those wardd needs (virtio PCI and net, vsock with the virtio and
#   loopback transports, configfs for TSM reports, sev-guest), with their dependencies from
#   modules.dep, listed in load order in /etc/ward/modules.load, which wardd loads as PID 1.
#   Compressed modules (.ko.xz in Debian's 6.12 kernels, .ko.zst, .ko.gz) go in decompressed.
# - The build host's CA bundle (/etc/ssl/certs/ca-certificates.crt, Debian's ca-certificates)
#   for registries and KBSes with public certificates; part of the measured initrd. The registry
#   client cannot start without a CA store, even for plain-HTTP registries. --no-ca-certs omits it.
# - --config FILE becomes /etc/ward/ward.toml (without it wardd runs on its built-in defaults
#   and the ward.* kernel command line).
# - --secure-mount adds what SecureMount (encrypted block volumes, as kata-agent asks CoCo's CDH
#   for them) runs: this machine's `cryptsetup` (Debian's cryptsetup-bin) and `mkfs.ext4`
#   (e2fsprogs) with their shared libraries, and the modules virtio_blk, dm-crypt,
#   dm-integrity, ext4 and the crypto they use (no modprobe in the initrd loads them on demand).
#   Without it the initrd holds no tool and SecureMount answers that they are missing.
# - --debug adds busybox-static as /bin/busybox and /bin/sh (boot with rdinit=/bin/sh to look
#   around); the default initrd holds nothing else.
# - Reproducible: wardd through rootfs/build-wardd.sh (paths remapped, --locked); every file's
#   mtime is SOURCE_DATE_EPOCH (default: the commit time of HEAD), umask 022, entries sorted,
#   owners 0:0, cpio --reproducible (no inode or device numbers), single-threaded zstd (or gzip
#   -n). The same inputs give the same bytes; the inputs that come from this machine (the CA
#   bundle, glibc's libraries for a glibc wardd, the --secure-mount tools) and the tool versions
#   are recorded in the manifest. Built as root or not changes the /dev nodes, hence the bytes.
# - --measure also writes DIR/reference-values.json, DIR/reference-values.toml (the verifying
#   client's) and DIR/trustee-rvps.json (ward-measure, see
#   docs/measurements.md), DIR/manifest.json (provenance: commit, toolchain, Cargo.lock,
#   every input's and output's digest, the reference values) and DIR/sbom.cdx.json (CycloneDX
#   1.5, the crates of the ward-agent package). The SNP digest is for
#   --firmware (default: Debian's OVMF.fd from rootfs/fetch-ovmf.sh, which cannot measure the
#   kernel: then only the firmware is measured and the script says so; name an AmdSev build for
#   the Kata direct-boot shape), booted with exactly --cmdline (default below) and --vcpus of
#   --vcpu-type; the TDX MRTD and RTMR1/RTMR2 are for Debian's OVMF.fd booting this kernel,
#   initrd and command line in a TD of --tdx-memory (default 2G, Kata's; QEMU's -m exactly:
#   below 2.75 GiB RTMR1 depends on it). A kernel before Linux 6.8 does not measure the initrd
#   and command line into RTMR2 under TDX (ward-measure warns); KERNEL_PACKAGE can name a newer
#   one. --initdata names the initdata document whose digest goes in HOSTDATA/MRCONFIGID.
#
# Writes DIR/vmlinuz, DIR/initrd.img (or initrd-debug.img) and DIR/kernel-version, and prints
# the initrd's size. Needs: apt-get, dpkg-deb, depmod (kmod), cpio, zstd or gzip; root for the
# /dev/console node (without it, the kernel has no console to hand to /init).
# Environment: WARD_CACHE (default .work/cache), KERNEL_PACKAGE (default linux-image-amd64).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${WARD_CACHE:-$root/.work/cache}"
out="$root/.work/initrd"
wardd=""
debug=0
config=""
ca_certs=1
secure_mount=0
measure=0
firmware=""
cmdline="console=hvc0 panic=-1 ward.tee=auto"
vcpus="1"
vcpu_type="EPYC-v4"
tdx_memory="2G"
initdata=""
modules="virtio_pci virtio_net vsock vmw_vsock_virtio_transport vsock_loopback configfs sev-guest"
kernel_package="${KERNEL_PACKAGE:-linux-image-amd64}"

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --debug) debug=1 ;;
    --wardd) wardd="${2:?--wardd needs a path}"; shift ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --modules) modules="${2?--modules needs a list}"; shift ;;
    --config) config="${2:?--config needs a file}"; shift ;;
    --no-ca-certs) ca_certs=0 ;;
    --secure-mount) secure_mount=1 ;;
    --measure) measure=1 ;;
    --firmware) firmware="${2:?--firmware needs a file}"; shift ;;
    --cmdline) cmdline="${2?--cmdline needs a string}"; shift ;;
    --vcpus) vcpus="${2:?--vcpus needs a list}"; shift ;;
    --vcpu-type) vcpu_type="${2:?--vcpu-type needs a QEMU CPU model}"; shift ;;
    --initdata) initdata="${2:?--initdata needs a file}"; shift ;;
    --tdx-memory) tdx_memory="${2:?--tdx-memory needs a size such as 2G}"; shift ;;
    -h|--help) usage ;;
    *) echo "build-initrd: unknown argument $1" >&2; usage ;;
  esac
  shift
done

log() { echo "build-initrd: $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { log "missing $1 ($2)"; exit 1; }; }
need apt-get "Debian's apt"
need dpkg-deb "dpkg"
need depmod "the kmod package"
need cpio "the cpio package"

umask 022
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

# --- the kernel -------------------------------------------------------------------------------
# The metapackage names the real one (linux-image-6.1.0-NN-amd64).
real_package=$(apt-cache depends "$kernel_package" 2>/dev/null \
  | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$real_package" ]; then
  real_package="$kernel_package"
fi
kdir="$cache/kernel/$real_package"
# A cache from before the manifest named the package's version and digest is fetched again:
# the digest can only come from the .deb (and --measure would stop on the missing files).
if [ ! -d "$kdir/boot" ] || [ ! -s "$kdir/.ward/deb.sha256" ]; then
  log "fetching $real_package (apt-get download, not installed)"
  rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
  # apt warns that root downloads unsandboxed; that is expected here.
  (cd "$kdir.tmp" && apt-get download -q "$real_package" 2>&1 | grep -v "unsandboxed" >&2) || true
  deb=$(find "$kdir.tmp" -maxdepth 1 -name '*.deb' | head -n1)
  if [ -z "$deb" ]; then
    log "apt-get download $real_package gave no .deb (run apt-get update?)"
    exit 1
  fi
  dpkg-deb -x "$deb" "$kdir.tmp/root"
  # What the manifest names: the package's version and the .deb's digest.
  mkdir -p "$kdir.tmp/root/.ward"
  dpkg-deb -f "$deb" Version > "$kdir.tmp/root/.ward/version"
  sha256sum "$deb" | awk '{print $1}' > "$kdir.tmp/root/.ward/deb.sha256"
  rm -f "$deb"
  rm -rf "$kdir" && mv "$kdir.tmp/root" "$kdir" && rm -rf "$kdir.tmp"
fi
vmlinuz=$(find "$kdir/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
kver=${vmlinuz##*/vmlinuz-}
moddir="$kdir/lib/modules/$kver"
if [ ! -s "$moddir/modules.dep" ]; then
  log "depmod for $kver"
  depmod -b "$kdir" "$kver"
fi

# --- the tree ---------------------------------------------------------------------------------
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"/{dev,proc,sys,run,tmp,etc/ward,lib/modules/"$kver"}
chmod 1777 "$staging/tmp"
if [ "$(id -u)" -eq 0 ]; then
  mknod -m 600 "$staging/dev/console" c 5 1
  mknod -m 666 "$staging/dev/null" c 1 3
else
  log "not root: no /dev/console node in the initrd (the kernel will warn and /init gets no stdio)"
fi

# wardd: musl when the target is there, else glibc with its libraries.
if [ -z "$wardd" ]; then
  wardd=$("$root/rootfs/build-wardd.sh")
fi
[ -x "$wardd" ] || { log "$wardd is not an executable"; exit 1; }
strip -o "$staging/init" "$wardd" 2>/dev/null || cp "$wardd" "$staging/init"
chmod 755 "$staging/init"

copy_libs() {
  # ldd prints "name => /path (addr)" and "/path (addr)"; a static binary has none.
  local lib
  while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$staging$(dirname "$lib")"
    cp -L "$lib" "$staging$lib"
  done < <(ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}')
}
copy_libs "$staging/init"

ca_bundle=/etc/ssl/certs/ca-certificates.crt
if [ "$ca_certs" -eq 1 ]; then
  if [ -s "$ca_bundle" ]; then
    install -D -m 0644 "$ca_bundle" "$staging$ca_bundle"
  else
    log "no $ca_bundle on this machine (install ca-certificates): the initrd has no CA store"
  fi
fi

if [ -n "$config" ]; then
  install -m 0644 "$config" "$staging/etc/ward/ward.toml"
fi

if [ "$secure_mount" -eq 1 ]; then
  for tool in cryptsetup mkfs.ext4; do
    path=$(PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" || true)
    [ -n "$path" ] || { log "--secure-mount needs $tool (apt-get install cryptsetup-bin e2fsprogs)"; exit 1; }
    install -D -m 0755 "$path" "$staging/usr/sbin/$tool"
    copy_libs "$path"
  done
  # AES-NI is absent under plain emulation: the kernel then answers ENODEV, which wardd skips.
  modules="$modules virtio_blk dm_mod dm_crypt dm_integrity ecb xts authenc algif_skcipher crc32c_generic aesni_intel ext4"
fi

if [ "$debug" -eq 1 ]; then
  [ -x /bin/busybox ] || { log "--debug needs busybox-static (/bin/busybox)"; exit 1; }
  if ldd /bin/busybox >/dev/null 2>&1; then
    log "/bin/busybox is dynamic: install busybox-static"
    exit 1
  fi
  mkdir -p "$staging/bin"
  cp /bin/busybox "$staging/bin/busybox"
  ln -s busybox "$staging/bin/sh"
fi

# --- kernel modules, dependencies first -------------------------------------------------------
# modules.dep: "kernel/x/y.ko: kernel/a.ko kernel/b.ko"; every line holds the module's whole
# dependency closure, loaded from the last entry to the first (as modprobe does).
declare -A dep_line=()
declare -A by_name=()
while IFS= read -r line; do
  mod=${line%%:*}
  name=${mod##*/}
  name=${name%%.ko*}
  name=${name//-/_}
  by_name[$name]=$mod
  dep_line[$mod]=${line#*:}
done < "$moddir/modules.dep"

order=()
declare -A added=()
add_module() {
  local mod=$1 deps d i
  [ -n "${added[$mod]:-}" ] && return
  read -r -a deps <<< "${dep_line[$mod]}"
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
    d=${deps[$i]}
    add_module "$d"
  done
  added[$mod]=1
  order+=("$mod")
}
for m in $modules; do
  key=${m//-/_}
  if [ -z "${by_name[$key]:-}" ]; then
    if grep -q "/${m}.ko\$\|/${m//_/-}.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
      log "module $m is built into $kver"
      continue
    fi
    log "module $m is not in $kver"
    exit 1
  fi
  add_module "${by_name[$key]}"
done
{
  echo "# kernel modules for wardd to load as PID 1, dependencies first (build-initrd.sh)"
  for mod in "${order[@]}"; do
    # Compressed modules (Debian's 6.12 kernels ship .ko.xz) go in decompressed: wardd loads
    # plain .ko files with finit_module(2), and the initrd is compressed as a whole anyway.
    plain=${mod%%.ko*}.ko
    mkdir -p "$staging/lib/modules/$kver/$(dirname "$mod")"
    case "$mod" in
      *.ko) cp "$moddir/$mod" "$staging/lib/modules/$kver/$plain" ;;
      *.ko.xz) xz -dc "$moddir/$mod" > "$staging/lib/modules/$kver/$plain" ;;
      *.ko.zst) zstd -q -dc "$moddir/$mod" > "$staging/lib/modules/$kver/$plain" ;;
      *.ko.gz) gzip -dc "$moddir/$mod" > "$staging/lib/modules/$kver/$plain" ;;
      *) log "$mod: a module compression this script does not know"; exit 1 ;;
    esac
    echo "/lib/modules/$kver/$plain"
  done
} > "$staging/etc/ward/modules.load"

# --- the archive ------------------------------------------------------------------------------
mkdir -p "$out"
out=$(cd "$out" && pwd)
name=initrd.img
[ "$debug" -eq 1 ] && name=initrd-debug.img
# Single-threaded: the output then depends on the level and zstd's version only.
if command -v zstd >/dev/null 2>&1; then
  compress=(zstd -q -9 --single-thread)
else
  compress=(gzip -9 -n)
fi
find "$staging" -mindepth 1 -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$staging" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
  | cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) \
  | "${compress[@]}" > "$out/$name.tmp"
mv "$out/$name.tmp" "$out/$name"
cp "$vmlinuz" "$out/vmlinuz"
echo "$kver" > "$out/kernel-version"

size=$(stat -c %s "$out/$name")
log "kernel $kver: $out/vmlinuz"
log "modules: ${#order[@]} ($(for mod in "${order[@]}"; do m=${mod##*/}; echo "${m%%.ko*}"; done | paste -sd' '))"
log "wardd: $(stat -c %s "$staging/init") bytes stripped; libraries: $(find "$staging/lib" "$staging/lib64" -name '*.so*' 2>/dev/null | wc -l)"
echo "initrd: $out/$name $size bytes ($((size / 1024)) KiB, ${compress[0]}) sha256 $(sha256sum "$out/$name" | awk '{print $1}')"

[ "$measure" -eq 1 ] || exit 0

# --- reference values and provenance ----------------------------------------------------------
log "building ward-measure"
(cd "$root" && cargo build -q --locked -p ward-measure --bin ward-measure)
measure_bin="${CARGO_TARGET_DIR:-$root/target}/debug/ward-measure"
debian_ovmf=$("$root/rootfs/fetch-ovmf.sh" OVMF.fd)
ovmf_version=$(basename "$(dirname "$(dirname "$(dirname "$(dirname "$debian_ovmf")")")")")
[ -n "$firmware" ] || firmware="$debian_ovmf"
ref_args=(reference --firmware "$firmware" --kernel "$out/vmlinuz" --initrd "$out/$name"
  --cmdline "$cmdline" --vcpu-type "$vcpu_type" --tdx-firmware "$debian_ovmf" --tdx-memory "$tdx_memory"
  --origin "kernel=$real_package $(cat "$kdir/.ward/version" 2>/dev/null) deb sha256 $(cat "$kdir/.ward/deb.sha256" 2>/dev/null)"
  --origin "tdx-firmware=Debian ovmf $ovmf_version OVMF.fd"
  --allow-unmeasured-kernel --out-dir "$out")
[ "$firmware" = "$debian_ovmf" ] && ref_args+=(--origin "firmware=Debian ovmf $ovmf_version OVMF.fd")
for n in $vcpus; do ref_args+=(--vcpus "$n"); done
[ -n "$initdata" ] && ref_args+=(--initdata "$initdata")
"$measure_bin" "${ref_args[@]}"

# The SBOM of wardd's crates (the ward-agent package: wardd and ward share its dependencies).
(cd "$root" && cargo metadata -q --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu) \
  > "$staging.metadata.json"
"$measure_bin" sbom --metadata "$staging.metadata.json" --lock "$root/Cargo.lock" --out "$out/sbom.cdx.json"
rm -f "$staging.metadata.json"

facts=(
  --fact "source_commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  --fact "source_dirty=$(if [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then echo yes; else echo no; fi)"
  --fact "source_date_epoch=$SOURCE_DATE_EPOCH"
  --fact "rustc=$(rustc -vV | tr '\n' ' ' | sed 's/ $//')"
  --fact "cargo=$(cargo -V)"
  --fact "kernel_package=$real_package $(cat "$kdir/.ward/version" 2>/dev/null)"
  --fact "kernel_deb_sha256=$(cat "$kdir/.ward/deb.sha256" 2>/dev/null)"
  --fact "ovmf_package=ovmf $ovmf_version"
  --fact "ovmf_deb_sha256=$(cat "${debian_ovmf%/usr/share/*}/deb.sha256" 2>/dev/null)"
  --fact "compressor=$("${compress[0]}" --version 2>&1 | head -n1)"
  --fact "cpio=$(cpio --version | head -n1)"
  --fact "strip=$(strip --version | head -n1)"
  --fact "modules=${#order[@]}"
  --fact "secure_mount=$secure_mount"
  --fact "debug=$debug"
)
inputs=(--input "Cargo.lock=$root/Cargo.lock" --input "wardd=$wardd" --input "vmlinuz=$vmlinuz"
  --input "firmware=$firmware")
for mod in "${order[@]}"; do inputs+=(--input "module:$(basename "$mod")=$moddir/$mod"); done
while IFS= read -r -d '' f; do
  inputs+=(--input "initrd:${f#"$staging"}=$f")
done < <(find "$staging" -type f \( -name '*.so*' -o -name 'ca-certificates.crt' -o -name ward.toml -o -path '*/usr/sbin/*' \) -print0 | LC_ALL=C sort -z)
"$measure_bin" provenance --out "$out/manifest.json" "${facts[@]}" "${inputs[@]}" \
  --output "$name=$out/$name" --output "vmlinuz=$out/vmlinuz" \
  --output "reference-values.json=$out/reference-values.json" \
  --output "reference-values.toml=$out/reference-values.toml" \
  --output "trustee-rvps.json=$out/trustee-rvps.json" --output "sbom.cdx.json=$out/sbom.cdx.json" \
  --reference "$out/reference-values.json"
log "reference values: $out/reference-values.json, $out/reference-values.toml (ward chat --reference), $out/trustee-rvps.json; provenance: $out/manifest.json"
