//! `ward proxy`: a plain OpenAI-compatible API on loopback whose every request leaves encrypted
//! end to end (`application/ward-e2e`) to the key a verified attestation vouches for, so the
//! OpenAI SDKs, curl and any other OpenAI client work unchanged against a confidential wardd.
//!
//! - The server's attestation is checked with [`crate::attested`], as `ward chat` checks it
//!   (same flags, fails closed, `--insecure` the only way past what cannot be checked): once at
//!   start, every `--reattest-secs`, and again when the server refuses a request sealed to the
//!   key the proxy holds (wardd restarted with a new key): then the proxy re-attests once and, if
//!   the verified key changed, retries that request once.
//! - While the attestation is refused (or unreachable), every request is answered with an
//!   OpenAI-shaped error (502, code `attestation_failed`, naming what failed). Nothing is ever
//!   sent in plaintext: there is no code path that sends an unsealed body.
//! - Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`. The model list
//!   is fetched sealed too. A streamed answer is relayed as SSE as each sealed chunk opens; an
//!   answer that fails to open, or ends without its final chunk, aborts the client's transfer
//!   (a truncation, never a complete-looking answer).
//! - None of the client's headers (an `Authorization` included) are forwarded. The status line
//!   is the server's and is not authenticated; the body is.
//!
//! Never logs a prompt or an answer: route, status, sizes and times only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use tracing::Instrument as _;
use ward_agent::inference_api::e2e::{E2E_STREAM_TYPE, E2E_TYPE};
use ward_agent::inference_api::openai::error as api_error;
use ward_e2e::{E2eError, MAX_REQUEST, RequestSealer, ResponseOpener};

use crate::attested::{TrustArgs, VerifiedKey, fetch_verified_key, now};

/// What `ward proxy` needs.
pub struct ProxyArgs {
    pub listen: SocketAddr,
    /// Allow a listen address other than loopback.
    pub listen_any: bool,
    /// The server's OpenAI-compatible base URL (`https://HOST/v1`).
    pub url: String,
    pub trust: TrustArgs,
    /// Re-attest this often even without a sign of change.
    pub reattest_secs: u64,
    /// The key every request is signed with (the server's model policies name it).
    pub client_key: Option<ward_e2e::ClientKey>,
}

/// A refused attestation is tried again at the next request once it is this old.
const RETRY_REFUSED: Duration = Duration::from_secs(5);

/// How long fetching and verifying the attestation may take.
const ATTESTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the proxy answers a request with an error instead of the server's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the attestation of {url} is refused, nothing was sent: {why}")]
    Attestation { url: String, why: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("the request cannot be encrypted: {0}")]
    Seal(E2eError),
    #[error("{url} cannot be reached: {why}")]
    Unreachable { url: String, why: String },
    #[error("the server refused the encrypted request ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the server's encrypted answer does not open: {0}")]
    Answer(E2eError),
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, kind, code) = match &self {
            ProxyError::Attestation { .. } => (
                StatusCode::BAD_GATEWAY,
                "attestation_error",
                "attestation_failed",
            ),
            ProxyError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
            ),
            ProxyError::Seal(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "cannot_encrypt",
            ),
            ProxyError::Unreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unreachable",
            ),
            ProxyError::Refused { status, .. } => {
                (*status, "upstream_error", "encrypted_request_refused")
            }
            ProxyError::Answer(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "bad_encrypted_answer",
            ),
        };
        api_error(status, kind, Some(code), message).into_response()
    }
}

/// The attested key the proxy encrypts to, or why there is none.
struct KeyState {
    current: Result<Arc<VerifiedKey>, String>,
    checked_at: Instant,
    /// Bumped at every attestation, so concurrent requests that saw the same refusal
    /// re-attest once between them.
    generation: u64,
}

struct Proxy {
    http: reqwest::Client,
    /// The server's base URL, without a trailing slash.
    base: String,
    /// The path of the base URL (`/v1`): what the server sees, and so what requests are
    /// sealed for.
    prefix: String,
    trust: TrustArgs,
    key: tokio::sync::Mutex<KeyState>,
    /// Signs every request when set.
    client_key: Option<ward_e2e::ClientKey>,
}

impl Proxy {
    fn refused(&self, why: String) -> ProxyError {
        ProxyError::Attestation {
            url: self.base.clone(),
            why,
        }
    }

    /// The key to encrypt to, re-attesting first if the last attempt was refused a while ago.
    async fn key(&self) -> Result<(Arc<VerifiedKey>, u64), ProxyError> {
        let stale = {
            let s = self.key.lock().await;
            match &s.current {
                Ok(k) => return Ok((k.clone(), s.generation)),
                Err(why) if s.checked_at.elapsed() < RETRY_REFUSED => {
                    return Err(self.refused(why.clone()));
                }
                Err(_) => s.generation,
            }
        };
        self.reattest(Some(stale)).await
    }

    /// Fetches and verifies the attestation again, unless another request did since
    /// `seen` (the generation it saw); `None` always re-attests.
    async fn reattest(&self, seen: Option<u64>) -> Result<(Arc<VerifiedKey>, u64), ProxyError> {
        let mut s = self.key.lock().await;
        if seen.is_none_or(|g| g == s.generation) {
            let before = s.current.as_ref().ok().map(|k| k.encoded.clone());
            // Requests wait on this lock: a server that never answers must not hold them.
            let fetched = tokio::time::timeout(
                ATTESTATION_TIMEOUT,
                fetch_verified_key(&self.http, &self.base, &self.trust),
            )
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "GET {}/attestation did not answer within {ATTESTATION_TIMEOUT:?}",
                    self.base
                ))
            });
            s.generation += 1;
            s.checked_at = Instant::now();
            s.current = match fetched {
                Ok(k) => {
                    if before.as_ref().is_some_and(|b| *b != k.encoded) {
                        tracing::warn!("the server's key changed; its new attestation verified");
                    } else if before.is_none() {
                        tracing::info!(
                            suite = ?k.key.suite,
                            "the server's attestation verified; encrypting to its key"
                        );
                    }
                    Ok(Arc::new(k))
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::error!(
                        reason = %why,
                        "the server's attestation is REFUSED: every request is answered with an error"
                    );
                    Err(why)
                }
            };
        }
        match &s.current {
            Ok(k) => Ok((k.clone(), s.generation)),
            Err(why) => Err(self.refused(why.clone())),
        }
    }

    /// Sends `body` sealed to `key` as `method {prefix}{rel}`; the server's answer opened, or
    /// its refusal of the sealed request (the key may be old).
    async fn send(
        &self,
        key: &VerifiedKey,
        method: &Method,
        rel: &str,
        body: &serde_json::Value,
    ) -> Result<Result<Response, ProxyError>, ProxyError> {
        let path = format!("{}{rel}", self.prefix);
        let (sealed, opener) = RequestSealer::seal_as(
            &key.key,
            method.as_str(),
            &path,
            body,
            now(),
            self.client_key.as_ref(),
        )
        .map_err(ProxyError::Seal)?;
        let url = format!("{}{rel}", self.base);
        let resp = self
            .http
            .request(method.clone(), &url)
            .header(header::CONTENT_TYPE, E2E_TYPE)
            .body(sealed)
            .send()
            .await
            .map_err(|e| ProxyError::Unreachable {
                url: url.clone(),
                why: error_chain(&e),
            })?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        if content_type.starts_with(E2E_STREAM_TYPE.as_bytes()) {
            Ok(Ok(relay_stream(status, resp, opener)))
        } else if content_type.starts_with(E2E_TYPE.as_bytes()) {
            let whole = resp.bytes().await.map_err(|e| ProxyError::Unreachable {
                url,
                why: error_chain(&e),
            })?;
            let plain = opener.open_whole(&whole).map_err(ProxyError::Answer)?;
            Ok(Ok(Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(plain.to_vec()))
                .unwrap_or_else(|_| {
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                })))
        } else {
            // Refused before it was opened: wardd says no more than "bad encrypted request".
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            Ok(Err(ProxyError::Refused { status, message }))
        }
    }

    /// One request: sealed to the attested key; if the server refuses it as an encrypted
    /// request, re-attested once and, if the key changed, retried once.
    async fn forward(
        &self,
        method: Method,
        rel: &str,
        body: serde_json::Value,
    ) -> Result<Response, ProxyError> {
        let (key, generation) = self.key().await?;
        let refusal = match self.send(&key, &method, rel, &body).await? {
            Ok(answer) => return Ok(answer),
            Err(ProxyError::Refused { status, message }) if status == StatusCode::BAD_REQUEST => {
                ProxyError::Refused { status, message }
            }
            Err(other) => return Err(other),
        };
        let (fresh, _) = self.reattest(Some(generation)).await?;
        if fresh.encoded == key.encoded {
            return Err(refusal);
        }
        tracing::info!("retrying the request once, sealed to the server's new key");
        self.send(&fresh, &method, rel, &body).await?
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(inner) = next {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        next = inner.source();
    }
    s
}

/// Relays a sealed stream as SSE, each chunk as it opens; a chunk that does not open, or an
/// end without the final chunk, aborts the transfer.
fn relay_stream(
    status: StatusCode,
    resp: reqwest::Response,
    mut opener: ResponseOpener,
) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let relay = async move {
        let mut upstream = resp.bytes_stream();
        let (mut chunks, mut bytes) = (0u64, 0usize);
        while let Some(next) = upstream.next().await {
            let data = match next {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "the server's stream failed");
                    let _ = tx.send(Err(std::io::Error::other("upstream failed"))).await;
                    return;
                }
            };
            match opener.feed(&data) {
                Ok(opened) => {
                    for c in opened.iter().filter(|c| !c.is_empty()) {
                        chunks += 1;
                        bytes += c.len();
                        if tx.send(Ok(Bytes::copy_from_slice(c))).await.is_err() {
                            tracing::info!("the client went away");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the server's encrypted stream does not open");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
        if let Err(e) = opener.finish() {
            tracing::error!(error = %e, "the server's encrypted stream is cut short");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            return;
        }
        tracing::info!(chunks, bytes, "stream relayed");
    };
    tokio::spawn(relay.in_current_span());
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The JSON object of a client's request body.
fn json_object(body: &[u8]) -> Result<serde_json::Value, ProxyError> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(ProxyError::BadRequest(
            "the request body must be a JSON object".into(),
        )),
        Err(e) => Err(ProxyError::BadRequest(format!(
            "the request body is not JSON: {e}"
        ))),
    }
}

async fn handle(p: Arc<Proxy>, method: Method, rel: &'static str, body: Bytes) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!("request", %method, path = rel, request_bytes = body.len());
    async move {
        let answer = match method {
            Method::GET => Ok(serde_json::json!({})),
            _ => json_object(&body),
        };
        let answer = match answer {
            Ok(v) => p.forward(method, rel, v).await,
            Err(e) => Err(e),
        };
        let response = answer.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "answered with an error");
            e.into_response()
        });
        tracing::info!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "answered"
        );
        response
    }
    .instrument(span)
    .await
}

fn router(p: Arc<Proxy>) -> Router {
    Router::new()
        .route(
            "/v1/models",
            get(|State(p): State<Arc<Proxy>>| handle(p, Method::GET, "/models", Bytes::new())),
        )
        .route(
            "/v1/chat/completions",
            post(|State(p): State<Arc<Proxy>>, body: Bytes| {
                handle(p, Method::POST, "/chat/completions", body)
            }),
        )
        .route(
            "/v1/completions",
            post(|State(p): State<Arc<Proxy>>, body: Bytes| {
                handle(p, Method::POST, "/completions", body)
            }),
        )
        .fallback(|| async {
            api_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("unknown_route"),
                "ward proxy serves GET /v1/models, POST /v1/chat/completions and POST /v1/completions",
            )
            .into_response()
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(p)
}

pub async fn proxy(a: ProxyArgs) -> anyhow::Result<bool> {
    if !a.listen.ip().is_loopback() && !a.listen_any {
        bail!(
            "--listen {} is not a loopback address: the proxy serves plaintext, so it listens on \
             loopback unless --listen-any says otherwise",
            a.listen
        );
    }
    // Printable ASCII only: tracing-subscriber 0.3.23's parser panics inside a multi-byte
    // character (wardd's config checks the same before parsing).
    let filter = std::env::var("WARD_LOG")
        .ok()
        .filter(|v| v.chars().all(|c| c.is_ascii_graphic() || c == ' '))
        .and_then(|v| tracing_subscriber::EnvFilter::builder().parse(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let base = a.url.trim_end_matches('/').to_string();
    let parsed = reqwest::Url::parse(&base).with_context(|| format!("--url {base}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("--url {base}: not http or https");
    }
    let prefix = parsed.path().trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client")?;
    let p = Arc::new(Proxy {
        http,
        base: base.clone(),
        prefix,
        trust: a.trust,
        client_key: a.client_key,
        key: tokio::sync::Mutex::new(KeyState {
            current: Err("not attested yet".into()),
            checked_at: Instant::now(),
            generation: 0,
        }),
    });
    if let Err(e) = p.reattest(None).await {
        eprintln!(
            "ward proxy: REFUSED: {e}\nward proxy: every request will be answered with an error \
             (code attestation_failed) until the attestation verifies"
        );
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let local = listener.local_addr().context("the listen address")?;
    eprintln!(
        "ward proxy: serving http://{local}/v1, every request encrypted end to end to {base}"
    );
    let every = Duration::from_secs(a.reattest_secs.max(1));
    let periodic = p.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let _ = periodic.reattest(None).await;
        }
    });
    // Without TCP_NODELAY (axum 0.8 leaves it off) a small answer can wait out the client's
    // delayed ACK: tens of milliseconds a request.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(p))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")?;
    Ok(true)
}

#[cfg(test)]
mod tests;
