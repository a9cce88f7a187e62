//! Arbitrary bytes as an NVIDIA GPU's SPDM attestation report into
//! `ward_attester::nvidia::report::parse_report`; a parsed report's measurements are read and
//! its signature checked against a fixed (wrong) key, which must fail cleanly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::nvidia::report::parse_report;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_report(data) {
        let _ = r.signed_bytes();
        for i in 0..=255u8 {
            let _ = r.measurement(i);
        }
        let _ = r.verify_signature(data);
        let _ = format!("{r:?}");
    }
});
