//! The wrapper around every ttrpc method handler: a span per request, the allow-list verdict,
//! a deadline, and one log line with the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;
use ttrpc::asynchronous::{MethodHandler, TtrpcContext};
use ttrpc::{Code, Request, Response};

use super::{DaemonState, ServiceKind};

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
}

pub(super) struct Guarded {
    inner: Box<dyn MethodHandler + Send + Sync>,
    verdict: Verdict,
    kind: ServiceKind,
    path: Arc<str>,
    listener: Arc<str>,
    state: Arc<DaemonState>,
    policy: RequestPolicy,
}

impl Guarded {
    pub(super) fn new(
        inner: Box<dyn MethodHandler + Send + Sync>,
        verdict: Verdict,
        kind: ServiceKind,
        path: Arc<str>,
        listener: Arc<str>,
        state: Arc<DaemonState>,
        policy: RequestPolicy,
    ) -> Guarded {
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

    /// The deadline for this request: the client's, capped by the server's maximum.
    fn deadline(&self, ctx: &TtrpcContext) -> Duration {
        let max = self.policy.max_duration;
        match u64::try_from(ctx.timeout_nano) {
            Ok(n) if n > 0 => Duration::from_nanos(n).min(max),
            _ => max,
        }
    }
}

fn status(code: Code, message: String) -> ttrpc::Result<Response> {
    Err(ttrpc::Error::RpcStatus(ttrpc::get_status(code, message)))
}

#[async_trait]
impl MethodHandler for Guarded {
    async fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        let id = self.state.next_request_id();
        let span = tracing::info_span!(
            "request",
            id,
            method = %self.path,
            listener = %self.listener,
        );
        let started = Instant::now();
        let deadline = self.deadline(&ctx);
        let result = async {
            match self.verdict {
                Verdict::Denied => status(
                    Code::PERMISSION_DENIED,
                    format!(
                        "{} is not served on {} (not on its allow-list)",
                        self.kind.ttrpc_name(),
                        self.listener
                    ),
                ),
                Verdict::Unimplemented => status(
                    Code::UNIMPLEMENTED,
                    format!("{} is not implemented by this wardd yet", self.path),
                ),
                Verdict::Serve => {
                    if !self.state.is_serving() {
                        return status(Code::UNAVAILABLE, "wardd is shutting down".to_string());
                    }
                    match tokio::time::timeout(deadline, self.inner.handler(ctx, req)).await {
                        Ok(r) => r,
                        Err(_) => status(
                            Code::DEADLINE_EXCEEDED,
                            format!("{} took longer than {deadline:?}", self.path),
                        ),
                    }
                }
            }
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => tracing::info!(elapsed_us, "ok"),
            Err(ttrpc::Error::RpcStatus(s)) => {
                tracing::warn!(elapsed_us, code = ?s.code(), message = s.message(), "refused")
            }
            Err(e) => tracing::warn!(elapsed_us, error = %e, "failed"),
        }
        result
    }
}
