//! The scheduler: a bounded request queue in front of a fixed number of worker threads, each
//! running one sequence at a time with its own KV cache over the shared model weights.
//!
//! - Back-pressure: `submit` fails fast with [`InferenceError::QueueFull`] when `queue_capacity`
//!   requests are already waiting; it never blocks, so it is safe to call from async code.
//! - Cancellation: dropping the [`GenerationStream`] or calling [`CancelHandle::cancel`] stops the
//!   sequence before its next forward pass (one token at most) and frees its worker; a request
//!   cancelled while queued leaves the queue at once.
//! - Workers are OS threads, not tasks of the async runtime: generation is CPU-bound.
//!
//! Sequences do not share forward passes (no cross-request batching): candle's llama models take
//! a single position per batch, so ragged continuous batching would need its own attention code.
//! Concurrency comes from running sequences on separate threads.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::error::InferenceError;
use crate::generate::generate;
use crate::model::Model;
use crate::request::{Completion, Request, StreamEvent};

/// Sizes of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences generated at the same time (worker threads).
    pub max_concurrent: usize,
    /// Requests allowed to wait for a worker; more are refused with `QueueFull`.
    pub queue_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 2,
            queue_capacity: 16,
        }
    }
}

/// A point-in-time view of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub queued: usize,
    pub running: usize,
}

/// Cancels one request; cheap to clone, usable from any thread.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

type EventSender = mpsc::UnboundedSender<Result<StreamEvent, InferenceError>>;

struct Job {
    id: u64,
    request: Request,
    events: EventSender,
    cancel: CancelHandle,
}

impl Job {
    fn abandoned(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    model: Model,
    config: EngineConfig,
    queue: Mutex<Queue>,
    work: Condvar,
    running: AtomicUsize,
    next_id: AtomicU64,
    shutdown: AtomicBool,
}

impl Shared {
    /// The queue lock; a worker that panicked cannot leave the queue half-updated (every
    /// critical section is a single push/pop/retain), so a poisoned lock is still usable.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The inference engine: one model, a bounded queue and its workers.
pub struct Engine {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.shared.model)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Engine {
    /// Starts `config.max_concurrent` workers for `model`.
    pub fn new(model: Model, config: EngineConfig) -> Result<Self, InferenceError> {
        if config.max_concurrent == 0 {
            return Err(InferenceError::InvalidRequest(
                "max_concurrent must be >= 1".into(),
            ));
        }
        let shared = Arc::new(Shared {
            model,
            config,
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            running: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(config.max_concurrent);
        for n in 0..config.max_concurrent {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("ward-infer-{n}"))
                .spawn(move || worker(&shared))
                .map_err(|e| InferenceError::Device(format!("cannot start worker thread: {e}")))?;
            workers.push(handle);
        }
        Ok(Self { shared, workers })
    }

    pub fn model(&self) -> &Model {
        &self.shared.model
    }

    pub fn config(&self) -> EngineConfig {
        self.shared.config
    }

    pub fn stats(&self) -> EngineStats {
        let mut queue = self.shared.queue();
        queue.jobs.retain(|j| !j.abandoned());
        EngineStats {
            queued: queue.jobs.len(),
            running: self.shared.running.load(Ordering::Acquire),
        }
    }

    /// Queues a request and returns its event stream at once; fails with `QueueFull` when the
    /// queue is at capacity, and with `InvalidRequest` for requests that can never run.
    pub fn submit(&self, request: Request) -> Result<GenerationStream, InferenceError> {
        request.validate()?;
        let (events, rx) = mpsc::unbounded_channel();
        let cancel = CancelHandle::default();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut queue = self.shared.queue();
            if queue.closed {
                return Err(InferenceError::ShutDown);
            }
            queue.jobs.retain(|j| !j.abandoned());
            let capacity = self.shared.config.queue_capacity;
            if queue.jobs.len() >= capacity {
                tracing::debug!(capacity, "request refused: queue full");
                return Err(InferenceError::QueueFull { capacity });
            }
            queue.jobs.push_back(Job {
                id,
                request,
                events,
                cancel: cancel.clone(),
            });
        }
        self.shared.work.notify_one();
        Ok(GenerationStream { id, rx, cancel })
    }

    /// Stops taking requests, cancels running ones, and waits for the workers to exit.
    pub fn shutdown(mut self) {
        self.close();
        for w in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = w.join();
        }
    }

    fn close(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let dropped: Vec<Job> = {
            let mut queue = self.shared.queue();
            queue.closed = true;
            queue.jobs.drain(..).collect()
        };
        for job in dropped {
            let _ = job.events.send(Err(InferenceError::ShutDown));
        }
        self.shared.work.notify_all();
    }
}

impl Drop for Engine {
    /// Signals the workers without joining them (dropping may happen on an async thread); they
    /// exit after at most one more forward pass.
    fn drop(&mut self) {
        self.close();
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut queue = shared.queue();
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    if job.abandoned() {
                        continue;
                    }
                    break job;
                }
                if queue.closed {
                    return;
                }
                queue = shared
                    .work
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        shared.running.fetch_add(1, Ordering::AcqRel);
        run_job(shared, &job);
        shared.running.fetch_sub(1, Ordering::AcqRel);
    }
}

fn run_job(shared: &Shared, job: &Job) {
    let span = tracing::info_span!("generate", request = job.id, model = %shared.model.info().name);
    let _enter = span.enter();
    let started = std::time::Instant::now();
    let cancelled = || job.abandoned() || shared.shutdown.load(Ordering::Acquire);
    let mut sink = |text: String| job.events.send(Ok(StreamEvent::Delta(text))).is_ok();
    let result = generate(&shared.model, &job.request, &cancelled, &mut sink);
    match result {
        Ok(finished) => {
            tracing::info!(
                prompt_tokens = finished.usage.prompt_tokens,
                completion_tokens = finished.usage.completion_tokens,
                finish_reason = ?finished.finish_reason,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request done"
            );
            let _ = job.events.send(Ok(StreamEvent::Finished(finished)));
        }
        Err(e) => {
            let e = if matches!(e, InferenceError::Cancelled)
                && shared.shutdown.load(Ordering::Acquire)
            {
                InferenceError::ShutDown
            } else {
                e
            };
            tracing::info!(error = %e, "request ended");
            let _ = job.events.send(Err(e));
        }
    }
}

/// The events of one request: text deltas, then `Finished` (or one error). Dropping it cancels
/// the request.
#[derive(Debug)]
pub struct GenerationStream {
    id: u64,
    rx: mpsc::UnboundedReceiver<Result<StreamEvent, InferenceError>>,
    cancel: CancelHandle,
}

impl GenerationStream {
    /// The engine's id of this request (as in its tracing span).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A handle that cancels this request from elsewhere.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The next event; `None` after the last one.
    pub async fn next_event(&mut self) -> Option<Result<StreamEvent, InferenceError>> {
        self.rx.recv().await
    }

    /// The next event, blocking the thread (not for async contexts).
    pub fn blocking_next(&mut self) -> Option<Result<StreamEvent, InferenceError>> {
        self.rx.blocking_recv()
    }

    /// Waits for the whole generation.
    pub async fn collect(mut self) -> Result<Completion, InferenceError> {
        let mut acc = Accumulator::default();
        while let Some(event) = self.rx.recv().await {
            if let Some(done) = acc.add(event?) {
                return Ok(done);
            }
        }
        Err(InferenceError::ShutDown)
    }

    /// Waits for the whole generation, blocking the thread (not for async contexts).
    pub fn blocking_collect(mut self) -> Result<Completion, InferenceError> {
        let mut acc = Accumulator::default();
        while let Some(event) = self.rx.blocking_recv() {
            if let Some(done) = acc.add(event?) {
                return Ok(done);
            }
        }
        Err(InferenceError::ShutDown)
    }
}

#[derive(Default)]
struct Accumulator {
    text: String,
}

impl Accumulator {
    fn add(&mut self, event: StreamEvent) -> Option<Completion> {
        match event {
            StreamEvent::Delta(t) => {
                self.text.push_str(&t);
                None
            }
            StreamEvent::Finished(f) => Some(Completion {
                text: std::mem::take(&mut self.text),
                finish_reason: f.finish_reason,
                usage: f.usage,
            }),
        }
    }
}

impl futures_util::Stream for GenerationStream {
    type Item = Result<StreamEvent, InferenceError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
