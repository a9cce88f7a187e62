//! Bounds-checked reading of untrusted bytes. Every read says what it needed and where, so
//! truncated or garbage input becomes a [`Truncated`] error, never a panic or an out-of-bounds
//! slice.

/// Input ended before a field it must contain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is truncated: {needed} bytes needed at offset {offset}, {available} left")]
pub struct Truncated {
    /// The structure being read.
    pub what: &'static str,
    /// Where the missing field starts.
    pub offset: usize,
    /// How many bytes the field needs.
    pub needed: usize,
    /// How many bytes were left.
    pub available: usize,
}

/// A little-endian cursor (with big-endian reads for TPM structures) over a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end));
        match slice {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(Truncated {
                what: self.what,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), Truncated> {
        self.take(n).map(|_| ())
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u16_be(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32_be(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64_be(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A TPM2B: a big-endian u16 size, then that many bytes.
    pub(crate) fn tpm2b(&mut self) -> Result<&'a [u8], Truncated> {
        let n = self.u16_be()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked() {
        let mut r = Reader::new(&[1, 0, 0, 0, 2], "test");
        assert_eq!(r.u32().unwrap(), 1);
        assert_eq!(
            r.u16(),
            Err(Truncated {
                what: "test",
                offset: 4,
                needed: 2,
                available: 1
            })
        );
        assert_eq!(r.u8().unwrap(), 2);
        assert!(r.take(usize::MAX).is_err());
        assert_eq!(r.remaining(), 0);
    }
}
