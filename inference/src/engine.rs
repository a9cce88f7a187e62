//! The scheduler: a bounded request queue in front of one thread that runs up to
//! `max_concurrent` sequences as a continuous batch, each with its own KV cache over the shared
//! model weights.
//!
//! - Each turn of the scheduler admits waiting requests into free slots, runs one prefill chunk
//!   of one admitted sequence (a short slice while others are decoding, so their tokens keep
//!   flowing), then one decode step for every sequence that has a token to run: as one batch
//!   for quantised GGUF models (each weight matrix read once for all of them), one after the
//!   other for the others ([`Model::forward_batch`]). A sequence leaves the batch the moment it
//!   finishes and a waiting request takes its slot on the next turn.
//! - Back-pressure: `submit` fails fast with [`InferenceError::QueueFull`] when `queue_capacity`
//!   requests are already waiting; it never blocks, so it is safe to call from async code.
//! - Cancellation: dropping the [`GenerationStream`] or calling [`CancelHandle::cancel`] drops
//!   the sequence before its next forward pass (one step at most) and frees its slot; a request
//!   cancelled while queued leaves the queue at once.
//! - The scheduler is an OS thread, not a task of the async runtime: generation is CPU-bound,
//!   and candle spreads each forward pass over the cores itself.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::error::InferenceError;
use crate::generate::{Advance, PREFILL_CHUNK, Sequence};
use crate::model::Model;
use crate::request::{Completion, Request, StreamEvent};

/// Sizes of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences generated at the same time (the batch).
    pub max_concurrent: usize,
    /// Requests allowed to wait for a worker; more are refused with `QueueFull`.
    pub queue_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            queue_capacity: 16,
        }
    }
}

/// A point-in-time view of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub queued: usize,
    pub running: usize,
    /// Decode steps run so far, and the tokens they decoded: their ratio is the mean batch.
    pub decode_steps: u64,
    pub decoded_tokens: u64,
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
    decode_steps: AtomicU64,
    decoded_tokens: AtomicU64,
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

/// The inference engine: one model, a bounded queue and its scheduler thread.
pub struct Engine {
    shared: Arc<Shared>,
    scheduler: Option<JoinHandle<()>>,
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
    /// Starts the scheduler for `model`, batching up to `config.max_concurrent` sequences.
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
            decode_steps: AtomicU64::new(0),
            decoded_tokens: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
        });
        let handle = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("ward-infer".to_string())
                .spawn(move || Scheduler::new(&shared).run())
                .map_err(|e| InferenceError::Device(format!("cannot start the scheduler: {e}")))?
        };
        Ok(Self {
            shared,
            scheduler: Some(handle),
        })
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
            decode_steps: self.shared.decode_steps.load(Ordering::Relaxed),
            decoded_tokens: self.shared.decoded_tokens.load(Ordering::Relaxed),
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

    /// Stops taking requests, cancels running ones, and waits for the scheduler to exit.
    pub fn shutdown(mut self) {
        self.close();
        if let Some(s) = self.scheduler.take() {
            // A scheduler that panicked has nothing left to clean up.
            let _ = s.join();
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
    /// Signals the scheduler without joining it (dropping may happen on an async thread); it
    /// exits after at most one more forward pass.
    fn drop(&mut self) {
        self.close();
    }
}

/// Prompt tokens per prefill chunk while other sequences are decoding: their next tokens wait
/// for it, so it stays short (a full chunk when nothing else runs).
const PREFILL_SLICE: usize = 64;

/// A request in the batch.
struct Active<'m> {
    job: Job,
    seq: Sequence<'m>,
    /// The token to run at the next decode step, and its position.
    pending: Option<(u32, usize)>,
    span: tracing::Span,
    started: std::time::Instant,
}

/// The scheduler thread's state. See the module docs.
struct Scheduler<'s> {
    shared: &'s Shared,
    active: Vec<Active<'s>>,
}

impl<'s> Scheduler<'s> {
    fn new(shared: &'s Shared) -> Self {
        Self {
            shared,
            active: Vec::with_capacity(shared.config.max_concurrent),
        }
    }

    fn run(mut self) {
        while self.admit() {
            self.drop_cancelled();
            self.prefill_one();
            self.advance_ready();
            self.decode_step();
            self.shared
                .running
                .store(self.active.len(), Ordering::Release);
        }
        self.shared.running.store(0, Ordering::Release);
    }

    fn stopping(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// Fills free slots from the queue, waiting while there is nothing to do. False once the
    /// engine shut down (the active sequences have then been told).
    fn admit(&mut self) -> bool {
        loop {
            if self.stopping() {
                for a in std::mem::take(&mut self.active) {
                    Self::end(a, Err(InferenceError::ShutDown));
                }
                return false;
            }
            let mut fresh = Vec::new();
            {
                let mut queue = self.shared.queue();
                while self.active.len() + fresh.len() < self.shared.config.max_concurrent {
                    match queue.jobs.pop_front() {
                        Some(job) if job.abandoned() => {}
                        Some(job) => fresh.push(job),
                        None => break,
                    }
                }
                if fresh.is_empty() && self.active.is_empty() {
                    if queue.closed {
                        return false;
                    }
                    drop(
                        self.shared
                            .work
                            .wait(queue)
                            .unwrap_or_else(std::sync::PoisonError::into_inner),
                    );
                    continue;
                }
            }
            for job in fresh {
                let span = tracing::info_span!("generate", request = job.id, model = %self.shared.model.info().name);
                match span.in_scope(|| Sequence::start(&self.shared.model, &job.request)) {
                    Ok(seq) => self.active.push(Active {
                        job,
                        seq,
                        pending: None,
                        span,
                        started: std::time::Instant::now(),
                    }),
                    Err(e) => {
                        let _enter = span.enter();
                        tracing::info!(error = %e, "request refused");
                        let _ = job.events.send(Err(e));
                    }
                }
            }
            return true;
        }
    }

    /// Sends a request's last event and logs how it ended.
    fn end(a: Active<'_>, result: Result<crate::request::Finished, InferenceError>) {
        let _enter = a.span.enter();
        match result {
            Ok(finished) => {
                tracing::info!(
                    prompt_tokens = finished.usage.prompt_tokens,
                    completion_tokens = finished.usage.completion_tokens,
                    finish_reason = ?finished.finish_reason,
                    elapsed_ms = a.started.elapsed().as_millis() as u64,
                    "request done"
                );
                let _ = a.job.events.send(Ok(StreamEvent::Finished(finished)));
            }
            Err(e) => {
                tracing::info!(error = %e, "request ended");
                let _ = a.job.events.send(Err(e));
            }
        }
    }

    /// Drops the sequences whose client left or cancelled: their slots free at once.
    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<Active<'s>>, Vec<Active<'s>>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|a| a.job.abandoned());
        self.active = kept;
        for a in gone {
            Self::end(a, Err(InferenceError::Cancelled));
        }
    }

    /// Runs one prefill chunk of the first sequence still reading its prompt.
    fn prefill_one(&mut self) {
        let decoding = self.active.iter().any(|a| a.seq.prefilled());
        let Some(i) = self.active.iter().position(|a| !a.seq.prefilled()) else {
            return;
        };
        let chunk = if decoding {
            PREFILL_SLICE
        } else {
            PREFILL_CHUNK
        };
        let a = &mut self.active[i];
        if let Err(e) = a.span.in_scope(|| a.seq.prefill(chunk)) {
            let a = self.active.remove(i);
            Self::end(a, Err(e));
        }
    }

    /// Samples every sequence whose logits are in: each either asks for a decode step or ends.
    fn advance_ready(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            let a = &mut self.active[i];
            if !a.seq.ready() || !a.seq.prefilled() {
                i += 1;
                continue;
            }
            let events = &a.job.events;
            let mut sink = |text: String| events.send(Ok(StreamEvent::Delta(text))).is_ok();
            match a.span.in_scope(|| a.seq.advance(&mut sink)) {
                Ok(Advance::Decode { token, pos }) => {
                    a.pending = Some((token, pos));
                    i += 1;
                }
                Ok(Advance::Finished(f)) => {
                    let a = self.active.remove(i);
                    Self::end(a, Ok(f));
                }
                Err(e) => {
                    let a = self.active.remove(i);
                    Self::end(a, Err(e));
                }
            }
        }
    }

    /// One decode step for every sequence with a pending token, as one batch.
    fn decode_step(&mut self) {
        if self.stopping() {
            return;
        }
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut sessions = Vec::new();
        let mut members = Vec::new();
        for (i, a) in self.active.iter_mut().enumerate() {
            if let Some((token, pos)) = a.pending.take() {
                tokens.push(token);
                positions.push(pos);
                sessions.push(&mut a.seq.session);
                members.push(i);
            }
        }
        if sessions.is_empty() {
            return;
        }
        self.shared.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.shared
            .decoded_tokens
            .fetch_add(sessions.len() as u64, Ordering::Relaxed);
        let span = tracing::debug_span!("decode_step", batch = sessions.len());
        let result = span.in_scope(|| {
            self.shared
                .model
                .forward_batch(&mut sessions, &tokens, &positions)
        });
        drop(sessions);
        match result {
            Ok(logits) => {
                for (i, l) in members.into_iter().zip(logits) {
                    self.active[i].seq.set_logits(l);
                }
            }
            Err(e) => {
                // A failed step leaves the caches of every member unknown: end them all (the
                // error itself to the first, its text to the others).
                tracing::warn!(error = %e, "decode step failed");
                let text = format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
                let mut first = Some(e);
                for i in members.into_iter().rev() {
                    let a = self.active.remove(i);
                    let e = first
                        .take()
                        .unwrap_or_else(|| InferenceError::Device(text.clone()));
                    Self::end(a, Err(e));
                }
            }
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
