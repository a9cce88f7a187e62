//! Arbitrary bytes as an NVIDIA GPU's certificate chain: PEM text into
//! `ward_attester::nvidia::report::parse_cert_chain_pem` and the chain check, and DER into
//! `GpuCert::from_der` with its subject, issuer and FWID extension.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::nvidia::report::{GpuCert, check_chain, parse_cert_chain_pem};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = GpuCert::from_der(data) {
        let _ = (c.subject(), c.issuer(), c.fwid());
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(chain) = parse_cert_chain_pem(text)
    {
        for c in &chain {
            let _ = (c.subject(), c.issuer(), c.fwid());
        }
        let _ = check_chain(&chain);
    }
});
