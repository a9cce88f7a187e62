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
//! The TDX RTMR0-2 (`ward_measure::rtmr`) against tinfoilsh/tdx-measure (Rust, a fork of
//! dstack-mr, not packaged): on a synthetic TD against that tool's answers recorded here, and
//! live when `WARD_TDX_MEASURE` names its binary.
//!
//! The TDX MRTD against td-shim's Python implementation (confidential-containers/td-shim,
//! `td-shim-tools/src/bin/td-shim-tee-info-hash/td_shim_tee_info_hash.py`, page-by-page order),
//! which is not packaged: the test runs when `WARD_TD_SHIM_TEE_INFO_HASH` names that script and
//! skips with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ward_measure::rtmr::Rtmr2Events::{Auto, Stub};
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

/// The SHA-384 of edk2's empty 4 MiB variable store (Debian's `OVMF_VARS_4M.fd`), which
/// tdx-measure takes as the CFV of every guest.
const EMPTY_VARS_4M_SHA384: &str = "344bc51c980ba621aaa00da3ed7436f7d6e549197dfe699515dfa2c6583d95e6412af21c097d473155875ffd561d6790";

/// Deterministic bytes: `len` of a pattern seeded by `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect()
}

/// The synthetic TD of the RTMR checks, written to `dir` in tdx-measure's layout, and its
/// metadata file for `memory`.
struct SyntheticTd {
    firmware: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    tables: Vec<u8>,
    rsdp: Vec<u8>,
    loader: Vec<u8>,
    boot_order: Vec<u8>,
    boot: [Vec<u8>; 2],
}

const SYNTHETIC_CMDLINE: &str = "console=hvc0 panic=-1 ward.tee=auto";

impl SyntheticTd {
    fn new() -> Self {
        Self {
            firmware: ward_measure::synthetic::amdsev_like(256 << 10),
            kernel: ward_measure::synthetic::bzimage(0x20f, 0x7f, "6.8.0-ward-test", 1 << 20),
            initrd: pattern(3, 3 << 20),
            tables: pattern(5, 128 << 10),
            rsdp: pattern(7, 36),
            loader: pattern(11, 4096),
            boot_order: vec![1, 0, 0, 0],
            boot: [pattern(13, 120), pattern(17, 90)],
        }
    }

    /// ward's RTMR0-2 for `memory` bytes, with tdx-measure's CFV.
    fn ours(&self, memory: u64, rtmr2: ward_measure::rtmr::Rtmr2Events) -> [String; 3] {
        use ward_measure::rtmr::{self, DirectBoot, Platform, QEMU_ACPI_DATA_SIZE};
        let mut cfv = [0u8; 48];
        hex::decode_to_slice(EMPTY_VARS_4M_SHA384, &mut cfv).unwrap();
        let options = [(0u16, &self.boot[0][..]), (1, &self.boot[1][..])];
        let mut events = rtmr::platform_events(
            &self.firmware,
            memory,
            &Platform {
                acpi_tables: &self.tables,
                acpi_rsdp: &self.rsdp,
                table_loader: &self.loader,
                boot_order: &self.boot_order,
                boot_options: &options,
                cfv_sha384: Some(cfv),
            },
        )
        .unwrap();
        events.extend(
            rtmr::direct_boot_events(&DirectBoot {
                kernel: &self.kernel,
                initrd: &self.initrd,
                cmdline: SYNTHETIC_CMDLINE,
                memory,
                acpi_data_size: QEMU_ACPI_DATA_SIZE,
                rtmr2,
            })
            .unwrap(),
        );
        [0, 1, 2].map(|r| hex::encode(rtmr::replay(&events, r)))
    }

    /// Writes the files and tdx-measure's metadata for `memory` (as QEMU's -m text).
    fn write(&self, dir: &Path, memory: &str) -> PathBuf {
        let files = [
            ("OVMF.fd", &self.firmware),
            ("vmlinuz", &self.kernel),
            ("initrd.img", &self.initrd),
            ("acpi_tables.bin", &self.tables),
            ("rsdp.bin", &self.rsdp),
            ("table_loader.bin", &self.loader),
            ("BootOrder.bin", &self.boot_order),
            ("Boot0000.bin", &self.boot[0]),
            ("Boot0001.bin", &self.boot[1]),
        ];
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let at = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let meta = serde_json::json!({
            "boot_config": {
                "cpus": 1,
                "memory": memory,
                "bios": at("OVMF.fd"),
                "acpi_tables": at("acpi_tables.bin"),
                "rsdp": at("rsdp.bin"),
                "table_loader": at("table_loader.bin"),
                "boot_order": at("BootOrder.bin"),
                "path_boot_xxxx": format!("{}/", dir.display()),
            },
            "direct": {
                "kernel": at("vmlinuz"),
                "initrd": at("initrd.img"),
                "cmdline": SYNTHETIC_CMDLINE,
            }
        });
        let path = dir.join(format!("metadata-{memory}.json"));
        std::fs::write(&path, meta.to_string()).unwrap();
        path
    }
}

/// Memory sizes: below 2.75 GiB the initrd's address (so RTMR1) and the TD HOB follow the exact
/// size; above it, RAM splits at 2 GiB and continues at 4 GiB.
const MEMORIES: [(&str, u64); 3] = [("2G", 2 << 30), ("1536M", 1536 << 20), ("4G", 4 << 30)];

/// What tinfoilsh/tdx-measure (33a8526) printed for the synthetic TD at each of
/// [`MEMORIES`]: RTMR0, RTMR1, RTMR2. Recorded so that CI, which cannot fetch that tool,
/// still checks ward against it; `rtmrs_match_tdx_measure_run_live` recomputes them.
const TDX_MEASURE_SYNTHETIC: [[&str; 3]; 3] = [
    [RTMR0_2G, RTMR1_2G_AND_UP, RTMR2],
    [RTMR0_1536M, RTMR1_1536M, RTMR2],
    [RTMR0_4G, RTMR1_2G_AND_UP, RTMR2],
];
const RTMR0_2G: &str = "a9e39c7dc75d8bb418b23e8dfa1673e7dcbd6f09f09771b5708c8482df9158a8007f2b9f0e15c5b0989cfe86288dd69f";
const RTMR0_1536M: &str = "7b90eb79792e7d5d4de76b2fbfb09cc8c7eb829644076e65034e12a068383cddf41ab95f7ab3e6987ef8c7aa88d2cbc8";
const RTMR0_4G: &str = "31decde60ba8ba60d8dce53397279af53b184c11ed15fd6cb5a872a3a340e112faf5265e02b76eb14470f400f40a0e64";
const RTMR1_2G_AND_UP: &str = "81a88cf559d9a8b0fd77a2b6dea1d66f800559f0a3dc3565f2d5eac756311acb111433c662a598cd7367b8bda8cfd0b8";
const RTMR1_1536M: &str = "6179343f1d70c0ec06a9e57203377096689ec5e65002c29c4bbb5d28fe8055f8f259f6976d185b84a6f8051ea9c11a26";
const RTMR2: &str = "4b37dbca63d0ca868708657686879845bf861093913faf64bddd14cf60935dd5977a33d5ff58f8c137f053b620540ad0";

#[test]
fn rtmrs_match_tdx_measures_recorded_answers() {
    let td = SyntheticTd::new();
    for ((name, memory), want) in MEMORIES.iter().zip(TDX_MEASURE_SYNTHETIC) {
        assert_eq!(
            td.ours(*memory, Auto),
            want.map(String::from),
            "memory {name}"
        );
    }
}

/// tdx-measure's RTMRs from its output ("RTMR0: hex" lines).
fn tdx_measure(tool: &Path, metadata: &Path) -> [String; 3] {
    let out = run(Command::new(tool).arg(metadata), Duration::from_secs(120))
        .expect("tdx-measure did not finish");
    assert!(
        out.status.success(),
        "tdx-measure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    ["RTMR0", "RTMR1", "RTMR2"].map(|name| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in tdx-measure's output: {text}"))
            .trim()
            .to_lowercase()
    })
}

/// The same against the tool itself, when `WARD_TDX_MEASURE` names its binary (built from
/// github.com/tinfoilsh/tdx-measure, not packaged), on the synthetic TD and, when
/// `WARD_TDX_MEASURE_KERNEL` names a real kernel (Linux 6.8+ or RTMR2 differs by design) and
/// Debian's OVMF can be fetched, on those.
#[test]
fn rtmrs_match_tdx_measure_run_live() {
    let Some(tool) = std::env::var_os("WARD_TDX_MEASURE").map(PathBuf::from) else {
        eprintln!("skipped: WARD_TDX_MEASURE does not name a tdx-measure binary");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut td = SyntheticTd::new();
    for (name, memory) in MEMORIES {
        let theirs = tdx_measure(&tool, &td.write(dir.path(), name));
        eprintln!("synthetic, {name}: tdx-measure {theirs:?}");
        assert_eq!(td.ours(memory, Auto), theirs, "synthetic, memory {name}");
    }
    let Some(kernel) = std::env::var_os("WARD_TDX_MEASURE_KERNEL") else {
        eprintln!("WARD_TDX_MEASURE_KERNEL unset: the synthetic kernel only");
        return;
    };
    let ovmf = match run(
        &mut Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rootfs/fetch-ovmf.sh"
        )),
        Duration::from_secs(300),
    ) {
        Some(o) if o.status.success() => PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
        _ => {
            eprintln!("Debian's OVMF not fetched: the synthetic firmware only");
            return;
        }
    };
    td.firmware = std::fs::read(ovmf).unwrap();
    td.kernel = std::fs::read(kernel).unwrap();
    for (name, memory) in MEMORIES {
        let theirs = tdx_measure(&tool, &td.write(dir.path(), name));
        eprintln!("Debian OVMF and the named kernel, {name}: tdx-measure {theirs:?}");
        // tdx-measure always counts the stub's RTMR2 events; a kernel before 6.8 writes none.
        assert_eq!(td.ours(memory, Stub), theirs, "real kernel, memory {name}");
    }
}
