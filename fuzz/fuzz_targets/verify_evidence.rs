//! Arbitrary bytes into `ward_verifier`'s TDX, SNP, Azure vTPM and NVIDIA GPU verifiers (no
//! collateral or certificate, `insecure`: the parsing and every value check run), its AMD
//! certificate loaders (a file's bytes, an evidence's certificate table), and its
//! reference-values parser: what `ward chat` does with a hostile server's evidence and a user's
//! file. Refusals are fine; panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_verifier::Options;
use ward_verifier::reference::{GpuReference, ReferenceValues, SnpReference, TdxReference};

fuzz_target!(|data: &[u8]| {
    let opts = Options {
        at: 1_700_000_000,
        insecure: true,
    };
    let want = [0u8; 64];
    let _ = ward_verifier::tdx::verify(data, None, &TdxReference::default(), &want, &opts);
    let _ = ward_verifier::snp::verify(data, None, &SnpReference::default(), &want, &opts);
    let _ = ward_verifier::snp::AmdCerts::from_bytes(data);
    let _ = ward_verifier::nvidia::verify(data, &GpuReference::default(), &[0; 32], &opts);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = ward_verifier::azure::verify(
            &v,
            &ward_verifier::azure::Vouchers::default(),
            &ReferenceValues::default(),
            &want,
            &opts,
        );
        let _ = ward_verifier::snp::AmdCerts::from_cert_table(&v);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ReferenceValues::parse(text);
    }
});
