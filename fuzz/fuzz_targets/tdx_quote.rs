//! Arbitrary bytes into `ward_attester::explain::parse_tdx_quote`, the parser `ward explain` and the
//! verifier-side tooling use for this evidence; errors are fine, panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::explain::parse_tdx_quote;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = parse_tdx_quote(data) {
        // Rendering a parsed value walks every field it kept.
        let _ = format!("{parsed:?}");
    }
});
