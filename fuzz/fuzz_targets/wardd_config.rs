//! Arbitrary bytes as wardd's config file: TOML into `ward_agent::config::RawConfig::from_toml`,
//! then the checks of `Config::from_raw` and `Config::check`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ward_agent::config::{Config, RawConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = RawConfig::from_toml(Path::new("fuzz.toml"), text) else {
        return;
    };
    if let Ok(config) = Config::from_raw(raw) {
        let _ = config.check();
    }
});
