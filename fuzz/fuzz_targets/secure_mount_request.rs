//! Arbitrary bytes as a SecureMount request (`volume_type`, `mount_point`, then `key=value`
//! option lines), into `ward_agent::secure_mount::parse_request`: the options kata-agent sends
//! on behalf of a pod spec the host wrote. Refusals are fine; panics are not.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let volume_type = lines.next().unwrap_or_default();
    let mount_point = lines.next().unwrap_or_default();
    let options: HashMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(r) = ward_agent::secure_mount::parse_request(volume_type, &options, mount_point) {
        let _ = r.key.describe();
    }
});
