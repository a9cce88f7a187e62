//! End-to-end encrypted inference (`docs/encrypted-inference.md`):
//! `GET /v1/attestation?nonce=` returns TEE evidence whose report data binds the client's nonce,
//! the boot-time HPKE key configuration and the GPU evidence; requests sent with
//! `Content-Type: application/ward-e2e` are opened here, answered by the ordinary
//! OpenAI-compatible routes, and their response bodies sealed chunk by chunk (SSE events
//! included) with a key exported from the request's HPKE context. The SHA-256 of each
//! ciphertext (and the reason for a refusal) goes into the request's [`SealedNote`], from which
//! its one audit entry is written; never any content.

use super::openai::now;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use ward_e2e::{E2eError, MAX_REQUEST, ServerKey, report_data};

use crate::attestation::Attestation;

/// What the encryption layer learnt about one request, for its audit entry.
#[derive(Clone, Debug, Default)]
pub struct SealedNote(Arc<std::sync::Mutex<Sealed>>);

/// The hashes of an encrypted exchange and why it was refused, if it was.
#[derive(Clone, Debug, Default)]
pub struct Sealed {
    pub request_sha256: Option<String>,
    pub response_sha256: Option<String>,
    pub suite: Option<String>,
    pub refused: Option<&'static str>,
}

impl SealedNote {
    /// What was noted so far.
    pub fn get(&self) -> Sealed {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut Sealed)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
}

/// Whether a request carries an encrypted body.
pub fn is_sealed(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(E2E_TYPE.as_bytes()))
}

/// The content type of encrypted requests and non-streamed responses.
pub const E2E_TYPE: &str = "application/ward-e2e";
/// The content type of encrypted streamed responses.
pub const E2E_STREAM_TYPE: &str = "application/ward-e2e-stream";

/// The boot-time key and the attestation that vouches for it.
pub struct E2e {
    pub key: ServerKey,
    pub attestation: Arc<Attestation>,
}

fn bad(status: StatusCode, message: &str) -> Response {
    super::openai::error(status, "invalid_request_error", None, message).into_response()
}

#[derive(serde::Deserialize)]
pub struct NonceQuery {
    nonce: String,
}

/// `GET /v1/attestation?nonce=<base64url, 32 to 64 bytes>`.
pub async fn attestation(State(e2e): State<Arc<E2e>>, Query(q): Query<NonceQuery>) -> Response {
    let Ok(nonce) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(q.nonce.trim_end_matches('='))
    else {
        return bad(StatusCode::BAD_REQUEST, "nonce is not base64url");
    };
    if !(32..=64).contains(&nonce.len()) {
        return bad(StatusCode::BAD_REQUEST, "nonce must be 32 to 64 bytes");
    }
    let key_config = e2e.key.config().encode();
    // GPUs sign a nonce derived from the client's; their evidence is then bound by the CPU's.
    let gpus = match e2e
        .attestation
        .additional_evidence(&Sha256::digest(&nonce))
        .await
    {
        Ok(g) if g.is_empty() => None,
        Ok(g) => Some(g),
        Err(e) => {
            tracing::error!(error = %e, "GPU evidence failed");
            return bad(
                StatusCode::SERVICE_UNAVAILABLE,
                "GPU evidence is unavailable",
            );
        }
    };
    let rd = report_data(&nonce, &key_config, gpus.as_deref());
    let evidence = match e2e.attestation.evidence(&rd).await {
        Ok(ev) => ev,
        Err(e) => {
            tracing::error!(error = %e, "evidence failed");
            return bad(
                StatusCode::SERVICE_UNAVAILABLE,
                "TEE evidence is unavailable",
            );
        }
    };
    let tee = e2e
        .attestation
        .tee()
        .map(|t| t.to_string())
        .unwrap_or_default();
    let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap_or_default();
    axum::Json(serde_json::json!({
        "version": 1,
        "tee": tee,
        "evidence": parse(&evidence),
        "gpus": gpus.as_deref().map(parse),
        "gpus_raw": gpus.as_deref().map(|g| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(g)),
        "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key_config),
        "report_data": hex::encode(rd),
    }))
    .into_response()
}

/// Opens encrypted requests and seals their responses; plaintext requests pass through.
pub async fn layer(State(e2e): State<Arc<E2e>>, req: Request, next: Next) -> Response {
    if !is_sealed(req.headers()) {
        return next.run(req).await;
    }
    let note = req
        .extensions()
        .get::<SealedNote>()
        .cloned()
        .unwrap_or_default();
    note.update(|n| n.suite = Some(format!("{:?}", e2e.key.config().suite)));
    let (mut parts, body) = req.into_parts();
    let Ok(sealed) = axum::body::to_bytes(body, MAX_REQUEST).await else {
        note.update(|n| n.refused = Some("too large"));
        return bad(StatusCode::PAYLOAD_TOO_LARGE, "encrypted request too large");
    };
    let request_hash = hex::encode(Sha256::digest(&sealed));
    note.update(|n| n.request_sha256 = Some(request_hash));
    // The route the request arrived on must be the one its sender sealed: the host cannot replay
    // a sealed chat request to /v1/completions.
    let (method, path) = (parts.method.to_string(), parts.uri.path().to_string());
    let opened = match e2e.key.open_request(&sealed, &method, &path, now()) {
        Ok(o) => o,
        Err(e) => {
            // One answer for every reason; the reason goes to the log and the audit log only.
            tracing::warn!(reason = %e, "encrypted request refused");
            note.update(|n| n.refused = Some(reason(&e)));
            if e == E2eError::Busy {
                // Not about this request: too many others within the replay window.
                return bad(StatusCode::SERVICE_UNAVAILABLE, "busy; try again shortly");
            }
            return bad(StatusCode::BAD_REQUEST, "bad encrypted request");
        }
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    // The signing key is who asks; sealed with the body, so the host cannot strip or swap it.
    if let Some(id) = &opened.client {
        parts.extensions.insert(crate::access::Client::key(id));
    }
    let inner = Request::from_parts(parts, Body::from(opened.body.to_vec()));
    let response = next.run(inner).await;
    let (mut parts, body) = response.into_parts();
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if streamed { E2E_STREAM_TYPE } else { E2E_TYPE }),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut sealer = opened.sealer;
    let prelude = Bytes::copy_from_slice(&sealer.prelude());
    let mut hash = Sha256::new();
    hash.update(&prelude);
    let mut frames = body.into_data_stream();
    let out = async_stream(move |tx| async move {
        if tx.send(Ok(prelude)).await.is_err() {
            return;
        }
        // An answer cut short inside (the engine failed mid-stream) gets no last chunk, and the
        // transfer is aborted: the client sees a truncation, never a complete answer.
        let cut_short = || Err(std::io::Error::other("the response was cut short"));
        while let Some(frame) = frames.next().await {
            let Ok(data) = frame else {
                tracing::warn!("the response body failed: the sealed answer ends unfinished");
                let _ = tx.send(cut_short()).await;
                return;
            };
            match sealer.seal_chunk(&data, false) {
                Ok(c) => {
                    hash.update(&c);
                    if tx.send(Ok(Bytes::from(c))).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = tx.send(cut_short()).await;
                    return;
                }
            }
        }
        if let Ok(last) = sealer.seal_chunk(b"", true) {
            hash.update(&last);
            // Noted before the last chunk goes out, so the entry written when the body ends
            // has it.
            note.update(|n| n.response_sha256 = Some(hex::encode(hash.finalize())));
            let _ = tx.send(Ok(Bytes::from(last))).await;
        }
    });
    Response::from_parts(parts, Body::from_stream(out))
}

pub(super) fn reason(e: &E2eError) -> &'static str {
    match e {
        E2eError::WrongKey => "wrong key",
        E2eError::Decrypt => "does not decrypt",
        E2eError::Replay => "replay",
        E2eError::Stale { .. } => "stale",
        E2eError::Route { .. } => "wrong route",
        E2eError::Busy => "busy",
        E2eError::ClientSignature => "bad client signature",
        _ => "malformed",
    }
}

/// A body stream fed by a task through a bounded channel.
pub(super) fn async_stream<F, Fut>(
    f: F,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use tower::ServiceExt as _;
    use ward_e2e::{RequestSealer, Suite};

    use super::*;

    /// An answer whose body fails half way must not reach the client sealed as complete.
    #[tokio::test]
    async fn an_answer_cut_short_is_a_truncation_for_the_client() {
        let raw: crate::config::RawConfig = toml::from_str("").unwrap();
        let config = crate::config::Config::from_raw(raw).unwrap();
        let attestation = Arc::new(
            Attestation::from_config(&config, crate::audit::Audit::default())
                .await
                .unwrap(),
        );
        let e2e = Arc::new(E2e {
            key: ServerKey::generate(Suite::X25519),
            attestation,
        });
        let key = e2e.key.config().clone();
        let app = axum::Router::new()
            .route(
                "/v1/chat/completions",
                post(|| async {
                    let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                        Ok(Bytes::from_static(b"data: {\"partial\":true}\n\n")),
                        Err(std::io::Error::other("the engine died")),
                    ];
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .body(Body::from_stream(futures_util::stream::iter(parts)))
                        .unwrap()
                }),
            )
            .layer(axum::middleware::from_fn_with_state(e2e, layer));
        let (sealed, mut opener) = RequestSealer::seal(
            &key,
            "POST",
            "/v1/chat/completions",
            &serde_json::json!({"stream": true}),
            now(),
        )
        .unwrap();
        let request = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header(header::CONTENT_TYPE, E2E_TYPE)
            .body(Body::from(sealed))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body().into_data_stream();
        let mut plain = Vec::new();
        let mut aborted = false;
        while let Some(frame) = body.next().await {
            match frame {
                Ok(bytes) => {
                    for c in opener.feed(&bytes).unwrap() {
                        plain.extend_from_slice(&c);
                    }
                }
                Err(_) => {
                    aborted = true;
                    break;
                }
            }
        }
        assert!(aborted, "the transfer is aborted");
        assert_eq!(plain, b"data: {\"partial\":true}\n\n");
        assert!(
            matches!(opener.finish(), Err(E2eError::Truncated)),
            "the client sees a truncation, not a complete answer"
        );
    }
}
