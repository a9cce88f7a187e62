//! Decrypting chunks on all cores, in place, with the plaintext SHA-256 computed in order on
//! its own thread while the workers go on (the digest is sequential; overlapping it with
//! receiving and decrypting is what keeps it off the critical path where it can be).
//!
//! One pipeline serves the in-memory and the streamed opener: the calling thread walks the
//! chunks in index order and asks its caller for each chunk's ciphertext (already copied into
//! the chunk's plaintext slot, or elsewhere in memory) and tag; the chunk is queued to the
//! workers at once; each worker turns its finished `&mut` slot into a shared slice and sends it
//! to the hasher, so the borrow checker proves that no byte is hashed while written. Nothing
//! waits for a batch to fill. No `unsafe`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use super::SealedError;
use super::backend::{ChunkCipher, PlaintextHasher};
use super::header::{Layout, TAG_LEN};

/// Threads to use when the caller does not say.
pub(crate) fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Chunks queued ahead of the workers, per worker: enough to keep them busy across a burst of
/// input, few enough that the queue of a file with tiny chunks stays small.
const QUEUED_PER_WORKER: usize = 16;

/// Where one chunk's ciphertext is: already in its plaintext slot, or elsewhere (workers then
/// decrypt straight from there into the slot).
pub(crate) enum Ciphertext<'a> {
    InSlot,
    At(&'a [u8]),
}

/// One chunk to open: its index, its slot (ciphertext in, plaintext out), the ciphertext when
/// it is elsewhere, and its tag.
struct Work<'a> {
    index: u64,
    slot: &'a mut [u8],
    from: Ciphertext<'a>,
    tag: [u8; TAG_LEN],
}

/// Opens a work item into its slot.
fn open_one(cipher: &ChunkCipher, layout: &Layout, w: &mut Work<'_>) -> Result<(), SealedError> {
    let last = layout.is_last(w.index);
    match w.from {
        Ciphertext::At(from) => cipher.open_into(w.index, last, from, &w.tag, w.slot),
        Ciphertext::InSlot => cipher.open_in_place(w.index, last, w.slot, &w.tag),
    }
}

/// Keeps the first error, or the one of the lowest failing chunk, and tells everyone to stop.
struct Failure {
    abort: AtomicBool,
    error: Mutex<Option<SealedError>>,
}

impl Failure {
    fn set(&self, e: SealedError) {
        self.abort.store(true, Ordering::Relaxed);
        if let Ok(mut f) = self.error.lock() {
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
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// Opens every chunk of `layout` into `out` (the whole plaintext) on `threads` workers and
/// feeds the plaintext to `hasher` in order. For each chunk, in index order, `next` gets the
/// index and the chunk's slot and returns where its ciphertext is and its tag; it runs on the
/// calling thread, so it may block on input while the workers and the hasher go on.
///
/// Errors: a worker's (the lowest failing index) first, then `next`'s own, then a count of
/// chunks that never came back. On error `out` is unspecified.
pub(crate) fn open_chunks<'a, F>(
    cipher: &ChunkCipher,
    layout: &Layout,
    out: &'a mut [u8],
    threads: NonZeroUsize,
    hasher: &mut PlaintextHasher,
    mut next: F,
) -> Result<(), SealedError>
where
    F: FnMut(u64, &mut [u8]) -> Result<(Ciphertext<'a>, [u8; TAG_LEN]), SealedError>,
{
    let count = layout.chunk_count();
    let threads = threads
        .get()
        .min(usize::try_from(count).unwrap_or(usize::MAX))
        .max(1);
    let failure = Failure {
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
    };

    let (fed, hashed) = std::thread::scope(|s| {
        let (work_tx, work_rx) = mpsc::sync_channel::<Work<'a>>(threads * QUEUED_PER_WORKER);
        // Workers hold the only handles to the queue: when the last one stops (failure), a
        // feeder waiting on a full queue is woken with an error instead of waiting forever.
        let queue = Arc::new(Mutex::new(work_rx));
        let (done_tx, done_rx) = mpsc::channel::<(u64, &'a [u8])>();
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let (queue, failure) = (Arc::clone(&queue), &failure);
            let spawned = std::thread::Builder::new()
                .name("sealed-open".to_string())
                .spawn_scoped(s, move || {
                    while !failure.aborted() {
                        // The lock is held while waiting: idle workers queue on the mutex
                        // instead of on the channel, which is the same wait.
                        let next = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => {
                                failure.set(SealedError::Worker("work queue poisoned".into()));
                                break;
                            }
                        };
                        let Ok(mut w) = next else { break };
                        if let Err(e) = open_one(cipher, layout, &mut w) {
                            failure.set(e);
                            break;
                        }
                        let done: &'a [u8] = w.slot;
                        if done_tx.send((w.index, done)).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = spawned {
                failure.set(SealedError::Worker(format!("cannot start a thread: {e}")));
                break;
            }
        }
        drop((done_tx, queue));

        // Hash in index order as chunks complete; out-of-order ones wait in `pending`.
        let failure_ref = &failure;
        let hash = std::thread::Builder::new()
            .name("sealed-hash".to_string())
            .spawn_scoped(s, move || {
                let mut next = 0u64;
                let mut pending: BTreeMap<u64, &[u8]> = BTreeMap::new();
                for (index, bytes) in done_rx {
                    if failure_ref.aborted() {
                        continue; // drain until the workers stop
                    }
                    pending.insert(index, bytes);
                    while let Some(bytes) = pending.remove(&next) {
                        hasher.update(bytes);
                        next += 1;
                    }
                }
                next
            });

        // Feed, on this thread, in index order.
        let fed = (|| {
            let mut rest = out;
            for index in 0..count {
                let len = layout.chunk_plaintext_len(index)?;
                let (slot, tail) = std::mem::take(&mut rest).split_at_mut_checked(len).ok_or(
                    SealedError::Crypto("plaintext buffer shorter than the file"),
                )?;
                rest = tail;
                let (from, tag) = next(index, slot)?;
                let work = Work {
                    index,
                    slot,
                    from,
                    tag,
                };
                if failure.aborted() || work_tx.send(work).is_err() {
                    return Err(SealedError::StreamFailed);
                }
            }
            if !rest.is_empty() {
                return Err(SealedError::Crypto("plaintext buffer longer than the file"));
            }
            Ok(())
        })();
        if fed.is_err() {
            failure.abort.store(true, Ordering::Relaxed);
        }
        drop(work_tx);
        let hashed = match hash {
            Ok(h) => h.join().unwrap_or(0),
            Err(e) => {
                failure.set(SealedError::Worker(format!("cannot start a thread: {e}")));
                0
            }
        };
        (fed, hashed)
    });

    if let Some(e) = failure.error.into_inner().ok().flatten() {
        return Err(e);
    }
    fed?;
    if hashed != count {
        return Err(SealedError::Worker(format!(
            "{hashed} of {count} chunks came back from the workers"
        )));
    }
    Ok(())
}
