//! The Intel TDX MRTD of a guest that QEMU/KVM launches from TDVF (OVMF's TDX-capable build):
//! SHA-384 over what the TDX module hashes for each `TDH.MEM.PAGE.ADD` (a 128-byte buffer:
//! "MEM.PAGE.ADD", the page's GPA) and each `TDH.MR.EXTEND` (a 128-byte buffer: "MR.EXTEND", the
//! chunk's GPA, then the 256 bytes of the chunk), for the sections of TDVF's metadata (TDX
//! module ABI spec, "TDH.MEM.PAGE.ADD"/"TDH.MR.EXTEND"; TDVF spec section 11).
//!
//! The order of the two differs between host stacks: upstream KVM (Linux 6.16+, guest_memfd)
//! with QEMU 10.1 extends each page right after adding it ([`PageOrder::Interleaved`]); the
//! older TDX QEMU/KVM trees add all pages of a section first ([`PageOrder::AddThenExtend`]).
//!
//! Checked against td-shim's Python implementation (page by page) in `tests/tests/measure.rs`
//! when `WARD_TD_SHIM_TEE_INFO_HASH` names it (it is not packaged, so CI skips it); the other
//! order is not independently checked. RTMR0-2 are the [`crate::rtmr`] module's.
//!
//! Owns computing; never reads files.

use sha2::{Digest, Sha384};

use crate::ovmf::{Firmware, FirmwareError};

const PAGE: u64 = 4096;
const CHUNK: usize = 256;
/// Section attribute: extend the section's pages into MRTD.
const MR_EXTEND: u32 = 1;
/// Section attribute: the pages are accepted by the guest later, not added before launch.
const PAGE_AUG: u32 = 2;

/// Why an MRTD could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum TdxError {
    /// The firmware image is malformed.
    #[error("firmware: {0}")]
    Firmware(#[from] FirmwareError),
    /// The image has no TDVF metadata: it is not a TDX firmware.
    #[error("the firmware has no TDX (TDVF) metadata")]
    NoMetadata,
    /// A section's address or size is not page-aligned, or its data lies outside the image.
    #[error("TDVF section at {address:#x} ({size:#x} bytes, data at {offset:#x}) is malformed")]
    Section {
        address: u64,
        size: u64,
        offset: u32,
    },
}

/// In which order the host adds and extends a section's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageOrder {
    /// Each page is added then extended (upstream KVM 6.16+, QEMU 10.1+).
    #[default]
    Interleaved,
    /// All of a section's pages are added, then all are extended (older TDX trees).
    AddThenExtend,
}

/// The MRTD: 48 bytes, SHA-384.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mrtd(pub [u8; 48]);

impl std::fmt::Display for Mrtd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

fn op(h: &mut Sha384, name: &[u8], gpa: u64) {
    let mut buf = [0u8; 128];
    buf[..name.len()].copy_from_slice(name);
    buf[16..24].copy_from_slice(&gpa.to_le_bytes());
    h.update(buf);
}

/// The MRTD of `firmware` launched with the given page order.
pub fn mrtd(firmware: &[u8], order: PageOrder) -> Result<Mrtd, TdxError> {
    let fw = Firmware::parse(firmware)?;
    let sections = fw.tdx_sections()?;
    if sections.is_empty() {
        return Err(TdxError::NoMetadata);
    }
    let data = fw.data();
    let mut h = Sha384::new();
    for s in &sections {
        let bad = || TdxError::Section {
            address: s.memory_address,
            size: s.memory_data_size,
            offset: s.data_offset,
        };
        if s.attributes & PAGE_AUG != 0 {
            continue;
        }
        if s.memory_address % PAGE != 0 || s.memory_data_size % PAGE != 0 {
            return Err(bad());
        }
        let pages = s.memory_data_size / PAGE;
        let extend = s.attributes & MR_EXTEND != 0;
        // The extended bytes come from the image: the section's data must cover its memory.
        let content = if extend {
            let start = s.data_offset as usize;
            let len = usize::try_from(s.memory_data_size).map_err(|_| bad())?;
            let end = start.checked_add(len).ok_or_else(bad)?;
            Some(data.get(start..end).ok_or_else(bad)?)
        } else {
            None
        };
        let gpa_of = |page: u64| {
            page.checked_mul(PAGE)
                .and_then(|o| s.memory_address.checked_add(o))
                .ok_or_else(bad)
        };
        let extend_page = |h: &mut Sha384, page: u64| -> Result<(), TdxError> {
            let Some(content) = content else {
                return Ok(());
            };
            let gpa = gpa_of(page)?;
            let at = usize::try_from(page * PAGE).map_err(|_| bad())?;
            for (i, chunk) in content[at..at + PAGE as usize].chunks(CHUNK).enumerate() {
                op(h, b"MR.EXTEND", gpa + (i * CHUNK) as u64);
                h.update(chunk);
            }
            Ok(())
        };
        match order {
            PageOrder::Interleaved => {
                for page in 0..pages {
                    op(&mut h, b"MEM.PAGE.ADD", gpa_of(page)?);
                    extend_page(&mut h, page)?;
                }
            }
            PageOrder::AddThenExtend => {
                for page in 0..pages {
                    op(&mut h, b"MEM.PAGE.ADD", gpa_of(page)?);
                }
                if extend {
                    for page in 0..pages {
                        extend_page(&mut h, page)?;
                    }
                }
            }
        }
    }
    Ok(Mrtd(h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same measurement written out longhand from the TDX module spec for a one-page
    /// measured section: one PAGE.ADD then sixteen MR.EXTENDs.
    #[test]
    fn one_measured_page_is_one_add_and_sixteen_extends() {
        let fw = crate::synthetic::amdsev_like(16 * 1024);
        let sections = Firmware::parse(&fw).unwrap().tdx_sections().unwrap();
        assert_eq!(sections.len(), 4);
        let mut h = Sha384::new();
        let mut block = |name: &[u8], gpa: u64, tail: &[u8]| {
            let mut b = vec![0u8; 128];
            b[..name.len()].copy_from_slice(name);
            b[16..24].copy_from_slice(&gpa.to_le_bytes());
            h.update(&b);
            h.update(tail);
        };
        let base = (1u64 << 32) - fw.len() as u64;
        for page in 0..4u64 {
            block(b"MEM.PAGE.ADD", base + page * 4096, &[]);
            for i in 0..16u64 {
                let off = (page * 4096 + i * 256) as usize;
                block(
                    b"MR.EXTEND",
                    base + page * 4096 + i * 256,
                    &fw[off..off + 256],
                );
            }
        }
        for page in 0..2u64 {
            block(b"MEM.PAGE.ADD", 0x809000 + page * 4096, &[]);
        }
        for page in 0..6u64 {
            block(b"MEM.PAGE.ADD", 0x800000 + page * 4096, &[]);
        }
        let want: [u8; 48] = h.finalize().into();
        assert_eq!(mrtd(&fw, PageOrder::Interleaved).unwrap().0, want);
        assert_ne!(mrtd(&fw, PageOrder::AddThenExtend).unwrap().0, want);
    }

    #[test]
    fn firmware_without_tdx_metadata_is_refused() {
        let mut fw = vec![0u8; 8192];
        fw[0] = 1;
        assert!(matches!(
            mrtd(&fw, PageOrder::Interleaved),
            Err(TdxError::NoMetadata)
        ));
    }
}
