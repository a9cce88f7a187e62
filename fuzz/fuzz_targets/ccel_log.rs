//! Arbitrary bytes into `ward_attester::explain::parse_ccel_log`, the parser `ward explain` and the
//! verifier-side tooling use for this evidence; errors are fine, panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::explain::parse_ccel_log;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = parse_ccel_log(data) {
        // Rendering a parsed value walks every field it kept.
        let _ = format!("{parsed:?}");
    }
});
