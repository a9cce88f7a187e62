//! The HTTP API: CoCo's api-server-rest paths, so its users work unchanged, on in-guest listeners
//! only (unix sockets and loopback TCP):
//! `GET /aa/token?token_type=kbs`, `GET /aa/evidence?runtime_data=...`, `POST /aa/aael`,
//! `GET /cdh/resource/<repo>/<type>/<tag>`, `GET /info`; and the inference API
//! ([`crate::inference_api`]) where the listener serves `inference`. On vsock, where the caller
//! may be the host, only the inference API (and `/info` with `health`) is routed: the
//! api-server-rest paths do not exist there.
//!
//! Answers follow api-server-rest: 200 with the raw bytes (`application/octet-stream`), 400 for a
//! missing parameter, 403 for a path whose service is not on this listener's allow-list, 404 for
//! an unknown path, 405 for a wrong method, and the error text otherwise. Each request gets a
//! tracing span; no body is ever logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::Instrument;

use crate::attestation::{Attestation, AttestationError, Extended};
use crate::config::ServiceKind;
use crate::listen::HttpListener;

struct Api {
    attestation: Arc<Attestation>,
    allowed: BTreeSet<ServiceKind>,
    listener: String,
}

fn bytes(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

fn failed(e: &AttestationError) -> Response {
    let status = match e {
        AttestationError::InvalidArgument(_) | AttestationError::EventLog(_) => {
            StatusCode::BAD_REQUEST
        }
        AttestationError::Kbs(ward_attester::kbs::KbsError::PolicyDenied { .. }) => {
            StatusCode::FORBIDDEN
        }
        AttestationError::Kbs(ward_attester::kbs::KbsError::ResourceUnavailable { .. }) => {
            StatusCode::NOT_FOUND
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, e.to_string())
}

impl Api {
    fn deny(&self, kind: ServiceKind) -> Option<Response> {
        (!self.allowed.contains(&kind)).then(|| {
            text(
                StatusCode::FORBIDDEN,
                format!("{} is not served on {}", kind.config_name(), self.listener),
            )
        })
    }
}

async fn token(State(api): State<Arc<Api>>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(r) = api.deny(ServiceKind::AttestationAgent) {
        return r;
    }
    let Some(kind) = q.get("token_type") else {
        return text(StatusCode::BAD_REQUEST, "token_type is required");
    };
    match api.attestation.token(kind).await {
        Ok(t) => bytes(t.to_vec()),
        Err(e) => failed(&e),
    }
}

async fn evidence(
    State(api): State<Arc<Api>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = api.deny(ServiceKind::AttestationAgent) {
        return r;
    }
    let Some(runtime_data) = q.get("runtime_data") else {
        return text(StatusCode::BAD_REQUEST, "runtime_data is required");
    };
    match api.attestation.evidence(runtime_data.as_bytes()).await {
        Ok(ev) => bytes(ev),
        Err(e) => failed(&e),
    }
}

#[derive(serde::Deserialize)]
struct AaelEvent {
    domain: String,
    operation: String,
    content: String,
}

async fn aael(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    if let Some(r) = api.deny(ServiceKind::AttestationAgent) {
        return r;
    }
    let Ok(ev) = serde_json::from_slice::<AaelEvent>(&body) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected {\"domain\",\"operation\",\"content\"}",
        );
    };
    match api
        .attestation
        .extend_runtime_measurement(&ev.domain, &ev.operation, &ev.content, None)
        .await
    {
        Ok(Extended::Ok) => bytes(Vec::new()),
        Ok(other) => text(
            StatusCode::NOT_IMPLEMENTED,
            format!("runtime measurement: {other:?}"),
        ),
        Err(e) => failed(&e),
    }
}

async fn resource(
    State(api): State<Arc<Api>>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = api.deny(ServiceKind::GetResource) {
        return r;
    }
    match api
        .attestation
        .resource(&format!("kbs:///{repo}/{kind}/{tag}"))
        .await
    {
        Ok(v) => bytes(v.to_vec()),
        Err(e) => failed(&e),
    }
}

async fn info(State(api): State<Arc<Api>>) -> Response {
    let tee = api.attestation.tee().map(|t| t.to_string()).ok();
    let features: Vec<_> = api.allowed.iter().map(|k| k.config_name()).collect();
    let body = serde_json::json!({
        "version": crate::VERSION,
        "tee": tee,
        "additional_tees": api.attestation.additional_tees(),
        "feature": features,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "URL NOT FOUND")
}

/// The router for one listener: `in_guest` says whether its callers are inside the guest, and
/// `inference` is the listener's inference API when it serves one.
pub fn router(
    attestation: Arc<Attestation>,
    allowed: BTreeSet<ServiceKind>,
    listener: String,
    in_guest: bool,
    inference: Option<Router>,
) -> Router {
    let health = allowed.contains(&ServiceKind::Health);
    let api = Arc::new(Api {
        attestation,
        allowed,
        listener: listener.clone(),
    });
    let mut rest = Router::new();
    if in_guest {
        rest = rest
            .route("/aa/token", get(token))
            .route("/aa/evidence", get(evidence))
            .route("/aa/aael", post(aael))
            .route("/cdh/resource/{repo}/{type}/{tag}", get(resource));
    }
    if in_guest || health {
        rest = rest.route("/info", get(info));
    }
    let mut app = rest.with_state(api);
    if let Some(inference) = inference {
        app = app.merge(inference);
    }
    app.fallback(not_found)
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), listener = %listener);
            async move {
                let resp = next.run(req).await;
                tracing::info!(status = resp.status().as_u16(), "answered");
                resp
            }
            .instrument(span)
        }))
}

/// Serves `router` on `listener` until `stop` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: HttpListener,
    router: Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let shutdown = async {
        let _ = stop.await;
    };
    match listener {
        HttpListener::Unix(l) => {
            axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        HttpListener::Tcp(l) => {
            axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        HttpListener::Vsock(l) => {
            axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
