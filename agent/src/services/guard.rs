//! The wrapper around every ttrpc method handler, unary or streaming: a span per request, the
//! allow-list verdict, a deadline, and one log line with the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;
use ttrpc::asynchronous::{MethodHandler, StreamHandler, StreamInner, TtrpcContext};
use ttrpc::{Code, Request, Response};

use super::DaemonState;
use crate::config::ServiceKind;

/// What a listener does with a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Allowed and implemented: run the real handler.
    Serve,
    /// Allowed but not built yet: answer `UNIMPLEMENTED`.
    Unimplemented,
    /// Not on this listener's allow-list: answer `PERMISSION_DENIED`.
    Denied,
}

/// Limits applied to every request.
#[derive(Clone, Copy, Debug)]
pub struct RequestPolicy {
    /// The longest a request may run, whatever deadline the client asked for.
    pub max_duration: Duration,
    /// The same for a streaming method, whose reply (a generation, token by token) may rightly
    /// run longer than any unary call, and for the long unary calls ([`ServiceKind::is_long`]:
    /// an image pull, a secure mount), which get the client's deadline up to this cap.
    pub max_stream_duration: Duration,
}

pub(super) struct Guarded<H> {
    inner: H,
    verdict: Verdict,
    kind: ServiceKind,
    path: Arc<str>,
    listener: Arc<str>,
    state: Arc<DaemonState>,
    policy: RequestPolicy,
}

/// A unary method's handler.
pub(super) type Method = Box<dyn MethodHandler + Send + Sync>;
/// A streaming method's handler.
pub(super) type Stream = Arc<dyn StreamHandler + Send + Sync>;

impl<H> Guarded<H> {
    pub(super) fn new(
        inner: H,
        verdict: Verdict,
        kind: ServiceKind,
        path: Arc<str>,
        listener: Arc<str>,
        state: Arc<DaemonState>,
        policy: RequestPolicy,
    ) -> Guarded<H> {
        Guarded {
            inner,
            verdict,
            kind,
            path,
            listener,
            state,
            policy,
        }
    }

    /// The deadline for this request: the client's, capped by the server's maximum for unary
    /// calls, or for streaming methods and long calls (kata-agent gives PullImage 1200 s).
    fn deadline(&self, timeout_nano: i64, streaming: bool) -> Duration {
        let max = if streaming || self.kind.is_long() {
            self.policy.max_stream_duration
        } else {
            self.policy.max_duration
        };
        match u64::try_from(timeout_nano) {
            Ok(n) if n > 0 => Duration::from_nanos(n).min(max),
            _ => max,
        }
    }

    /// Runs `call` (not started yet) under this method's verdict, span and deadline.
    async fn run<T: Answer>(
        &self,
        timeout_nano: i64,
        streaming: bool,
        call: impl Future<Output = ttrpc::Result<T>>,
    ) -> ttrpc::Result<T> {
        let id = self.state.next_request_id();
        let span = tracing::info_span!(
            "request",
            id,
            method = %self.path,
            listener = %self.listener,
        );
        let started = Instant::now();
        let deadline = self.deadline(timeout_nano, streaming);
        let result = async {
            match self.verdict {
                Verdict::Denied => Ok(T::refusal(
                    Code::PERMISSION_DENIED,
                    format!(
                        "{} is not served on {} (not on its allow-list)",
                        self.kind.ttrpc_name(),
                        self.listener
                    ),
                )),
                Verdict::Unimplemented => Ok(T::refusal(
                    Code::UNIMPLEMENTED,
                    format!("{} is not implemented by this wardd yet", self.path),
                )),
                Verdict::Serve => {
                    if !self.state.is_serving() {
                        return Ok(T::refusal(
                            Code::UNAVAILABLE,
                            "wardd is shutting down".to_string(),
                        ));
                    }
                    match tokio::time::timeout(deadline, call).await {
                        Ok(r) => r,
                        Err(_) => Ok(T::refusal(
                            Code::DEADLINE_EXCEEDED,
                            format!("{} took longer than {deadline:?}", self.path),
                        )),
                    }
                }
            }
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &result {
            Ok(r) => match r.refused() {
                None => tracing::info!(elapsed_us, "ok"),
                Some(s) => tracing::warn!(
                    elapsed_us,
                    code = ?s.code(),
                    message = s.message(),
                    "refused"
                ),
            },
            Err(e) => tracing::warn!(elapsed_us, error = %e, "failed"),
        }
        result
    }
}

/// What a handler answers: a response (unary), or an optional closing response (streams).
trait Answer: Sized {
    /// An answer carrying a non-OK status, as the generated handlers send them (an `Err` from
    /// a handler would reach the client as `UNKNOWN`).
    fn refusal(code: Code, message: String) -> Self;
    /// The non-OK status this answer carries, if any.
    fn refused(&self) -> Option<&ttrpc::proto::Status>;
}

impl Answer for Response {
    fn refusal(code: Code, message: String) -> Response {
        let mut response = Response::new();
        response.set_status(ttrpc::get_status(code, message));
        response
    }

    fn refused(&self) -> Option<&ttrpc::proto::Status> {
        (self.status.code() != Code::OK).then_some(&*self.status)
    }
}

impl Answer for Option<Response> {
    fn refusal(code: Code, message: String) -> Option<Response> {
        Some(Response::refusal(code, message))
    }

    fn refused(&self) -> Option<&ttrpc::proto::Status> {
        self.as_ref().and_then(Answer::refused)
    }
}

#[async_trait]
impl MethodHandler for Guarded<Method> {
    async fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        let timeout_nano = ctx.timeout_nano;
        self.run(timeout_nano, false, self.inner.handler(ctx, req))
            .await
    }
}

#[async_trait]
impl StreamHandler for Guarded<Stream> {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        stream: StreamInner,
    ) -> ttrpc::Result<Option<Response>> {
        let timeout_nano = ctx.timeout_nano;
        self.run(timeout_nano, true, self.inner.handler(ctx, stream))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::services::Mode;

    /// A handler that answers OK after a delay.
    struct Slow(Duration);

    #[async_trait]
    impl MethodHandler for Slow {
        async fn handler(&self, _ctx: TtrpcContext, _req: Request) -> ttrpc::Result<Response> {
            tokio::time::sleep(self.0).await;
            Ok(Response::new())
        }
    }

    fn ctx(timeout_nano: i64) -> TtrpcContext {
        TtrpcContext {
            mh: Default::default(),
            metadata: HashMap::new(),
            timeout_nano,
            connection_data: Default::default(),
        }
    }

    fn guarded(verdict: Verdict, delay: Duration, serving: bool) -> Guarded<Method> {
        guarded_kind(verdict, delay, serving, ServiceKind::Health)
    }

    fn guarded_kind(
        verdict: Verdict,
        delay: Duration,
        serving: bool,
        kind: ServiceKind,
    ) -> Guarded<Method> {
        let state = Arc::new(DaemonState::new(Mode::Standalone));
        state.set_serving(serving);
        Guarded::new(
            Box::new(Slow(delay)),
            verdict,
            kind,
            Arc::from("/ward.health.HealthService/Check"),
            Arc::from("unix:///test.sock"),
            state,
            RequestPolicy {
                max_duration: Duration::from_millis(200),
                max_stream_duration: Duration::from_millis(900),
            },
        )
    }

    async fn code(g: &Guarded<Method>, timeout_nano: i64) -> Code {
        MethodHandler::handler(g, ctx(timeout_nano), Request::new())
            .await
            .unwrap()
            .status
            .code()
    }

    #[tokio::test]
    async fn verdicts_map_to_statuses() {
        let fast = Duration::ZERO;
        assert_eq!(
            code(&guarded(Verdict::Serve, fast, true), 0).await,
            Code::OK
        );
        assert_eq!(
            code(&guarded(Verdict::Denied, fast, true), 0).await,
            Code::PERMISSION_DENIED
        );
        assert_eq!(
            code(&guarded(Verdict::Unimplemented, fast, true), 0).await,
            Code::UNIMPLEMENTED
        );
        assert_eq!(
            code(&guarded(Verdict::Serve, fast, false), 0).await,
            Code::UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn the_shorter_of_client_and_server_deadlines_wins() {
        let slow = guarded(Verdict::Serve, Duration::from_secs(5), true);
        // No client deadline: the server's 200 ms applies.
        assert_eq!(code(&slow, 0).await, Code::DEADLINE_EXCEEDED);
        // A client deadline of 10 ms.
        let started = std::time::Instant::now();
        assert_eq!(code(&slow, 10_000_000).await, Code::DEADLINE_EXCEEDED);
        assert!(started.elapsed() < Duration::from_millis(150));
        // A client deadline longer than the server's is capped.
        let started = std::time::Instant::now();
        assert_eq!(code(&slow, 60_000_000_000).await, Code::DEADLINE_EXCEEDED);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// Streaming methods get their own cap: a generation streamed token by token outlives the
    /// unary one. The client's shorter deadline still wins.
    #[test]
    fn streams_are_capped_by_the_stream_maximum() {
        let g = guarded(Verdict::Serve, Duration::ZERO, true);
        assert_eq!(g.deadline(0, false), Duration::from_millis(200));
        assert_eq!(g.deadline(0, true), Duration::from_millis(900));
        assert_eq!(g.deadline(60_000_000_000, true), Duration::from_millis(900));
        assert_eq!(g.deadline(500_000_000, true), Duration::from_millis(500));
        assert_eq!(g.deadline(-1, true), Duration::from_millis(900));
    }

    /// A stalled pull came back DEADLINE_EXCEEDED at the unary 120 s although kata-agent gives
    /// PullImage 1200 s: long calls get the client's deadline, up to the long cap.
    #[test]
    fn long_calls_get_the_clients_deadline() {
        for kind in [ServiceKind::ImagePull, ServiceKind::SecureMount] {
            let g = guarded_kind(Verdict::Serve, Duration::ZERO, true, kind);
            assert_eq!(g.deadline(500_000_000, false), Duration::from_millis(500));
            assert_eq!(g.deadline(850_000_000, false), Duration::from_millis(850));
            assert_eq!(g.deadline(0, false), Duration::from_millis(900));
            assert_eq!(
                g.deadline(60_000_000_000, false),
                Duration::from_millis(900)
            );
        }
        let g = guarded_kind(
            Verdict::Serve,
            Duration::ZERO,
            true,
            ServiceKind::GetResource,
        );
        assert_eq!(g.deadline(850_000_000, false), Duration::from_millis(200));
    }
}
