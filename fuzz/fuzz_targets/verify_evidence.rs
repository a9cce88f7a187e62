//! Arbitrary bytes into `ward_verifier`'s TDX and SNP verifiers (no collateral or certificate,
//! `insecure`: the parsing and every value check run), its AMD certificate loader, and its
//! reference-values parser: what `ward chat` does with a hostile server's evidence and a user's
//! file. Refusals are fine; panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_verifier::Options;
use ward_verifier::reference::{ReferenceValues, SnpReference, TdxReference};

fuzz_target!(|data: &[u8]| {
    let opts = Options {
        at: 1_700_000_000,
        insecure: true,
    };
    let want = [0u8; 64];
    let _ = ward_verifier::tdx::verify(data, None, &TdxReference::default(), &want, &opts);
    let _ = ward_verifier::snp::verify(data, None, &SnpReference::default(), &want, &opts);
    let _ = ward_verifier::snp::AmdCerts::from_bytes(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ReferenceValues::parse(text);
    }
});
