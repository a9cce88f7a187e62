//! Arbitrary bytes into the sealed-model header parser, the opener (with a fixed KEK) and the
//! stream opener fed in two pieces: none may panic, whatever the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_image::sealed::{Kek, OpenOptions, SealedHeader, SealedOpener, StreamOpener};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let _ = SealedHeader::declared_len(data);
    if let Ok(header) = SealedHeader::parse(data) {
        // Geometry derived from a parsed header must not overflow either.
        let layout = header.layout();
        let _ = header.sealed_len();
        let _ = header.chunk_range(layout.chunk_count().saturating_sub(1));
        let _ = header.chunk_range(layout.chunk_count());
    }
    let kek = Kek::new(Zeroizing::new([7u8; 32]));
    let _ = SealedOpener::new(data, &kek, None);
    let (a, b) = data.split_at(data.len() / 2);
    let _ = StreamOpener::new(&kek, OpenOptions::default()).open([a, b]);
});
