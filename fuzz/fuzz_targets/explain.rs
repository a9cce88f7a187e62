//! Arbitrary bytes into `ward_attester::explain::explain`, which recognises any evidence ward
//! knows (SNP report, TDX quote, CCEL, NVIDIA SPDM report, evidence JSON of SNP, NVIDIA and
//! Azure vTPM shapes) and dispatches to its parser; the explanation is rendered too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::explain::explain;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = explain(data) {
        let _ = e.to_string();
    }
});
