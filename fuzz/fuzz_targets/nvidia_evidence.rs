//! Arbitrary bytes as NVIDIA GPU evidence JSON (`device_evidence_list`, base64 SPDM reports and
//! certificate chains) into `ward_attester::explain::parse_nvidia_evidence`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::explain::parse_nvidia_evidence;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(e) = parse_nvidia_evidence(&v) {
        let _ = format!("{e:?}");
    }
});
