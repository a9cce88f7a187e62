//! A real boot: Debian's kernel and an initrd with wardd as `/init` (`rootfs/build-initrd.sh`)
//! under `qemu-system-x86_64`. wardd mounts, loads its modules, reads `ward.*` from the kernel
//! command line, configures the NIC (`ward.net=`), attests with the sample TEE to the dev KBS
//! on this machine (10.0.2.2 in qemu's user network is the host's loopback), then its
//! self-check calls health on every ttrpc listener (vsock through `vsock_loopback`), asks an
//! encrypted-only inference listener on vsock what a remote client would (attestation, plaintext
//! refused, an encrypted request answered sealed), fetches a secret, pulls an encrypted image
//! from a registry on this machine (its key released by the KBS; this part is skipped when
//! docker-registry, skopeo or umoci are missing), and powers the guest off. The test reads the
//! serial console and fails on any panic, error or timeout; it prints boot-to-ready (kernel time
//! of wardd's READY) and the initrd size.
//!
//! With `cryptsetup` and `mkfs.ext4` on this machine (`just deps`), the guest also gets two
//! virtio disks and asks its own SecureMount for them as kata-agent asks CoCo's CDH: a blank one
//! becomes an integrity-protected LUKS2 ext4 volume with a key made in the guest, and the image
//! is pulled onto it (afterwards the host's copy holds neither the image's bytes nor the
//! self-check's marker, nor a LUKS header); the other is a LUKS2 volume this machine made with a
//! key only the KBS releases, opened as a device. A second boot gets that volume with its key
//! slot altered by the host and must refuse it, naming the step.
//!
//! KVM is used when /dev/kvm opens and the kernel starts under it; otherwise (or with
//! `WARD_BOOT_ACCEL=tcg`) software emulation. Skipped with a message when qemu, or the kernel
//! package and its tools, are missing (`just deps` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ward_tests::bin;
use ward_tests::qemu::{
    BOOT_TIMEOUT, Boot, KbsProcess, boot_any, have, missing_tools, plain, printk_time, repo_root,
};
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools};

/// The self-check's marker, written through the blank volume (agent/src/selfcheck/volume.rs).
const MARKER: &str = "ward self-check: plaintext that must never reach the host's disk";

/// The two disks of the SecureMount part, when this machine can make them.
struct Disks {
    blank: PathBuf,
    luks: PathBuf,
    /// The LUKS volume's key, as the KBS releases it.
    key: String,
}

impl Disks {
    fn make(dir: &Path) -> Option<Disks> {
        if !have("cryptsetup") || !have("mkfs.ext4") {
            eprintln!("SecureMount part skipped: cryptsetup or mkfs.ext4 is missing (`just deps`)");
            return None;
        }
        let blank = dir.join("blank.img");
        std::fs::File::create(&blank)
            .unwrap()
            .set_len(192 << 20)
            .unwrap();
        let luks = dir.join("luks.img");
        std::fs::File::create(&luks)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let key = hex::encode(rand::random::<[u8; 32]>());
        let key_file = dir.join("luks.key");
        std::fs::write(&key_file, &key).unwrap();
        // The owner's volume: made here, its key handed to the KBS only.
        let out = Command::new("cryptsetup")
            .args(["--batch-mode", "luksFormat", "--type", "luks2"])
            .args(["--cipher", "aes-xts-plain64", "--sector-size", "4096"])
            .args([
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
            ])
            .arg(&key_file)
            .arg(&luks)
            .output()
            .unwrap();
        assert!(out.status.success(), "luksFormat: {out:?}");
        std::fs::remove_file(&key_file).unwrap();
        Some(Disks { blank, luks, key })
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.blank.clone(), self.luks.clone()]
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn wardd_boots_as_init_attests_serves_and_powers_off() {
    if let Some(why) = missing_tools() {
        eprintln!("skipped: {why}");
        return;
    }
    let test_started = Instant::now();
    let work = tempfile::tempdir().unwrap();

    // An image whose layer is encrypted with a KEK only the KBS holds, in a registry on this
    // machine: the guest reaches it as 10.0.2.2:PORT, over plain HTTP (configured below).
    let kek = "0123456789abcdef0123456789abcdef"; // 32 bytes
    let registry = match image_tools() {
        Ok(()) => {
            let reg = TestRegistry::start();
            let img = ImageBuilder::new("v1");
            std::fs::write(img.rootfs().join("hello"), "from an encrypted image\n").unwrap();
            img.layer();
            img.encrypt_for_key_provider("kbs:///default/image-kek/boot", kek.as_bytes());
            reg.push(&img.layout, "v1", "boot/secret-app");
            let guest_ref = format!("10.0.2.2:{}/boot/secret-app:v1", reg.port);
            Some((reg, img, guest_ref))
        }
        Err(skip) => {
            eprintln!("image pull part {skip}");
            None
        }
    };
    let config = work.path().join("ward.toml");
    let insecure = registry
        .as_ref()
        .map(|(r, _, _)| format!("\"10.0.2.2:{}\"", r.port))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!("[images]\ninsecure_registries = [{insecure}]\n"),
    )
    .unwrap();

    let disks = Disks::make(work.path());

    // The initrd, from the wardd this test run built (stripped by the script).
    let mut build = Command::new(repo_root().join("rootfs/build-initrd.sh"));
    build
        .arg("--wardd")
        .arg(bin("wardd"))
        .arg("--out")
        .arg(work.path())
        .arg("--config")
        .arg(&config);
    if disks.is_some() {
        build.arg("--secure-mount");
    }
    let out = build.output().unwrap();
    let build_log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "build-initrd.sh failed:\n{build_log}");
    let kernel = work.path().join("vmlinuz");
    let initrd = work.path().join("initrd.img");
    let initrd_size = std::fs::metadata(&initrd).unwrap().len();
    let build_time = test_started.elapsed();

    // A secret the guest can only get by attesting; it must never show on the console.
    let secret = format!("boot-secret-{}", hex::encode(rand::random::<[u8; 12]>()));
    let mut resources = vec![
        ("default/key/boot", secret.as_str()),
        ("default/image-kek/boot", kek),
    ];
    if let Some(d) = &disks {
        resources.push(("default/disk/key", d.key.as_str()));
    }
    let kbs = KbsProcess::start(work.path(), &resources);
    let port = kbs.url.rsplit(':').next().unwrap().to_string();
    let mut append = format!(
        "console=ttyS0 panic=-1 loglevel=6 \
         ward.tee=sample ward.allow_sample=true ward.kbs_url=http://10.0.2.2:{port} \
         ward.net=eth0:10.0.2.15/24:10.0.2.2 ward.log_level=info \
         ward.self_check=poweroff ward.self_check_resource=kbs:///default/key/boot \
         ward.listen=unix:///run/ward/ward.sock#all ward.listen=vsock://-1:1030#health \
         ward.listen=vsock://-1:1031#inference"
    );
    if let Some((_, _, guest_ref)) = &registry {
        append.push_str(&format!(" ward.self_check_image={guest_ref}"));
    }
    if disks.is_some() {
        append.push_str(
            " ward.self_check_volume=vda ward.self_check_volume=vdb,kbs:///default/disk/key",
        );
    }
    let disk_paths = disks.as_ref().map(Disks::paths).unwrap_or_default();
    let mut result = boot_any(&kernel, &initrd, &append, &disk_paths);
    let kbs_out = kbs.stop();
    let console: Vec<String> = result.lines.iter().map(|l| l.text.clone()).collect();
    let dump = || console.join("\n");

    assert!(
        !result.timed_out,
        "no power-off within {BOOT_TIMEOUT:?} ({}); console:\n{}",
        result.accel,
        dump()
    );
    for bad in [
        "Kernel panic",
        "panicked",
        " ERROR ",
        "self-check failed",
        "Failed to execute /init",
        "unable to open an initial console",
    ] {
        assert!(
            !console.iter().any(|l| l.contains(bad)),
            "the console shows `{bad}`:\n{}",
            dump()
        );
    }
    assert!(
        !console.iter().any(|l| l.contains(&secret)
            || l.contains(kek)
            || disks.as_ref().is_some_and(|d| l.contains(&d.key))),
        "a secret's value reached the console"
    );
    let has = |needle: &str| console.iter().any(|l| l.contains(needle));
    for needle in [
        "network configured net=eth0:10.0.2.15/24:10.0.2.2",
        "attestation ready tee=sample",
        "self-check: health answered SERVING addr=vsock://1:1030",
        "self-check: encrypted inference answered addr=vsock://1:1031 encrypted_only=true",
        "attested to the KBS",
        "self-check: resource released by the KBS uri=kbs:///default/key/boot",
        "wardd: self-check passed",
        "wardd: powering off: stopped",
        "reboot: Power down",
    ] {
        assert!(has(needle), "the console lacks `{needle}`:\n{}", dump());
    }
    // READY is logged twice at the same instant: wardd's log line on stderr and `wardd: ready`
    // through /dev/kmsg. Both reach the same serial console, and the kernel's line can land in
    // the middle of wardd's, so either one whole is proof.
    assert!(
        has("wardd ready version=") || has("wardd: ready"),
        "the console lacks wardd's ready line:\n{}",
        dump()
    );
    assert!(
        result.exit.is_some_and(|s| s.success()),
        "qemu ended with {:?}",
        result.exit
    );
    let mut resources = if let Some((_, _, guest_ref)) = &registry {
        // The layer's key came from the KBS and the layer decrypted and verified in the guest.
        for needle in [
            format!("self-check: image pulled image={guest_ref}"),
            "encrypted_layers=1".to_string(),
        ] {
            assert!(has(&needle), "the console lacks `{needle}`:\n{}", dump());
        }
        2
    } else {
        1
    };
    if let Some(d) = &disks {
        resources += 1;
        for needle in [
            "self-check: volume mounted device=vda mount_point=/run/ward/self-check-volumes/vda \
             filesystem=true bytes=1048",
            "self-check: volume mounted device=vdb mount_point=/run/ward/self-check-volumes/vdb.dev \
             filesystem=false bytes=",
        ] {
            assert!(has(needle), "the console lacks `{needle}`:\n{}", dump());
        }
        if registry.is_some() {
            let needle = "bundle=/run/ward/self-check-volumes/vda/bundle";
            assert!(has(needle), "the console lacks `{needle}`:\n{}", dump());
        }
        // What the host holds of the blank disk after the guest used it: ciphertext and tags.
        let blank = std::fs::read(&d.blank).unwrap();
        assert!(
            blank.iter().any(|b| *b != 0),
            "the guest wrote nothing to the blank disk"
        );
        assert!(
            !contains(&blank, MARKER.as_bytes()),
            "the self-check's plaintext is on the host's disk"
        );
        assert!(
            !contains(&blank, b"from an encrypted image"),
            "the pulled image's plaintext is on the host's disk"
        );
        assert!(
            !blank.starts_with(b"LUKS\xba\xbe"),
            "the blank volume's LUKS header (key slots) is on the host's disk, not in the guest"
        );
        altered_volume_is_refused(&kernel, &initrd, d, work.path());
    }
    assert!(
        kbs_out.contains(&format!("{resources} resource requests")),
        "the dev KBS did not serve {resources} resources: {kbs_out}"
    );

    // Kernel start to READY, by the kernel's own clock (wardd writes READY to /dev/kmsg).
    let ready = result
        .lines
        .iter_mut()
        .find(|l| l.text.contains("wardd: ready"))
        .expect("wardd's READY line on the console");
    let boot_to_ready = printk_time(&ready.text).expect("a printk timestamp on the READY line");
    let ready_wall = ready.at;
    let kernel_wall = result
        .lines
        .iter()
        .find(|l| l.text.contains("Linux version"))
        .map(|l| l.at);
    drop(registry);
    eprintln!(
        "boot ({}): kernel start to wardd READY {boot_to_ready:.3} s (printk clock); \
         qemu start to READY {:.2} s wall (kernel banner at {:.2} s); initrd {} bytes ({} KiB); \
         initrd build {:.1} s; test {:.1} s",
        result.accel,
        ready_wall.as_secs_f64(),
        kernel_wall.map_or(f64::NAN, |d| d.as_secs_f64()),
        initrd_size,
        initrd_size / 1024,
        build_time.as_secs_f64(),
        test_started.elapsed().as_secs_f64(),
    );
}

/// A second boot: the owner's volume with bytes of its key slot changed by the host. The guest
/// must refuse to open it, and say which step failed.
fn altered_volume_is_refused(kernel: &Path, initrd: &Path, d: &Disks, dir: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&d.luks)
        .unwrap();
    // LUKS2 key slot 0's area starts at 32 KiB (after both 16 KiB headers): flip 64 bytes
    // of its anti-forensic stripes. The headers' own checksums still hold.
    f.write_all_at(&rand::random::<[u8; 32]>(), 32768 + 4096)
        .unwrap();
    f.write_all_at(&rand::random::<[u8; 32]>(), 32768 + 4096 + 32)
        .unwrap();
    f.sync_all().unwrap();
    let kbs = KbsProcess::start(dir, &[("default/disk/key", d.key.as_str())]);
    let port = kbs.url.rsplit(':').next().unwrap().to_string();
    let append = format!(
        "console=ttyS0 panic=-1 loglevel=6 \
         ward.tee=sample ward.allow_sample=true ward.kbs_url=http://10.0.2.2:{port} \
         ward.net=eth0:10.0.2.15/24:10.0.2.2 ward.log_level=info ward.self_check=poweroff \
         ward.listen=unix:///run/ward/ward.sock#all \
         ward.self_check_volume=vda,kbs:///default/disk/key"
    );
    let result: Boot = boot_any(kernel, initrd, &append, std::slice::from_ref(&d.luks));
    let _ = kbs.stop();
    let console: Vec<String> = result.lines.iter().map(|l| l.text.clone()).collect();
    let dump = || console.join("\n");
    assert!(
        !result.timed_out,
        "the altered-volume boot hung:\n{}",
        dump()
    );
    let has = |needle: &str| console.iter().any(|l| l.contains(needle));
    for needle in [
        "self-check failed",
        "volume vda: SecureMount",
        "cryptsetup failed at luksOpen",
        "reboot: Power down",
    ] {
        assert!(has(needle), "the console lacks `{needle}`:\n{}", dump());
    }
    assert!(
        !has("self-check: volume mounted"),
        "an altered volume was mounted:\n{}",
        dump()
    );
    assert!(!has(&d.key), "the volume's key reached the console");
}

#[test]
fn console_parsing() {
    assert_eq!(
        plain("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x\r"),
        "2026  INFO x"
    );
    assert_eq!(
        printk_time("[    9.090721] reboot: Power down"),
        Some(9.090721)
    );
    assert_eq!(printk_time("wardd: ready"), None);
}
