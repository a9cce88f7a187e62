//! The memory decrypted model bytes live in: one buffer per file, allocated in one place
//! ([`PlaintextBuffer::allocate`]) and zeroized on drop.
//!
//! Hook for the next step: back the buffer with anonymous memory that is `mlock`ed (and
//! `MADV_DONTDUMP`) instead of the global allocator, by changing `allocate` and `Drop` here
//! only; nothing else in `sealed` allocates plaintext. Never formats its content.

use std::alloc::{Layout, alloc_zeroed};
use std::fmt;
use std::ops::{Deref, DerefMut};

use zeroize::Zeroizing;

use super::SealedError;

/// Plaintext of one sealed file (or chunk): dereferences to bytes, zeroized on drop.
pub struct PlaintextBuffer {
    bytes: Zeroizing<Vec<u8>>,
}

impl PlaintextBuffer {
    /// `len` zero bytes, or [`SealedError::Allocation`] when they cannot be had (never an abort).
    /// Large buffers come from `calloc`/`mmap`, so untouched pages cost nothing until written.
    pub(crate) fn allocate(len: u64) -> Result<PlaintextBuffer, SealedError> {
        let too_big = || SealedError::Allocation { len };
        let n = usize::try_from(len).map_err(|_| too_big())?;
        if n == 0 {
            return Ok(PlaintextBuffer {
                bytes: Zeroizing::new(Vec::new()),
            });
        }
        let layout = Layout::array::<u8>(n).map_err(|_| too_big())?;
        // SAFETY: `layout` has a non-zero size (n > 0) as `alloc_zeroed` requires.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(too_big());
        }
        // SAFETY: `ptr` was allocated by the global allocator with the layout of `[u8; n]`
        // (size n, align 1), exactly what a `Vec<u8>` of capacity n uses; its n bytes are
        // initialized (zeroed); length n <= capacity n; ownership passes to the Vec.
        let v = unsafe { Vec::from_raw_parts(ptr, n, n) };
        Ok(PlaintextBuffer {
            bytes: Zeroizing::new(v),
        })
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Hands the bytes over, still zeroized on drop.
    pub fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.bytes
    }
}

impl Deref for PlaintextBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl DerefMut for PlaintextBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl AsRef<[u8]> for PlaintextBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for PlaintextBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlaintextBuffer({} bytes)", self.bytes.len())
    }
}
