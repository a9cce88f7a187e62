//! A pass over the GGUF metadata *before* candle parses it, for the one header value candle
//! trusts unchecked: `general.alignment`. candle 0.11 divides by it, so a zero there would panic
//! (and abort the daemon in release builds). This pass reads the metadata the way candle does
//! (both magics candle accepts, its nesting limit, the trailing NULs it drops from keys: each
//! found by the `gguf_header` fuzz target, fuzz/README.md). Where the pass cannot read the
//! metadata to its end, it does not assume candle fails too: it falls back to a conservative scan
//! of the whole input for a zero-valued `general.alignment` key, so a difference between the two
//! parsers can cost a false refusal of a malformed file, never a panic.

/// Arrays nest as deep as candle 0.11 reads them (`GGUF_MAX_VALUE_DEPTH`: a value at depth 64
/// is read, so an array there may hold elements); past that candle rejects the file itself.
const MAX_DEPTH: usize = 65;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    wide: bool,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn len(&mut self) -> Option<usize> {
        let n = if self.wide {
            self.u64()?
        } else {
            u64::from(self.u32()?)
        };
        usize::try_from(n).ok()
    }

    fn string(&mut self) -> Option<&[u8]> {
        let n = self.len()?;
        self.take(n)
    }

    /// Skips a value of type `ty`; returns it as an integer when it is one.
    fn value(&mut self, ty: u32, depth: usize) -> Option<Option<u64>> {
        let fixed = |r: &mut Self, n: usize| -> Option<Option<u64>> {
            let b = r.take(n)?;
            let mut buf = [0u8; 8];
            buf.get_mut(..n)?.copy_from_slice(b);
            Some(Some(u64::from_le_bytes(buf)))
        };
        match ty {
            0 | 1 | 7 => fixed(self, 1),
            2 | 3 => fixed(self, 2),
            4 | 5 => fixed(self, 4),
            6 => self.take(4).map(|_| None),
            10 | 11 => fixed(self, 8),
            12 => self.take(8).map(|_| None),
            8 => self.string().map(|_| None),
            9 if depth < MAX_DEPTH => {
                let elem = self.u32()?;
                let n = self.len()?;
                for _ in 0..n {
                    self.value(elem, depth + 1)?;
                }
                Some(None)
            }
            _ => None,
        }
    }
}

/// True when the metadata sets `general.alignment` to zero.
pub(super) fn has_zero_alignment(bytes: &[u8]) -> bool {
    match parsed_zero_alignment(bytes) {
        Some(zero) => zero,
        None => scanned_zero_alignment(bytes),
    }
}

/// The key candle reads the alignment from, once its trailing NULs are dropped.
const ALIGNMENT_KEY: &[u8] = b"general.alignment";

/// Reads the header and metadata as candle does: `Some(true)` when a key-value sets the
/// alignment to zero, `Some(false)` when none does, `None` when the metadata cannot be read to
/// its end here.
fn parsed_zero_alignment(bytes: &[u8]) -> Option<bool> {
    let r = &mut Reader {
        bytes,
        pos: 0,
        wide: true,
    };
    // candle reads the magic as a little-endian u32 and accepts both byte orders of "GGUF".
    let magic = r.take(4)?;
    if magic != b"GGUF" && magic != b"FUGG" {
        return None;
    }
    r.wide = r.u32()? >= 2;
    let _tensors = r.len()?;
    let kv_count = r.len()?;
    let mut zero = false;
    for _ in 0..kv_count {
        let mut key = r.string()?;
        // candle drops a key's trailing NULs ("general.alignment\0" names the alignment too).
        while let [rest @ .., 0] = key {
            key = rest;
        }
        let is_alignment = key == ALIGNMENT_KEY;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        // Integer types candle reads the alignment from (it ignores 64-bit ones).
        zero |= is_alignment && matches!(ty, 0..=5) && value == Some(0);
    }
    Some(zero)
}

/// Anywhere in `bytes`: the alignment key, any number of NULs (candle drops them from a key),
/// then a value type candle reads the alignment from (u8, i8, u16, i16, u32, i32) and a zero of
/// that width. Every key-value candle could read as a zero alignment matches, whatever the parser
/// made of the bytes around it; a string value that happens to hold these bytes matches too.
fn scanned_zero_alignment(bytes: &[u8]) -> bool {
    memchr::memmem::find_iter(bytes, ALIGNMENT_KEY).any(|at| {
        let after = bytes.get(at + ALIGNMENT_KEY.len()..).unwrap_or_default();
        let nuls = after.iter().take_while(|b| **b == 0).count();
        // The type's own bytes may be NULs too (u8 is type 0): try every split.
        (0..=nuls).any(|k| {
            let rest = after.get(k..).unwrap_or_default();
            let Some((ty, value)) = rest.split_first_chunk::<4>() else {
                return false;
            };
            let width = match u32::from_le_bytes(*ty) {
                0 | 1 => 1,
                2 | 3 => 2,
                4 | 5 => 4,
                _ => return false,
            };
            value
                .get(..width)
                .is_some_and(|v| v.iter().all(|b| *b == 0))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{has_zero_alignment, parsed_zero_alignment as parsed};

    /// GGUF v3 with no tensors and the given key-values (key bytes, type, value bytes).
    fn gguf(kvs: &[(&[u8], u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (key, ty, value) in kvs {
            out.extend_from_slice(&(key.len() as u64).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// The `gguf_header` fuzz target's crash (fuzz/artifacts, 2026-12-05): the key
    /// `general.alignment` padded with NULs, which candle strips, so candle divided by the zero
    /// alignment the pre-check had not recognised; the load panicked (an abort in release).
    #[test]
    fn fuzz_crash_nul_padded_alignment_key() {
        let crash = concat!(
            "474755460300000000000000000000000a000000000000001400000000000000",
            "67656e6572616c2e616c69676e6d656e74000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ffffffffffffffffff0000000000000000000000000000000000000000000000",
            "260077770000f7ffffff006e65000000000001",
        );
        let bytes = unhex(crash);
        assert!(has_zero_alignment(&bytes));
        let padded = gguf(&[(b"general.alignment\0\0\0", 4, 0u32.to_le_bytes().to_vec())]);
        assert!(has_zero_alignment(&padded));
        let nonzero = gguf(&[(b"general.alignment\0", 4, 32u32.to_le_bytes().to_vec())]);
        assert!(!has_zero_alignment(&nonzero));
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The `gguf_header` fuzz target's crashes in CI (2026-12-05): candle reads the magic as a
    /// little-endian u32 and accepts "FUGG" as well as "GGUF"; the pre-check knew only "GGUF",
    /// took these files for something candle would refuse, and candle divided by their zero
    /// alignment (a u32 in the first, a u8 in the second).
    #[test]
    fn fuzz_crash_byte_swapped_magic() {
        let u32_zero = unhex(concat!(
            "46554747030000000000000000000000020000000000000014000000000000006c656e6572616c2e",
            "6172636869746563747572650800000005000000000000006c6c9f9161110000000000000067656e",
            "6572616c2e616c69676e6d656e74040000000000000020000000",
        ));
        let u8_zero = unhex(concat!(
            "465547470300000000000000000000000200000000000000140000000000000067656e6572616c2e",
            "617263686974656374757265080000000500000000000000726c616d611100000000000000",
            "67656e6572616c2e616c69676e6d656e740000000000000000",
        ));
        for bytes in [u32_zero, u8_zero] {
            assert!(has_zero_alignment(&bytes));
            assert_eq!(
                parsed(&bytes),
                Some(true),
                "the structural pass reads FUGG files"
            );
        }
        let mut swapped = gguf(&[(b"general.alignment", 2, 0u16.to_le_bytes().to_vec())]);
        swapped[..4].copy_from_slice(b"FUGG");
        assert!(has_zero_alignment(&swapped));
        let mut fine = gguf(&[(b"general.alignment", 4, 32u32.to_le_bytes().to_vec())]);
        fine[..4].copy_from_slice(b"FUGG");
        assert!(!has_zero_alignment(&fine));
    }

    /// Metadata the structural pass cannot read to its end (here a magic it does not know, and a
    /// truncated key-value after the zero one) still has its zero alignment found by the scan;
    /// a non-zero one, or a zero of a type candle ignores (u64), is not reported.
    #[test]
    fn unreadable_metadata_falls_back_to_the_scan() {
        let mut other_magic = gguf(&[(b"general.alignment\0", 0, vec![0])]);
        other_magic[..4].copy_from_slice(b"GGUG");
        assert!(has_zero_alignment(&other_magic));
        assert_eq!(parsed(&other_magic), None);
        let mut truncated = gguf(&[
            (b"general.alignment", 5, 0i32.to_le_bytes().to_vec()),
            (b"x", 8, Vec::new()),
        ]);
        truncated.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parsed(&truncated), None);
        assert!(has_zero_alignment(&truncated));
        let mut nonzero = gguf(&[(b"general.alignment", 4, 64u32.to_le_bytes().to_vec())]);
        nonzero[..4].copy_from_slice(b"GGUG");
        assert!(!has_zero_alignment(&nonzero));
        let mut wide_zero = gguf(&[(b"general.alignment", 10, 0u64.to_le_bytes().to_vec())]);
        wide_zero[..4].copy_from_slice(b"GGUG");
        assert!(!has_zero_alignment(&wide_zero));
    }

    /// Arrays nested deeper than the pre-check used to follow (4) but within candle's limit
    /// (64) hid a zero alignment behind them.
    #[test]
    fn zero_alignment_after_deeply_nested_arrays() {
        // An array of arrays ... 10 deep, the innermost empty (element type u8).
        let mut nested = Vec::new();
        for _ in 0..10 {
            nested.extend_from_slice(&9u32.to_le_bytes());
            nested.extend_from_slice(&1u64.to_le_bytes());
        }
        nested.extend_from_slice(&0u32.to_le_bytes());
        nested.extend_from_slice(&0u64.to_le_bytes());
        let bytes = gguf(&[
            (b"deep", 9, nested),
            (b"general.alignment", 5, 0i32.to_le_bytes().to_vec()),
        ]);
        assert!(has_zero_alignment(&bytes));
    }
}
