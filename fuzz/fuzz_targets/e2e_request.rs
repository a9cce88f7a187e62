//! Arbitrary bytes as an end-to-end encrypted inference request into
//! `ward_e2e::ServerKey::open_request` and as an Oblivious HTTP request (plain and chunked)
//! into `open_ohttp` (X-Wing and X25519 keys), and as a key config into
//! `ward_e2e::KeyConfig::decode`, which clients parse from attested evidence.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ward_e2e::{KeyConfig, ServerKey, Suite};

fn keys() -> &'static [ServerKey] {
    static KEYS: OnceLock<Vec<ServerKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        vec![
            ServerKey::generate(Suite::XWing),
            ServerKey::generate(Suite::X25519),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    for key in keys() {
        // The fuzzer rarely finds the 7-byte header; give it the header and the arbitrary rest too.
        let _ = key.open_request(data, "POST", "/v1/chat/completions", 1_700_000_000);
        let mut framed = key.config().header().to_vec();
        framed.extend_from_slice(data);
        let _ = key.open_request(&framed, "POST", "/v1/chat/completions", 1_700_000_000);
        for chunked in [false, true] {
            let _ = key.open_ohttp(data, chunked);
            let _ = key.open_ohttp(&framed, chunked);
        }
    }
    let _ = KeyConfig::decode(data);
});
