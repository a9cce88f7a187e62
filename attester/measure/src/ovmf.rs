//! The tables OVMF (and TDVF, the same build) carries at the end of its image, which say where
//! the hypervisor puts what before launch: the GUIDed footer table, the SEV metadata (`ASEV`)
//! and the TDX metadata (`TDVF`).
//!
//! Owns parsing a firmware image given as bytes; every offset read from the image is checked
//! against its length, so a truncated or hostile file is an error, never a panic. Layouts follow
//! edk2's `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm` (footer table),
//! `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm` and `OvmfPkg/IntelTdx/` (TDVF metadata,
//! Intel's TDVF specification, section 11).

use uuid::Uuid;

/// The footer table's own GUID; the table ends 32 bytes before the end of the image.
pub const FOOTER_TABLE_GUID: Uuid = uuid::uuid!("96b582de-1fb2-45f7-baea-a366c55a082d");
/// The address of the SEV hashes table (kernel, initrd and command line hashes).
pub const SEV_HASH_TABLE_RV_GUID: Uuid = uuid::uuid!("7255371f-3a3b-4b04-927b-1da6efa8d454");
/// The application processors' reset address under SEV-ES/SNP.
pub const SEV_ES_RESET_BLOCK_GUID: Uuid = uuid::uuid!("00f771de-1a7e-4fcb-890e-68c77e2fb44e");
/// The offset (from the end) of the SEV metadata.
pub const SEV_METADATA_GUID: Uuid = uuid::uuid!("dc886566-984a-4798-a75e-5585a7bf67cc");
/// The offset (from the end) of the TDX metadata.
pub const TDX_METADATA_GUID: Uuid = uuid::uuid!("e47a6535-984a-4798-865e-4685a7bf8ec2");

/// A footer-table entry's header: a u16 size (header included) and a GUID, after its data.
const ENTRY_HEADER: usize = 18;

/// Why a firmware image could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FirmwareError {
    /// The image is not a whole number of 4 KiB pages, or is empty or larger than 4 GiB.
    #[error("firmware image of {0} bytes: it must be a non-empty multiple of 4096 below 4 GiB")]
    Size(usize),
    /// A table or structure reaches outside the image.
    #[error("firmware {what} at offset {offset} runs past the image's end")]
    OutOfBounds { what: &'static str, offset: usize },
    /// A footer-table entry has a size smaller than its header or larger than the table.
    #[error("firmware footer-table entry with a bad size {0}")]
    EntrySize(usize),
    /// The footer table has no entry for this GUID.
    #[error("firmware has no footer-table entry {0} ({1})")]
    NoEntry(Uuid, &'static str),
    /// A metadata block does not start with its signature or has an unknown version.
    #[error("firmware {what} metadata has signature {signature:?} version {version}")]
    Metadata {
        what: &'static str,
        signature: [u8; 4],
        version: u32,
    },
    /// A SEV metadata section of a type this code does not know.
    #[error("unknown SEV metadata section type {0:#x}")]
    SectionType(u32),
}

/// A SEV metadata section: guest memory the hypervisor prepares before launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevSection {
    pub gpa: u32,
    pub size: u32,
    pub kind: SevSectionKind,
}

/// What a SEV metadata section is (`OvmfSevMetadata.asm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SevSectionKind {
    /// Pre-validated memory, measured as zero pages.
    SecMem,
    /// The SNP secrets page.
    Secrets,
    /// The CPUID page.
    Cpuid,
    /// The SVSM calling-area page.
    SvsmCaa,
    /// The page holding the kernel, initrd and command line hashes (AmdSev builds only).
    KernelHashes,
}

impl SevSectionKind {
    fn from_u32(v: u32) -> Result<Self, FirmwareError> {
        Ok(match v {
            1 => Self::SecMem,
            2 => Self::Secrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::KernelHashes,
            other => return Err(FirmwareError::SectionType(other)),
        })
    }
}

/// A TDX metadata section (TDVF spec, table 11-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxSection {
    /// Offset of the section's bytes in the image (0 for sections without image data).
    pub data_offset: u32,
    pub raw_data_size: u32,
    pub memory_address: u64,
    pub memory_data_size: u64,
    /// 0 BFV, 1 CFV, 2 TD_HOB, 3 TempMem, 4 PermMem, 5 Payload, 6 PayloadParam.
    pub kind: u32,
    /// Bit 0: MR.EXTEND the pages; bit 1: PAGE.AUG (added after launch, not measured).
    pub attributes: u32,
}

/// A parsed firmware image: its bytes and the tables its footer names.
#[derive(Debug)]
pub struct Firmware<'a> {
    data: &'a [u8],
    table: Vec<(Uuid, &'a [u8])>,
}

fn slice<'a>(
    data: &'a [u8],
    offset: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], FirmwareError> {
    offset
        .checked_add(len)
        .and_then(|end| data.get(offset..end))
        .ok_or(FirmwareError::OutOfBounds { what, offset })
}

fn u16_at(data: &[u8], offset: usize, what: &'static str) -> Result<u16, FirmwareError> {
    let b = slice(data, offset, 2, what)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], offset: usize, what: &'static str) -> Result<u32, FirmwareError> {
    let b = slice(data, offset, 4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(data: &[u8], offset: usize, what: &'static str) -> Result<u64, FirmwareError> {
    let lo = u32_at(data, offset, what)?;
    let hi = u32_at(data, offset.saturating_add(4), what)?;
    Ok(u64::from(lo) | (u64::from(hi) << 32))
}

impl<'a> Firmware<'a> {
    /// Reads the footer table of `data`. An image without one parses (a plain BIOS, say); the
    /// measurements that need an entry then say which is missing.
    pub fn parse(data: &'a [u8]) -> Result<Self, FirmwareError> {
        if data.is_empty() || !data.len().is_multiple_of(4096) || data.len() as u64 > 1 << 32 {
            return Err(FirmwareError::Size(data.len()));
        }
        let mut table = Vec::new();
        // data.len() >= 4096, so this cannot underflow.
        let footer = data.len() - 32 - ENTRY_HEADER;
        let footer_guid = Uuid::from_slice_le(slice(data, footer + 2, 16, "footer table")?)
            .map_err(|_| FirmwareError::OutOfBounds {
                what: "footer table",
                offset: footer,
            })?;
        if footer_guid == FOOTER_TABLE_GUID {
            let size = usize::from(u16_at(data, footer, "footer table")?);
            let body = size
                .checked_sub(ENTRY_HEADER)
                .ok_or(FirmwareError::EntrySize(size))?;
            let start = footer
                .checked_sub(body)
                .ok_or(FirmwareError::EntrySize(size))?;
            let mut rest = &data[start..footer];
            while rest.len() >= ENTRY_HEADER {
                let header = rest.len() - ENTRY_HEADER;
                let size = usize::from(u16_at(rest, header, "footer entry")?);
                if size < ENTRY_HEADER || size > rest.len() {
                    return Err(FirmwareError::EntrySize(size));
                }
                let guid = Uuid::from_slice_le(slice(rest, header + 2, 16, "footer entry")?)
                    .map_err(|_| FirmwareError::EntrySize(size))?;
                let entry_start = rest.len() - size;
                table.push((guid, &rest[entry_start..header]));
                rest = &rest[..entry_start];
            }
        }
        Ok(Self { data, table })
    }

    /// The whole image.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Where the image is mapped: it ends at 4 GiB.
    pub fn gpa(&self) -> u64 {
        (1u64 << 32) - self.data.len() as u64
    }

    /// The data of the footer-table entry `guid`, if there is one.
    pub fn entry(&self, guid: Uuid) -> Option<&'a [u8]> {
        self.table.iter().find(|(g, _)| *g == guid).map(|(_, d)| *d)
    }

    fn entry_u32(&self, guid: Uuid, what: &'static str) -> Result<u32, FirmwareError> {
        let entry = self.entry(guid).ok_or(FirmwareError::NoEntry(guid, what))?;
        u32_at(entry, 0, what)
    }

    /// The SEV-ES/SNP application processors' reset address.
    pub fn sev_es_reset_eip(&self) -> Result<u32, FirmwareError> {
        self.entry_u32(SEV_ES_RESET_BLOCK_GUID, "SEV-ES reset block")
    }

    /// The guest-physical address of the SEV hashes table.
    pub fn sev_hashes_table_gpa(&self) -> Result<u32, FirmwareError> {
        self.entry_u32(SEV_HASH_TABLE_RV_GUID, "SEV hashes table")
    }

    /// Where the metadata block named by `guid` starts, checked against `signature`; returns
    /// the start and the number of items.
    fn metadata(
        &self,
        guid: Uuid,
        what: &'static str,
        signature: &[u8; 4],
    ) -> Result<Option<(usize, usize)>, FirmwareError> {
        let Some(entry) = self.entry(guid) else {
            return Ok(None);
        };
        let from_end = u32_at(entry, 0, what)? as usize;
        let start = self
            .data
            .len()
            .checked_sub(from_end)
            .ok_or(FirmwareError::OutOfBounds {
                what,
                offset: from_end,
            })?;
        let head = slice(self.data, start, 16, what)?;
        let mut sig = [0u8; 4];
        sig.copy_from_slice(&head[..4]);
        let version = u32_at(head, 8, what)?;
        if &sig != signature || version != 1 {
            return Err(FirmwareError::Metadata {
                what,
                signature: sig,
                version,
            });
        }
        Ok(Some((start, u32_at(head, 12, what)? as usize)))
    }

    /// The SEV metadata sections, in the image's order (empty when the image has none).
    pub fn sev_sections(&self) -> Result<Vec<SevSection>, FirmwareError> {
        let Some((start, count)) = self.metadata(SEV_METADATA_GUID, "SEV", b"ASEV")? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for i in 0..count {
            let at = i
                .checked_mul(12)
                .and_then(|o| o.checked_add(start + 16))
                .ok_or(FirmwareError::OutOfBounds {
                    what: "SEV section",
                    offset: start,
                })?;
            out.push(SevSection {
                gpa: u32_at(self.data, at, "SEV section")?,
                size: u32_at(self.data, at + 4, "SEV section")?,
                kind: SevSectionKind::from_u32(u32_at(self.data, at + 8, "SEV section")?)?,
            });
        }
        Ok(out)
    }

    /// The TDX metadata sections, in the image's order (empty when the image has none).
    pub fn tdx_sections(&self) -> Result<Vec<TdxSection>, FirmwareError> {
        // The entry holds the distance from the image's end to the "TDVF" descriptor (the
        // GUID edk2 puts before it is not part of it).
        let Some(entry) = self.entry(TDX_METADATA_GUID) else {
            return Ok(Vec::new());
        };
        let from_end = u32_at(entry, 0, "TDX")? as usize;
        let start = self
            .data
            .len()
            .checked_sub(from_end)
            .ok_or(FirmwareError::OutOfBounds {
                what: "TDX",
                offset: from_end,
            })?;
        let head = slice(self.data, start, 16, "TDX")?;
        let mut sig = [0u8; 4];
        sig.copy_from_slice(&head[..4]);
        let version = u32_at(head, 8, "TDX")?;
        if &sig != b"TDVF" || version != 1 {
            return Err(FirmwareError::Metadata {
                what: "TDX",
                signature: sig,
                version,
            });
        }
        let count = u32_at(head, 12, "TDX")? as usize;
        let mut out = Vec::new();
        for i in 0..count {
            let at = i
                .checked_mul(32)
                .and_then(|o| o.checked_add(start + 16))
                .ok_or(FirmwareError::OutOfBounds {
                    what: "TDX section",
                    offset: start,
                })?;
            let s = slice(self.data, at, 32, "TDX section")?;
            out.push(TdxSection {
                data_offset: u32_at(s, 0, "TDX section")?,
                raw_data_size: u32_at(s, 4, "TDX section")?,
                memory_address: u64_at(s, 8, "TDX section")?,
                memory_data_size: u64_at(s, 16, "TDX section")?,
                kind: u32_at(s, 24, "TDX section")?,
                attributes: u32_at(s, 28, "TDX section")?,
            });
        }
        Ok(out)
    }
}
