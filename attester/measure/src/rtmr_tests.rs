use super::*;

fn bzimage(protocol: u16, xloadflags: u16, version: &str) -> Vec<u8> {
    crate::synthetic::bzimage(protocol, xloadflags, version, 0x2000)
}

#[test]
fn qemu_patches_only_the_setup_fields_it_owns() {
    let k = bzimage(0x20f, 0x7f, "6.8.0-1 (builder)");
    let p = qemu_patched_kernel(&k, 10_000, 2 << 30, QEMU_ACPI_DATA_SIZE).unwrap();
    assert_eq!(p[0x210], 0xb0);
    assert_eq!(p[0x211], 0x81);
    assert_eq!(u32_at(&p, 0x224), 0xfe00);
    assert_eq!(u32_at(&p, 0x228), 0x20000);
    // 2 GiB of RAM: the top of low memory less the ACPI reserve, less one, less the size,
    // rounded down to a page.
    let max = 0x8000_0000u32 - 0x28000 - 1;
    assert_eq!(u32_at(&p, 0x218), (max - 10_000) & !4095);
    assert_eq!(u32_at(&p, 0x21c), 10_000);
    let changed: Vec<usize> = (0..k.len()).filter(|&i| k[i] != p[i]).collect();
    assert!(
        changed.iter().all(|&i| (0x210..0x22c).contains(&i)),
        "{changed:x?}"
    );
}

#[test]
fn memory_above_two_and_three_quarter_gib_moves_the_initrd_below_two() {
    let k = bzimage(0x20f, 0x7f, "6.8.0");
    let small = qemu_patched_kernel(&k, 4096, 0xa000_0000, QEMU_ACPI_DATA_SIZE).unwrap();
    let big = qemu_patched_kernel(&k, 4096, 0xb000_0000, QEMU_ACPI_DATA_SIZE).unwrap();
    assert_eq!(
        u32_at(&small, 0x218),
        (0xa000_0000u32 - 0x28000 - 1 - 4096) & !4095
    );
    assert_eq!(
        u32_at(&big, 0x218),
        (0x8000_0000u32 - 0x28000 - 1 - 4096) & !4095
    );
}

#[test]
fn kernels_qemu_cannot_direct_boot_are_refused() {
    assert!(matches!(
        qemu_patched_kernel(&[0u8; 0x800], 0, 1 << 30, QEMU_ACPI_DATA_SIZE),
        Err(RtmrError::Kernel(_))
    ));
    assert!(matches!(
        qemu_patched_kernel(&vec![0u8; 0x2000], 0, 1 << 30, QEMU_ACPI_DATA_SIZE),
        Err(RtmrError::Kernel(_))
    ));
    let old = bzimage(0x20b, 0, "3.0");
    assert!(matches!(
        qemu_patched_kernel(&old, 0, 1 << 30, QEMU_ACPI_DATA_SIZE),
        Err(RtmrError::Kernel(_))
    ));
    let k = bzimage(0x20f, 0x7f, "6.8");
    assert!(matches!(
        qemu_patched_kernel(&k, 1 << 30, 1 << 30, QEMU_ACPI_DATA_SIZE),
        Err(RtmrError::InitrdTooLarge { .. })
    ));
    assert!(matches!(
        qemu_patched_kernel(&k, 1, 0x1000, QEMU_ACPI_DATA_SIZE),
        Err(RtmrError::Memory(_))
    ));
}

#[test]
fn the_kernel_version_decides_whether_the_stub_measures() {
    assert_eq!(
        kernel_version(&bzimage(0x20f, 0, "6.8.0-45-generic (b@h) #45")),
        Some((6, 8))
    );
    assert_eq!(
        kernel_version(&bzimage(0x20f, 0, "6.1.0-57-amd64 (d@d) #1")),
        Some((6, 1))
    );
    assert_eq!(kernel_version(&[0u8; 0x100]), None);
    let boot = |k: &[u8], rtmr2| {
        direct_boot_events(&DirectBoot {
            kernel: k,
            initrd: b"initrd",
            cmdline: "console=hvc0",
            memory: 1 << 30,
            acpi_data_size: QEMU_ACPI_DATA_SIZE,
            rtmr2,
        })
        .unwrap()
    };
    let new = bzimage(0x20f, 0, "6.8.0");
    let old = bzimage(0x20f, 0, "6.1.0");
    assert_eq!(boot(&new, Rtmr2Events::Auto).len(), 7);
    assert_eq!(boot(&old, Rtmr2Events::Auto).len(), 5);
    assert_eq!(replay(&boot(&old, Rtmr2Events::Auto), 2), [0u8; 48]);
    assert_eq!(boot(&old, Rtmr2Events::Stub).len(), 7);
    assert_eq!(boot(&new, Rtmr2Events::None).len(), 5);
}

/// RTMR2 written out longhand from the UEFI and Linux stub rules: the command line with
/// OVMF's " initrd=initrd" in UTF-16LE with its NUL, then the initrd's SHA-384.
#[test]
fn rtmr2_is_the_command_line_then_the_initrd() {
    let k = bzimage(0x20f, 0x7f, "6.8.0");
    let events = direct_boot_events(&DirectBoot {
        kernel: &k,
        initrd: b"cpio bytes",
        cmdline: "console=hvc0 ward.tee=auto",
        memory: 1 << 30,
        acpi_data_size: QEMU_ACPI_DATA_SIZE,
        rtmr2: Rtmr2Events::Stub,
    })
    .unwrap();
    let mut cmd = Vec::new();
    for c in "console=hvc0 ward.tee=auto initrd=initrd".encode_utf16() {
        cmd.extend(c.to_le_bytes());
    }
    cmd.extend([0, 0]);
    let mut mr = [0u8; 48];
    for d in [Sha384::digest(&cmd), Sha384::digest(b"cpio bytes")] {
        mr = Sha384::new()
            .chain_update(mr)
            .chain_update(d)
            .finalize()
            .into();
    }
    assert_eq!(replay(&events, 2), mr);
}

#[test]
fn the_authenticode_hash_leaves_out_checksum_and_certificate_entry() {
    let k = bzimage(0x20f, 0x7f, "6.8.0");
    let base = authenticode_sha384(&k).unwrap();
    let mut other = k.clone();
    other[0x58 + 64] ^= 0xff; // the checksum
    assert_eq!(authenticode_sha384(&other).unwrap(), base);
    other[0x1800] ^= 1; // section data
    assert_ne!(authenticode_sha384(&other).unwrap(), base);
    assert!(matches!(
        authenticode_sha384(&k[..0x100]),
        Err(RtmrError::Authenticode)
    ));
}

#[test]
fn td_hob_splits_ram_around_the_accepted_sections() {
    let sections = [
        TdxSection {
            data_offset: 0,
            raw_data_size: 0,
            memory_address: 0x809000,
            memory_data_size: 0x2000,
            kind: 2,
            attributes: 0,
        },
        TdxSection {
            data_offset: 0,
            raw_data_size: 0,
            memory_address: 0x800000,
            memory_data_size: 0x6000,
            kind: 3,
            attributes: 0,
        },
    ];
    let hob = td_hob(&sections, 0xc000_0000).unwrap();
    // PHIT, then: unaccepted 0-8M, accepted 8M+24K, unaccepted gap, accepted HOB, unaccepted
    // to 2 GiB, unaccepted from 4 GiB.
    assert_eq!(hob.len(), 56 + 6 * 48);
    let range = |i: usize| {
        let r = &hob[56 + i * 48..56 + (i + 1) * 48];
        (
            u32_at(r, 24),
            u64::from_le_bytes(r[32..40].try_into().unwrap()),
            u64::from_le_bytes(r[40..48].try_into().unwrap()),
        )
    };
    assert_eq!(range(0), (7, 0, 0x800000));
    assert_eq!(range(1), (0, 0x800000, 0x6000));
    assert_eq!(range(2), (7, 0x806000, 0x3000));
    assert_eq!(range(3), (0, 0x809000, 0x2000));
    assert_eq!(range(4), (7, 0x80b000, 0x8000_0000 - 0x80b000));
    assert_eq!(range(5), (7, 1 << 32, 0x4000_0000));
    assert_eq!(
        u64::from_le_bytes(hob[48..56].try_into().unwrap()),
        0x809000 + hob.len() as u64 + 8
    );
    assert!(matches!(td_hob(&sections, 4097), Err(RtmrError::Memory(_))));
    assert!(matches!(
        td_hob(&sections[1..], 1 << 30),
        Err(RtmrError::NoSection(_))
    ));
}

#[test]
fn boot_order_names_the_boot_options_measured() {
    let fw = crate::synthetic::amdsev_like(16 * 1024);
    let opt1: &[u8] = b"option one";
    let opt2: &[u8] = b"option two";
    let options = [(1u16, opt1), (2, opt2)];
    let platform = |order: &'static [u8]| Platform {
        acpi_tables: b"tables",
        acpi_rsdp: b"rsdp",
        table_loader: b"loader",
        boot_order: order,
        boot_options: &options,
        cfv_sha384: Some([7u8; 48]),
    };
    let events = platform_events(&fw, 1 << 30, &platform(&[2, 0, 9, 0])).unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(names.last(), Some(&"EFI variable Boot0002"));
    assert_eq!(events.len(), 13);
    assert!(events.iter().all(|e| e.rtmr == 0));
    assert!(matches!(
        platform_events(&fw, 1 << 30, &platform(&[1])),
        Err(RtmrError::BootOrder(1))
    ));
}
