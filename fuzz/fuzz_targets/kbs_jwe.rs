//! Arbitrary bytes as a KBS resource answer (a JWE to the TEE key) into
//! `ward_attester::kbs::decrypt_jwe`, with an EC P-256 and an RSA-2048 TEE key.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ward_attester::kbs::{KeyKind, TeeKey, decrypt_jwe};

fn keys() -> &'static [TeeKey] {
    static KEYS: OnceLock<Vec<TeeKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [KeyKind::EcP256, KeyKind::Rsa2048]
            .into_iter()
            .filter_map(|k| TeeKey::generate(k).ok())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for key in keys() {
        let _ = decrypt_jwe(data, key);
    }
});
