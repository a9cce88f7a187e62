//! A small synthetic firmware image with the tables an OVMF AmdSev build carries (footer table,
//! SEV-ES reset block, SEV hashes table address, SEV metadata with a kernel-hashes section) and a
//! TDVF metadata block, for tests: it lets ward's computation and an independent tool be run on
//! the same image with the kernel-hashes path, which Debian bookworm's OVMF lacks.
//!
//! Its bytes are deterministic (a SHA-256 counter stream) so that every page differs. It boots
//! nothing. [`bzimage`] is the same for a kernel.

use sha2::{Digest, Sha256};

use crate::ovmf::{
    FOOTER_TABLE_GUID, SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID, SEV_METADATA_GUID,
    TDX_METADATA_GUID,
};

/// Where the kernel-hashes page is (the address AmdSevX64 uses).
pub const KERNEL_HASHES_GPA: u32 = 0x80f000;
/// The offset of the hashes table in that page.
pub const HASHES_TABLE_OFFSET: u32 = 0x40;

fn entry(out: &mut Vec<u8>, guid: uuid::Uuid, data: &[u8]) {
    out.extend_from_slice(data);
    // Entries are a few bytes: the cast cannot truncate.
    out.extend_from_slice(&((data.len() + 18) as u16).to_le_bytes());
    out.extend_from_slice(&guid.to_bytes_le());
}

fn build(size: usize, kernel_hashes: bool) -> Vec<u8> {
    assert!(
        size >= 16 * 1024 && size.is_multiple_of(4096),
        "test image size"
    );
    let mut img = Vec::with_capacity(size);
    let mut counter = 0u64;
    while img.len() < size {
        img.extend_from_slice(&Sha256::digest(counter.to_le_bytes()));
        counter += 1;
    }
    img.truncate(size);

    // SEV metadata at 8 KiB from the end.
    let mut sections: Vec<(u32, u32, u32)> = vec![
        (0x800000, 0x9000, 1),
        (0x80d000, 0x1000, 2),
        (0x80e000, 0x1000, 3),
    ];
    if kernel_hashes {
        sections.push((KERNEL_HASHES_GPA, 0x1000, 0x10));
    }
    sections.push((0x810000, 0x10000, 1));
    let sev_at = size - 8192;
    let mut sev = b"ASEV".to_vec();
    sev.extend_from_slice(&((16 + 12 * sections.len()) as u32).to_le_bytes());
    sev.extend_from_slice(&1u32.to_le_bytes());
    sev.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for (gpa, len, kind) in &sections {
        for v in [gpa, len, kind] {
            sev.extend_from_slice(&v.to_le_bytes());
        }
    }
    img[sev_at..sev_at + sev.len()].copy_from_slice(&sev);

    // TDVF metadata at 12 KiB from the end: the image as BFV (measured), a TD HOB and temporary
    // memory (added, not extended), and permanent memory (accepted later, not measured).
    let tdx_at = size - 12288;
    let tdx_sections: [(u32, u32, u64, u64, u32, u32); 4] = [
        (
            0,
            size as u32,
            (1u64 << 32) - size as u64,
            size as u64,
            0,
            1,
        ),
        (0, 0, 0x809000, 0x2000, 2, 0),
        (0, 0, 0x800000, 0x6000, 3, 0),
        (0, 0, 0x900000, 0x100000, 4, 2),
    ];
    let mut tdx = b"TDVF".to_vec();
    tdx.extend_from_slice(&((16 + 32 * tdx_sections.len()) as u32).to_le_bytes());
    tdx.extend_from_slice(&1u32.to_le_bytes());
    tdx.extend_from_slice(&(tdx_sections.len() as u32).to_le_bytes());
    for (off, raw, addr, mem, kind, attr) in tdx_sections {
        tdx.extend_from_slice(&off.to_le_bytes());
        tdx.extend_from_slice(&raw.to_le_bytes());
        tdx.extend_from_slice(&addr.to_le_bytes());
        tdx.extend_from_slice(&mem.to_le_bytes());
        tdx.extend_from_slice(&kind.to_le_bytes());
        tdx.extend_from_slice(&attr.to_le_bytes());
    }
    img[tdx_at..tdx_at + tdx.len()].copy_from_slice(&tdx);
    // edk2 puts the TDVF metadata GUID right before the descriptor (some tools look for it).
    let tdvf_guid = uuid::uuid!("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae").to_bytes_le();
    img[tdx_at - 16..tdx_at].copy_from_slice(&tdvf_guid);

    // The footer table, ending 32 bytes before the end.
    let mut table = Vec::new();
    entry(
        &mut table,
        SEV_ES_RESET_BLOCK_GUID,
        &0x0080_b004u32.to_le_bytes(),
    );
    let mut hashes = (KERNEL_HASHES_GPA + HASHES_TABLE_OFFSET)
        .to_le_bytes()
        .to_vec();
    hashes.extend_from_slice(&0x400u32.to_le_bytes());
    entry(&mut table, SEV_HASH_TABLE_RV_GUID, &hashes);
    entry(
        &mut table,
        SEV_METADATA_GUID,
        &((size - sev_at) as u32).to_le_bytes(),
    );
    entry(
        &mut table,
        TDX_METADATA_GUID,
        &((size - tdx_at) as u32).to_le_bytes(),
    );
    table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
    table.extend_from_slice(&FOOTER_TABLE_GUID.to_bytes_le());
    let end = size - 32;
    img[end - table.len()..end].copy_from_slice(&table);
    img
}

/// An image of `size` bytes (a multiple of 4096, at least 16 KiB) shaped like an AmdSev build.
pub fn amdsev_like(size: usize) -> Vec<u8> {
    build(size, true)
}

/// The same without the kernel-hashes section (like Debian's OVMF.fd).
pub fn without_kernel_hashes(size: usize) -> Vec<u8> {
    build(size, false)
}

/// A bzImage-shaped buffer for the TDX RTMR tests: a setup header with the given boot
/// protocol, xloadflags and version string, and a PE32+ header with one `.text` section of
/// `body` bytes (rounded up to pages, at least one), as the kernel's EFI stub has. Its bytes
/// are deterministic; it boots nothing.
pub fn bzimage(protocol: u16, xloadflags: u16, version: &str, body: usize) -> Vec<u8> {
    let body = body.max(0x1000).next_multiple_of(0x1000);
    let mut k = vec![0u8; 0x1000 + body];
    k[0..2].copy_from_slice(b"MZ");
    k[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    // PE signature and COFF header at 0x40: machine x86-64, one section, optional header 240.
    k[0x40..0x44].copy_from_slice(b"PE\0\0");
    k[0x44..0x46].copy_from_slice(&0x8664u16.to_le_bytes());
    k[0x46..0x48].copy_from_slice(&1u16.to_le_bytes());
    k[0x54..0x56].copy_from_slice(&240u16.to_le_bytes());
    k[0x56..0x58].copy_from_slice(&0x0206u16.to_le_bytes());
    let opt = 0x58;
    k[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    k[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // section alignment
    k[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes()); // file alignment
    k[opt + 56..opt + 60].copy_from_slice(&(0x1000 + body as u32).to_le_bytes()); // size of image
    k[opt + 60..opt + 64].copy_from_slice(&0x1000u32.to_le_bytes()); // size of headers
    k[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes()); // data directories
    let sec = opt + 240;
    k[sec..sec + 5].copy_from_slice(b".text");
    k[sec + 8..sec + 12].copy_from_slice(&(body as u32).to_le_bytes());
    k[sec + 12..sec + 16].copy_from_slice(&0x1000u32.to_le_bytes());
    k[sec + 16..sec + 20].copy_from_slice(&(body as u32).to_le_bytes());
    k[sec + 20..sec + 24].copy_from_slice(&0x1000u32.to_le_bytes());
    // The setup header.
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
    k[0x211] = 0x01;
    k[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    k[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    k[0x20e..0x210].copy_from_slice(&(0x800u16 - 0x200).to_le_bytes());
    k[0x800..0x800 + version.len()].copy_from_slice(version.as_bytes());
    for (i, b) in k[0x1000..].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    k
}
