//! The AMD SEV-SNP launch digest (the report's MEASUREMENT) of a guest that QEMU launches from
//! OVMF, optionally with a kernel, initrd and command line whose hashes OVMF's AmdSev build
//! checks (the Kata direct-boot shape).
//!
//! The digest chains SHA-384 over the PAGE_INFO of every page the hypervisor hands to
//! `SNP_LAUNCH_UPDATE` (SNP ABI spec 56860, "PAGE_INFO structure"), in QEMU's order: the firmware
//! image, then the sections of OVMF's SEV metadata (zero, secrets, CPUID and kernel-hashes
//! pages), then one VMSA per vCPU. The VMSA is the initial register state KVM gives each vCPU.
//! The same algorithm as `sev-snp-measure` (github.com/virtee/sev-snp-measure), against which
//! `tests/tests/measure.rs` checks it; only QEMU's register state is modelled (not EC2's or
//! GCE's), and no SVSM.
//!
//! Owns computing; never reads files (the caller passes bytes or hashes).

use sha2::{Digest, Sha256, Sha384};
use uuid::Uuid;

use crate::ovmf::{Firmware, FirmwareError, SevSectionKind};

const PAGE: usize = 4096;
/// The GPA the VMSA pages are recorded under: (u64)-1, page-aligned, bits above 51 cleared.
const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// The bootstrap processor's reset vector.
const BSP_EIP: u32 = 0xFFFF_FFF0;

const HASH_TABLE_GUID: Uuid = uuid::uuid!("9438d606-4f22-4cc9-b479-a793d411fd21");
const KERNEL_ENTRY_GUID: Uuid = uuid::uuid!("4de79437-abd2-427f-b835-d5b172d2045b");
const INITRD_ENTRY_GUID: Uuid = uuid::uuid!("44baf731-3a2f-4bd7-9af1-41e29169781d");
const CMDLINE_ENTRY_GUID: Uuid = uuid::uuid!("97d02dd8-bd20-4c94-aa78-e7714d36ab2a");

/// Why a launch digest could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    /// The firmware image is malformed or lacks a table the computation needs.
    #[error("firmware: {0}")]
    Firmware(#[from] FirmwareError),
    /// A kernel was given but the firmware does not measure one (not an AmdSev build).
    #[error(
        "the firmware's SEV metadata has no kernel-hashes section: it cannot measure a kernel, \
         initrd and command line (use OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc)"
    )]
    NoKernelHashes,
    /// The kernel-hashes table does not fit its page.
    #[error("the SEV hashes table at offset {0:#x} of its page does not fit in it")]
    HashesOffset(u32),
    /// A section's address or size is not page-aligned.
    #[error("SEV metadata section at {gpa:#x} of {size:#x} bytes is not page-aligned")]
    Unaligned { gpa: u32, size: u32 },
    /// Zero vCPUs.
    #[error("a guest needs at least one vCPU")]
    NoVcpus,
    /// A vCPU type this code does not know.
    #[error("unknown vCPU type {0:?} (known: {known})", known = known_vcpu_types())]
    VcpuType(String),
}

/// The SHA-256 hashes of what QEMU passes to OVMF with `-kernel`, `-initrd` and `-append`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelHashes {
    pub kernel: [u8; 32],
    pub initrd: [u8; 32],
    pub cmdline: [u8; 32],
}

impl KernelHashes {
    /// From the hashes of the kernel and initrd files (an absent initrd hashes as empty) and the
    /// command line, which QEMU measures with its terminating NUL.
    pub fn new(kernel_sha256: [u8; 32], initrd_sha256: [u8; 32], cmdline: &str) -> Self {
        let mut h = Sha256::new();
        h.update(cmdline.as_bytes());
        h.update([0u8]);
        Self {
            kernel: kernel_sha256,
            initrd: initrd_sha256,
            cmdline: h.finalize().into(),
        }
    }

    /// QEMU's `PaddedSevHashTable`: the header GUID and length, then the command line, initrd
    /// and kernel entries (GUID, length 50, hash), padded to 16 bytes.
    fn table(&self) -> Vec<u8> {
        const ENTRY: u16 = 16 + 2 + 32;
        const TABLE: u16 = 16 + 2 + 3 * ENTRY;
        let mut t = Vec::with_capacity(176);
        t.extend_from_slice(&HASH_TABLE_GUID.to_bytes_le());
        t.extend_from_slice(&TABLE.to_le_bytes());
        for (guid, hash) in [
            (CMDLINE_ENTRY_GUID, &self.cmdline),
            (INITRD_ENTRY_GUID, &self.initrd),
            (KERNEL_ENTRY_GUID, &self.kernel),
        ] {
            t.extend_from_slice(&guid.to_bytes_le());
            t.extend_from_slice(&ENTRY.to_le_bytes());
            t.extend_from_slice(hash);
        }
        t.resize(t.len().next_multiple_of(16), 0);
        t
    }
}

/// What the launch digest depends on besides the firmware.
#[derive(Debug, Clone)]
pub struct SnpLaunch {
    /// The number of vCPUs (`-smp`): one VMSA each.
    pub vcpus: u32,
    /// CPUID Fn0000_0001_EAX of the vCPU model, which KVM puts in RDX at reset.
    pub vcpu_sig: u32,
    /// The VMSA's SEV_FEATURES (1 = SNPActive; KVM on Linux 6.8+ may add DebugSwap, 0x21).
    pub guest_features: u64,
    /// The kernel, initrd and command line, when QEMU boots them directly.
    pub kernel_hashes: Option<KernelHashes>,
}

/// The SNP launch digest: 48 bytes, SHA-384.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDigest(pub [u8; 48]);

impl std::fmt::Display for LaunchDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The page types of PAGE_INFO.
#[derive(Clone, Copy)]
#[repr(u8)]
enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Secrets = 5,
    Cpuid = 6,
}

/// The guest context's running launch digest.
struct Gctx {
    ld: [u8; 48],
}

impl Gctx {
    fn update(&mut self, kind: PageType, gpa: u64, contents: &[u8; 48]) {
        // PAGE_INFO: DIGEST_CUR, CONTENTS, LENGTH (0x70), PAGE_TYPE, IMI_PAGE, VMPL3..1 perms,
        // reserved, GPA.
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.ld);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = kind as u8;
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.ld = Sha384::digest(info).into();
    }

    fn normal_pages(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks(PAGE).enumerate() {
            let contents: [u8; 48] = Sha384::digest(page).into();
            self.update(PageType::Normal, gpa + (i * PAGE) as u64, &contents);
        }
    }

    fn zero_pages(&mut self, gpa: u64, size: u64) {
        for off in (0..size).step_by(PAGE) {
            self.update(PageType::Zero, gpa + off, &[0; 48]);
        }
    }
}

/// One vCPU's initial VMSA under QEMU/KVM: the SEV-ES save area (Linux's `struct
/// sev_es_save_area`, AMD APM vol. 2 table B-4) with the reset state.
fn vmsa(eip: u32, vcpu_sig: u32, features: u64) -> [u8; PAGE] {
    let mut p = [0u8; PAGE];
    let mut put = |off: usize, bytes: &[u8]| p[off..off + bytes.len()].copy_from_slice(bytes);
    // Segments: selector u16, attrib u16, limit u32, base u64; es cs ss ds fs gs gdtr ldtr idtr tr.
    let seg = |sel: u16, attrib: u16, limit: u32, base: u64| {
        let mut s = [0u8; 16];
        s[..2].copy_from_slice(&sel.to_le_bytes());
        s[2..4].copy_from_slice(&attrib.to_le_bytes());
        s[4..8].copy_from_slice(&limit.to_le_bytes());
        s[8..].copy_from_slice(&base.to_le_bytes());
        s
    };
    put(0x00, &seg(0, 0x93, 0xffff, 0)); // es
    put(
        0x10,
        &seg(0xf000, 0x9b, 0xffff, u64::from(eip & 0xffff_0000)),
    ); // cs
    put(0x20, &seg(0, 0x93, 0xffff, 0)); // ss
    put(0x30, &seg(0, 0x93, 0xffff, 0)); // ds
    put(0x40, &seg(0, 0x93, 0xffff, 0)); // fs
    put(0x50, &seg(0, 0x93, 0xffff, 0)); // gs
    put(0x60, &seg(0, 0, 0xffff, 0)); // gdtr
    put(0x70, &seg(0, 0x82, 0xffff, 0)); // ldtr
    put(0x80, &seg(0, 0, 0xffff, 0)); // idtr
    put(0x90, &seg(0, 0x8b, 0xffff, 0)); // tr
    put(0xd0, &0x1000u64.to_le_bytes()); // efer: SVME, set by KVM
    put(0x148, &0x40u64.to_le_bytes()); // cr4: MCE, set by KVM
    put(0x158, &0x10u64.to_le_bytes()); // cr0
    put(0x160, &0x400u64.to_le_bytes()); // dr7
    put(0x168, &0xffff_0ff0u64.to_le_bytes()); // dr6
    put(0x170, &0x2u64.to_le_bytes()); // rflags
    put(0x178, &u64::from(eip & 0xffff).to_le_bytes()); // rip
    put(0x268, &0x0007_0406_0007_0406u64.to_le_bytes()); // g_pat (APM vol. 2, A.3)
    put(0x310, &u64::from(vcpu_sig).to_le_bytes()); // rdx
    put(0x3b0, &features.to_le_bytes()); // sev_features
    put(0x3e8, &0x1u64.to_le_bytes()); // xcr0
    put(0x408, &0x1f80u32.to_le_bytes()); // mxcsr
    put(0x410, &0x37fu16.to_le_bytes()); // x87_fcw
    p
}

/// The launch digest of `firmware` booted as `launch` describes.
pub fn launch_digest(firmware: &[u8], launch: &SnpLaunch) -> Result<LaunchDigest, SnpError> {
    if launch.vcpus == 0 {
        return Err(SnpError::NoVcpus);
    }
    let fw = Firmware::parse(firmware)?;
    let sections = fw.sev_sections()?;
    if launch.kernel_hashes.is_some()
        && !sections
            .iter()
            .any(|s| s.kind == SevSectionKind::KernelHashes)
    {
        return Err(SnpError::NoKernelHashes);
    }
    let mut g = Gctx { ld: [0; 48] };
    g.normal_pages(fw.gpa(), fw.data());
    for s in &sections {
        if !(s.gpa as usize).is_multiple_of(PAGE) || !(s.size as usize).is_multiple_of(PAGE) {
            return Err(SnpError::Unaligned {
                gpa: s.gpa,
                size: s.size,
            });
        }
        let gpa = u64::from(s.gpa);
        match s.kind {
            SevSectionKind::SecMem | SevSectionKind::SvsmCaa => {
                g.zero_pages(gpa, u64::from(s.size))
            }
            SevSectionKind::Secrets => g.update(PageType::Secrets, gpa, &[0; 48]),
            SevSectionKind::Cpuid => g.update(PageType::Cpuid, gpa, &[0; 48]),
            SevSectionKind::KernelHashes => match &launch.kernel_hashes {
                None => g.zero_pages(gpa, u64::from(s.size)),
                Some(hashes) => {
                    let offset = fw.sev_hashes_table_gpa()? & 0xfff;
                    let table = hashes.table();
                    let end = (offset as usize)
                        .checked_add(table.len())
                        .filter(|end| *end <= PAGE && s.size as usize == PAGE)
                        .ok_or(SnpError::HashesOffset(offset))?;
                    let mut page = [0u8; PAGE];
                    page[offset as usize..end].copy_from_slice(&table);
                    g.normal_pages(gpa, &page);
                }
            },
        }
    }
    let ap_eip = fw.sev_es_reset_eip()?;
    let bsp = vmsa(BSP_EIP, launch.vcpu_sig, launch.guest_features);
    let ap = vmsa(ap_eip, launch.vcpu_sig, launch.guest_features);
    for i in 0..launch.vcpus {
        let page = if i == 0 { &bsp } else { &ap };
        let contents: [u8; 48] = Sha384::digest(page).into();
        g.update(PageType::Vmsa, VMSA_GPA, &contents);
    }
    Ok(LaunchDigest(g.ld))
}

/// CPUID Fn0000_0001_EAX for a family, model and stepping (AMD CPUID specification 25481).
pub const fn cpu_sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// QEMU's AMD EPYC CPU models and their signatures (family, model, stepping as QEMU's
/// `builtin_x86_defs` set them).
const VCPU_TYPES: &[(&str, u32, u32, u32)] = &[
    ("EPYC", 23, 1, 2),
    ("EPYC-v1", 23, 1, 2),
    ("EPYC-v2", 23, 1, 2),
    ("EPYC-IBPB", 23, 1, 2),
    ("EPYC-v3", 23, 1, 2),
    ("EPYC-v4", 23, 1, 2),
    ("EPYC-Rome", 23, 49, 0),
    ("EPYC-Rome-v1", 23, 49, 0),
    ("EPYC-Rome-v2", 23, 49, 0),
    ("EPYC-Rome-v3", 23, 49, 0),
    ("EPYC-Milan", 25, 1, 1),
    ("EPYC-Milan-v1", 25, 1, 1),
    ("EPYC-Milan-v2", 25, 1, 1),
    ("EPYC-Genoa", 25, 17, 0),
    ("EPYC-Genoa-v1", 25, 17, 0),
    ("EPYC-Turin", 26, 0, 0),
];

fn known_vcpu_types() -> String {
    VCPU_TYPES
        .iter()
        .map(|t| t.0)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The signature of a QEMU CPU model name (`-cpu EPYC-Milan`), case-insensitively.
pub fn vcpu_sig(vcpu_type: &str) -> Result<u32, SnpError> {
    VCPU_TYPES
        .iter()
        .find(|t| t.0.eq_ignore_ascii_case(vcpu_type))
        .map(|&(_, f, m, s)| cpu_sig(f, m, s))
        .ok_or_else(|| SnpError::VcpuType(vcpu_type.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_signatures_match_the_cpuid_values_amd_documents() {
        // Fn0000_0001_EAX as the parts report it: Naples B2 0x00800F12, Rome B0 0x00830F10,
        // Milan B1 0x00A00F11, Genoa B0 (family 19h model 11h) 0x00A10F10.
        assert_eq!(vcpu_sig("EPYC").unwrap(), 0x0080_0F12);
        assert_eq!(vcpu_sig("epyc-rome").unwrap(), 0x0083_0F10);
        assert_eq!(vcpu_sig("EPYC-Milan").unwrap(), 0x00A0_0F11);
        assert_eq!(vcpu_sig("EPYC-Genoa-v1").unwrap(), 0x00A1_0F10);
        assert!(matches!(vcpu_sig("Skylake"), Err(SnpError::VcpuType(_))));
    }

    #[test]
    fn the_hashes_table_is_qemus_layout() {
        let h = KernelHashes::new([1; 32], [2; 32], "");
        let t = h.table();
        assert_eq!(t.len(), 176, "168 bytes padded to 16");
        assert_eq!(&t[..16], &HASH_TABLE_GUID.to_bytes_le());
        assert_eq!(u16::from_le_bytes([t[16], t[17]]), 168);
        // The command line entry first; an empty command line is measured as one NUL.
        assert_eq!(&t[18..34], &CMDLINE_ENTRY_GUID.to_bytes_le());
        assert_eq!(&t[36..68], Sha256::digest([0u8]).as_slice());
        assert_eq!(&t[86..118], &[2; 32], "then the initrd");
        assert_eq!(&t[136..168], &[1; 32], "then the kernel");
        assert_eq!(&t[168..], &[0; 8]);
    }

    #[test]
    fn the_vmsa_holds_the_reset_state_at_the_save_area_offsets() {
        let p = vmsa(0xffff_fff0, 0x00A0_0F11, 0x21);
        // cs: selector 0xf000, attrib 0x9b, base 0xffff0000; rip 0xfff0: the reset vector.
        assert_eq!(&p[0x10..0x14], &[0x00, 0xf0, 0x9b, 0x00]);
        assert_eq!(
            u64::from_le_bytes(p[0x18..0x20].try_into().unwrap()),
            0xffff_0000
        );
        assert_eq!(
            u64::from_le_bytes(p[0x178..0x180].try_into().unwrap()),
            0xfff0
        );
        assert_eq!(
            u64::from_le_bytes(p[0x310..0x318].try_into().unwrap()),
            0x00A0_0F11
        );
        assert_eq!(
            u64::from_le_bytes(p[0x3b0..0x3b8].try_into().unwrap()),
            0x21
        );
        assert!(p[0x412..].iter().all(|b| *b == 0));
    }

    #[test]
    fn every_input_changes_the_digest_and_bad_firmware_is_an_error() {
        let fw = crate::synthetic::amdsev_like(64 * 1024);
        let base = SnpLaunch {
            vcpus: 1,
            vcpu_sig: vcpu_sig("EPYC-v4").unwrap(),
            guest_features: 1,
            kernel_hashes: Some(KernelHashes::new([1; 32], [2; 32], "console=ttyS0")),
        };
        let d = launch_digest(&fw, &base).unwrap();
        let mut seen = vec![d];
        for changed in [
            SnpLaunch {
                vcpus: 2,
                ..base.clone()
            },
            SnpLaunch {
                vcpu_sig: vcpu_sig("EPYC-Milan").unwrap(),
                ..base.clone()
            },
            SnpLaunch {
                guest_features: 0x21,
                ..base.clone()
            },
            SnpLaunch {
                kernel_hashes: None,
                ..base.clone()
            },
            SnpLaunch {
                kernel_hashes: Some(KernelHashes::new([1; 32], [2; 32], "console=ttyS1")),
                ..base.clone()
            },
        ] {
            let other = launch_digest(&fw, &changed).unwrap();
            assert!(
                !seen.contains(&other),
                "{changed:?} gave a digest seen before"
            );
            seen.push(other);
        }
        let mut fw2 = fw.clone();
        fw2[100] ^= 1;
        assert_ne!(launch_digest(&fw2, &base).unwrap(), d);
        assert!(matches!(
            launch_digest(
                &fw,
                &SnpLaunch {
                    vcpus: 0,
                    ..base.clone()
                }
            ),
            Err(SnpError::NoVcpus)
        ));
        assert!(launch_digest(&fw[..fw.len() - 1], &base).is_err());
        assert!(
            launch_digest(&fw[4096..], &base).is_ok(),
            "a shorter image still has its footer"
        );
        let plain = crate::synthetic::without_kernel_hashes(64 * 1024);
        assert!(matches!(
            launch_digest(&plain, &base),
            Err(SnpError::NoKernelHashes)
        ));
    }
}
