//! Arbitrary bytes as the kernel command line wardd reads its `ward.*` overrides from, into
//! `ward_agent::config::parse_cmdline`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_agent::config::parse_cmdline;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_cmdline(text);
});
