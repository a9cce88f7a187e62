//! `ward-measure`: the launch measurements of the images a ward guest boots, computed from the
//! files, and the reference values and build provenance written from them.
//!
//!   ward-measure snp --firmware OVMF.fd [--kernel K --initrd I --cmdline C] --vcpus N
//!   ward-measure tdx --firmware OVMF.fd [--kernel K --initrd I --cmdline C --tdx-memory 2G]
//!                    [--acpi-tables T --acpi-rsdp R --table-loader L --boot-order B] [--log]
//!   ward-measure reference --firmware F --kernel K --initrd I --cmdline C --out-dir DIR ...
//!   ward-measure provenance --out FILE --fact k=v --input name=path --output name=path ...
//!
//! Exit codes: 0 done, 1 a measurement or file failed, 2 bad arguments (clap).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};
use ward_attester::initdata::{InitData, MAX_INITDATA, fit_to_field};
use ward_measure::reference::{
    FORMAT, FileDigest, InitDataValues, ReferenceValues, SnpMeasurement, SnpPolicy, SnpValues,
    TdxValues,
};
use ward_measure::snp::{self, KernelHashes, SnpLaunch};
use ward_measure::tdx::PageOrder;

mod tdx_cmd;

/// Firmware images larger than this are refused (OVMF is 2-4 MiB).
const MAX_FIRMWARE: u64 = 64 << 20;

#[derive(Parser)]
#[command(name = "ward-measure", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Boot {
    /// The firmware image (OVMF; an AmdSev build to measure a kernel under SNP; TDVF, which
    /// Debian's OVMF.fd is, for TDX).
    #[arg(long)]
    firmware: PathBuf,
    /// The kernel QEMU boots with -kernel (measured through OVMF's SEV hashes table under SNP,
    /// into RTMR1 under TDX).
    #[arg(long, requires = "cmdline")]
    kernel: Option<PathBuf>,
    /// The initrd (-initrd); absent, an empty one is measured.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line (-append), exactly.
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
}

#[derive(clap::Args, Clone)]
struct Vcpus {
    /// vCPU counts to compute the SNP digest for (repeat for several).
    #[arg(long = "vcpus", default_values_t = [1u32])]
    vcpus: Vec<u32>,
    /// QEMU's CPU model (-cpu), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.
    #[arg(long, default_value = "EPYC-v4")]
    vcpu_type: String,
    /// The VMSA's SEV_FEATURES (0x1; 0x21 with DebugSwap, Linux 6.8+ KVM's default).
    #[arg(long, default_value = "0x1", value_parser = parse_u64)]
    guest_features: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Print the SNP launch digest (hex), one line per vCPU count.
    Snp {
        #[command(flatten)]
        boot: Boot,
        #[command(flatten)]
        vcpus: Vcpus,
    },
    /// Print the TDX MRTD of a TDVF image ("mrtd HEX"); with the kernel, initrd and command
    /// line also RTMR1 and RTMR2, and with QEMU's ACPI blobs and boot variables RTMR0.
    Tdx {
        #[command(flatten)]
        boot: Boot,
        /// interleaved (KVM 6.16+, QEMU 10.1+) or add-then-extend (older TDX trees).
        #[arg(long, default_value = "interleaved", value_parser = parse_order)]
        page_order: PageOrder,
        #[command(flatten)]
        runtime: tdx_cmd::TdxRuntime,
        #[command(flatten)]
        platform: tdx_cmd::TdxPlatform,
        /// Also print every event of the log (register, digest, what), to compare with a
        /// guest's CCEL.
        #[arg(long)]
        log: bool,
    },
    /// Write DIR/reference-values.json (ward's format), DIR/trustee-rvps.json (an RVPS
    /// message for Trustee) and DIR/reference-values.toml (for `ward chat --reference`).
    Reference {
        #[command(flatten)]
        boot: Boot,
        #[command(flatten)]
        vcpus: Vcpus,
        /// The SNP guest policy the guest is launched with (Kata's default 0x30000).
        #[arg(long, default_value = "0x30000", value_parser = parse_u64)]
        snp_policy: u64,
        /// Also the TDX MRTD, from this TDVF image (may be the same file as --firmware), and
        /// RTMR1/RTMR2 of the kernel, initrd and command line booted on it.
        #[arg(long)]
        tdx_firmware: Option<PathBuf>,
        #[arg(long, default_value = "interleaved", value_parser = parse_order)]
        page_order: PageOrder,
        #[command(flatten)]
        tdx_runtime: tdx_cmd::TdxRuntime,
        #[command(flatten)]
        tdx_platform: tdx_cmd::TdxPlatform,
        /// The initdata document the guest is launched with (its digest is HOSTDATA/MRCONFIGID).
        #[arg(long)]
        initdata: Option<PathBuf>,
        /// Where an input came from: NAME=TEXT (e.g. kernel="linux-image-6.1.0-37-amd64 6.1.140-1").
        #[arg(long = "origin", value_parser = parse_kv)]
        origins: Vec<(String, String)>,
        /// When the firmware cannot measure a kernel (no kernel-hashes section, like Debian
        /// bookworm's OVMF.fd), measure the firmware alone and say so, instead of failing.
        #[arg(long)]
        allow_unmeasured_kernel: bool,
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Check an SNP report (raw, 1184 bytes) against a reference-values.json: measurement,
    /// HOSTDATA, policy. Exits 1 on any mismatch. Not the signature or TCB (`ward evidence
    /// --explain --vcek` checks the signature).
    Check {
        #[arg(long)]
        reference: PathBuf,
        #[arg(long)]
        snp_report: PathBuf,
    },
    /// Write a CycloneDX 1.5 SBOM of a workspace package's crates from `cargo metadata
    /// --format-version 1` output (a file) and Cargo.lock.
    Sbom {
        #[arg(long)]
        metadata: PathBuf,
        #[arg(long)]
        lock: PathBuf,
        #[arg(long, default_value = "ward-agent")]
        package: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a provenance manifest: the facts given, the digests of the inputs and outputs,
    /// and the reference values file embedded.
    Provenance {
        #[arg(long)]
        out: PathBuf,
        /// KEY=VALUE facts (commit, toolchain, tool versions).
        #[arg(long = "fact", value_parser = parse_kv)]
        facts: Vec<(String, String)>,
        /// NAME=PATH of an input to digest.
        #[arg(long = "input", value_parser = parse_kv)]
        inputs: Vec<(String, String)>,
        /// NAME=PATH of an output to digest.
        #[arg(long = "output", value_parser = parse_kv)]
        outputs: Vec<(String, String)>,
        /// A reference-values.json to embed.
        #[arg(long)]
        reference: Option<PathBuf>,
    },
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s}: {e}"))
}

fn parse_order(s: &str) -> Result<PageOrder, String> {
    match s {
        "interleaved" => Ok(PageOrder::Interleaved),
        "add-then-extend" => Ok(PageOrder::AddThenExtend),
        other => Err(format!("{other}: interleaved or add-then-extend")),
    }
}

fn order_name(o: PageOrder) -> &'static str {
    match o {
        PageOrder::Interleaved => "interleaved",
        PageOrder::AddThenExtend => "add-then-extend",
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s}: expected NAME=VALUE"))
}

/// The SHA-256 and size of a file, read in chunks.
fn digest_file(path: &Path) -> Result<([u8; 32], u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size = size.checked_add(n as u64).context("file size overflows")?;
    }
    Ok((h.finalize().into(), size))
}

fn file_digest(name: &str, path: &Path, origins: &[(String, String)]) -> Result<FileDigest> {
    let (sha, size) = digest_file(path)?;
    Ok(FileDigest {
        name: name.to_string(),
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size,
        sha256: hex::encode(sha),
        origin: origins
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone()),
    })
}

fn read_firmware(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("firmware {}", path.display()))?
        .len();
    if len > MAX_FIRMWARE {
        bail!(
            "firmware {} is {len} bytes, over {MAX_FIRMWARE}",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

fn kernel_hashes(boot: &Boot) -> Result<Option<KernelHashes>> {
    let Some(kernel) = &boot.kernel else {
        return Ok(None);
    };
    let (k, _) = digest_file(kernel)?;
    let i = match &boot.initrd {
        Some(p) => digest_file(p)?.0,
        None => Sha256::digest([]).into(),
    };
    Ok(Some(KernelHashes::new(
        k,
        i,
        boot.cmdline.as_deref().unwrap_or_default(),
    )))
}

fn snp_measurements(boot: &Boot, v: &Vcpus) -> Result<Vec<SnpMeasurement>> {
    let fw = read_firmware(&boot.firmware)?;
    let hashes = kernel_hashes(boot)?;
    let sig = snp::vcpu_sig(&v.vcpu_type)?;
    v.vcpus
        .iter()
        .map(|&n| {
            let d = snp::launch_digest(
                &fw,
                &SnpLaunch {
                    vcpus: n,
                    vcpu_sig: sig,
                    guest_features: v.guest_features,
                    kernel_hashes: hashes.clone(),
                },
            )?;
            Ok(SnpMeasurement {
                vcpus: n,
                vcpu_type: v.vcpu_type.clone(),
                vcpu_sig: format!("{sig:#x}"),
                guest_features: format!("{:#x}", v.guest_features),
                measurement: d.to_string(),
            })
        })
        .collect()
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Snp { boot, vcpus } => {
            for m in snp_measurements(&boot, &vcpus)? {
                println!("{}", m.measurement);
            }
        }
        Command::Tdx {
            boot,
            page_order,
            runtime,
            platform,
            log,
        } => {
            let booted = boot.kernel.as_deref().map(|k| {
                (
                    k,
                    boot.initrd.as_deref(),
                    boot.cmdline.as_deref().unwrap_or_default(),
                )
            });
            let computed = tdx_cmd::compute(
                &read_firmware(&boot.firmware)?,
                page_order,
                booted,
                &runtime,
                &platform,
            )?;
            tdx_cmd::print(&computed, log);
        }
        Command::Reference {
            boot,
            vcpus,
            snp_policy,
            tdx_firmware,
            page_order,
            tdx_runtime,
            tdx_platform,
            initdata,
            origins,
            allow_unmeasured_kernel,
            out_dir,
        } => {
            let mut inputs = vec![file_digest("firmware", &boot.firmware, &origins)?];
            for (name, path) in [("kernel", &boot.kernel), ("initrd", &boot.initrd)] {
                if let Some(p) = path {
                    inputs.push(file_digest(name, p, &origins)?);
                }
            }
            let tdx = match &tdx_firmware {
                Some(p) => {
                    inputs.push(file_digest("tdx-firmware", p, &origins)?);
                    let boot = boot.kernel.as_deref().map(|k| {
                        (
                            k,
                            boot.initrd.as_deref(),
                            boot.cmdline.as_deref().unwrap_or_default(),
                        )
                    });
                    let c = tdx_cmd::compute(
                        &read_firmware(p)?,
                        page_order,
                        boot,
                        &tdx_runtime,
                        &tdx_platform,
                    )?;
                    if c.stub_measures == Some(false) {
                        eprintln!(
                            "ward-measure: WARNING: the kernel's EFI stub does not measure into \
                             RTMR2 (before Linux 6.8): under TDX the initrd and command line are \
                             not measured (RTMR2 stays zero)"
                        );
                    }
                    Some(TdxValues {
                        page_order: order_name(page_order).into(),
                        mr_td: c.mrtd.clone(),
                        debug_allowed: false,
                        memory: boot.map(|_| tdx_runtime.memory),
                        rtmr0: c.rtmr0.map(hex::encode),
                        rtmr1: c.rtmr1.map(hex::encode),
                        rtmr2: c.rtmr2.map(hex::encode),
                        rtmr2_measures_boot: c.stub_measures,
                        tdvfkernel: c.event(ward_measure::rtmr::KERNEL_EVENT),
                        tdvfkernelparams: c.event(ward_measure::rtmr::CMDLINE_EVENT),
                    })
                }
                None => None,
            };
            let initdata = match &initdata {
                Some(p) => {
                    let len = std::fs::metadata(p)
                        .with_context(|| format!("initdata {}", p.display()))?
                        .len();
                    if len > MAX_INITDATA as u64 {
                        bail!("initdata {} is over {MAX_INITDATA} bytes", p.display());
                    }
                    let body = std::fs::read_to_string(p)
                        .with_context(|| format!("read {}", p.display()))?;
                    let doc = InitData::parse(body)?;
                    Some(InitDataValues {
                        file: file_digest("initdata", p, &origins)?,
                        algorithm: format!("{:?}", doc.algorithm()).to_lowercase(),
                        digest: hex::encode(doc.digest()),
                        snp_host_data: hex::encode(fit_to_field(doc.digest(), 32)),
                        tdx_mr_config_id: hex::encode(fit_to_field(doc.digest(), 48)),
                    })
                }
                None => None,
            };
            let (measurements, kernel_measured) = match snp_measurements(&boot, &vcpus) {
                Err(e)
                    if allow_unmeasured_kernel
                        && matches!(
                            e.downcast_ref::<snp::SnpError>(),
                            Some(snp::SnpError::NoKernelHashes)
                        ) =>
                {
                    eprintln!(
                        "ward-measure: WARNING: {} cannot measure a kernel under SNP: the SNP \
                         digests cover the firmware only, not the kernel, initrd or command line",
                        boot.firmware.display()
                    );
                    let firmware_only = Boot {
                        kernel: None,
                        initrd: None,
                        cmdline: None,
                        ..boot.clone()
                    };
                    (snp_measurements(&firmware_only, &vcpus)?, false)
                }
                other => (other?, boot.kernel.is_some()),
            };
            let rv = ReferenceValues {
                format: FORMAT.into(),
                cmdline: boot.cmdline.clone().unwrap_or_default(),
                inputs,
                initdata,
                snp: Some(SnpValues {
                    kernel_hashes: kernel_measured,
                    policy: SnpPolicy::from_bits(snp_policy),
                    measurements,
                }),
                tdx,
            };
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("create {}", out_dir.display()))?;
            write_json(&out_dir.join("reference-values.json"), &rv)?;
            write_json(&out_dir.join("trustee-rvps.json"), &rv.rvps_message()?)?;
            let client = out_dir.join("reference-values.toml");
            std::fs::write(&client, rv.client_toml())
                .with_context(|| format!("write {}", client.display()))?;
            for m in rv.snp.iter().flat_map(|s| &s.measurements) {
                println!("snp {} vcpus {}: {}", m.vcpu_type, m.vcpus, m.measurement);
            }
            if let Some(t) = &rv.tdx {
                println!("tdx mr_td ({}): {}", t.page_order, t.mr_td);
                for (name, v) in [
                    ("rtmr0", &t.rtmr0),
                    ("rtmr1", &t.rtmr1),
                    ("rtmr2", &t.rtmr2),
                ] {
                    if let Some(v) = v {
                        println!("tdx {name}: {v}");
                    }
                }
            }
        }
        Command::Check {
            reference,
            snp_report,
        } => {
            let rv: ReferenceValues = serde_json::from_slice(
                &std::fs::read(&reference)
                    .with_context(|| format!("read {}", reference.display()))?,
            )
            .with_context(|| format!("{} is not ward's reference values", reference.display()))?;
            if rv.format != FORMAT {
                bail!(
                    "{}: format {:?}, not {FORMAT}",
                    reference.display(),
                    rv.format
                );
            }
            let bytes = std::fs::read(&snp_report)
                .with_context(|| format!("read {}", snp_report.display()))?;
            let r = ward_attester::explain::parse_snp_report(&bytes)?.report;
            let mismatches = rv.check_snp(&r.measurement, &r.host_data, u64::from(r.policy));
            if mismatches.is_empty() {
                println!("match: measurement {}", hex::encode(r.measurement));
            } else {
                for m in &mismatches {
                    println!("mismatch: {m}");
                }
                bail!("the report does not match {}", reference.display());
            }
        }
        Command::Sbom {
            metadata,
            lock,
            package,
            out,
        } => {
            let meta: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&metadata)
                    .with_context(|| format!("read {}", metadata.display()))?,
            )?;
            let lock = std::fs::read_to_string(&lock)
                .with_context(|| format!("read {}", lock.display()))?;
            write_json(
                &out,
                &ward_measure::sbom::cyclonedx(&meta, &lock, &package)?,
            )?;
        }
        Command::Provenance {
            out,
            facts,
            inputs,
            outputs,
            reference,
        } => {
            let digests = |list: &[(String, String)]| -> Result<Vec<FileDigest>> {
                list.iter()
                    .map(|(name, path)| file_digest(name, Path::new(path), &[]))
                    .collect()
            };
            let reference: Option<serde_json::Value> = match &reference {
                Some(p) => Some(serde_json::from_slice(
                    &std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
                )?),
                None => None,
            };
            let manifest = serde_json::json!({
                "format": "ward-provenance/v1",
                "facts": facts.into_iter().collect::<BTreeMap<_, _>>(),
                "inputs": digests(&inputs)?,
                "outputs": digests(&outputs)?,
                "reference_values": reference,
            });
            write_json(&out, &manifest)?;
        }
    }
    Ok(())
}
