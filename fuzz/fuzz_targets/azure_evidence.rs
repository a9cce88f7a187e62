//! Arbitrary bytes as Azure vTPM evidence JSON (SNP or TDX behind the paravisor) into
//! `ward_attester::explain::parse_azure_evidence`: the HCL report, the TPM quote and the
//! runtime data inside it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::explain::parse_azure_evidence;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(e) = parse_azure_evidence(&v) {
        let _ = format!("{e:?}");
    }
});
