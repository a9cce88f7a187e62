//! Arbitrary bytes as the parts of a runtime measurement (CoCo's AAEL event: domain, operation,
//! content, as a workload's `ExtendRuntimeMeasurement` request carries them, split at `\n`, and
//! the register) into `ward_attester::eventlog::build_event`, which validates them and builds
//! the TCG entry wardd appends to the log. (wardd only writes the AAEL log; it parses none.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::eventlog::{EventHash, build_event};

fuzz_target!(|data: &[u8]| {
    let Some((&register, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (domain, operation, content) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    for hash in [EventHash::Sha256, EventHash::Sha384] {
        let _ = build_event(hash, u32::from(register), domain, operation, content);
    }
});
