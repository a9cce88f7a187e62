//! Arbitrary bytes as an ocicrypt `enc.keys.jwe` recipient list into
//! `ward_image::ocicrypt::jwe::decrypt`, with the RSA, P-256, P-384 and P-521 test keys. The input
//! is split at `\n` into several JWEs, as an annotation's comma-separated list would give.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ward_image::ocicrypt::{PrivateKey, jwe};

const PEMS: &[&str] = &[
    include_str!("../../image-rs/src/ocicrypt/testdata/rsa2048.pkcs8.pem"),
    include_str!("../../image-rs/src/ocicrypt/testdata/p256.pkcs8.pem"),
    include_str!("../../image-rs/src/ocicrypt/testdata/p384.pkcs8.pem"),
    include_str!("../../image-rs/src/ocicrypt/testdata/p521.pkcs8.pem"),
];

fn keys() -> &'static [PrivateKey] {
    static KEYS: OnceLock<Vec<PrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        PEMS.iter()
            .filter_map(|p| PrivateKey::from_pem(p).ok())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let jwes: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let _ = jwe::decrypt(&jwes, keys());
    // The private-key parser reads operator PEM files too.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PrivateKey::all_from_pem(text);
        let _ = ward_image::ocicrypt::PublicKey::from_pem(text);
    }
});
