//! One persistent pool of worker threads that splits each matmul across the cores: the caller
//! publishes a job (a closure of a chunk index and a number of chunks), and every thread, the
//! caller included, takes chunks from a shared counter until none are left. No thread is
//! spawned per operation and nothing is allocated per job; workers spin briefly for the next job
//! (matmuls follow each other within microseconds during a forward pass), then sleep on a
//! condition variable so an idle runtime costs no CPU. Because chunks are taken, not assigned, a
//! worker that the OS has not scheduled (a shared machine) delays a job by at most one chunk:
//! the caller does the rest.
//!
//! Never runs two jobs at once: a caller that finds the pool busy (another thread's matmul) runs
//! every chunk of its job itself, in order, so results never depend on who won.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job's closure, its lifetime erased (see [`Pool::run`] for why that is sound).
type Job = *const (dyn Fn(usize) + Sync);

/// How long a worker waits for the next job before it sleeps (spinning first, then yielding
/// the core to whoever else wants it: candle's own threads between two matmuls, or another
/// process on a shared machine).
const SPIN: Duration = Duration::from_micros(200);
/// Spins before a waiter starts yielding.
const SPINS: u32 = 256;

/// Waits until `done()` or `limit` has passed: spins, then yields the core between looks.
/// Returns whether `done()` held.
fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    for _ in 0..SPINS {
        if done() {
            return true;
        }
        std::hint::spin_loop();
    }
    let start = Instant::now();
    while start.elapsed() < limit {
        for _ in 0..16 {
            if done() {
                return true;
            }
            std::thread::yield_now();
        }
    }
    done()
}

/// Whatever runs `f(0)`, ..., `f(chunks - 1)`, each once, on some threads, and returns when
/// all have returned: a [`Pool`], or another thread pool to compare it with.
pub trait Runner: Sync {
    /// Threads that take part (to size chunks by).
    fn threads(&self) -> usize;
    fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync));
}

impl Runner for Pool {
    fn threads(&self) -> usize {
        Pool::threads(self)
    }
    fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        Pool::run(self, chunks, f)
    }
}

struct Shared {
    /// Bumped once per job, to wake the workers.
    epoch: AtomicUsize,
    /// The current job takes workers in (set after `job`, `chunks`, `next` and `done` are).
    open: AtomicBool,
    /// Workers inside the current job: the caller returns only once none is.
    entered: AtomicUsize,
    /// The current job's chunks, the next one to take, and how many have finished.
    chunks: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Workers asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    /// A chunk run by a worker panicked (the caller re-raises it).
    panicked: AtomicBool,
    /// Written by the one caller holding `Pool::busy` while the job is closed and no worker is
    /// inside; read by workers only after they entered an open job.
    job: UnsafeCell<Option<Job>>,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller that holds `Pool::busy`, while `open` is false
// and `entered` is 0 (it waited for that before its previous return), and read by workers only
// between their SeqCst increment of `entered` and seeing `open` true, which the caller set
// (SeqCst) after writing `job`; the closure it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced while the caller keeps it alive.
unsafe impl Send for Shared {}

impl Shared {
    /// Takes and runs chunks until none are left.
    fn take_chunks(&self, f: &(dyn Fn(usize) + Sync)) {
        let chunks = self.chunks.load(Ordering::Acquire);
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= chunks {
                return;
            }
            /// Counts the chunk done even if it panics, so the caller never hangs.
            struct Done<'a>(&'a AtomicUsize);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::Release);
                }
            }
            let _done = Done(&self.done);
            f(i);
        }
    }
}

/// A fixed set of worker threads; the calling thread works on its own jobs too.
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    busy: Mutex<()>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Pool {
    /// A pool of `threads` threads (the caller plus `threads - 1` workers; at least 1). A worker
    /// that cannot be spawned leaves the pool smaller, never broken.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            open: AtomicBool::new(false),
            entered: AtomicUsize::new(0),
            chunks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut handles = Vec::new();
        for index in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name(format!("ward-matmul-{index}"))
                .spawn(move || worker(&s))
            {
                Ok(h) => handles.push(h),
                Err(_) => break,
            }
        }
        Pool {
            shared,
            threads: handles.len() + 1,
            busy: Mutex::new(()),
            handles,
        }
    }

    /// The pool every model shares: `$RAYON_NUM_THREADS` threads (what candle's own pools
    /// follow, and the benchmark sets), else one per core.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let n = std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            Pool::new(n)
        })
    }

    /// Threads that work on each job (the caller's included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0)`, ..., `f(chunks - 1)`, each once, on this thread and the workers, and
    /// returns when all have returned.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(g) if self.threads > 1 && chunks > 1 => g,
            // A caller's chunk panicked before: the pool itself is sound (`Close` ran).
            Err(TryLockError::Poisoned(g)) if self.threads > 1 && chunks > 1 => g.into_inner(),
            _ => {
                // Busy (another caller's job), no workers, or nothing to split: all here.
                (0..chunks).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. Workers dereference the pointer only while
        // counted in `entered` for an open job, and this function neither returns nor unwinds
        // (see `Close`) before the job is closed and `entered` is 0 again.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: we hold `busy`, the job is closed and no worker is inside (see `Shared`).
        unsafe { *s.job.get() = Some(job) };
        s.chunks.store(chunks, Ordering::SeqCst);
        s.next.store(0, Ordering::SeqCst);
        s.done.store(0, Ordering::SeqCst);
        s.open.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock();
            s.wake.notify_all();
        }
        /// Closes the job and waits for every chunk and every worker that entered, even if a
        /// chunk on this thread panics, so that no worker outlives `f`.
        struct Close<'a>(&'a Shared, usize);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                let (s, chunks) = (self.0, self.1);
                // Chunks nobody took yet (this thread is unwinding) are taken and skipped.
                while s.next.fetch_add(1, Ordering::AcqRel) < chunks {
                    s.done.fetch_add(1, Ordering::Release);
                }
                while !wait_until(SPIN, || s.done.load(Ordering::Acquire) >= chunks) {}
                s.open.store(false, Ordering::SeqCst);
                while !wait_until(SPIN, || s.entered.load(Ordering::SeqCst) == 0) {}
            }
        }
        let close = Close(s, chunks);
        s.take_chunks(f);
        drop(close);
        drop(guard);
        if s.panicked.swap(false, Ordering::SeqCst) {
            std::panic::resume_unwind(Box::new("a matmul worker's chunk panicked"));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _l = s.lock.lock();
            s.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin and yield first, then sleep.
        wait_until(SPIN, || s.epoch.load(Ordering::SeqCst) != seen);
        let mut epoch = s.epoch.load(Ordering::SeqCst);
        if epoch == seen {
            let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            loop {
                epoch = s.epoch.load(Ordering::SeqCst);
                if epoch != seen {
                    break;
                }
                l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        seen = epoch;
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        s.entered.fetch_add(1, Ordering::SeqCst);
        if s.open.load(Ordering::SeqCst) {
            // SAFETY: the job is open and we are counted in `entered`, so `job` was written
            // before `open` was set and the caller keeps the closure alive until we leave.
            if let Some(job) = unsafe { *s.job.get() } {
                // SAFETY: as above, the closure outlives this call.
                let f = unsafe { &*job };
                let run = std::panic::AssertUnwindSafe(|| s.take_chunks(f));
                if std::panic::catch_unwind(run).is_err() {
                    s.panicked.store(true, Ordering::SeqCst);
                }
            }
        }
        s.entered.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_per_job() {
        let pool = Pool::new(3);
        assert_eq!(pool.threads(), 3);
        for round in 0..1000usize {
            let chunks = 1 + round % 17;
            let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(chunks, &|i| {
                hits[i].fetch_add(round + 1, Ordering::Relaxed);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), round + 1);
            }
        }
    }

    #[test]
    fn a_panicking_chunk_reaches_the_caller_and_the_pool_keeps_working() {
        let pool = Pool::new(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| assert_ne!(i, 5, "chunk 5"));
        }));
        assert!(caught.is_err());
        let n = AtomicUsize::new(0);
        pool.run(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn workers_wake_after_sleeping_and_concurrent_callers_both_finish() {
        let pool = Arc::new(Pool::new(2));
        std::thread::sleep(SPIN * 5); // the worker is asleep now
        let n = AtomicUsize::new(0);
        pool.run(2, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let p = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let n = AtomicUsize::new(0);
                    for _ in 0..200 {
                        p.run(2, &|_| {
                            n.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    n.load(Ordering::Relaxed)
                })
            })
            .collect();
        for c in callers {
            assert_eq!(c.join().ok(), Some(400));
        }
    }
}
