//! One audit entry per inference request (`inference.request`), written when its response body
//! has been sent (or dropped, when the client went away): listener, transport, status, model id
//! and digest, token counts, finish reason and, for encrypted requests, the SHA-256 of the
//! request and response ciphertexts. Never a prompt or an output.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use serde::Serialize;

use super::Shared;
use super::e2e::SealedNote;
use super::openai::OutcomeSlot;

/// How a request reached wardd. The ttrpc service marks its requests; HTTP is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Http,
    Ttrpc,
}

/// An entry waiting for its response to end.
pub(super) struct Pending {
    pub shared: Arc<Shared>,
    pub listener: Arc<str>,
    pub transport: Transport,
    pub path: String,
    pub encrypted: bool,
    pub refused: Option<&'static str>,
    pub outcome: OutcomeSlot,
    pub sealed: SealedNote,
    /// The request's span: the body ends outside it.
    pub span: tracing::Span,
    /// When the request arrived.
    pub started: std::time::Instant,
}

/// The `detail` of an `inference.request` entry.
#[derive(Debug, Serialize)]
struct Detail<'a> {
    listener: &'a str,
    transport: Transport,
    status: u16,
    /// Whether the whole response body was sent.
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// The manifest digest of the sealed model that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_digest: Option<String>,
    /// Known once the body parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    encrypted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    suite: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'static str>,
    /// Who asked: a signed request's key (`ed25519:…`) or a unix peer (`uid:N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    /// The policy grant that let it through.
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<String>,
}

impl Pending {
    fn write(self, status: u16, complete: bool) {
        let _enter = self.span.enter();
        let outcome = self.outcome.get();
        let sealed = self.sealed.get();
        let model_digest = outcome
            .model
            .as_deref()
            .and_then(|m| self.shared.models.get(m))
            .map(|m| m.manifest_digest.to_string());
        let model_digest_known = model_digest.is_some();
        // What the client used counts against its quota: the engine's count, or for an answer
        // cut short, the deltas it was sent.
        if let (Some(client), Some(policy)) = (
            &outcome.client,
            outcome
                .model
                .as_deref()
                .and_then(|m| self.shared.serving.policy(m)),
        ) && outcome.grant.is_some()
        {
            let tokens = outcome.usage.map_or(outcome.streamed, |u| u.total_tokens());
            policy.consumed(client, u64::try_from(tokens).unwrap_or(u64::MAX));
        }
        let detail = Detail {
            listener: &self.listener,
            transport: self.transport,
            status,
            complete,
            model_digest,
            stream: outcome.model.is_some().then_some(outcome.stream),
            prompt_tokens: outcome.usage.map(|u| u.prompt_tokens),
            completion_tokens: outcome.usage.map(|u| u.completion_tokens),
            finish_reason: outcome.finish_reason,
            model: outcome
                .model
                .map(|m| bounded_model_name(m, model_digest_known)),
            encrypted: self.encrypted,
            suite: sealed.suite,
            request_sha256: sealed.request_sha256,
            response_sha256: sealed.response_sha256,
            refused: self.refused.or(sealed.refused).or(outcome.refused),
            client: outcome.client.as_ref().map(ToString::to_string),
            grant: outcome.grant.clone(),
        };
        let metrics = crate::metrics::metrics();
        if let Some(reason) = detail.refused {
            metrics.inference_refusal(reason);
        }
        // A label only for models wardd serves: a client's made-up name is `unknown`.
        let served = detail.model.as_deref().filter(|m| {
            self.shared
                .serving
                .engines
                .read()
                .is_ok_and(|e| e.contains_key(*m))
        });
        metrics.inference_request(
            served.unwrap_or("unknown"),
            status,
            self.started.elapsed(),
            detail.prompt_tokens.zip(detail.completion_tokens),
        );
        tracing::info!(
            status,
            complete,
            prompt_tokens = detail.prompt_tokens,
            completion_tokens = detail.completion_tokens,
            finish_reason = detail.finish_reason,
            encrypted = detail.encrypted,
            "inference request"
        );
        match serde_json::to_value(&detail) {
            Ok(v) => self.shared.audit.note("inference.request", &self.path, v),
            Err(e) => tracing::error!(error = %e, "cannot encode the audit entry"),
        }
    }
}

/// Longest client-chosen model name kept in an entry.
const MAX_MODEL_NAME: usize = 64;

/// The `model` a client asked for, as the audit entry keeps it: a served model's name whole; a
/// name no model has (the client chose it, and in an encrypted request the host cannot see it)
/// cut to [`MAX_MODEL_NAME`] bytes, so a client cannot grow the log at will.
fn bounded_model_name(name: String, served: bool) -> String {
    if served || name.len() <= MAX_MODEL_NAME {
        return name;
    }
    let mut end = MAX_MODEL_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...({} bytes)", &name[..end], name.len())
}

/// `response`, whose body writes `pending`'s entry when it ends or is dropped.
pub(super) fn audited(response: Response, pending: Pending) -> Response {
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(AuditedBody {
            inner: body,
            pending: Some(pending),
            status,
        }),
    )
}

struct AuditedBody {
    inner: Body,
    pending: Option<Pending>,
    status: u16,
}

impl AuditedBody {
    fn finish(&mut self, complete: bool) {
        if let Some(p) = self.pending.take() {
            p.write(self.status, complete);
        }
    }
}

impl HttpBody for AuditedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        // A server stops polling a body that says it has ended, so "ended" counts as sent.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_names_are_bounded() {
        assert_eq!(bounded_model_name("smollm2".into(), true), "smollm2");
        let long = "é".repeat(10_000);
        let kept = bounded_model_name(long.clone(), false);
        assert!(
            kept.len() < 100 && kept.ends_with("...(20000 bytes)"),
            "{kept}"
        );
        assert_eq!(bounded_model_name("x".repeat(64), false), "x".repeat(64));
    }
}
