//! The Intel TDX RTMR0-2 of a guest that QEMU boots directly (`-kernel`, `-initrd`, `-append`)
//! through TDVF (OVMF's TDX build), computed as the replay of the event log the firmware and
//! the kernel's EFI stub write: each RTMR starts at zero and every event extends it,
//! `RTMR = SHA-384(RTMR || digest)`.
//!
//! What each register holds, in order (TDVF maps PCR 1 and 7 to RTMR0, PCR 2-6 to RTMR1 and
//! PCR 8-15 to RTMR2; edk2 `OvmfPkg/Library/TdxHelperLib`, `SecurityPkg/Tcg/TdTcg2Dxe`):
//!
//! - **RTMR0** (platform configuration): the TD HOB QEMU hands TDVF (its memory map), the
//!   configuration firmware volume (CFV, the variable store inside the firmware image), the
//!   Secure Boot variables (`SecureBoot`, `PK`, `KEK`, `db`, `dbx`, empty when Secure Boot is
//!   off), a separator, QEMU's ACPI table loader script, RSDP and tables, then `BootOrder` and
//!   each `Boot####` it names. The ACPI tables depend on QEMU's exact version and machine
//!   options, so they are inputs (dumped once from a guest of the same configuration, as
//!   tdx-measure and dstack-mr take them), not computed here.
//! - **RTMR1** (the boot path): the Authenticode SHA-384 of the kernel as QEMU hands it to the
//!   firmware (QEMU patches the setup header: loader type, heap end, command-line address, the
//!   initrd's address and size; `hw/i386/x86-common.c`, `x86_load_linux`), then "Calling EFI
//!   Application from Boot Option", a separator, "Exit Boot Services Invocation" and "Exit Boot
//!   Services Returned with Success".
//! - **RTMR2** (the OS): the kernel's EFI stub measures its load options (the command line QEMU
//!   passed, with " initrd=initrd" that OVMF's QEMU loader appends, UTF-16LE with its NUL) and
//!   the initrd. Only stubs that measure into the CC measurement protocol when there is no TPM
//!   do this: Linux 6.8 and later as taken here (the support landed upstream in March 2024,
//!   at the 6.8/6.9 boundary; `drivers/firmware/efi/libstub`). An older kernel leaves
//!   RTMR2 at zero ([`Rtmr2Events::None`]).
//!
//! Assumed, and said in the docs: QEMU adds no `setup_data` to the kernel (no `-dtb`, no RNG
//! seed: QEMU leaves it out for confidential guests), the machine is q35 (`acpi_data_size`
//! 0x28000, the low-memory split at 2 GiB above 2.75 GiB of RAM), and TDVF is an edk2 build of
//! the kind Canonical's TDX stack ships. Checked against tinfoilsh/tdx-measure (a fork of
//! dstack-mr, whose RTMRs were checked on TDX hardware) in `tests/tests/measure.rs` when
//! `WARD_TDX_MEASURE` names its binary; not checked on TDX hardware here.
//!
//! Owns computing; never reads files.

use sha2::{Digest, Sha384};

use crate::ovmf::{Firmware, FirmwareError, TdxSection};

/// A SHA-384 value: a digest or a register.
pub type Sha384Value = [u8; 48];

/// Why an RTMR could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum RtmrError {
    /// The kernel is not a bzImage QEMU can boot directly (no "HdrS" setup header, too old a
    /// boot protocol, shorter than its header).
    #[error("kernel: {0}")]
    Kernel(&'static str),
    /// The kernel's PE/COFF headers (the EFI stub's) could not be read for its Authenticode hash.
    #[error("kernel: its PE/COFF headers are malformed (no Authenticode hash)")]
    Authenticode,
    /// The initrd does not fit below the highest address QEMU would load it at.
    #[error("initrd of {size} bytes does not fit below {max:#x} with {memory} bytes of memory")]
    InitrdTooLarge { size: u64, max: u32, memory: u64 },
    /// The memory size is zero or not a whole number of pages.
    #[error("memory size {0:#x} must be a non-zero multiple of 4096")]
    Memory(u64),
    /// The firmware image is malformed.
    #[error("firmware: {0}")]
    Firmware(#[from] FirmwareError),
    /// The firmware has no TDVF section this needs (a TD HOB, a CFV).
    #[error("the firmware's TDX metadata has no {0} section")]
    NoSection(&'static str),
    /// `BootOrder` is not an array of 16-bit numbers.
    #[error("BootOrder of {0} bytes: it must be an array of 16-bit entries")]
    BootOrder(usize),
}

/// One event of the log: the register it extends (0, 1 or 2), what it is, and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub rtmr: u8,
    pub what: String,
    pub digest: Sha384Value,
}

impl Event {
    fn of(rtmr: u8, what: impl Into<String>, data: &[u8]) -> Self {
        Self {
            rtmr,
            what: what.into(),
            digest: Sha384::digest(data).into(),
        }
    }
}

/// The register that `events` (those for `rtmr`) leave behind.
pub fn replay(events: &[Event], rtmr: u8) -> Sha384Value {
    events
        .iter()
        .filter(|e| e.rtmr == rtmr)
        .fold([0u8; 48], |mr, e| {
            let mut h = Sha384::new();
            h.update(mr);
            h.update(e.digest);
            h.finalize().into()
        })
}

/// What the guest's kernel measures into RTMR2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rtmr2Events {
    /// Decide from the kernel's version string (Linux 6.8+ measures; older kernels do not).
    #[default]
    Auto,
    /// The EFI stub measures the command line and the initrd (Linux 6.8+, or a backport).
    Stub,
    /// Nothing is measured into RTMR2.
    None,
}

/// The direct-boot inputs of RTMR1 and RTMR2.
#[derive(Debug, Clone, Copy)]
pub struct DirectBoot<'a> {
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    /// The command line exactly as given to QEMU's `-append`.
    pub cmdline: &'a str,
    /// The guest's memory in bytes (`-m`).
    pub memory: u64,
    /// QEMU's reserve for ACPI data below the top of low memory (0x28000 on q35).
    pub acpi_data_size: u32,
    pub rtmr2: Rtmr2Events,
}

/// What the kernel's Authenticode event is called in [`Event::what`] (Trustee's default policy
/// looks its digest up as `tdvfkernel`).
pub const KERNEL_EVENT: &str = "kernel (EFI application, Authenticode)";
/// What the stub's load-options event is called (Trustee: `tdvfkernelparams`).
pub const CMDLINE_EVENT: &str = "kernel command line (load options)";

/// QEMU's q35 ACPI reserve (`pcmc->acpi_data_size`).
pub const QEMU_ACPI_DATA_SIZE: u32 = 0x28000;

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// The low RAM below 4 GiB of a q35 machine with `memory` bytes (`hw/i386/pc_q35.c`).
fn below_4g(memory: u64) -> u64 {
    let lowmem = if memory >= 0xb000_0000 {
        0x8000_0000
    } else {
        0xb000_0000
    };
    memory.min(lowmem)
}

/// The kernel with its setup header patched as QEMU's `x86_load_linux` patches it before the
/// firmware loads it (only kernels with boot protocol 2.12+, loaded high: every kernel that can
/// run in a TD).
pub fn qemu_patched_kernel(
    kernel: &[u8],
    initrd_len: u64,
    memory: u64,
    acpi_data_size: u32,
) -> Result<Vec<u8>, RtmrError> {
    if kernel.len() < 0x1000 {
        return Err(RtmrError::Kernel("shorter than a setup header"));
    }
    if &kernel[0x202..0x206] != b"HdrS" {
        return Err(RtmrError::Kernel("no bzImage setup header (HdrS)"));
    }
    let protocol = u16_at(kernel, 0x206);
    if protocol < 0x20c || kernel[0x211] & 0x01 == 0 {
        return Err(RtmrError::Kernel(
            "boot protocol older than 2.12 or not loaded high",
        ));
    }
    let mut k = kernel.to_vec();
    // High, recent kernel: real-mode code at 0x10000, command line at 0x20000.
    let (real_addr, cmdline_addr) = (0x1_0000u32, 0x2_0000u32);
    k[0x210] = 0xb0; // type_of_loader: QEMU
    k[0x211] |= 0x80; // loadflags: CAN_USE_HEAP
    k[0x224..0x228].copy_from_slice(&(cmdline_addr - real_addr - 0x200).to_le_bytes());
    k[0x228..0x22c].copy_from_slice(&cmdline_addr.to_le_bytes());
    if initrd_len > 0 {
        const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 0x40;
        let mut initrd_max = if u16_at(&k, 0x236) & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
            u32::MAX
        } else {
            match u32_at(&k, 0x22c) {
                0 => 0x37ff_ffff,
                max => max,
            }
        };
        let low = below_4g(memory);
        let top = low
            .checked_sub(u64::from(acpi_data_size))
            .filter(|t| *t > 0)
            .ok_or(RtmrError::Memory(memory))?;
        if u64::from(initrd_max) >= top {
            // top <= 0xb0000000, so top - 1 fits.
            initrd_max = u32::try_from(top - 1).map_err(|_| RtmrError::Memory(memory))?;
        }
        let size = u32::try_from(initrd_len)
            .ok()
            .filter(|s| *s < initrd_max)
            .ok_or(RtmrError::InitrdTooLarge {
                size: initrd_len,
                max: initrd_max,
                memory,
            })?;
        let addr = (initrd_max - size) & !4095;
        k[0x218..0x21c].copy_from_slice(&addr.to_le_bytes());
        k[0x21c..0x220].copy_from_slice(&size.to_le_bytes());
    }
    Ok(k)
}

/// The Authenticode SHA-384 of a PE/COFF image, as edk2 measures a loaded EFI application
/// (Google's `authenticode` crate: the headers without the checksum and the certificate-table
/// entry, the sections in file order, then any data after them but the certificate table).
pub fn authenticode_sha384(pe: &[u8]) -> Result<Sha384Value, RtmrError> {
    let file = object::read::pe::PeFile64::parse(pe).map_err(|_| RtmrError::Authenticode)?;
    let mut h = Sha384::new();
    authenticode::authenticode_digest(&file, &mut h).map_err(|_| RtmrError::Authenticode)?;
    Ok(h.finalize().into())
}

/// The kernel's version from its setup header (`kernel_version`, a NUL-terminated string at
/// 0x200 plus the offset stored at 0x20e): its major and minor numbers.
pub fn kernel_version(kernel: &[u8]) -> Option<(u32, u32)> {
    if kernel.len() < 0x210 || &kernel[0x202..0x206] != b"HdrS" {
        return None;
    }
    let at = 0x200usize.checked_add(usize::from(u16_at(kernel, 0x20e)))?;
    let text = kernel.get(at..)?;
    let end = text.iter().take(256).position(|b| *b == 0)?;
    let text = std::str::from_utf8(&text[..end]).ok()?;
    let mut nums = text.split(['.', '-', ' ']);
    Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}

fn separator(rtmr: u8) -> Event {
    Event::of(rtmr, "separator", &[0, 0, 0, 0])
}

/// The RTMR1 and RTMR2 events of a direct boot.
pub fn direct_boot_events(boot: &DirectBoot<'_>) -> Result<Vec<Event>, RtmrError> {
    // usize to u64 never truncates.
    let initrd_len = boot.initrd.len() as u64;
    let patched = qemu_patched_kernel(boot.kernel, initrd_len, boot.memory, boot.acpi_data_size)?;
    let mut events = vec![
        Event {
            rtmr: 1,
            what: KERNEL_EVENT.into(),
            digest: authenticode_sha384(&patched)?,
        },
        Event::of(1, "EFI action", b"Calling EFI Application from Boot Option"),
        separator(1),
        Event::of(1, "EFI action", b"Exit Boot Services Invocation"),
        Event::of(1, "EFI action", b"Exit Boot Services Returned with Success"),
    ];
    let stub_measures = match boot.rtmr2 {
        Rtmr2Events::Stub => true,
        Rtmr2Events::None => false,
        Rtmr2Events::Auto => kernel_version(boot.kernel).is_some_and(|v| v >= (6, 8)),
    };
    if stub_measures {
        let mut cmdline = boot.cmdline.to_owned();
        if !boot.initrd.is_empty() {
            cmdline.push_str(" initrd=initrd");
        }
        let mut utf16: Vec<u8> = cmdline.encode_utf16().flat_map(u16::to_le_bytes).collect();
        utf16.extend([0, 0]);
        events.push(Event::of(2, CMDLINE_EVENT, &utf16));
        if !boot.initrd.is_empty() {
            events.push(Event::of(2, "initrd", boot.initrd));
        }
    }
    Ok(events)
}

/// The platform inputs of RTMR0 that cannot be computed here: QEMU's ACPI blobs and the boot
/// variables, dumped from a guest of the same configuration.
#[derive(Debug, Clone, Copy)]
pub struct Platform<'a> {
    /// `etc/acpi/tables`, `etc/acpi/rsdp` and `etc/table-loader` from QEMU's fw_cfg.
    pub acpi_tables: &'a [u8],
    pub acpi_rsdp: &'a [u8],
    pub table_loader: &'a [u8],
    /// The `BootOrder` variable's data.
    pub boot_order: &'a [u8],
    /// The data of each `Boot####` variable, by number (those `BootOrder` names and exist).
    pub boot_options: &'a [(u16, &'a [u8])],
    /// The SHA-384 of the CFV, when it is not the firmware image's own (a separate
    /// `OVMF_VARS.fd`); `None` hashes the CFV section of the firmware image.
    pub cfv_sha384: Option<Sha384Value>,
}

/// edk2's `EFI_GLOBAL_VARIABLE` and `EFI_IMAGE_SECURITY_DATABASE_GUID`, in EFI byte order.
const EFI_GLOBAL_VARIABLE: uuid::Uuid = uuid::uuid!("8be4df61-93ca-11d2-aa0d-00e098032b8c");
const EFI_IMAGE_SECURITY_DATABASE: uuid::Uuid = uuid::uuid!("d719b2cb-3d3a-4596-a3bc-dad00e67656f");

/// The digest of a `UEFI_VARIABLE_DATA` (TCG PC Client PFP): the vendor GUID, the name's
/// length in characters and the data's in bytes (u64 each), the name in UTF-16LE, the data.
fn variable_event(vendor: uuid::Uuid, name: &str, data: &[u8]) -> Event {
    let utf16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut buf = Vec::with_capacity(32 + utf16.len() + data.len());
    buf.extend(vendor.to_bytes_le());
    buf.extend((name.encode_utf16().count() as u64).to_le_bytes());
    buf.extend((data.len() as u64).to_le_bytes());
    buf.extend(utf16);
    buf.extend(data);
    Event::of(0, format!("EFI variable {name}"), &buf)
}

const HOB_TYPE_HANDOFF: u16 = 0x0001;
const HOB_TYPE_RESOURCE_DESCRIPTOR: u16 = 0x0003;
const RESOURCE_SYSTEM_MEMORY: u32 = 0x00;
const RESOURCE_MEMORY_UNACCEPTED: u32 = 0x07;
/// PRESENT | INITIALIZED | TESTED.
const RESOURCE_ATTRIBUTES: u32 = 0x07;

/// The TD HOB QEMU builds for TDVF (`hw/i386/tdvf-hob.c`): a PHIT handoff HOB, then one
/// resource descriptor per RAM range, accepted (the TD HOB and temporary-memory sections TDVF
/// asks for) or not, in address order. A guest above 2.75 GiB has its RAM split at 2 GiB and
/// continued at 4 GiB.
pub fn td_hob(sections: &[TdxSection], memory: u64) -> Result<Vec<u8>, RtmrError> {
    if memory == 0 || !memory.is_multiple_of(4096) {
        return Err(RtmrError::Memory(memory));
    }
    let hob_base = sections
        .iter()
        .find(|s| s.kind == 2)
        .map(|s| s.memory_address)
        .ok_or(RtmrError::NoSection("TD HOB"))?;
    // RAM as QEMU lays it out, then the accepted ranges cut out of it.
    let low = below_4g(memory);
    let mut ram = vec![(0u64, low)];
    if memory > low {
        ram.push((1 << 32, (1u64 << 32) + (memory - low)));
    }
    let mut accepted: Vec<(u64, u64)> = sections
        .iter()
        .filter(|s| s.kind == 2 || s.kind == 3)
        .filter_map(|s| {
            Some((
                s.memory_address,
                s.memory_address.checked_add(s.memory_data_size)?,
            ))
        })
        .collect();
    accepted.sort_unstable();
    let mut ranges = Vec::new();
    for (start, end) in ram {
        let mut at = start;
        for &(a, b) in &accepted {
            let (a, b) = (a.max(at), b.min(end));
            if a >= b {
                continue;
            }
            if at < a {
                ranges.push((RESOURCE_MEMORY_UNACCEPTED, at, a));
            }
            ranges.push((RESOURCE_SYSTEM_MEMORY, a, b));
            at = b;
        }
        if at < end {
            ranges.push((RESOURCE_MEMORY_UNACCEPTED, at, end));
        }
    }
    let mut hob = Vec::with_capacity(56 + 48 * ranges.len());
    hob.extend(HOB_TYPE_HANDOFF.to_le_bytes());
    hob.extend(56u16.to_le_bytes());
    hob.extend([0u8; 4]);
    hob.extend(9u32.to_le_bytes()); // EFI_HOB_HANDOFF_TABLE_VERSION
    hob.extend([0u8; 4]); // BootMode
    hob.extend([0u8; 32]); // memory top/bottom, free top/bottom: left to TDVF
    hob.extend([0u8; 8]); // EfiEndOfHobList, set below
    for (kind, start, end) in ranges {
        hob.extend(HOB_TYPE_RESOURCE_DESCRIPTOR.to_le_bytes());
        hob.extend(48u16.to_le_bytes());
        hob.extend([0u8; 4]);
        hob.extend([0u8; 16]); // Owner
        hob.extend(kind.to_le_bytes());
        hob.extend(RESOURCE_ATTRIBUTES.to_le_bytes());
        hob.extend(start.to_le_bytes());
        hob.extend((end - start).to_le_bytes());
    }
    // The end-of-list HOB follows the last descriptor: its address is the list's end.
    let end = hob_base
        .checked_add(hob.len() as u64 + 8)
        .ok_or(RtmrError::NoSection("TD HOB"))?;
    hob[48..56].copy_from_slice(&end.to_le_bytes());
    Ok(hob)
}

/// The RTMR0 events of a guest on `firmware` with `memory` bytes and the given platform blobs.
pub fn platform_events(
    firmware: &[u8],
    memory: u64,
    platform: &Platform<'_>,
) -> Result<Vec<Event>, RtmrError> {
    let fw = Firmware::parse(firmware)?;
    let sections = fw.tdx_sections()?;
    let mut events = vec![Event::of(0, "TD HOB", &td_hob(&sections, memory)?)];
    let cfv = match platform.cfv_sha384 {
        Some(d) => d,
        None => {
            let s = sections
                .iter()
                .find(|s| s.kind == 1)
                .ok_or(RtmrError::NoSection("CFV"))?;
            let start = s.data_offset as usize;
            let bytes = start
                .checked_add(s.raw_data_size as usize)
                .and_then(|end| fw.data().get(start..end))
                .ok_or(RtmrError::NoSection("CFV"))?;
            Sha384::digest(bytes).into()
        }
    };
    events.push(Event {
        rtmr: 0,
        what: "configuration firmware volume".into(),
        digest: cfv,
    });
    for name in ["SecureBoot", "PK", "KEK"] {
        events.push(variable_event(EFI_GLOBAL_VARIABLE, name, &[]));
    }
    for name in ["db", "dbx"] {
        events.push(variable_event(EFI_IMAGE_SECURITY_DATABASE, name, &[]));
    }
    events.push(separator(0));
    events.push(Event::of(0, "ACPI table loader", platform.table_loader));
    events.push(Event::of(0, "ACPI RSDP", platform.acpi_rsdp));
    events.push(Event::of(0, "ACPI tables", platform.acpi_tables));
    if !platform.boot_order.len().is_multiple_of(2) {
        return Err(RtmrError::BootOrder(platform.boot_order.len()));
    }
    events.push(Event::of(0, "EFI variable BootOrder", platform.boot_order));
    for n in platform.boot_order.chunks_exact(2) {
        let n = u16::from_le_bytes([n[0], n[1]]);
        if let Some((_, data)) = platform.boot_options.iter().find(|(m, _)| *m == n) {
            events.push(Event::of(0, format!("EFI variable Boot{n:04X}"), data));
        }
    }
    Ok(events)
}

#[cfg(test)]
#[path = "rtmr_tests.rs"]
mod tests;
