//! The memory decrypted model bytes live in: one buffer per file, allocated in one place
//! ([`PlaintextBuffer::allocate`]).
//!
//! Each buffer is its own anonymous private mapping, never the global allocator's heap, so that:
//! - it is `mlock`ed (`MLOCK_ONFAULT`: pages are locked as they are first written, so an
//!   untouched buffer still costs nothing) and cannot be swapped out, where the locked-memory
//!   limit allows; where it does not (an unprivileged process, `RLIMIT_MEMLOCK` of a few MiB), the
//!   buffer works unlocked and says so through [`PlaintextBuffer::locked`], and the first such
//!   refusal is logged once;
//! - it is left out of core dumps (`MADV_DONTDUMP`), not inherited by a forked child
//!   (`MADV_WIPEONFORK` where the kernel has it), and backed by transparent huge pages where the
//!   kernel allows (`MADV_HUGEPAGE`, for buffers of 2 MiB or more);
//! - it is zeroized (volatile writes) before it is unlocked and unmapped on drop, and no copy of
//!   it is left in a freed heap block.
//!
//! Never formats its content.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroize;

use super::SealedError;

/// Plaintext of one sealed file (or chunk): dereferences to bytes; locked in memory where
/// allowed, excluded from core dumps, zeroized on drop.
pub struct PlaintextBuffer {
    /// Start of the mapping; dangling (and never unmapped) when `len` is 0.
    ptr: NonNull<u8>,
    len: usize,
    locked: bool,
}

// SAFETY: the buffer exclusively owns its mapping (like a `Box<[u8]>`); nothing in it is tied to
// the thread that made it, and shared access only hands out `&[u8]`.
unsafe impl Send for PlaintextBuffer {}
// SAFETY: `&PlaintextBuffer` only allows reading the bytes; mutation needs `&mut`.
unsafe impl Sync for PlaintextBuffer {}

/// The transparent huge page size on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Whether a refused `mlock` has been logged (once per process, not once per file).
static MLOCK_REFUSAL_LOGGED: AtomicBool = AtomicBool::new(false);

/// Locks `len` bytes at `ptr` as they are faulted in; falls back to a plain `mlock` on kernels
/// without `mlock2` (before 4.4).
fn lock(ptr: *mut libc::c_void, len: usize) -> Result<(), std::io::Error> {
    // SAFETY: [ptr, ptr+len) is a mapping this process owns; mlock2 only changes its paging.
    let r = unsafe { libc::mlock2(ptr, len, libc::MLOCK_ONFAULT) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // SAFETY: as above.
    if unsafe { libc::mlock(ptr, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl PlaintextBuffer {
    /// `len` zero bytes in a fresh anonymous mapping, or [`SealedError::Allocation`] when the
    /// address space cannot be had (never an abort). Pages cost memory only once written.
    pub fn allocate(len: u64) -> Result<PlaintextBuffer, SealedError> {
        let too_big = || SealedError::Allocation { len };
        let n = usize::try_from(len).map_err(|_| too_big())?;
        if n == 0 {
            return Ok(PlaintextBuffer {
                ptr: NonNull::dangling(),
                len: 0,
                locked: true,
            });
        }
        // SAFETY: a new private anonymous mapping: no address hint, no file, no aliasing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(too_big());
        }
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(too_big)?;
        // Advice only: a kernel without it leaves the buffer dumpable/inheritable, nothing worse.
        // SAFETY: madvise on the mapping just made; these advices do not change its contents.
        unsafe {
            libc::madvise(raw, n, libc::MADV_DONTDUMP);
            libc::madvise(raw, n, libc::MADV_WIPEONFORK);
            // Model files are large and written once: 2 MiB pages cut page faults (and TLB
            // misses when the runtime reads them) by 512x where THP is in `madvise` mode.
            if n >= HUGE_PAGE {
                libc::madvise(raw, n, libc::MADV_HUGEPAGE);
            }
        }
        let locked = match lock(raw, n) {
            Ok(()) => true,
            Err(e) => {
                if !MLOCK_REFUSAL_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        bytes = n,
                        "cannot mlock decrypted model memory (raise RLIMIT_MEMLOCK or grant \
                         CAP_IPC_LOCK); it stays unlocked and may be swapped"
                    );
                }
                false
            }
        };
        Ok(PlaintextBuffer {
            ptr,
            len: n,
            locked,
        })
    }

    /// A locked copy of `bytes` (for plaintext that arrived some other way).
    pub fn copy_from(bytes: &[u8]) -> Result<PlaintextBuffer, SealedError> {
        let mut out = PlaintextBuffer::allocate(bytes.len() as u64)?;
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pages are locked in memory (never swapped). An empty buffer counts as locked.
    pub fn locked(&self) -> bool {
        self.locked
    }
}

impl Drop for PlaintextBuffer {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        self.deref_mut().zeroize();
        let raw = self.ptr.as_ptr().cast::<libc::c_void>();
        // SAFETY: the mapping [ptr, ptr+len) was made by `allocate` and is unmapped only here;
        // no reference into it outlives `self`. Failures (impossible for a valid mapping) would
        // only leak address space.
        unsafe {
            if self.locked {
                libc::munlock(raw, self.len);
            }
            libc::munmap(raw, self.len);
        }
    }
}

impl Deref for PlaintextBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialized bytes (zero-filled by mmap, then written) that
        // live as long as `self`; for len 0 a dangling, aligned pointer is valid.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PlaintextBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for PlaintextBuffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for PlaintextBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PlaintextBuffer({} bytes, {})",
            self.len,
            if self.locked { "locked" } else { "unlocked" }
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn zero_filled_writable_and_sized() {
        for n in [0u64, 1, 4095, 4096, 4097, 3 << 20] {
            let mut b = PlaintextBuffer::allocate(n).unwrap();
            assert_eq!(b.len() as u64, n);
            assert!(b.iter().all(|&x| x == 0));
            for (i, x) in b.iter_mut().enumerate() {
                *x = i as u8;
            }
            assert!(b.iter().enumerate().all(|(i, &x)| x == i as u8));
        }
    }

    #[test]
    fn copy_from_is_a_copy() {
        let b = PlaintextBuffer::copy_from(b"weights").unwrap();
        assert_eq!(&*b, b"weights");
        assert!(format!("{b:?}").starts_with("PlaintextBuffer(7 bytes"));
        assert!(!format!("{b:?}").contains("weights"));
    }

    #[test]
    fn impossible_sizes_are_errors_not_aborts() {
        assert!(matches!(
            PlaintextBuffer::allocate(u64::MAX),
            Err(SealedError::Allocation { .. })
        ));
        assert!(matches!(
            PlaintextBuffer::allocate(1 << 62),
            Err(SealedError::Allocation { .. })
        ));
    }

    /// Locked exactly when the locked-memory limit leaves room (the limit varies by machine:
    /// unlimited as root or PID 1, a few MiB for a user).
    #[test]
    fn locks_within_the_memlock_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let r = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
        assert_eq!(r, 0);
        let small = PlaintextBuffer::allocate(4096).unwrap();
        if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= 1 << 20 {
            assert!(small.locked(), "4 KiB under a {} byte limit", lim.rlim_cur);
        }
        // SAFETY: geteuid has no preconditions. (root has CAP_IPC_LOCK: no limit applies.)
        let root = unsafe { libc::geteuid() } == 0;
        if !root && lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < 1 << 30 {
            let big = PlaintextBuffer::allocate(1 << 31).unwrap();
            assert!(
                !big.locked(),
                "2 GiB locked under a {} byte limit",
                lim.rlim_cur
            );
        }
    }

    /// The kernel reports the buffer as excluded from dumps and wiped on fork (the `dd` and `wf`
    /// flags of /proc/self/smaps) and, when it says so, locked (`lo`).
    #[test]
    fn mapping_flags_are_visible_to_the_kernel() {
        let mut b = PlaintextBuffer::allocate(64 << 10).unwrap();
        b[0] = 1;
        let start = b.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        // The kernel may merge neighbouring mappings with the same flags: find the one holding it.
        let range = |l: &str| -> Option<(usize, usize)> {
            let (a, rest) = l.split_once('-')?;
            let b = rest.split_whitespace().next()?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        };
        let header = lines
            .by_ref()
            .find(|l| range(l).is_some_and(|(a, b)| a <= start && start < b))
            .expect("the buffer's mapping in smaps");
        let flags = lines
            .find(|l| l.starts_with("VmFlags:"))
            .expect("VmFlags line");
        assert!(flags.contains(" dd"), "{header}: {flags}");
        assert!(flags.contains(" wf"), "{header}: {flags}");
        if b.locked() {
            assert!(flags.contains(" lo"), "{flags}");
        }
    }
}
