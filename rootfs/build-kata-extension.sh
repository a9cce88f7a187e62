#!/usr/bin/env bash
# Builds ward's Kata 4 "coco" guest extension: the tree kata-agent launches wardd from, and with
# --image the disk Kata cold-plugs (erofs data in partition 1, its dm-verity hash tree in
# partition 2), following kata-containers 7c6ba40c54ea (docs/design/composable-vm-images.md,
# tools/osbuilder/image-builder/image_builder.sh, src/agent/kata-extension-mount.sh).
#
#   rootfs/build-kata-extension.sh [--wardd PATH] [--config FILE] [--pause-bundle DIR] [--out DIR] [--image]
#
# The tree (DIR/tree, mounted by Kata at /run/kata-extensions/coco/):
#   etc/kata-extensions/components.toml   kata-extension/components.toml (what kata-agent launches)
#   usr/bin/wardd                         --wardd (default target/release/wardd), stripped
#   etc/ward/ward.toml                    --config, else `wardd --print-default-config`
#   etc/ocicrypt_config.json              kata-extension/ocicrypt_config.json (CoCo's, verbatim)
#   pause_bundle/                         --pause-bundle: the pause container's OCI bundle
#                                         (config.json + rootfs), needed by guest-pulled pods
# wardd is copied as built: a static musl build runs on any base image; a glibc build needs the
# base image's glibc to be as new as the build host's.
#
# --image writes DIR/ward-kata-extension.img and DIR/verity_params.txt, the value for Kata's
#   [[hypervisor.qemu.guest_extension_images]] name = "coco", verity_params = "..."
# (kata-agent's mount unit passes it to `veritysetup open --no-superblock`). Needs mkfs.erofs
# (erofs-utils), veritysetup (cryptsetup-bin) and sfdisk (fdisk); no root, no loop devices.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
wardd="$root/target/release/wardd"
config=""
pause=""
out="$root/.work/kata-extension"
image=no

die() { echo "build-kata-extension: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
	case "$1" in
	--wardd) wardd="${2:?--wardd needs a path}"; shift 2 ;;
	--config) config="${2:?--config needs a file}"; shift 2 ;;
	--pause-bundle) pause="${2:?--pause-bundle needs a directory}"; shift 2 ;;
	--out) out="${2:?--out needs a directory}"; shift 2 ;;
	--image) image=yes; shift ;;
	-h|--help) sed -n '2,23p' "$0"; exit 0 ;;
	*) die "unknown argument: $1" ;;
	esac
done

[ -x "$wardd" ] || die "no wardd at $wardd (cargo build --release -p ward-agent, or --wardd PATH)"
tree="$out/tree"
rm -rf "$tree"
mkdir -p "$tree/etc/kata-extensions" "$tree/etc/ward" "$tree/usr/bin"

install -m 0644 "$root/rootfs/kata-extension/components.toml" "$tree/etc/kata-extensions/components.toml"
install -m 0644 "$root/rootfs/kata-extension/ocicrypt_config.json" "$tree/etc/ocicrypt_config.json"
install -m 0755 "$wardd" "$tree/usr/bin/wardd"
if command -v strip >/dev/null; then
	strip "$tree/usr/bin/wardd"
fi
if [ -n "$config" ]; then
	install -m 0644 "$config" "$tree/etc/ward/ward.toml"
else
	"$tree/usr/bin/wardd" --print-default-config > "$tree/etc/ward/ward.toml"
fi
# A config that does not parse would only fail in the guest, after kata-agent's wait.
"$tree/usr/bin/wardd" --check-config --config "$tree/etc/ward/ward.toml" --cmdline /dev/null >/dev/null \
	|| die "$tree/etc/ward/ward.toml is not a valid wardd config"
if [ -n "$pause" ]; then
	[ -f "$pause/config.json" ] || die "$pause has no config.json: not an OCI bundle"
	cp -a "$pause" "$tree/pause_bundle"
else
	echo "build-kata-extension: no --pause-bundle: guest-pulled pods need one (kata-agent runs their pause container from it)" >&2
fi
echo "tree: $tree"

[ "$image" = yes ] || exit 0

for tool in mkfs.erofs veritysetup sfdisk; do
	command -v "$tool" >/dev/null || die "--image needs $tool"
done
work="$out/work"
rm -rf "$work"
mkdir -p "$work"
# As Kata's image builder: lz4hc, no inline data (4 KiB blocks for dm-verity).
mkfs.erofs -zlz4hc -Enoinline_data "$work/data.img" "$tree" >/dev/null
verity=$(veritysetup format --no-superblock "$work/data.img" "$work/hash.img")
field() { printf '%s\n' "$verity" | sed -n "s/^$1:[[:space:]]*//p"; }
params=$(printf 'root_hash=%s,salt=%s,data_blocks=%s,data_block_size=%s,hash_block_size=%s' \
	"$(field 'Root hash')" "$(field 'Salt')" "$(field 'Data blocks')" \
	"$(field 'Data block size')" "$(field 'Hash block size')")

# A GPT disk: partition 1 the erofs image, partition 2 the hash tree, each starting on a MiB.
mib=1048576
sectors() {
	local mibs=$(( ($(stat -c %s "$1") + mib - 1) / mib ))
	echo $(( mibs * (mib / 512) ))
}
p1_size=$(sectors "$work/data.img")
p2_size=$(sectors "$work/hash.img")
p1_start=2048
p2_start=$((p1_start + p1_size))
total=$((p2_start + p2_size + 2048))
img="$out/ward-kata-extension.img"
rm -f "$img"
truncate -s $((total * 512)) "$img"
sfdisk --quiet "$img" <<PARTS
label: gpt
start=$p1_start, size=$p1_size, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
start=$p2_start, size=$p2_size, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
PARTS
dd if="$work/data.img" of="$img" bs=512 seek="$p1_start" conv=notrunc,sparse status=none
dd if="$work/hash.img" of="$img" bs=512 seek="$p2_start" conv=notrunc,sparse status=none
printf '%s\n' "$params" > "$out/verity_params.txt"
rm -rf "$work"
echo "image: $img"
echo "verity_params: $params"
