//! Property tests: round trips over random sizes, small chunk sizes, thread counts and push
//! pieces; and the header parser over random and mutated bytes (never panics, never accepts a
//! changed header). Case counts are kept small: the suite runs in debug on 2 cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroUsize;

use proptest::prelude::*;

use super::{data, kek, seal_with};
use crate::sealed::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_random_sizes(
        len in 0usize..1500,
        chunk in 16u32..200,
        threads in 1usize..5,
        piece in 1usize..300,
    ) {
        let plain = data(len);
        let file = seal_with(&plain, chunk, &kek(4), "p/q.bin");
        let opts = OpenOptions::default().with_threads(NonZeroUsize::new(threads).unwrap());
        let opened = open(&file, &kek(4), &opts).unwrap();
        prop_assert_eq!(&opened.plaintext[..], &plain[..]);

        let streamed = StreamOpener::new(&kek(4), opts).open(file.chunks(piece)).unwrap();
        prop_assert_eq!(&streamed.plaintext[..], &plain[..]);

        let opener = SealedOpener::new(&file, &kek(4), None).unwrap();
        let last = opener.chunk_count() - 1;
        let r = opener.header().chunk_range(last).unwrap();
        let got = opener.open_chunk(last, &file[r.start as usize..r.end as usize]).unwrap();
        let from = (last * u64::from(chunk)) as usize;
        prop_assert_eq!(&got[..], &plain[from..]);
    }

    #[test]
    fn any_single_flip_is_refused(len in 0usize..600, chunk in 16u32..128, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let file = seal_with(&data(len), chunk, &kek(4), "m");
        let mut bad = file.clone();
        let pos = at.index(bad.len());
        bad[pos] ^= 1 << bit;
        prop_assert!(open(&bad, &kek(4), &OpenOptions::default()).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn header_parser_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = SealedHeader::declared_len(&bytes);
        let _ = SealedHeader::parse(&bytes);
        let _ = SealedOpener::new(&bytes, &kek(4), None);
    }

    #[test]
    fn header_parser_never_panics_on_mutated_headers(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let file = seal_with(&data(40), 16, &kek(4), "dir/model.gguf");
        let h = SealedHeader::declared_len(&file).unwrap();
        let mut bad = file[..h].to_vec();
        for (i, b) in &edits {
            let i = i.index(h);
            bad[i] = *b;
        }
        let changed = bad != file[..h];
        let r = SealedOpener::new(&bad, &kek(4), None);
        prop_assert_eq!(r.is_ok(), !changed);
        let cut = cut.index(h);
        prop_assert!(SealedHeader::parse(&bad[..cut]).is_err());
    }
}
