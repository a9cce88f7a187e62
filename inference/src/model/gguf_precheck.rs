//! A pass over the GGUF metadata *before* candle parses it, for the one header value candle
//! trusts unchecked: `general.alignment`. candle 0.11 divides by it, so a zero there would panic
//! (and abort the daemon in release builds). Anything this pass cannot read is left to candle's
//! own, bounds-checked parser to reject, so this pass must read at least everything candle reads:
//! it follows candle's nesting limit and, like candle, drops trailing NULs from keys (found by
//! the `gguf_header` fuzz target, fuzz/README.md).

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
    let mut r = Reader {
        bytes,
        pos: 0,
        wide: true,
    };
    let header = (|| {
        if r.take(4)? != b"GGUF" {
            return None;
        }
        r.wide = r.u32()? >= 2;
        let _tensors = r.len()?;
        r.len()
    })();
    let Some(kv_count) = header else {
        return false;
    };
    for _ in 0..kv_count {
        let Some(mut key) = r.string() else {
            return false;
        };
        // candle drops a key's trailing NULs ("general.alignment\0" names the alignment too).
        while let [rest @ .., 0] = key {
            key = rest;
        }
        let key = key.to_vec();
        let Some(ty) = r.u32() else { return false };
        let Some(value) = r.value(ty, 0) else {
            return false;
        };
        // Integer types candle reads the alignment from (it ignores 64-bit ones).
        if key == b"general.alignment" && matches!(ty, 0..=5) && value == Some(0) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::has_zero_alignment;

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
        let bytes: Vec<u8> = (0..crash.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&crash[i..i + 2], 16).unwrap())
            .collect();
        assert!(has_zero_alignment(&bytes));
        let padded = gguf(&[(b"general.alignment\0\0\0", 4, 0u32.to_le_bytes().to_vec())]);
        assert!(has_zero_alignment(&padded));
        let nonzero = gguf(&[(b"general.alignment\0", 4, 32u32.to_le_bytes().to_vec())]);
        assert!(!has_zero_alignment(&nonzero));
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
