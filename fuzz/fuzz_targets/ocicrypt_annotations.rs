//! Arbitrary bytes as an encrypted layer's media type and annotations into
//! `ward_image::ocicrypt::{LayerMediaType::parse, LayerAnnotations::parse}`, and as the public
//! and private options JSON into `PublicOptions::from_json` and `PrivateOptions::from_json`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_image::ocicrypt::annotations::{
    LayerAnnotations, LayerMediaType, PrivateOptions, PublicOptions,
};

const KEYS: &[&str] = &[
    "org.opencontainers.image.enc.keys.jwe",
    "org.opencontainers.image.enc.keys.provider.attestation-agent",
    "org.opencontainers.image.enc.keys.provider.other",
    "org.opencontainers.image.enc.pubopts",
    "org.opencontainers.image.enc.keys.pkcs7",
    "something.else",
];

fuzz_target!(|data: &[u8]| {
    let _ = PublicOptions::from_json(data);
    let _ = PrivateOptions::from_json(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mt) = LayerMediaType::parse(text) {
        let _ = (
            mt.is_encrypted(),
            mt.compression(),
            mt.decrypted(),
            mt.encrypted(),
        );
    }
    // Lines are annotation values, assigned to the keys in turn.
    let pairs = text
        .split('\n')
        .enumerate()
        .map(|(i, v)| (KEYS[i % KEYS.len()], v));
    if let Ok(a) = LayerAnnotations::parse(pairs) {
        let _ = a.to_map();
    }
});
