//! SHA-1 (FIPS 180-4), only as the hash of `RSA-OAEP` (RFC 7518 §4.3: OAEP with SHA-1 and
//! MGF1-SHA-1), which is what skopeo and ocicrypt write for RSA recipients.
//!
//! It exists because no SHA-1 crate is in ward's dependency tree; it implements the `digest`
//! traits so that `rsa::Oaep` can use it. It must never be used for signatures, integrity or
//! anything where collisions matter (OAEP needs neither collision nor preimage resistance of
//! its label hash beyond what SHA-1 still gives).

use sha2::digest::consts::U20;
use sha2::digest::{
    FixedOutput, FixedOutputReset, HashMarker, Output, OutputSizeUser, Reset, Update,
};

const INIT: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];

/// SHA-1 state: five words, the pending partial block and the message length in bytes.
#[derive(Clone)]
pub(crate) struct Sha1 {
    h: [u32; 5],
    block: [u8; 64],
    filled: usize,
    len: u64,
}

impl Default for Sha1 {
    fn default() -> Self {
        Sha1 {
            h: INIT,
            block: [0; 64],
            filled: 0,
            len: 0,
        }
    }
}

fn compress(h: &mut [u32; 5], block: &[u8; 64]) {
    let mut w = [0u32; 80];
    for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    for t in 16..80 {
        w[t] = (w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]).rotate_left(1);
    }
    let [mut a, mut b, mut c, mut d, mut e] = *h;
    for (t, wt) in w.iter().enumerate() {
        let (f, k) = match t {
            0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
            20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
            40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
            _ => (b ^ c ^ d, 0xCA62_C1D6),
        };
        let temp = a
            .rotate_left(5)
            .wrapping_add(f)
            .wrapping_add(e)
            .wrapping_add(k)
            .wrapping_add(*wt);
        e = d;
        d = c;
        c = b.rotate_left(30);
        b = a;
        a = temp;
    }
    for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
        *x = x.wrapping_add(y);
    }
}

impl HashMarker for Sha1 {}

impl OutputSizeUser for Sha1 {
    type OutputSize = U20;
}

impl Update for Sha1 {
    fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let take = (64 - self.filled).min(data.len());
            let (head, rest) = data.split_at(take);
            if let Some(dst) = self.block.get_mut(self.filled..self.filled + take) {
                dst.copy_from_slice(head);
            }
            self.filled += take;
            data = rest;
            if self.filled == 64 {
                compress(&mut self.h, &self.block);
                self.filled = 0;
            }
        }
    }
}

impl Sha1 {
    fn finish(&mut self) -> [u8; 20] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 64];
        pad[0] = 0x80;
        // Pad to 56 mod 64, then the 64-bit big-endian length.
        let zeros = (119 - self.filled) % 64;
        let mut tail = Vec::with_capacity(zeros + 9);
        tail.extend_from_slice(&pad[..zeros + 1]);
        tail.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&tail);
        self.len = len;
        let mut out = [0u8; 20];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.h) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

impl FixedOutput for Sha1 {
    fn finalize_into(mut self, out: &mut Output<Self>) {
        out.copy_from_slice(&self.finish());
    }
}

impl FixedOutputReset for Sha1 {
    fn finalize_into_reset(&mut self, out: &mut Output<Self>) {
        out.copy_from_slice(&self.finish());
        Reset::reset(self);
    }
}

impl Reset for Sha1 {
    fn reset(&mut self) {
        *self = Sha1::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn hex_sha1(data: &[u8]) -> String {
        hex::encode(Sha1::digest(data))
    }

    /// FIPS 180-2 Appendix A vectors, plus lengths around the padding boundary.
    #[test]
    fn known_answers() {
        assert_eq!(hex_sha1(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(hex_sha1(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex_sha1(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex_sha1(&million),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        for split in [0, 1, 55, 56, 63, 64, 65, 128, 299] {
            let mut h = Sha1::default();
            Update::update(&mut h, &data[..split]);
            Update::update(&mut h, &data[split..]);
            assert_eq!(h.finalize_fixed(), Sha1::digest(&data), "split {split}");
        }
    }
}
