//! Round trips and every tamper of `docs/sealed-model.md`'s table, each asserting the one
//! error variant it must give.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::io::Cursor;
use std::num::NonZeroUsize;

use zeroize::Zeroizing;

use super::header::{MAC_LEN, PREFIX_LEN, TAG_LEN};
use super::*;
use crate::digest::Digest;

mod prop;

pub(super) const C: u32 = 64;

pub(super) fn kek(n: u8) -> Kek {
    Kek::new(Zeroizing::new([n; 32]))
}

pub(super) fn kek_id() -> KekId {
    KekId::parse("kbs:///default/model/llama").unwrap()
}

pub(super) fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

pub(super) fn seal_with(plain: &[u8], chunk: u32, key: &Kek, name: &str) -> Vec<u8> {
    let params = SealParams::new(name, kek_id())
        .unwrap()
        .with_chunk_size(chunk)
        .unwrap();
    let mut out = Vec::new();
    let header = seal(Cursor::new(plain), &mut out, key, &params).unwrap();
    assert_eq!(out.len() as u64, header.sealed_len());
    out
}

fn sealed(plain: &[u8]) -> Vec<u8> {
    seal_with(plain, C, &kek(1), "model.safetensors")
}

fn threads(n: usize) -> OpenOptions {
    OpenOptions::default().with_threads(NonZeroUsize::new(n).unwrap())
}

fn open_err(file: &[u8]) -> SealedError {
    open(file, &kek(1), &threads(3)).unwrap_err()
}

fn header_len(file: &[u8]) -> usize {
    SealedHeader::declared_len(file).unwrap()
}

/// Byte range of chunk `i` in a file sealed with chunk size `C`.
fn chunk(file: &[u8], i: u64) -> std::ops::Range<usize> {
    let h = SealedHeader::parse(file).unwrap();
    let r = h.chunk_range(i).unwrap();
    r.start as usize..r.end as usize
}

#[test]
fn round_trip_edge_sizes() {
    let c = C as usize;
    for len in [0, 1, c - 1, c, c + 1, 2 * c, 7 * c + 5] {
        let plain = data(len);
        let file = sealed(&plain);
        for t in [1, 4] {
            let opened = open(&file, &kek(1), &threads(t)).unwrap();
            assert_eq!(&opened.plaintext[..], &plain[..], "len {len}, {t} threads");
            assert_eq!(opened.header.plaintext_sha256(), &Digest::of(&plain));
            assert_eq!(opened.header.name().as_str(), "model.safetensors");
        }
        let expected_chunks = len.div_ceil(c).max(1) as u64;
        let opener = SealedOpener::new(&file, &kek(1), None).unwrap();
        assert_eq!(opener.chunk_count(), expected_chunks);
        assert_eq!(
            file.len(),
            opener.header().len() + len + TAG_LEN * expected_chunks as usize
        );
    }
}

#[test]
fn round_trip_default_chunk_size_many_threads() {
    let plain = data(3 * (1 << 20) + 12345);
    let params = SealParams::new("big.bin", kek_id()).unwrap();
    let mut file = Vec::new();
    seal(Cursor::new(&plain), &mut file, &kek(1), &params).unwrap();
    let opened = open(&file, &kek(1), &OpenOptions::default()).unwrap();
    assert_eq!(&opened.plaintext[..], &plain[..]);
    assert_eq!(opened.header.layout().chunk_count(), 4);
}

#[test]
fn random_access_opens_any_chunk_alone() {
    let plain = data(5 * C as usize + 9);
    let file = sealed(&plain);
    let opener = SealedOpener::new(&file[..header_len(&file)], &kek(1), None).unwrap();
    for i in (0..opener.chunk_count()).rev() {
        let got = opener.open_chunk(i, &file[chunk(&file, i)]).unwrap();
        let start = i as usize * C as usize;
        let end = (start + C as usize).min(plain.len());
        assert_eq!(&got[..], &plain[start..end]);
    }
    // The same opener then opens the whole file.
    let whole = opener
        .open_file(&file, NonZeroUsize::new(2).unwrap())
        .unwrap();
    assert_eq!(&whole.plaintext[..], &plain[..]);
    let n = opener.chunk_count();
    assert!(matches!(
        opener.open_chunk(n, &file[chunk(&file, 0)]),
        Err(SealedError::ChunkIndex { index, count }) if index == n && count == n
    ));
    let short = &file[chunk(&file, 1)][1..];
    assert!(matches!(
        opener.open_chunk(1, short),
        Err(SealedError::ChunkLength { index: 1, expected, .. }) if expected == C as usize + TAG_LEN
    ));
    // A valid chunk at another index.
    assert!(matches!(
        opener.open_chunk(2, &file[chunk(&file, 1)]),
        Err(SealedError::ChunkAuthentication { index: 2 })
    ));
}

#[test]
fn every_flipped_chunk_bit_names_its_chunk() {
    let plain = data(3 * C as usize + 10);
    let file = sealed(&plain);
    let h = header_len(&file);
    for pos in h..file.len() {
        let mut bad = file.clone();
        bad[pos] ^= 0x10;
        let index = ((pos - h) / (C as usize + TAG_LEN)) as u64;
        match open_err(&bad) {
            SealedError::ChunkAuthentication { index: got } => assert_eq!(got, index, "byte {pos}"),
            e => panic!("byte {pos}: {e:?}"),
        }
    }
}

#[test]
fn every_flipped_header_bit_is_a_header_error() {
    let file = sealed(&data(100));
    let h = header_len(&file);
    for pos in 0..h {
        for bit in [0x01u8, 0x80] {
            let mut bad = file.clone();
            bad[pos] ^= bit;
            let e = open_err(&bad);
            assert!(
                matches!(
                    e,
                    SealedError::BadMagic
                        | SealedError::UnsupportedVersion(_)
                        | SealedError::UnsupportedFlags(_)
                        | SealedError::HeaderField { .. }
                        | SealedError::HeaderTruncated { .. }
                        | SealedError::InvalidName { .. }
                        | SealedError::InvalidKekId { .. }
                        | SealedError::WrongKek { .. }
                        | SealedError::HeaderAuthentication { .. }
                ),
                "byte {pos} bit {bit:#x}: {e:?}"
            );
        }
    }
}

#[test]
fn header_fields_tampered_give_their_error() {
    let file = sealed(&data(100));
    let h = header_len(&file);
    let flip = |pos: usize| {
        let mut bad = file.clone();
        bad[pos] ^= 1;
        open_err(&bad)
    };
    assert!(matches!(flip(0), SealedError::BadMagic));
    assert!(matches!(flip(9), SealedError::UnsupportedVersion(0)));
    assert!(matches!(flip(11), SealedError::UnsupportedFlags(1)));
    // chunk_size (still in range), plaintext_len, digest, salt, name: only the MAC notices.
    for pos in [19, 27, 28, 59, 60, 91, 94] {
        assert!(
            matches!(flip(pos), SealedError::HeaderAuthentication { .. }),
            "byte {pos}"
        );
    }
    // The fingerprint, then the MAC itself.
    assert!(matches!(
        flip(h - MAC_LEN - 1),
        SealedError::WrongKek { .. }
    ));
    assert!(matches!(
        flip(h - 1),
        SealedError::HeaderAuthentication { .. }
    ));
}

#[test]
fn truncated_dropped_and_extended_files() {
    let plain = data(4 * C as usize + 20);
    let file = sealed(&plain);
    let full = file.len() as u64;
    // Last chunk cut by one byte, or entirely.
    for cut in [1, 20 + TAG_LEN] {
        let e = open_err(&file[..file.len() - cut]);
        assert!(
            matches!(e, SealedError::Truncated { expected, actual } if expected == full && actual == full - cut as u64),
            "{e:?}"
        );
    }
    // A middle chunk dropped.
    let mut dropped = file.clone();
    dropped.drain(chunk(&file, 1));
    assert!(matches!(open_err(&dropped), SealedError::Truncated { .. }));
    // A chunk duplicated (inserted again), or bytes appended.
    let mut dup = file.clone();
    let c1 = file[chunk(&file, 1)].to_vec();
    dup.splice(chunk(&file, 2).start..chunk(&file, 2).start, c1);
    assert!(matches!(open_err(&dup), SealedError::TrailingData { .. }));
    let mut longer = file.clone();
    longer.push(0);
    assert!(matches!(
        open_err(&longer),
        SealedError::TrailingData { .. }
    ));
    // Header cut.
    assert!(matches!(
        open_err(&file[..10]),
        SealedError::HeaderTruncated {
            needed: PREFIX_LEN,
            got: 10
        }
    ));
    assert!(matches!(
        open_err(&file[..header_len(&file) - 1]),
        SealedError::HeaderTruncated { .. }
    ));
}

#[test]
fn reordered_and_replaced_chunks() {
    let file = sealed(&data(4 * C as usize));
    let (c1, c2) = (chunk(&file, 1), chunk(&file, 2));
    // Swap chunks 1 and 2 (same length).
    let mut swapped = file.clone();
    swapped[c1.clone()].copy_from_slice(&file[c2.clone()]);
    swapped[c2.clone()].copy_from_slice(&file[c1.clone()]);
    assert!(matches!(
        open_err(&swapped),
        SealedError::ChunkAuthentication { index: 1 }
    ));
    // Chunk 0 duplicated over chunk 1.
    let mut dup = file.clone();
    dup[c1.clone()].copy_from_slice(&file[chunk(&file, 0)]);
    assert!(matches!(
        open_err(&dup),
        SealedError::ChunkAuthentication { index: 1 }
    ));
}

#[test]
fn chunks_from_another_file_or_model_fail() {
    let plain = data(3 * C as usize);
    let a = sealed(&plain);
    // Same plaintext, name and KEK: only the salt differs.
    let b = sealed(&plain);
    // Another model: another KEK.
    let other = seal_with(&plain, C, &kek(9), "model.safetensors");
    for donor in [&b, &other] {
        let mut mixed = a.clone();
        mixed[chunk(&a, 1)].copy_from_slice(&donor[chunk(donor, 1)]);
        assert!(matches!(
            open_err(&mixed),
            SealedError::ChunkAuthentication { index: 1 }
        ));
    }
    // b's header over a's chunks.
    let mut mixed = b[..header_len(&b)].to_vec();
    mixed.extend_from_slice(&a[header_len(&a)..]);
    assert!(matches!(
        open_err(&mixed),
        SealedError::ChunkAuthentication { index: 0 }
    ));
    // The last chunk of a longer file where a file ends (same KEK, the flag and key differ).
    let longer = sealed(&data(4 * C as usize));
    let mut tail = a.clone();
    tail[chunk(&a, 2)].copy_from_slice(&longer[chunk(&longer, 3)]);
    assert!(matches!(
        open_err(&tail),
        SealedError::ChunkAuthentication { index: 2 }
    ));
}

#[test]
fn last_chunk_flag_is_part_of_the_nonce() {
    let key = keys::DataKey(Zeroizing::new([3u8; 32]));
    let cipher = backend::chunk_cipher(&key).unwrap();
    let mut buf = data(C as usize);
    let tag = cipher.seal_in_place(5, false, &mut buf).unwrap();
    let mut as_last = buf.clone();
    assert!(matches!(
        cipher.open_in_place(5, true, &mut as_last, &tag),
        Err(SealedError::ChunkAuthentication { index: 5 })
    ));
    cipher.open_in_place(5, false, &mut buf, &tag).unwrap();
    assert_eq!(buf, data(C as usize));
}

#[test]
fn wrong_kek_and_policy_digest() {
    let plain = data(200);
    let file = sealed(&plain);
    assert!(matches!(
        open(&file, &kek(2), &OpenOptions::default()),
        Err(SealedError::WrongKek { kek_id }) if kek_id == "kbs:///default/model/llama"
    ));
    let wrong = Digest::of(b"another model");
    assert!(matches!(
        open(&file, &kek(1), &OpenOptions::default().expect_digest(wrong.clone())),
        Err(SealedError::PolicyDigestMismatch { expected, .. }) if expected == wrong
    ));
    let right = OpenOptions::default().expect_digest(Digest::of(&plain));
    assert_eq!(
        &open(&file, &kek(1), &right).unwrap().plaintext[..],
        &plain[..]
    );
}

#[test]
fn a_sealer_that_lies_about_the_digest_is_caught() {
    let plain = data(150);
    let params = SealParams::new("m.bin", kek_id())
        .unwrap()
        .with_chunk_size(C)
        .unwrap();
    let lie = Digest::of(b"not this");
    let mut file = Vec::new();
    let r = seal_stream(&plain[..], 150, &lie, &mut file, &kek(1), &params);
    assert!(matches!(r, Err(SealedError::InputChanged)));
    assert!(matches!(
        open_err(&file),
        SealedError::PlaintextDigestMismatch { header, actual, .. }
            if header == lie && actual == Digest::of(&plain)
    ));
    assert!(matches!(
        StreamOpener::new(&kek(1), threads(2)).open([&file]),
        Err(SealedError::PlaintextDigestMismatch { .. })
    ));
    // A stream shorter than announced.
    let mut file = Vec::new();
    let r = seal_stream(
        &plain[..100],
        150,
        &Digest::of(&plain),
        &mut file,
        &kek(1),
        &params,
    );
    assert!(matches!(r, Err(SealedError::InputChanged)));
}

#[test]
fn stream_opener_round_trip_in_odd_pieces() {
    let plain = data(9 * C as usize + 33);
    let file = sealed(&plain);
    for piece in [1, 7, 16, 80, 1000, file.len()] {
        for t in [1, 3] {
            let opened = StreamOpener::new(&kek(1), threads(t))
                .open(file.chunks(piece))
                .unwrap();
            assert_eq!(opened.header.name().as_str(), "model.safetensors");
            assert_eq!(&opened.plaintext[..], &plain[..], "pieces of {piece}");
        }
    }
    // Empty pieces anywhere change nothing.
    let (a, b) = file.split_at(100);
    let opened = StreamOpener::new(&kek(1), threads(2))
        .open([&[][..], a, &[], &[], b, &[]])
        .unwrap();
    assert_eq!(&opened.plaintext[..], &plain[..]);
    let empty = sealed(&[]);
    let opened = StreamOpener::new(&kek(1), OpenOptions::default())
        .open([&empty])
        .unwrap();
    assert!(opened.plaintext.is_empty());
}

/// Pieces that count how many of them were pulled.
fn counted<'a>(pieces: &'a [&'a [u8]], pulled: &'a Cell<usize>) -> impl Iterator<Item = &'a [u8]> {
    pieces.iter().map(move |p| {
        pulled.set(pulled.get() + 1);
        *p
    })
}

#[test]
fn stream_opener_tampers() {
    let plain = data(5 * C as usize);
    let file = sealed(&plain);
    let h = header_len(&file);
    // Wrong KEK, or a policy digest the header does not record: refused as soon as the header
    // is complete, and the body is never pulled.
    let pulled = Cell::new(0);
    let pieces = [&file[..h], &file[h..]];
    let r = StreamOpener::new(&kek(2), OpenOptions::default()).open(counted(&pieces, &pulled));
    assert!(matches!(r, Err(SealedError::WrongKek { .. })));
    assert_eq!(pulled.get(), 1);
    let pulled = Cell::new(0);
    let r = StreamOpener::new(
        &kek(1),
        OpenOptions::default().expect_digest(Digest::of(b"x")),
    )
    .open(counted(&pieces, &pulled));
    assert!(matches!(r, Err(SealedError::PolicyDigestMismatch { .. })));
    assert_eq!(pulled.get(), 1);
    // A flipped bit in chunk 3 (one piece, or a piece per chunk).
    let mut bad = file.clone();
    bad[chunk(&file, 3).start + 2] ^= 4;
    for piece in [bad.len(), C as usize + TAG_LEN] {
        let r = StreamOpener::new(&kek(1), threads(2)).open(bad.chunks(piece));
        assert!(
            matches!(r, Err(SealedError::ChunkAuthentication { index: 3 })),
            "{r:?}"
        );
    }
    // A worker that fails early stops a feeder waiting on a full queue (one worker, far more
    // chunks than the queue holds); in memory and streamed.
    let many = sealed(&data(200 * C as usize));
    let mut bad = many.clone();
    bad[chunk(&many, 0).start] ^= 1;
    assert!(matches!(
        open(&bad, &kek(1), &threads(1)),
        Err(SealedError::ChunkAuthentication { index: 0 })
    ));
    assert!(matches!(
        StreamOpener::new(&kek(1), threads(1)).open(bad.chunks(C as usize)),
        Err(SealedError::ChunkAuthentication { index: 0 })
    ));
    // Cut short, header cut, bytes past the end.
    let s = StreamOpener::new(&kek(1), threads(2));
    assert!(matches!(
        s.open([&file[..file.len() - 1]]),
        Err(SealedError::Truncated { actual, .. }) if actual == file.len() as u64 - 1
    ));
    assert!(matches!(
        s.open([&file[..h - 3]]),
        Err(SealedError::HeaderTruncated { .. })
    ));
    assert!(matches!(
        s.open([&file[..3]]),
        Err(SealedError::HeaderTruncated { .. })
    ));
    let mut longer = file.clone();
    longer.extend_from_slice(b"xyz");
    assert!(matches!(
        s.open(longer.chunks(1000)),
        Err(SealedError::PushedPastEnd { extra: 3, .. })
    ));
}

#[test]
fn names_and_kek_ids() {
    for ok in [
        "a",
        "model.safetensors",
        "1_Pooling/config.json",
        "a/b/c.d",
        "é.bin",
    ] {
        FileName::parse(ok).unwrap();
    }
    let long = "x".repeat(1025);
    for bad in [
        "", "/abs", "a//b", "a/", "./a", "a/../b", "..", "a\\b", "a\0b", "a\nb", &long,
    ] {
        assert!(
            matches!(FileName::parse(bad), Err(SealedError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    KekId::parse("kbs:///default/key/1").unwrap();
    for bad in [
        "default/key/1",
        "kbs://host/default/key/1",
        "kbs:///default/key",
        "kbs:///default/key/1/2",
        "kbs:///default/key/1?x=y",
        "kbs+plugin:///a/b/c",
        "kbs:///a/../c",
        "kbs:///a/b/.c",
    ] {
        assert!(
            matches!(KekId::parse(bad), Err(SealedError::InvalidKekId { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        SealParams::new("x", kek_id()).unwrap().with_chunk_size(8),
        Err(SealedError::HeaderField {
            field: "chunk_size",
            ..
        })
    ));
    assert!(matches!(
        Kek::from_slice(&[0u8; 31]),
        Err(SealedError::KekLength { len: 31 })
    ));
}

#[test]
fn debug_output_holds_no_secrets() {
    let plain = b"secret weights".to_vec();
    let file = sealed(&plain);
    let opened = open(&file, &kek(1), &OpenOptions::default()).unwrap();
    let text = format!("{:?} {:?} {:?}", kek(1), opened.plaintext, opened.header);
    assert!(!text.contains("secret"), "{text}");
    assert!(!text.contains("1, 1, 1"), "{text}");
}
