//! The Oblivious HTTP gateway (RFC 9458, and draft-ietf-ohai-chunked-ohttp for streamed
//! answers) in front of the inference routes, on the attested key (`docs/encrypted-inference.md`,
//! "Oblivious HTTP"): `GET /v1/ohttp-keys` serves the key configuration the attestation binds,
//! as `application/ohttp-keys`; `POST /v1/ohttp` takes `message/ohttp-req` or
//! `message/ohttp-chunked-req`, opens it (`ward_e2e::ohttp`), reads the Binary HTTP request
//! inside (RFC 9292, Mozilla's `bhttp`), answers it with the same OpenAI routes, policy and
//! audit entry as any request, and seals the Binary HTTP answer: whole, or chunk by chunk as it
//! streams (one Binary HTTP content chunk per sealed chunk, so SSE events arrive as they are
//! made). Standard OHTTP clients and relays work unchanged; a relay then hides who asks.
//!
//! Anti-replay (RFC 9458 section 6.5.1): the inner request must carry a `Date` within 300
//! seconds of wardd's clock, and an `enc` is accepted once, with the replay window of ward's
//! own requests. A stale or missing `Date`, or a replay, is answered inside the encapsulation
//! with 400 and wardd's `Date`, so an honest client can correct its clock and the host learns
//! nothing more than "400".

use std::io::Cursor;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt as _;
use ward_e2e::ohttp::{
    CHUNKED_REQUEST_TYPE, CHUNKED_RESPONSE_TYPE, OHTTP_KEYS_TYPE, OHTTP_REQUEST_TYPE,
    OHTTP_RESPONSE_TYPE, OhttpRequest, OhttpSealer,
};
use ward_e2e::{MAX_REQUEST, put_varint};

use super::e2e::{E2e, SealedNote};
use super::openai::{OutcomeSlot, now};
use crate::access::Client;

/// The largest whole (non-streamed) inner answer sealed.
const MAX_ANSWER: usize = 16 << 20;

/// What the gateway needs: the key, and the routes it dispatches to.
pub(super) struct Gateway {
    pub e2e: Arc<E2e>,
    /// The OpenAI routes, without the outer layers (which already ran for `/v1/ohttp`).
    pub inner: Router,
}

/// Whether a request is Oblivious HTTP.
pub fn is_ohttp(headers: &axum::http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(OHTTP_REQUEST_TYPE.as_bytes())
            || v.starts_with(CHUNKED_REQUEST_TYPE.as_bytes())
    })
}

/// `GET /v1/ohttp-keys`.
pub(super) async fn keys(State(g): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, OHTTP_KEYS_TYPE)],
        g.e2e.key.ohttp_keys(),
    )
        .into_response()
}

fn plain_error(status: StatusCode, message: &'static str) -> Response {
    super::openai::error(status, "invalid_request_error", None, message).into_response()
}

/// `POST /v1/ohttp`.
pub(super) async fn gateway(State(g): State<Arc<Gateway>>, req: Request) -> Response {
    let chunked = match req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
    {
        Some(t) if t.starts_with(CHUNKED_REQUEST_TYPE.as_bytes()) => true,
        Some(t) if t.starts_with(OHTTP_REQUEST_TYPE.as_bytes()) => false,
        _ => {
            return plain_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send message/ohttp-req or message/ohttp-chunked-req",
            );
        }
    };
    let note = req
        .extensions()
        .get::<SealedNote>()
        .cloned()
        .unwrap_or_default();
    note.update(|n| {
        n.suite = Some(format!(
            "{}{:?}",
            if chunked { "ohttp-chunked " } else { "ohttp " },
            g.e2e.key.config().suite
        ));
    });
    let (parts, body) = req.into_parts();
    let Ok(sealed) = axum::body::to_bytes(body, MAX_REQUEST).await else {
        note.update(|n| n.refused = Some("too large"));
        return plain_error(StatusCode::PAYLOAD_TOO_LARGE, "encrypted request too large");
    };
    note.update(|n| n.request_sha256 = Some(hex::encode(Sha256::digest(&sealed))));
    let opened = match g.e2e.key.open_ohttp(&sealed, chunked) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(reason = %e, "oblivious HTTP request refused");
            note.update(|n| n.refused = Some(super::e2e::reason(&e)));
            return plain_error(StatusCode::BAD_REQUEST, "bad encrypted request");
        }
    };
    let inner = match inner_request(&g, &opened, &parts) {
        Ok(r) => r,
        Err((status, why)) => {
            tracing::warn!(reason = why, "oblivious HTTP request refused inside");
            note.update(|n| n.refused = Some(why));
            return sealed_error(opened.sealer, chunked, status, why);
        }
    };
    let response = match g.inner.clone().oneshot(inner).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if chunked {
        streamed(opened.sealer, response)
    } else {
        whole(opened.sealer, response).await
    }
}

/// The inner request, accepted against the replay window, with the outer request's slots (the
/// audit entry's outcome, the transport, a unix peer's identity) carried in.
fn inner_request(
    g: &Gateway,
    opened: &OhttpRequest,
    outer: &axum::http::request::Parts,
) -> Result<Request, (StatusCode, &'static str)> {
    let bad = |why| (StatusCode::BAD_REQUEST, why);
    let message = bhttp::Message::read_bhttp(&mut Cursor::new(&opened.bhttp[..]))
        .map_err(|_| bad("malformed binary HTTP"))?;
    let control = message.control();
    let (Some(method), Some(path)) = (control.method(), control.path()) else {
        return Err(bad("not a binary HTTP request"));
    };
    let created = message
        .header()
        .get(b"date")
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .ok_or(bad("no Date"))?
        .as_secs();
    g.e2e
        .key
        .accept_ohttp(opened, created, now())
        .map_err(|e| bad(super::e2e::reason(&e)))?;
    let method = Method::from_bytes(method).map_err(|_| bad("bad method"))?;
    let path = std::str::from_utf8(path).map_err(|_| bad("bad path"))?;
    let mut req = axum::http::Request::builder().method(method).uri(path);
    if let Some(ct) = message.header().get(b"content-type") {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let mut req = req
        .body(Body::from(message.content().to_vec()))
        .map_err(|_| bad("bad request line"))?;
    if let Some(slot) = outer.extensions.get::<OutcomeSlot>() {
        req.extensions_mut().insert(slot.clone());
    }
    if let Some(t) = outer.extensions.get::<super::Transport>() {
        req.extensions_mut().insert(*t);
    }
    if let Some(c) = outer.extensions.get::<Client>() {
        req.extensions_mut().insert(c.clone());
    }
    Ok(req)
}

/// A refusal inside the encapsulation: 400 with wardd's `Date`.
fn sealed_error(sealer: OhttpSealer, chunked: bool, status: StatusCode, why: &str) -> Response {
    let body = serde_json::json!({"error": {"message": why, "type": "invalid_request_error",
        "param": null, "code": null}})
    .to_string();
    let mut m = bhttp::Message::response(bhttp::StatusCode::try_from(status.as_u16()).unwrap_or(
        // 400 is a valid status; this is never taken.
        bhttp::StatusCode::OK,
    ));
    m.put_header("content-type", "application/json");
    m.put_header(
        "date",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    m.write_content(body);
    seal_message(sealer, chunked, &m)
}

fn seal_message(mut sealer: OhttpSealer, chunked: bool, m: &bhttp::Message) -> Response {
    let mut bytes = Vec::new();
    let mode = if chunked {
        bhttp::Mode::IndeterminateLength
    } else {
        bhttp::Mode::KnownLength
    };
    if m.write_bhttp(mode, &mut bytes).is_err() {
        return plain_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the answer",
        );
    }
    let (sealed, ct) = if chunked {
        let mut out = sealer.prelude().to_vec();
        match sealer.seal_chunk(&bytes, true) {
            Ok(c) => out.extend(c),
            Err(_) => return plain_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot seal"),
        }
        (out, CHUNKED_RESPONSE_TYPE)
    } else {
        match sealer.seal_whole(&bytes) {
            Ok(s) => (s, OHTTP_RESPONSE_TYPE),
            Err(_) => return plain_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot seal"),
        }
    };
    ([(header::CONTENT_TYPE, ct)], sealed).into_response()
}

/// The inner answer, whole, as a known-length Binary HTTP response.
async fn whole(sealer: OhttpSealer, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(content) = axum::body::to_bytes(body, MAX_ANSWER).await else {
        return plain_error(StatusCode::INTERNAL_SERVER_ERROR, "the answer failed");
    };
    let status =
        bhttp::StatusCode::try_from(parts.status.as_u16()).unwrap_or(bhttp::StatusCode::OK);
    let mut m = bhttp::Message::response(status);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_TYPE || name == header::RETRY_AFTER {
            m.put_header(name.as_str(), value.as_bytes());
        }
    }
    m.write_content(&content);
    seal_message(sealer, false, &m)
}

/// The inner answer streamed: an indeterminate-length Binary HTTP response (RFC 9292 section
/// 3.2) whose head is the first sealed chunk and each body frame one content chunk in its own
/// sealed chunk; the content and trailer terminators end it in the final chunk. An answer that
/// fails inside aborts the transfer: the client sees no final chunk, a truncation.
fn streamed(mut sealer: OhttpSealer, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let mut head = Vec::new();
    put_varint(&mut head, 3);
    put_varint(&mut head, u64::from(parts.status.as_u16()));
    for (name, value) in &parts.headers {
        if name == header::CONTENT_TYPE || name == header::RETRY_AFTER {
            put_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    put_varint(&mut head, 0);
    let mut frames = body.into_data_stream();
    let out = super::e2e::async_stream(move |tx| async move {
        let cut_short = || Err(std::io::Error::other("the response was cut short"));
        if tx
            .send(Ok(Bytes::copy_from_slice(sealer.prelude())))
            .await
            .is_err()
        {
            return;
        }
        let Ok(first) = sealer.seal_chunk(&head, false) else {
            let _ = tx.send(cut_short()).await;
            return;
        };
        if tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        while let Some(frame) = frames.next().await {
            let Ok(data) = frame else {
                tracing::warn!("the answer failed: the sealed answer ends unfinished");
                let _ = tx.send(cut_short()).await;
                return;
            };
            if data.is_empty() {
                continue;
            }
            let mut chunk = Vec::with_capacity(data.len() + 8);
            put_varint(&mut chunk, data.len() as u64);
            chunk.extend_from_slice(&data);
            let Ok(sealed) = sealer.seal_chunk(&chunk, false) else {
                let _ = tx.send(cut_short()).await;
                return;
            };
            if tx.send(Ok(Bytes::from(sealed))).await.is_err() {
                return;
            }
        }
        // Content terminator, then an empty trailer section.
        match sealer.seal_chunk(&[0, 0], true) {
            Ok(last) => {
                let _ = tx.send(Ok(Bytes::from(last))).await;
            }
            Err(_) => {
                let _ = tx.send(cut_short()).await;
            }
        }
    });
    (
        [(header::CONTENT_TYPE, CHUNKED_RESPONSE_TYPE)],
        Body::from_stream(out),
    )
        .into_response()
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    put_varint(out, name.len() as u64);
    out.extend_from_slice(name);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}
