//! The initrd is reproducible: `rootfs/build-initrd.sh` run twice on the same wardd, into two
//! output directories (each with its own staging directory), one after the other, gives the
//! same bytes. This covers the packaging (mtimes, order, owners, compression); that wardd itself
//! builds to the same bytes in two checkouts takes two release builds, so it is
//! `just repro-initrd` (rootfs/repro-check.sh), not part of the suite.
//!
//! Skipped, with a message, when the tools the initrd build needs are missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use sha2::{Digest, Sha256};
use ward_tests::bin;
use ward_tests::qemu::{have, repo_root};

fn build(out: &std::path::Path) {
    let o = Command::new(repo_root().join("rootfs/build-initrd.sh"))
        .arg("--wardd")
        .arg(bin("wardd"))
        .arg("--out")
        .arg(out)
        // Both builds use the same epoch, as two builds of one commit do.
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build-initrd.sh failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn two_initrd_builds_are_byte_identical() {
    for (cmd, package) in [
        ("cpio", "cpio"),
        ("depmod", "kmod"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
    ] {
        if !have(cmd) {
            eprintln!("skipped: {cmd} is missing (Debian package {package}; `just deps`)");
            return;
        }
    }
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    build(a.path());
    build(b.path());
    for name in ["initrd.img", "vmlinuz"] {
        let da = Sha256::digest(std::fs::read(a.path().join(name)).unwrap());
        let db = Sha256::digest(std::fs::read(b.path().join(name)).unwrap());
        eprintln!("{name}: {}", hex::encode(da));
        assert_eq!(da, db, "{name} differs between two builds");
    }
}
