//! A hostile registry (an axum server on 127.0.0.1 that answers what it likes): bodies far over
//! every limit (a manifest, a token answer, an error page), with and without a Content-Length.
//! The pull must stop reading at the limit and say which, not buffer the body first: a 1 GiB
//! manifest used to take `ward pull` to 2.1 GB of memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use ward_image::registry::{Registry, RegistryConfig};

/// What the server sends in all, however much the client reads.
const HUGE: u64 = 1 << 30;

/// A body of `HUGE` bytes of `b'{'`, produced lazily; `served` counts what was taken from it.
fn huge(served: Arc<AtomicU64>, with_length: bool, status: StatusCode) -> Response {
    let chunk = Bytes::from(vec![b'{'; 64 << 10]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let (chunk, served) = (chunk.clone(), served.clone());
        async move {
            (sent < HUGE).then(|| {
                served.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                (
                    Ok::<_, std::io::Error>(chunk.clone()),
                    sent + chunk.len() as u64,
                )
            })
        }
    });
    let mut r = Response::builder().status(status).header(
        header::CONTENT_TYPE,
        "application/vnd.oci.image.manifest.v1+json",
    );
    if with_length {
        r = r.header(header::CONTENT_LENGTH, HUGE);
    }
    r.body(Body::from_stream(stream)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_are_cut_off_at_their_limit() {
    let served = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{host}/token");
    let s = served.clone();
    let app = axum::Router::new()
        .route(
            "/v2/chunked/manifests/v1",
            get({
                let s = s.clone();
                move || async move { huge(s, false, StatusCode::OK) }
            }),
        )
        .route(
            "/v2/sized/manifests/v1",
            get({
                let s = s.clone();
                move || async move { huge(s, true, StatusCode::OK) }
            }),
        )
        .route(
            "/v2/error/manifests/v1",
            get({
                let s = s.clone();
                move || async move { huge(s, false, StatusCode::INTERNAL_SERVER_ERROR) }
            }),
        )
        .route(
            "/v2/token/manifests/v1",
            get(move |headers: HeaderMap| async move {
                let challenge = format!(
                    r#"Bearer realm="{realm}",service="hostile",scope="repository:token:pull""#
                );
                if headers.contains_key(header::AUTHORIZATION) {
                    StatusCode::NOT_FOUND.into_response_with(&[])
                } else {
                    StatusCode::UNAUTHORIZED
                        .into_response_with(&[(header::WWW_AUTHENTICATE, challenge)])
                }
            }),
        )
        .route(
            "/v2/authed/manifests/v1",
            get({
                let realm = format!("http://{host}/small-token");
                move |headers: HeaderMap| async move {
                    let challenge =
                        format!(r#"Bearer realm="{realm}",scope="repository:authed:pull""#);
                    match headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                    {
                        // The token the realm gave: authorised, and there is no such manifest.
                        Some("Bearer t0k3n") => StatusCode::NOT_FOUND.into_response_with(&[]),
                        _ => StatusCode::UNAUTHORIZED
                            .into_response_with(&[(header::WWW_AUTHENTICATE, challenge)]),
                    }
                }
            }),
        )
        .route(
            "/small-token",
            get(|| async { r#"{"token":"t0k3n","expires_in":300}"# }),
        )
        .route(
            "/token",
            get({
                let s = s.clone();
                move || async move { huge(s, false, StatusCode::OK) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let registry = Registry::new(RegistryConfig {
        insecure: vec![host.clone()],
        timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    })
    .unwrap();
    for (repo, want) in [
        ("chunked", "more than 4194304 bytes"),
        ("sized", "1073741824 bytes is more than 4194304"),
        ("error", "500"),
        ("token", "token answer: more than 65536 bytes"),
        // The usual flow works: challenge, token, retried with it (then "no such manifest").
        ("authed", "no manifest `v1`"),
    ] {
        served.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let reference = Registry::reference(&format!("{host}/{repo}:v1")).unwrap();
        let e = registry.resolve(&reference).await.unwrap_err().to_string();
        assert!(e.contains(want), "{repo}: {e}");
        // The server produces ahead of what the client reads (socket buffers); far less than
        // the body, and no 1 GiB buffered first.
        let sent = served.load(Ordering::Relaxed);
        assert!(
            sent < 32 << 20,
            "{repo}: the client read on to {sent} bytes"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{repo}");
    }
}

/// `into_response` with headers, for the token route's two answers.
trait WithHeaders {
    fn into_response_with(self, headers: &[(header::HeaderName, String)]) -> Response;
}

impl WithHeaders for StatusCode {
    fn into_response_with(self, headers: &[(header::HeaderName, String)]) -> Response {
        let mut r = Response::builder().status(self);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.body(Body::empty()).unwrap()
    }
}
