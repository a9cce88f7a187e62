//! Arbitrary bytes into `ward_attester::explain::parse_snp_report`, the parser `ward explain` and the
//! verifier-side tooling use for this evidence; errors are fine, panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::explain::parse_snp_report;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = parse_snp_report(data) {
        // Rendering a parsed value walks every field it kept.
        let _ = format!("{parsed:?}");
    }
});
