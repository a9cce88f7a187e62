//! Forwarding to an external engine: an OpenAI-compatible server in the guest (llama.cpp's
//! `llama-server`, vLLM, SGLang, or any `openai` upstream) on a loopback port.
//!
//! The front (routes, end-to-end encryption, the encrypted-only gate, the audit entry) is the
//! same as for embedded engines: only the last step differs. The request body goes on as the
//! client sent it, with `model` set to the engine's name for it; streamed answers pass through
//! event by event, never buffered whole; `usage` is asked of the engine so the audit gets its
//! token counts, and its usage-only chunk is dropped when the client did not ask for it.
//!
//! The engine is untrusted for availability, not for confidentiality (it runs in the guest, on
//! the opened weights): an engine that answers garbage gets a 502, one that hangs is cut off at
//! the request timeout (each streamed event at the same idle bound), one that is down or
//! restarting gets a 503, and in-flight requests beyond `capacity` get OpenAI's 429.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use ward_inference::{FinishReason, Usage};

use super::{ApiError, Kind, OutcomeSlot, error};

/// The largest non-streamed answer or single streamed event read from an engine.
const MAX_ANSWER: usize = 64 << 20;

/// An engine's OpenAI API, as the front reaches it.
pub struct Upstream {
    /// The model name clients use.
    name: String,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    base: std::sync::RwLock<String>,
    /// The engine's own name for the model, sent in place of `name`.
    upstream_model: Option<String>,
    request_timeout: Duration,
    client: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
    up: AtomicBool,
}

impl Upstream {
    /// `capacity`: requests in flight at once (the rest get 429).
    pub fn new(
        name: &str,
        base: &str,
        upstream_model: Option<String>,
        request_timeout: Duration,
        capacity: usize,
    ) -> Result<Upstream, reqwest::Error> {
        // No proxy from the environment: the engine is on loopback, and a proxy would see
        // every prompt in clear.
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Upstream {
            name: name.to_string(),
            base: std::sync::RwLock::new(base.to_string()),
            upstream_model,
            request_timeout,
            client,
            slots: Arc::new(tokio::sync::Semaphore::new(capacity.max(1))),
            up: AtomicBool::new(false),
        })
    }

    /// Marks the engine ready (it answered `GET /v1/models`) or not (it exited, restarting).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Whether requests go through now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// A restarted engine may listen on a new port.
    pub fn set_base(&self, base: &str) {
        if let Ok(mut b) = self.base.write() {
            *b = base.to_string();
        }
    }

    fn url(&self, path: &str) -> String {
        let base = self.base.read().map(|b| b.clone()).unwrap_or_default();
        format!("{base}{path}")
    }

    /// `GET /v1/models` answered 200: the engine serves.
    pub async fn probe(&self) -> bool {
        self.client
            .get(self.url("/v1/models"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Forwards one completion request (its JSON body, already parsed) and answers the client.
    pub(super) async fn forward(
        &self,
        kind: Kind,
        mut body: Value,
        outcome: OutcomeSlot,
    ) -> Result<Response, ApiError> {
        if !self.is_up() {
            return Err(unavailable(format!(
                "the engine of `{}` is not serving (starting or restarting)",
                self.name
            )));
        }
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("queue_full"),
                format!("`{}` has as many requests in flight as it takes", self.name),
            )
        })?;
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let client_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        body["model"] = json!(self.upstream_model.as_deref().unwrap_or(&self.name));
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let path = match kind {
            Kind::Chat => "/v1/chat/completions",
            Kind::Text => "/v1/completions",
        };
        let send = self.client.post(self.url(path)).json(&body).send();
        let answer = tokio::time::timeout(self.request_timeout, send)
            .await
            .map_err(|_| self.hung())?
            .map_err(|e| {
                unavailable(format!("the engine of `{}` did not answer: {e}", self.name))
            })?;
        let status = answer.status();
        if !status.is_success() {
            return Ok(self.refusal(status, answer).await);
        }
        if !stream {
            let bytes = tokio::time::timeout(self.request_timeout, read_capped(answer))
                .await
                .map_err(|_| self.hung())??;
            let mut v: Value = serde_json::from_slice(&bytes).map_err(|_| self.garbage())?;
            if !v.get("choices").is_some_and(Value::is_array) {
                return Err(self.garbage());
            }
            let (usage, reason) = (usage_of(&v), finish_of(&v));
            outcome.finished(
                usage.unwrap_or_default(),
                reason.unwrap_or(FinishReason::Stop),
            );
            v["model"] = json!(self.name);
            drop(permit);
            return Ok(Json(v).into_response());
        }
        let events = relay(
            answer.bytes_stream(),
            self.name.clone(),
            client_usage,
            self.request_timeout,
            outcome,
            permit,
        );
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(events))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
    }

    /// The engine's own OpenAI error passes through; anything else is a 502.
    async fn refusal(&self, status: StatusCode, answer: reqwest::Response) -> Response {
        let Ok(bytes) = read_capped(answer).await else {
            return self.garbage().into_response();
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.get("error").is_some() => (status, Json(v)).into_response(),
            _ => error(
                StatusCode::BAD_GATEWAY,
                "server_error",
                Some("engine_error"),
                format!("the engine of `{}` answered {status}", self.name),
            )
            .into_response(),
        }
    }

    fn garbage(&self) -> ApiError {
        error(
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("engine_error"),
            format!(
                "the engine of `{}` answered something that is not an OpenAI completion",
                self.name
            ),
        )
    }

    fn hung(&self) -> ApiError {
        error(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            Some("engine_timeout"),
            format!(
                "the engine of `{}` did not answer within {} s",
                self.name,
                self.request_timeout.as_secs()
            ),
        )
    }
}

fn unavailable(message: String) -> ApiError {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        Some("engine_unavailable"),
        message,
    )
}

async fn read_capped(answer: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut chunks = answer.bytes_stream();
    while let Some(c) = chunks.next().await {
        let c = c.map_err(|e| unavailable(format!("the engine's answer broke off: {e}")))?;
        if out.len().saturating_add(c.len()) > MAX_ANSWER {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                "server_error",
                Some("engine_error"),
                format!("the engine's answer is larger than {MAX_ANSWER} bytes"),
            ));
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    let n = |k: &str| {
        u.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
    };
    Some(Usage {
        prompt_tokens: n("prompt_tokens")?,
        completion_tokens: n("completion_tokens")?,
    })
}

fn finish_of(v: &Value) -> Option<FinishReason> {
    match v.pointer("/choices/0/finish_reason")?.as_str()? {
        "length" => Some(FinishReason::Length),
        _ => Some(FinishReason::Stop),
    }
}

/// One SSE event's `data`, its `data:` lines joined (the SSE rule).
fn event_data(event: &str) -> Option<String> {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// What the relay does with one event from the engine.
#[derive(Debug, PartialEq)]
pub enum Relayed {
    /// Send this `data` on.
    Send(String),
    /// Usage only, which the client did not ask for.
    Drop,
    /// `[DONE]`.
    Done,
    /// Not an OpenAI chunk.
    Garbage,
}

/// Looks at one event: notes usage and the finish reason, renames the model.
fn relay_one(
    data: &str,
    name: &str,
    client_usage: bool,
    seen: &mut (Option<Usage>, Option<FinishReason>),
) -> Relayed {
    if data.trim() == "[DONE]" {
        return Relayed::Done;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(data) else {
        return Relayed::Garbage;
    };
    if v.get("error").is_some() {
        return Relayed::Send(data.to_string());
    }
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return Relayed::Garbage;
    };
    let usage_only = choices.is_empty();
    if let Some(u) = usage_of(&v) {
        seen.0 = Some(u);
    }
    if let Some(r) = finish_of(&v) {
        seen.1 = Some(r);
    }
    if usage_only && !client_usage {
        return Relayed::Drop;
    }
    if !client_usage && let Some(o) = v.as_object_mut() {
        o.remove("usage");
    }
    v["model"] = json!(name);
    Relayed::Send(v.to_string())
}

/// The engine's SSE bytes, cut into events and judged one by one ([`Relayed`]); keeps the usage
/// and finish reason seen so far. Pure: the relay task feeds it, tests and the fuzzer too.
pub struct SseRelay {
    name: String,
    client_usage: bool,
    buf: Vec<u8>,
    seen: (Option<Usage>, Option<FinishReason>),
    /// Chunks that carried generated text: the completion's tokens when the engine sends no
    /// usage in streams (llama-cpp-python 0.3.36 does not; llama.cpp sends a token a chunk).
    deltas: usize,
}

impl SseRelay {
    /// `name`: the model name the client used; `client_usage`: whether it asked for usage.
    pub fn new(name: &str, client_usage: bool) -> SseRelay {
        SseRelay {
            name: name.to_string(),
            client_usage,
            buf: Vec::new(),
            seen: (None, None),
            deltas: 0,
        }
    }

    /// Takes `chunk`; returns what to do with each event it completed, in order. Stops at
    /// `Done` or `Garbage` (what follows is not looked at). `None` when the pending event
    /// would pass [`MAX_ANSWER`].
    pub fn push(&mut self, chunk: &[u8]) -> Option<Vec<Relayed>> {
        if self.buf.len().saturating_add(chunk.len()) > MAX_ANSWER {
            return None;
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((end, sep)) = find_event_end(&self.buf) {
            let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end.saturating_add(sep));
            let Some(data) = event_data(&text) else {
                continue;
            };
            let r = relay_one(&data, &self.name, self.client_usage, &mut self.seen);
            if matches!(&r, Relayed::Send(d) if carries_text(d)) {
                self.deltas = self.deltas.saturating_add(1);
            }
            let last = matches!(r, Relayed::Done | Relayed::Garbage);
            out.push(r);
            if last {
                break;
            }
        }
        Some(out)
    }

    /// The engine's usage, if it sent any.
    pub fn usage(&self) -> Option<Usage> {
        self.seen.0
    }

    /// What the audit records: the engine's usage, else the text chunks counted as completion
    /// tokens with the prompt's unknown (0).
    pub fn audited_usage(&self) -> Usage {
        self.seen.0.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.deltas,
        })
    }

    /// Whether a chunk carried a finish reason.
    pub fn finished(&self) -> bool {
        self.seen.1.is_some()
    }

    fn record(&self, outcome: &OutcomeSlot) {
        outcome.finished(
            self.audited_usage(),
            self.seen.1.unwrap_or(FinishReason::Stop),
        );
    }
}

/// The client's event stream: the engine's events, one by one, each bounded by `idle`.
/// Dropping it (the client left) ends the task reading the engine's answer, which closes that
/// connection and so stops the engine's generation.
fn relay(
    body: impl futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
    name: String,
    client_usage: bool,
    idle: Duration,
    outcome: OutcomeSlot,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    tokio::spawn(async move {
        let _permit = permit;
        let mut body = Box::pin(body);
        let mut sse = SseRelay::new(&name, client_usage);
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let Some(events) = sse.push(&std::mem::take(&mut pending)) else {
                let _ = tx
                    .send(failed("the engine sent an event larger than the cap"))
                    .await;
                return;
            };
            for r in events {
                match r {
                    Relayed::Send(d) => {
                        if tx.send(frame(&d)).await.is_err() {
                            return;
                        }
                    }
                    Relayed::Drop => {}
                    Relayed::Done => {
                        sse.record(&outcome);
                        let _ = tx.send(frame("[DONE]")).await;
                        return;
                    }
                    Relayed::Garbage => {
                        let _ = tx
                            .send(failed(
                                "the engine sent an event that is not an OpenAI chunk",
                            ))
                            .await;
                        return;
                    }
                }
            }
            let next = tokio::select! {
                _ = tx.closed() => return,
                n = tokio::time::timeout(idle, body.next()) => n,
            };
            let problem = match next {
                Err(_) => "the engine stopped sending (timed out)".to_string(),
                Ok(None) if sse.finished() => {
                    // Closed after its last chunk but without [DONE].
                    sse.record(&outcome);
                    let _ = tx.send(frame("[DONE]")).await;
                    return;
                }
                Ok(None) => "the engine ended the answer early".to_string(),
                Ok(Some(Err(e))) => format!("the engine's answer broke off: {e}"),
                Ok(Some(Ok(chunk))) => {
                    pending = chunk.to_vec();
                    continue;
                }
            };
            let _ = tx.send(failed(&problem)).await;
            return;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    })
}

fn frame(data: &str) -> bytes::Bytes {
    bytes::Bytes::from(format!("data: {data}\n\n"))
}

/// An OpenAI-shaped error event, the stream's last.
fn failed(message: &str) -> bytes::Bytes {
    frame(
        &json!({"error": {"message": message, "type": "server_error", "param": null,
                          "code": "engine_error"}})
        .to_string(),
    )
}

/// Whether a relayed chunk carries generated text (a chat delta's or a completion's).
fn carries_text(data: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return false;
    };
    let c = &v["choices"][0];
    [&c["delta"]["content"], &c["text"]]
        .iter()
        .any(|t| t.as_str().is_some_and(|s| !s.is_empty()))
}

/// The end of the first whole event in `buf`: (where it ends, how long the separator is).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
