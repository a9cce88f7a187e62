//! The TDX side of the command line: MRTD, and RTMR0-2 when the boot's files are given.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha384};
use ward_measure::rtmr::{
    self, DirectBoot, Event, Platform, QEMU_ACPI_DATA_SIZE, Rtmr2Events, Sha384Value,
};
use ward_measure::tdx::{self, PageOrder};

/// Kernels and platform blobs larger than this are refused (a bzImage is 5-15 MiB).
const MAX_KERNEL: u64 = 256 << 20;
/// Initrds larger than this are refused (QEMU loads them below 4 GiB).
const MAX_INITRD: u64 = 4 << 30;
const MAX_BLOB: u64 = 16 << 20;

/// How the guest's kernel is booted, for RTMR1 and RTMR2.
#[derive(clap::Args, Clone)]
pub struct TdxRuntime {
    /// The TD's memory exactly as QEMU's -m gives it (2G, 2048M, 0x80000000): below 2.75 GiB,
    /// where QEMU puts the initrd, and so RTMR1, depends on it. Kata's default is 2048 MiB.
    #[arg(long = "tdx-memory", default_value = "2G", value_parser = parse_size)]
    pub memory: u64,
    /// What the kernel's EFI stub measures into RTMR2: auto (from the kernel's version: 6.8
    /// and later measure the command line and initrd), stub, or none.
    #[arg(long = "tdx-rtmr2", default_value = "auto", value_parser = parse_rtmr2)]
    pub rtmr2: Rtmr2Events,
    /// QEMU's ACPI reserve below the top of low memory (q35: 0x28000).
    #[arg(long = "tdx-acpi-data-size", default_value_t = QEMU_ACPI_DATA_SIZE, value_parser = parse_u32)]
    pub acpi_data_size: u32,
}

/// The platform blobs of RTMR0, dumped from a guest of the same QEMU configuration.
#[derive(clap::Args, Clone)]
pub struct TdxPlatform {
    /// QEMU's `etc/acpi/tables` (with --acpi-rsdp, --table-loader and --boot-order: RTMR0).
    #[arg(long, requires_all = ["acpi_rsdp", "table_loader", "boot_order"])]
    pub acpi_tables: Option<PathBuf>,
    /// QEMU's `etc/acpi/rsdp`.
    #[arg(long, requires = "acpi_tables")]
    pub acpi_rsdp: Option<PathBuf>,
    /// QEMU's `etc/table-loader`.
    #[arg(long, requires = "acpi_tables")]
    pub table_loader: Option<PathBuf>,
    /// The `BootOrder` variable's data.
    #[arg(long, requires = "acpi_tables")]
    pub boot_order: Option<PathBuf>,
    /// A boot option's data: NNNN=FILE (hex, as in Boot0001), repeated.
    #[arg(long = "boot-option", value_parser = crate::parse_kv, requires = "acpi_tables")]
    pub boot_options: Vec<(String, String)>,
    /// The variable store QEMU loads beside a split firmware (OVMF_VARS.fd, the second
    /// pflash): TDVF measures it as the CFV. By default the CFV inside the firmware image.
    #[arg(long, requires = "acpi_tables")]
    pub vars: Option<PathBuf>,
}

/// What was computed.
pub struct TdxComputed {
    pub mrtd: String,
    pub events: Vec<Event>,
    pub rtmr0: Option<Sha384Value>,
    pub rtmr1: Option<Sha384Value>,
    pub rtmr2: Option<Sha384Value>,
    /// Whether the kernel's stub measures RTMR2 (as decided).
    pub stub_measures: Option<bool>,
}

impl TdxComputed {
    /// The digest of the first event named `what`.
    pub fn event(&self, what: &str) -> Option<String> {
        self.events
            .iter()
            .find(|e| e.what == what)
            .map(|e| hex::encode(e.digest))
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() && !s.starts_with("0x") => (&s[..i], c),
        _ => (s, 'B'),
    };
    let n = crate::parse_u64(num)?;
    let shift = match unit.to_ascii_uppercase() {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return Err(format!("{s}: unknown unit {unit}")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s}: too large"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    u32::try_from(crate::parse_u64(s)?).map_err(|_| format!("{s}: over 32 bits"))
}

fn parse_rtmr2(s: &str) -> Result<Rtmr2Events, String> {
    match s {
        "auto" => Ok(Rtmr2Events::Auto),
        "stub" => Ok(Rtmr2Events::Stub),
        "none" => Ok(Rtmr2Events::None),
        other => Err(format!("{other}: auto, stub or none")),
    }
}

fn read_capped(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{what} {}", path.display()))?
        .len();
    if len > max {
        bail!("{what} {} is {len} bytes, over {max}", path.display());
    }
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// MRTD of `firmware`; RTMR1/2 when `boot` (kernel, initrd, command line) is given; RTMR0 when
/// the platform blobs are.
pub fn compute(
    firmware: &[u8],
    order: PageOrder,
    boot: Option<(&Path, Option<&Path>, &str)>,
    runtime: &TdxRuntime,
    platform: &TdxPlatform,
) -> Result<TdxComputed> {
    let mrtd = tdx::mrtd(firmware, order)?.to_string();
    let mut events = Vec::new();
    let mut stub_measures = None;
    if let Some((kernel, initrd, cmdline)) = boot {
        let kernel = read_capped(kernel, MAX_KERNEL, "kernel")?;
        let initrd = match initrd {
            Some(p) => read_capped(p, MAX_INITRD, "initrd")?,
            None => Vec::new(),
        };
        let boot_events = rtmr::direct_boot_events(&DirectBoot {
            kernel: &kernel,
            initrd: &initrd,
            cmdline,
            memory: runtime.memory,
            acpi_data_size: runtime.acpi_data_size,
            rtmr2: runtime.rtmr2,
        })?;
        stub_measures = Some(boot_events.iter().any(|e| e.rtmr == 2));
        events.extend(boot_events);
    }
    let mut rtmr0 = None;
    if let (Some(tables), Some(rsdp), Some(loader), Some(order_file)) = (
        &platform.acpi_tables,
        &platform.acpi_rsdp,
        &platform.table_loader,
        &platform.boot_order,
    ) {
        let tables = read_capped(tables, MAX_BLOB, "ACPI tables")?;
        let rsdp = read_capped(rsdp, MAX_BLOB, "ACPI RSDP")?;
        let loader = read_capped(loader, MAX_BLOB, "table loader")?;
        let boot_order = read_capped(order_file, MAX_BLOB, "BootOrder")?;
        let mut options = Vec::new();
        for (n, path) in &platform.boot_options {
            let n = u16::from_str_radix(n, 16)
                .with_context(|| format!("boot option {n}: a hex number such as 0001"))?;
            options.push((n, read_capped(Path::new(path), MAX_BLOB, "boot option")?));
        }
        let options: Vec<(u16, &[u8])> = options.iter().map(|(n, d)| (*n, &d[..])).collect();
        let platform_events = rtmr::platform_events(
            firmware,
            runtime.memory,
            &Platform {
                acpi_tables: &tables,
                acpi_rsdp: &rsdp,
                table_loader: &loader,
                boot_order: &boot_order,
                boot_options: &options,
                cfv_sha384: match &platform.vars {
                    Some(p) => Some(Sha384::digest(read_capped(p, MAX_BLOB, "vars")?).into()),
                    None => None,
                },
            },
        )?;
        rtmr0 = Some(rtmr::replay(&platform_events, 0));
        events.splice(0..0, platform_events);
    }
    let booted = boot.is_some();
    Ok(TdxComputed {
        mrtd,
        rtmr0,
        rtmr1: booted.then(|| rtmr::replay(&events, 1)),
        rtmr2: booted.then(|| rtmr::replay(&events, 2)),
        events,
        stub_measures,
    })
}

/// Prints the values, and with `log` every event.
pub fn print(c: &TdxComputed, log: bool) {
    println!("mrtd {}", c.mrtd);
    for (name, v) in [("rtmr0", c.rtmr0), ("rtmr1", c.rtmr1), ("rtmr2", c.rtmr2)] {
        if let Some(v) = v {
            println!("{name} {}", hex::encode(v));
        }
    }
    if c.stub_measures == Some(false) {
        eprintln!(
            "ward-measure: the kernel's EFI stub does not measure into RTMR2 (before Linux 6.8): \
             RTMR2 stays zero and the command line and initrd are not measured"
        );
    }
    if log {
        for e in &c.events {
            println!("  rtmr{} {} {}", e.rtmr, hex::encode(e.digest), e.what);
        }
    }
}
