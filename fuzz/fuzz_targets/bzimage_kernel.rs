//! Arbitrary bytes as the kernel of a TDX direct boot into `ward_measure::rtmr`: the setup
//! header QEMU patches (boot protocol, xloadflags, the initrd's highest address), the kernel
//! version string, and the Authenticode hash of its PE/COFF image (Google's `authenticode`
//! over `object`'s PE parser), for a few memory and initrd sizes. The kernel comes from a build
//! the operator trusts, but a wrong file must give a typed error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_measure::rtmr::{DirectBoot, QEMU_ACPI_DATA_SIZE, Rtmr2Events, direct_boot_events};

fuzz_target!(|data: &[u8]| {
    if data.len() > 1 << 20 {
        return;
    }
    // The header must sit at its offsets: pad short inputs to a page so the fuzzer reaches
    // the PE parser, and also try the bytes as they are.
    let mut padded = data.to_vec();
    padded.resize(padded.len().max(0x1000), 0);
    for kernel in [data, &padded[..]] {
        for (memory, initrd) in [
            (1u64 << 30, &b"initrd"[..]),
            (3 << 30, &[][..]),
            (0x1000, &[7u8; 64][..]),
        ] {
            let _ = direct_boot_events(&DirectBoot {
                kernel,
                initrd,
                cmdline: "console=hvc0",
                memory,
                acpi_data_size: QEMU_ACPI_DATA_SIZE,
                rtmr2: Rtmr2Events::Auto,
            });
        }
    }
});
