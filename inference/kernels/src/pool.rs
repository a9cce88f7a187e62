//! One persistent pool of worker threads that splits each matmul across the cores: the caller
//! publishes a job (a closure of the thread index), runs share 0 itself, and waits for the
//! others. No thread is spawned per operation and nothing is allocated per job; workers spin
//! briefly for the next job (matmuls follow each other within microseconds during a forward
//! pass), then sleep on a condition variable so an idle runtime costs no CPU.
//!
//! Never runs two jobs at once: a caller that finds the pool busy (another thread's matmul) runs
//! every share of its job itself, in order, so results never depend on who won.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job's closure, its lifetime erased (see [`Pool::run`] for why that is sound).
type Job = *const (dyn Fn(usize) + Sync);

/// How long a worker spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

struct Shared {
    /// Bumped once per job; a worker runs the job whose epoch it has not yet seen.
    epoch: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// Workers asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    /// A worker's share of the current job panicked (the caller re-raises it).
    panicked: AtomicBool,
    /// Written by the one caller holding `busy` before it bumps `epoch`; read by workers after.
    job: UnsafeCell<Option<Job>>,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller that holds `Pool::busy`, while no worker reads it
// (all of the previous job's workers have finished: `pending` was 0), and published to workers
// by the SeqCst store to `epoch`; the closure it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced while the caller keeps it alive.
unsafe impl Send for Shared {}

/// A fixed set of worker threads; share 0 of every job runs on the calling thread.
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
    /// A pool of `threads` shares (the caller plus `threads - 1` workers; at least 1). A worker
    /// that cannot be spawned leaves the pool smaller, never broken.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
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
                .spawn(move || worker(&s, index))
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

    /// Shares of each job (the caller's included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0)`, ..., `f(threads - 1)`, share 0 on this thread and the others on the
    /// workers, and returns when all have returned.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(g) if self.threads > 1 => g,
            _ => {
                // Busy (another caller's job) or no workers: every share here, in order.
                (0..self.threads).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. The pointer is dereferenced by workers only
        // between the `epoch` bump below and their `pending` decrement, and this function does
        // not return (nor unwind: see the wait below) before `pending` is 0 again.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: we hold `busy` and the previous job's workers are done (`pending` was 0 when
        // it returned), so nobody reads `job` now.
        unsafe { *s.job.get() = Some(job) };
        s.pending.store(self.threads - 1, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock();
            s.wake.notify_all();
        }
        /// Waits for the workers even if share 0 panics, so that no worker outlives `f`.
        struct WaitOnDrop<'a>(&'a AtomicUsize);
        impl Drop for WaitOnDrop<'_> {
            fn drop(&mut self) {
                let start = Instant::now();
                while self.0.load(Ordering::Acquire) != 0 {
                    if start.elapsed() < SPIN {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        let wait = WaitOnDrop(&s.pending);
        f(0);
        drop(wait);
        drop(guard);
        if s.panicked.swap(false, Ordering::SeqCst) {
            std::panic::resume_unwind(Box::new("a matmul worker's share panicked"));
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

fn worker(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin first, then sleep.
        let start = Instant::now();
        let mut epoch = s.epoch.load(Ordering::SeqCst);
        while epoch == seen && start.elapsed() < SPIN {
            std::hint::spin_loop();
            epoch = s.epoch.load(Ordering::SeqCst);
        }
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
        /// Counts this worker done even if the job panics, so the caller never hangs.
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Release);
            }
        }
        let _done = Done(&s.pending);
        // SAFETY: `job` was written before the epoch we saw was published (SeqCst), and the
        // caller keeps the closure alive until `pending` (decremented by `_done`) reaches 0.
        if let Some(job) = unsafe { *s.job.get() } {
            // SAFETY: as above, the closure outlives this call.
            let f = unsafe { &*job };
            let run = std::panic::AssertUnwindSafe(|| f(index));
            if std::panic::catch_unwind(run).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_per_job() {
        let pool = Pool::new(3);
        assert_eq!(pool.threads(), 3);
        for round in 0..1000usize {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i| {
                hits[i].fetch_add(round + 1, Ordering::Relaxed);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), round + 1);
            }
        }
    }

    #[test]
    fn workers_wake_after_sleeping_and_concurrent_callers_both_finish() {
        let pool = Arc::new(Pool::new(2));
        std::thread::sleep(SPIN * 5); // the worker is asleep now
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let p = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let n = AtomicUsize::new(0);
                    for _ in 0..200 {
                        p.run(&|_| {
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
