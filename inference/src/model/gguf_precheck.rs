//! A pass over the GGUF metadata *before* candle parses it, for the one header value candle
//! trusts unchecked: `general.alignment`. candle 0.11 divides by it, so a zero there would panic
//! (and abort the daemon in release builds). Anything this pass cannot read is left to candle's
//! own, bounds-checked parser to reject.

const MAX_DEPTH: usize = 4;

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
        let Some(key) = r.string().map(<[u8]>::to_vec) else {
            return false;
        };
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
