//! An image larger than the guest's memory, pulled in a real guest (Debian's kernel, wardd as
//! `/init`, qemu; see `boot.rs`). In a confidential guest the image store is guest memory unless
//! the bundle sits on encrypted block storage, so:
//!
//! - with its bundle on a SecureMount volume (a blank virtio disk the guest formats as LUKS2
//!   with integrity, as kata-agent asks CoCo's CDH), a 256 MiB guest pulls a 320 MiB image:
//!   the rootfs goes to the volume, and nothing of the image stays in memory;
//! - with its bundle on the guest's tmpfs, the same guest refuses the pull before fetching a
//!   byte of the layer (a forwarder in front of the registry counts the layer's `GET`s), with an
//!   error naming the space needed and the space there is.
//!
//! The layer is random bytes, so its compressed size (what the manifest says and the download
//! carries) is the image's size. Skipped with a message when qemu, the kernel package,
//! docker-registry/skopeo/umoci, or cryptsetup/mkfs.ext4 are missing (`just deps`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ward_tests::bin;
use ward_tests::qemu::{Boot, KbsProcess, boot_any_with_memory, have, missing_tools, repo_root};
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools, random_file};
use ward_tests::registry_gate::BlobGate;

/// The guest's memory.
const GUEST_MIB: u32 = 256;
/// The image's one layer: random bytes, so compressed it is as large.
const LAYER_MIB: usize = 320;

fn console(b: &Boot) -> String {
    b.lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn has(b: &Boot, needle: &str) -> bool {
    b.lines.iter().any(|l| l.text.contains(needle))
}

/// The layer's digest, from the layout's one manifest.
fn layer_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest)).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert!(
        layers[0]["size"].as_u64().unwrap() > u64::from(GUEST_MIB) << 20,
        "the layer is not larger than the guest's memory: {manifest}"
    );
    layers[0]["digest"].as_str().unwrap().to_string()
}

#[test]
fn image_larger_than_guest_memory_pulls_onto_secure_mount_and_is_refused_on_tmpfs() {
    if let Some(why) = missing_tools() {
        eprintln!("skipped: {why}");
        return;
    }
    if let Err(skip) = image_tools() {
        eprintln!("skipped: {skip}");
        return;
    }
    if !have("cryptsetup") || !have("mkfs.ext4") {
        eprintln!("skipped: cryptsetup or mkfs.ext4 is missing (`just deps`)");
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();

    let registry = TestRegistry::start();
    let img = ImageBuilder::new("v1");
    random_file(&img.rootfs().join("weights.bin"), LAYER_MIB << 20);
    std::fs::write(
        img.rootfs().join("hello"),
        "from an image larger than memory\n",
    )
    .unwrap();
    img.layer();
    let digest = layer_digest(&img.layout);
    registry.push(&img.layout, "v1", "small/big-app");
    let gate = BlobGate::start(&registry.host(), &digest);
    gate.open();
    let host = format!("10.0.2.2:{}", gate.host().rsplit(':').next().unwrap());
    let guest_ref = format!("{host}/small/big-app:v1");

    let config = work.path().join("ward.toml");
    std::fs::write(
        &config,
        format!("[images]\ninsecure_registries = [\"{host}\"]\n"),
    )
    .unwrap();
    let out = Command::new(repo_root().join("rootfs/build-initrd.sh"))
        .arg("--wardd")
        .arg(bin("wardd"))
        .arg("--out")
        .arg(work.path())
        .arg("--config")
        .arg(&config)
        .arg("--secure-mount")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-initrd.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let kernel = work.path().join("vmlinuz");
    let initrd = work.path().join("initrd.img");

    let kbs = KbsProcess::start(work.path(), &[]);
    let port = kbs.url.rsplit(':').next().unwrap().to_string();
    let append = format!(
        "console=ttyS0 panic=-1 loglevel=6 \
         ward.tee=sample ward.allow_sample=true ward.kbs_url=http://10.0.2.2:{port} \
         ward.net=eth0:10.0.2.15/24:10.0.2.2 ward.log_level=info \
         ward.self_check=poweroff ward.listen=unix:///run/ward/ward.sock#all \
         ward.self_check_image={guest_ref}"
    );

    // The bundle on the guest's tmpfs (/run, half of its memory): refused before the layer.
    let on_tmpfs = boot_any_with_memory(&kernel, &initrd, &append, &[], GUEST_MIB);
    assert!(
        !on_tmpfs.timed_out,
        "no power-off ({}):\n{}",
        on_tmpfs.accel,
        console(&on_tmpfs)
    );
    for needle in [
        "self-check failed",
        "/run/ward/self-check has ",
        "bytes free; the image needs at least ",
    ] {
        assert!(
            has(&on_tmpfs, needle),
            "the tmpfs boot's console lacks `{needle}`:\n{}",
            console(&on_tmpfs)
        );
    }
    assert!(!has(&on_tmpfs, "self-check: image pulled"));
    assert_eq!(
        gate.gets(),
        0,
        "the guest fetched the layer although it could not hold it"
    );

    // The bundle on a SecureMount volume: the same guest pulls the whole image.
    let blank: PathBuf = work.path().join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(((LAYER_MIB as u64) + 192) << 20)
        .unwrap();
    let append = format!("{append} ward.self_check_volume=vda");
    let on_volume = boot_any_with_memory(
        &kernel,
        &initrd,
        &append,
        std::slice::from_ref(&blank),
        GUEST_MIB,
    );
    let kbs_out = kbs.stop();
    assert!(
        !on_volume.timed_out,
        "no power-off ({}):\n{}",
        on_volume.accel,
        console(&on_volume)
    );
    for bad in [
        "Kernel panic",
        "panicked",
        " ERROR ",
        "self-check failed",
        "Out of memory",
    ] {
        assert!(
            !has(&on_volume, bad),
            "the SecureMount boot's console shows `{bad}`:\n{}",
            console(&on_volume)
        );
    }
    for needle in [
        format!("self-check: image pulled image={guest_ref}"),
        "bundle=/run/ward/self-check-volumes/vda/bundle".to_string(),
        // wardd's progress log names the image's size before the first byte.
        format!("image pull started image={guest_ref} layers=1 bytes="),
        "wardd: self-check passed".to_string(),
        "reboot: Power down".to_string(),
    ] {
        assert!(
            has(&on_volume, &needle),
            "the SecureMount boot's console lacks `{needle}`:\n{}",
            console(&on_volume)
        );
    }
    assert!(gate.gets() >= 1, "the layer was never fetched");
    // grep(1): scanning the disk in this debug build would take longer than the boot.
    let found = Command::new("grep")
        .args(["-q", "-a", "-F", "from an image larger than memory"])
        .arg(&blank)
        .status()
        .unwrap();
    assert_eq!(
        found.code(),
        Some(1),
        "the image's plaintext is on the host's disk (or grep failed)"
    );
    let at = |b: &Boot, needle: &str| {
        b.lines
            .iter()
            .find(|l| l.text.contains(needle))
            .map_or(f64::NAN, |l| l.at.as_secs_f64())
    };
    eprintln!(
        "small guest ({}, {GUEST_MIB} MiB, layer {LAYER_MIB} MiB): on tmpfs refused {:.1} s after \
         READY; onto SecureMount pulled in {:.1} s; test {:.1} s; {kbs_out}",
        on_volume.accel,
        at(&on_tmpfs, "self-check failed") - at(&on_tmpfs, "wardd: ready"),
        at(&on_volume, "self-check: image pulled") - at(&on_volume, "image pull started"),
        started.elapsed().as_secs_f64()
    );
}
