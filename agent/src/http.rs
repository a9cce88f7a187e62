//! The HTTP API: CoCo's api-server-rest paths, so its users work unchanged, on in-guest listeners
//! only (unix sockets and loopback TCP): `GET /aa/token?token_type=kbs`,
//! `GET /aa/evidence?runtime_data=...[&encoding=base64]`,
//! `GET /aa/additional-evidence?runtime_data=...[&encoding=base64]`, `POST /aa/aael`,
//! `GET /cdh/resource/<repo>/<type>/<tag>`, `GET /info`; and the inference API
//! ([`crate::inference_api`]) where the listener serves `inference`. On vsock, where the caller
//! may be the host, only the inference API (and `/info` with `health`) is routed: the
//! api-server-rest paths do not exist there.
//!
//! Answers are api-server-rest's byte for byte (guest-components `api-server-rest/src/router.rs`
//! and `client/aa.rs` at 8246e5e0): 200 with the raw bytes (`application/octet-stream`), or for
//! `/aa/aael` JSON `{"success":"true"}` / `{"success":"false","message": ...}`; 400 `BAD REQUEST`
//! for a missing parameter or a runtime_data that does not decode; 404 `URL NOT FOUND` for an
//! unknown path or method, and `Attestation Feature Not Enabled` / `Resource Feature Not
//! Enabled` for a path whose service is not on this listener's allow-list; 405 for `/info`
//! other than GET; 500 with the error text for every failure. Each request gets a tracing span;
//! no body is ever logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use tracing::Instrument;

use crate::attestation::{Attestation, Extended};
use crate::config::ServiceKind;
use crate::listen::HttpListener;

struct Api {
    attestation: Arc<Attestation>,
    allowed: BTreeSet<ServiceKind>,
}

fn bytes(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

fn json(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

fn bad_request() -> Response {
    text(StatusCode::BAD_REQUEST, "BAD REQUEST")
}

/// A failure, as api-server-rest reports every one: 500 with the error's text.
fn failed(e: &impl std::fmt::Display) -> Response {
    text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl Api {
    /// api-server-rest's answer before a handler runs: the feature the path belongs to is off
    /// on this listener, or the method is not the path's (both 404, as it answers them).
    fn refuse(&self, kind: ServiceKind, method: &Method, want: Method) -> Option<Response> {
        if !self.allowed.contains(&kind) {
            return Some(text(
                StatusCode::NOT_FOUND,
                match kind {
                    ServiceKind::GetResource => "Resource Feature Not Enabled",
                    _ => "Attestation Feature Not Enabled",
                },
            ));
        }
        (*method != want).then(url_not_found)
    }
}

/// `runtime_data` as api-server-rest reads it: the query value's bytes, or with
/// `encoding=base64` its URL-safe base64 without padding; anything else is a bad request.
fn runtime_data(q: &HashMap<String, String>) -> Option<Vec<u8>> {
    let data = q.get("runtime_data")?;
    match q.get("encoding").map(String::as_str) {
        None => Some(data.as_bytes().to_vec()),
        Some("base64") => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(data)
            .ok(),
        Some(_) => None,
    }
}

async fn token(
    State(api): State<Arc<Api>>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = api.refuse(ServiceKind::AttestationAgent, &method, Method::GET) {
        return r;
    }
    let Some(kind) = q.get("token_type") else {
        return bad_request();
    };
    match api.attestation.token(kind).await {
        Ok(t) => bytes(t.to_vec()),
        Err(e) => failed(&e),
    }
}

async fn evidence(
    State(api): State<Arc<Api>>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    evidence_for(&api, &method, &q, false).await
}

async fn additional_evidence(
    State(api): State<Arc<Api>>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    evidence_for(&api, &method, &q, true).await
}

/// `/aa/evidence` and `/aa/additional-evidence`: the TEE's or the devices' evidence for the
/// query's `runtime_data`.
async fn evidence_for(
    api: &Api,
    method: &Method,
    q: &HashMap<String, String>,
    additional: bool,
) -> Response {
    if let Some(r) = api.refuse(ServiceKind::AttestationAgent, method, Method::GET) {
        return r;
    }
    let Some(data) = runtime_data(q) else {
        return bad_request();
    };
    let evidence = if additional {
        api.attestation.additional_evidence(&data).await
    } else {
        api.attestation.evidence(&data).await
    };
    match evidence {
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

async fn aael(State(api): State<Arc<Api>>, method: Method, body: Bytes) -> Response {
    if let Some(r) = api.refuse(ServiceKind::AttestationAgent, &method, Method::POST) {
        return r;
    }
    let ev = match serde_json::from_slice::<AaelEvent>(&body) {
        Ok(ev) => ev,
        // The caller's own body, echoed back to it as api-server-rest does.
        Err(e) => return failed(&format!("Illegal AAEL eventry format: {e}")),
    };
    match api
        .attestation
        .extend_runtime_measurement(&ev.domain, &ev.operation, &ev.content, None)
        .await
    {
        Ok(Extended::Ok) => json(r#"{"success":"true"}"#.into()),
        Ok(Extended::NotSupported) => json(
            r#"{"success":"false","message": "The platform does not support runtime measurement"}"#
                .into(),
        ),
        Ok(Extended::NotEnabled) => json(
            r#"{"success":"false","message": "Attestation Agent does not enable eventlog recording"}"#
                .into(),
        ),
        Err(e) => failed(&e),
    }
}

async fn resource(
    State(api): State<Arc<Api>>,
    method: Method,
    Path((repo, kind, tag)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = api.refuse(ServiceKind::GetResource, &method, Method::GET) {
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

/// `/info` as api-server-rest answers it: members in its order, `tee` and `additional_tees`
/// only with the attestation feature (and `additional_tees` only when there are some), and
/// `feature` the name of what is served: `all`, `attestation` or `resource` (`none` when a
/// listener serves `/info` through `health` alone, which api-server-rest cannot).
async fn info(State(api): State<Arc<Api>>, method: Method) -> Response {
    #[derive(serde::Serialize)]
    struct VersionInfo {
        version: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        tee: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        additional_tees: Vec<String>,
        feature: &'static str,
    }
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let aa = api.allowed.contains(&ServiceKind::AttestationAgent);
    let cdh = api.allowed.contains(&ServiceKind::GetResource);
    let body = VersionInfo {
        version: crate::VERSION,
        tee: aa
            .then(|| api.attestation.tee().map(|t| t.to_string()).ok())
            .flatten(),
        additional_tees: if aa {
            api.attestation.additional_tees()
        } else {
            Vec::new()
        },
        feature: match (aa, cdh) {
            (true, true) => "all",
            (true, false) => "attestation",
            (false, true) => "resource",
            (false, false) => "none",
        },
    };
    match serde_json::to_string(&body) {
        Ok(b) => json(b),
        Err(e) => failed(&e),
    }
}

fn url_not_found() -> Response {
    text(StatusCode::NOT_FOUND, "URL NOT FOUND")
}

async fn not_found() -> Response {
    url_not_found()
}

/// The router for one listener: `in_guest` says whether its callers are inside the guest,
/// `inference` is the listener's inference API when it serves one, and `serving` what
/// `/metrics` reads the engines' queues from when it serves `metrics`.
pub fn router(
    attestation: Arc<Attestation>,
    allowed: BTreeSet<ServiceKind>,
    listener: String,
    in_guest: bool,
    inference: Option<Router>,
    serving: &crate::inference_api::openai::Serving,
) -> Router {
    let health = allowed.contains(&ServiceKind::Health);
    let metrics = allowed.contains(&ServiceKind::Metrics).then(|| {
        let serving = serving.clone();
        Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let serving = serving.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                        crate::metrics::metrics().encode(&serving),
                    )
                }
            }),
        )
    });
    let api = Arc::new(Api {
        attestation,
        allowed,
    });
    // Every method reaches the handlers, which answer a wrong one as api-server-rest does.
    let mut rest = Router::new();
    if in_guest {
        rest = rest
            .route("/aa/token", any(token))
            .route("/aa/evidence", any(evidence))
            .route("/aa/additional-evidence", any(additional_evidence))
            .route("/aa/aael", any(aael))
            .route("/cdh/resource/{repo}/{type}/{tag}", any(resource));
    }
    if in_guest || health {
        rest = rest.route("/info", any(info));
    }
    let mut app = rest.with_state(api);
    if let Some(inference) = inference {
        app = app.merge(inference);
    }
    if let Some(metrics) = metrics {
        app = app.merge(metrics);
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
            let service = router.into_make_service_with_connect_info::<crate::listen::UnixPeer>();
            axum::serve(l, service)
                .with_graceful_shutdown(shutdown)
                .await
        }
        HttpListener::Tcp(l) => {
            // No Nagle: an SSE event is a small write, and held for an ACK it reached a client
            // about 23 ms late on loopback (the first token behind an external engine).
            use axum::serve::ListenerExt as _;
            let l = l.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
            });
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
