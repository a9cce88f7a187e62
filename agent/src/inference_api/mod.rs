//! wardd's inference front, built once per listener that serves `inference`: the
//! OpenAI-compatible routes over ward-inference's engines ([`openai`]), `GET /v1/attestation` and
//! end-to-end encryption ([`e2e`], over the `ward-e2e` message layer), the encrypted-only gate, and one audit entry per inference request
//! ([`record`]). HTTP listeners merge [`router`] into their own; the ttrpc `InferenceService`
//! (`services/inference.rs`) calls the same router, so both transports follow the same rules.
//!
//! Order, outside in: span (HTTP) → audit entry and encrypted-only gate → open and seal
//! (`application/ward-e2e`) → the OpenAI handlers. `GET` requests (`/v1/models`,
//! `/v1/attestation`) are open on every listener that serves inference and are not audited
//! here (evidence is audited where it is made).
//!
//! Never logs or audits a prompt or an output: model ids, digests, token counts and ciphertext
//! hashes only.

pub mod e2e;
pub mod ohttp;
pub mod openai;
mod record;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use record::Transport;

use crate::audit::Audit;
use crate::models::Models;
use openai::{OutcomeSlot, Serving};

/// The status of a plaintext inference request on an encrypted-only listener: the request's
/// media type is what is refused (RFC 9110 15.5.16), and the body says which one to use.
pub const ENCRYPTION_REQUIRED: StatusCode = StatusCode::UNSUPPORTED_MEDIA_TYPE;

/// What every listener's inference front shares.
pub struct Shared {
    pub e2e: Arc<e2e::E2e>,
    /// The engines and their models' policies.
    pub serving: Serving,
    /// The loaded models, for the digest in audit entries.
    pub models: Arc<Models>,
    /// Where each request's entry goes.
    pub audit: Audit,
}

/// One listener's settings.
struct Front {
    shared: Arc<Shared>,
    listener: Arc<str>,
    encrypted_only: bool,
}

/// The inference routes of the listener named `listener`.
pub fn router(shared: &Arc<Shared>, listener: &str, encrypted_only: bool) -> Router {
    let front = Arc::new(Front {
        shared: shared.clone(),
        listener: Arc::from(listener),
        encrypted_only,
    });
    let gateway = Arc::new(ohttp::Gateway {
        e2e: shared.e2e.clone(),
        inner: openai::router(shared.serving.clone()),
    });
    // RFC 9540: the gateway and its key configuration at one well-known URI (POST and GET).
    let oblivious = Router::new()
        .route("/v1/ohttp", axum::routing::post(ohttp::gateway))
        .route(
            "/.well-known/ohttp-gateway",
            axum::routing::post(ohttp::gateway).get(ohttp::keys),
        )
        .with_state(gateway.clone());
    let openai = openai::router(shared.serving.clone())
        .merge(oblivious)
        .layer(from_fn_with_state(shared.e2e.clone(), e2e::layer))
        .layer(from_fn_with_state(front, gate));
    let attestation = Router::new()
        .route("/v1/attestation", get(e2e::attestation))
        .with_state(shared.e2e.clone())
        .merge(
            Router::new()
                .route("/v1/ohttp-keys", get(ohttp::keys))
                .with_state(gateway),
        );
    openai.merge(attestation)
}

/// The OpenAI-shaped refusal of a plaintext request on an encrypted-only listener.
fn encryption_required() -> Response {
    openai::error(
        ENCRYPTION_REQUIRED,
        "invalid_request_error",
        Some("encryption_required"),
        "this listener accepts only end-to-end encrypted requests \
         (Content-Type: application/ward-e2e, to the key of GET /v1/attestation)",
    )
    .into_response()
}

/// Audits every inference request (`POST`) and refuses plaintext ones where encryption is
/// required.
async fn gate(State(front): State<Arc<Front>>, mut req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let encrypted = e2e::is_sealed(req.headers()) || ohttp::is_ohttp(req.headers());
    // On an in-guest unix socket the kernel names the peer; a signed encrypted request's key,
    // when it has one, takes its place inside.
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::listen::UnixPeer>>()
        .and_then(|c| c.0.uid);
    if let Some(uid) = peer {
        req.extensions_mut().insert(crate::access::Client::Uid(uid));
    }
    let outcome = OutcomeSlot::default();
    let sealed = e2e::SealedNote::default();
    req.extensions_mut().insert(outcome.clone());
    req.extensions_mut().insert(sealed.clone());
    let mut pending = record::Pending {
        shared: front.shared.clone(),
        listener: front.listener.clone(),
        transport: req
            .extensions()
            .get::<Transport>()
            .copied()
            .unwrap_or(Transport::Http),
        path: req.uri().path().to_string(),
        encrypted,
        refused: None,
        outcome,
        sealed,
        span: tracing::Span::current(),
        started: std::time::Instant::now(),
    };
    let response = if front.encrypted_only && !encrypted {
        tracing::warn!("plaintext inference request refused: this listener is encrypted-only");
        pending.refused = Some("plaintext on an encrypted-only listener");
        // Read (and drop) the body first, up to the largest request wardd takes: answering and
        // closing with a body still arriving makes the kernel reset the connection, and the
        // client can lose the answer (seen as ECONNRESET in the inference_api test). Past the
        // limit the refusal goes out anyway.
        let _ = axum::body::to_bytes(req.into_body(), ward_e2e::MAX_REQUEST).await;
        encryption_required()
    } else {
        next.run(req).await
    };
    record::audited(response, pending)
}

#[cfg(test)]
mod tests;
