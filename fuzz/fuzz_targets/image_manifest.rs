//! Arbitrary bytes as the documents a registry serves for an image, into
//! `ward_image::registry::check_image_documents` (the checks `Registry::resolve` makes): the
//! input is split at `#-#\n` into what the tag names (an index or a manifest), the manifest an
//! index entry names, and the image config; the index is resolved for linux/amd64 and
//! linux/arm64/v8.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_image::registry::{Platform, check_image_documents};

const SEP: &[u8] = b"#-#\n";

fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(i) = data.windows(SEP.len()).position(|w| w == SEP) {
        out.push(&data[..i]);
        data = &data[i + SEP.len()..];
    }
    out.push(data);
    out
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let top = parts.first().copied().unwrap_or_default();
    let manifest = parts.get(1).copied().unwrap_or_default();
    let config = parts.get(2).copied().unwrap_or_default();
    let platforms = [
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        },
    ];
    for p in &platforms {
        let _ = check_image_documents("fuzz", top, p, manifest, config);
    }
});
