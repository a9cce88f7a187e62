//! Decrypting a run of chunks on all cores, in place, with the plaintext SHA-256 computed in
//! order on the calling thread while the workers go on (the digest is sequential; overlapping
//! it with decryption is what keeps it off the critical path where it can be).
//!
//! Owns threads and scheduling only: chunks are taken from a shared queue in index order, each
//! worker turns its finished `&mut` slice into a shared one and sends it to the hasher, so the
//! borrow checker proves that no byte is hashed while written. No `unsafe`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use super::SealedError;
use super::backend::{ChunkCipher, PlaintextHasher};
use super::header::{Layout, TAG_LEN};

/// Threads to use when the caller does not say.
pub(crate) fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Where a run's ciphertext and tags are.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    /// The ciphertext already sits in the plaintext slots; the tags are apart, one per chunk.
    InPlace(&'a [[u8; TAG_LEN]]),
    /// The sealed bytes of the run (each chunk's ciphertext then its tag), `count` chunks;
    /// workers decrypt each straight into its slot.
    Sealed { bytes: &'a [u8], count: u64 },
}

/// One chunk to open: its index, its slot (ciphertext in, plaintext out), the ciphertext to
/// copy into the slot first if it is elsewhere, and its tag.
struct Work<'a> {
    index: u64,
    slot: &'a mut [u8],
    from: Option<&'a [u8]>,
    tag: &'a [u8; TAG_LEN],
}

fn bad_tag(index: u64, actual: usize) -> SealedError {
    SealedError::ChunkLength {
        index,
        expected: TAG_LEN,
        actual,
    }
}

/// Splits `region` (the plaintext slots of chunks `first ..`) into work items.
fn split<'a>(
    layout: &Layout,
    first: u64,
    region: &'a mut [u8],
    source: Source<'a>,
) -> Result<Vec<Work<'a>>, SealedError> {
    let count = match source {
        Source::InPlace(tags) => tags.len() as u64,
        Source::Sealed { count, .. } => count,
    };
    let mut work = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut rest = region;
    let mut sealed_at = 0usize;
    for k in 0..count {
        let index = first + k;
        let len = layout.chunk_plaintext_len(index)?;
        let (slot, tail) = rest.split_at_mut_checked(len).ok_or(SealedError::Crypto(
            "plaintext region shorter than its chunks",
        ))?;
        rest = tail;
        let (from, tag) = match source {
            Source::InPlace(tags) => {
                let tag = tags.get(k as usize).ok_or(bad_tag(index, 0))?;
                (None, tag)
            }
            Source::Sealed { bytes, .. } => {
                let chunk = bytes
                    .get(sealed_at..sealed_at + len + TAG_LEN)
                    .ok_or(SealedError::Crypto("sealed run shorter than its chunks"))?;
                sealed_at += len + TAG_LEN;
                let (ct, tag) = chunk.split_at(len);
                let tag = <&[u8; TAG_LEN]>::try_from(tag).map_err(|_| bad_tag(index, tag.len()))?;
                (Some(ct), tag)
            }
        };
        work.push(Work {
            index,
            slot,
            from,
            tag,
        });
    }
    if !rest.is_empty() {
        return Err(SealedError::Crypto(
            "plaintext region longer than its chunks",
        ));
    }
    Ok(work)
}

/// Opens a work item into its slot (from its ciphertext elsewhere, or in place).
fn open_one(cipher: &ChunkCipher, layout: &Layout, w: &mut Work<'_>) -> Result<(), SealedError> {
    let last = layout.is_last(w.index);
    match w.from {
        Some(from) => cipher.open_into(w.index, last, from, w.tag, w.slot),
        None => cipher.open_in_place(w.index, last, w.slot, w.tag),
    }
}

/// Opens the chunks `first ..` of `source` into `region` (their plaintext slots, back to back),
/// on up to `threads` threads, and feeds their plaintext to `hasher` in order. On
/// failure returns the error of the lowest failing index; `region` is then unspecified.
pub(crate) fn open_run(
    cipher: &ChunkCipher,
    layout: &Layout,
    first: u64,
    region: &mut [u8],
    source: Source<'_>,
    threads: NonZeroUsize,
    hasher: &mut PlaintextHasher,
) -> Result<(), SealedError> {
    let work = split(layout, first, region, source)?;
    let count = work.len() as u64;
    let threads = threads.get().min(work.len());
    if threads <= 1 {
        for mut w in work {
            open_one(cipher, layout, &mut w)?;
            hasher.update(w.slot);
        }
        return Ok(());
    }

    let queue = Mutex::new(work.into_iter());
    let abort = AtomicBool::new(false);
    let failure: Mutex<Option<SealedError>> = Mutex::new(None);
    let fail = |e: SealedError| {
        abort.store(true, Ordering::Relaxed);
        if let Ok(mut f) = failure.lock() {
            let lower = match (&*f, &e) {
                (None, _) => true,
                (
                    Some(SealedError::ChunkAuthentication { index: old }),
                    SealedError::ChunkAuthentication { index: new },
                ) => new < old,
                _ => false,
            };
            if lower {
                *f = Some(e);
            }
        }
    };

    let hashed = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(u64, &[u8])>();
        for _ in 0..threads {
            let tx = tx.clone();
            let (queue, abort, fail) = (&queue, &abort, &fail);
            let spawned = std::thread::Builder::new()
                .name("sealed-open".to_string())
                .spawn_scoped(s, move || {
                    while !abort.load(Ordering::Relaxed) {
                        let next = match queue.lock() {
                            Ok(mut q) => q.next(),
                            Err(_) => {
                                fail(SealedError::Worker("work queue poisoned".to_string()));
                                break;
                            }
                        };
                        let Some(mut w) = next else { break };
                        if let Err(e) = open_one(cipher, layout, &mut w) {
                            fail(e);
                            break;
                        }
                        let done: &[u8] = w.slot;
                        if tx.send((w.index, done)).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = spawned {
                fail(SealedError::Worker(format!("cannot start a thread: {e}")));
                break;
            }
        }
        drop(tx);

        // Hash in index order as chunks complete; out-of-order ones wait in `pending`.
        let mut next = first;
        let mut pending: BTreeMap<u64, &[u8]> = BTreeMap::new();
        for (index, bytes) in rx {
            if abort.load(Ordering::Relaxed) {
                continue; // drain until the workers stop
            }
            pending.insert(index, bytes);
            while let Some(bytes) = pending.remove(&next) {
                hasher.update(bytes);
                next += 1;
            }
        }
        next - first
    });

    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    if hashed != count {
        return Err(SealedError::Worker(format!(
            "{hashed} of {count} chunks came back from the workers"
        )));
    }
    Ok(())
}
