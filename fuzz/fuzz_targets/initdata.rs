//! Arbitrary bytes as the initdata TOML a VM is launched with, into
//! `ward_attester::initdata::InitData::parse`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_attester::initdata::{InitData, fit_to_field};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = InitData::parse(text.to_string()) {
        let _ = (d.body(), d.algorithm(), d.data());
        let _ = fit_to_field(d.digest(), 48);
        let _ = fit_to_field(d.digest(), 64);
    }
});
