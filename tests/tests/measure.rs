//! ward's launch measurements (`ward-measure`, attester/measure) against an independent
//! implementation on the same inputs: AMD's SNP launch digest against `sev-snp-measure`
//! (virtee, PyPI, pinned below, installed into a virtual environment kept under the target
//! directory and reused).
//!
//! Two firmware images: Debian's OVMF (`rootfs/fetch-ovmf.sh`: the real thing, but without the
//! kernel-hashes section, so no kernel is measured), and a synthetic image with the tables of an
//! AmdSev build (`ward_measure::synthetic`) booted with a kernel, initrd and command line, the
//! Kata direct-boot shape. Several vCPU counts, CPU models and SEV features each.
//!
//! Skipped, with a message, when python3 cannot make a virtual environment or PyPI cannot be
//! reached; the Debian half also when apt cannot fetch the ovmf package.
//!
//! The TDX MRTD against td-shim's Python implementation (confidential-containers/td-shim,
//! `td-shim-tools/src/bin/td-shim-tee-info-hash/td_shim_tee_info_hash.py`, page-by-page order),
//! which is not packaged: the test runs when `WARD_TD_SHIM_TEE_INFO_HASH` names that script and
//! skips with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ward_measure::snp::{self, KernelHashes, SnpLaunch};
use ward_tests::python::run;

/// The independent tool's version: a new release is checked on purpose, not by accident.
const SEV_SNP_MEASURE: &str = "sev-snp-measure==0.0.13";

/// The Python of a virtual environment with sev-snp-measure (`target/sev-snp-measure-venv`).
fn python_with_tool() -> Result<PathBuf, String> {
    ward_tests::python::python_with(
        "sev-snp-measure-venv",
        SEV_SNP_MEASURE,
        "sevsnpmeasure.guest",
    )
}

/// sev-snp-measure's answer, through its command line.
fn theirs(python: &Path, args: &[&str]) -> String {
    let out = run(
        Command::new(python)
            .args(["-m", "sevsnpmeasure.cli", "--mode", "snp"])
            .args(args),
        Duration::from_secs(120),
    )
    .expect("sev-snp-measure did not finish");
    assert!(
        out.status.success(),
        "sev-snp-measure {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn sha256_file(path: &Path) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(std::fs::read(path).unwrap()).into()
}

const CASES: &[(u32, &str, u64)] = &[
    (1, "EPYC-v4", 0x1),
    (2, "EPYC-Milan", 0x1),
    (4, "EPYC-Genoa", 0x21),
    (3, "EPYC-Rome", 0x1),
];

#[test]
fn snp_launch_digests_match_sev_snp_measure() {
    let python = match python_with_tool() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: no sev-snp-measure to compare with: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();

    // The Kata shape: AmdSev-like firmware, kernel, initrd, command line.
    let fw_path = dir.path().join("amdsev-like.fd");
    let fw = ward_measure::synthetic::amdsev_like(2 << 20);
    std::fs::write(&fw_path, &fw).unwrap();
    let kernel = dir.path().join("vmlinuz");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(
        &kernel,
        b"not a kernel, but hashed all the same".repeat(1000),
    )
    .unwrap();
    std::fs::write(&initrd, b"initrd bytes".repeat(5000)).unwrap();
    let cmdline = "console=hvc0 ward.tee=snp ward.kbs_url=https://kbs.example:8080 quiet";
    let hashes = KernelHashes::new(sha256_file(&kernel), sha256_file(&initrd), cmdline);
    for &(vcpus, vcpu_type, features) in CASES {
        let ours = snp::launch_digest(
            &fw,
            &SnpLaunch {
                vcpus,
                vcpu_sig: snp::vcpu_sig(vcpu_type).unwrap(),
                guest_features: features,
                kernel_hashes: Some(hashes.clone()),
            },
        )
        .unwrap()
        .to_string();
        let them = theirs(
            &python,
            &[
                "--vcpus",
                &vcpus.to_string(),
                "--vcpu-type",
                vcpu_type,
                "--guest-features",
                &format!("{features:#x}"),
                "--ovmf",
                fw_path.to_str().unwrap(),
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--append",
                cmdline,
            ],
        );
        eprintln!("kernel hashes, {vcpus} x {vcpu_type}, features {features:#x}: {ours}");
        assert_eq!(ours, them, "{vcpus} x {vcpu_type}, features {features:#x}");
    }

    // The ward-measure command writes the same value into its reference values.
    let out = dir.path().join("rv");
    let status = Command::new(ward_tests::bin("ward-measure"))
        .args(["reference", "--firmware"])
        .arg(&fw_path)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--cmdline",
            cmdline,
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-Milan",
        ])
        .arg("--out-dir")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let rv: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("reference-values.json")).unwrap()).unwrap();
    let them = theirs(
        &python,
        &[
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-Milan",
            "--ovmf",
            fw_path.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--append",
            cmdline,
        ],
    );
    assert_eq!(rv["snp"]["measurements"][0]["measurement"], them);

    // Debian's real OVMF, firmware only.
    let fetched = run(
        &mut Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rootfs/fetch-ovmf.sh"
        )),
        Duration::from_secs(300),
    );
    let ovmf = match fetched {
        Some(o) if o.status.success() => PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
        other => {
            eprintln!(
                "skipped the Debian OVMF half: rootfs/fetch-ovmf.sh failed: {}",
                other.map_or("timed out".into(), |o| String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .to_string())
            );
            return;
        }
    };
    let debian = std::fs::read(&ovmf).unwrap();
    for &(vcpus, vcpu_type, features) in CASES {
        let ours = snp::launch_digest(
            &debian,
            &SnpLaunch {
                vcpus,
                vcpu_sig: snp::vcpu_sig(vcpu_type).unwrap(),
                guest_features: features,
                kernel_hashes: None,
            },
        )
        .unwrap()
        .to_string();
        let them = theirs(
            &python,
            &[
                "--vcpus",
                &vcpus.to_string(),
                "--vcpu-type",
                vcpu_type,
                "--guest-features",
                &format!("{features:#x}"),
                "--ovmf",
                ovmf.to_str().unwrap(),
            ],
        );
        eprintln!(
            "{}, {vcpus} x {vcpu_type}, features {features:#x}: {ours}",
            ovmf.display()
        );
        assert_eq!(ours, them, "Debian OVMF, {vcpus} x {vcpu_type}");
    }
    // And both refuse to measure a kernel with it.
    assert!(matches!(
        snp::launch_digest(
            &debian,
            &SnpLaunch {
                vcpus: 1,
                vcpu_sig: snp::vcpu_sig("EPYC-v4").unwrap(),
                guest_features: 1,
                kernel_hashes: Some(hashes),
            },
        ),
        Err(snp::SnpError::NoKernelHashes)
    ));
}

#[test]
fn mrtd_matches_td_shims_python_implementation() {
    let Some(script) = std::env::var_os("WARD_TD_SHIM_TEE_INFO_HASH") else {
        eprintln!(
            "skipped: WARD_TD_SHIM_TEE_INFO_HASH does not name td-shim's td_shim_tee_info_hash.py"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let synthetic = dir.path().join("synthetic.fd");
    std::fs::write(&synthetic, ward_measure::synthetic::amdsev_like(256 << 10)).unwrap();
    let mut images = vec![synthetic];
    match run(
        &mut Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rootfs/fetch-ovmf.sh"
        )),
        Duration::from_secs(300),
    ) {
        Some(o) if o.status.success() => {
            images.push(PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()))
        }
        _ => eprintln!("Debian's OVMF not fetched: the synthetic image only"),
    }
    for image in images {
        let out = run(
            Command::new("python3")
                .arg(&script)
                .args(["-l", "off", "-i"])
                .arg(&image),
            Duration::from_secs(300),
        )
        .expect("td_shim_tee_info_hash.py did not finish");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let ours = ward_measure::tdx::mrtd(
            &std::fs::read(&image).unwrap(),
            ward_measure::tdx::PageOrder::Interleaved,
        )
        .unwrap()
        .to_string();
        eprintln!("{}: MRTD {ours}", image.display());
        assert_eq!(ours, theirs, "{}", image.display());
    }
}
