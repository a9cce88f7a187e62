//! The proxy against a stand-in wardd: whole and streamed answers, cut and altered streams, a
//! refused attestation, the loopback rule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::http::Request;
use tower::ServiceExt as _;
use ward_e2e::{ServerKey, Suite};

use super::*;

/// How the fake server answers a sealed request.
#[derive(Clone, Copy)]
enum Answer {
    Whole,
    /// A stream whose final chunk never comes.
    Truncated,
    /// A stream whose second chunk was altered on the way.
    Altered,
}

/// A server that opens requests with `key` and answers as `answer` says; counts what it
/// received, and whether anything arrived unsealed.
async fn fake_server(
    key: Arc<ServerKey>,
    answer: Answer,
) -> (String, Arc<std::sync::Mutex<Vec<bool>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let (key, log) = (key.clone(), log.clone());
            async move {
                let sealed = headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes() == E2E_TYPE.as_bytes());
                log.lock().unwrap().push(sealed);
                let opened = key
                    .open_request(&body, "POST", "/v1/chat/completions", now())
                    .unwrap();
                let mut sealer = opened.sealer;
                let mut out = sealer.prelude().to_vec();
                let event = b"data: {\"choices\":[]}\n\n";
                match answer {
                    Answer::Whole => {
                        out.extend(
                            sealer
                                .seal_chunk(b"{\"object\":\"chat.completion\"}", true)
                                .unwrap(),
                        );
                        return Response::builder()
                            .header(header::CONTENT_TYPE, E2E_TYPE)
                            .body(Body::from(out))
                            .unwrap();
                    }
                    Answer::Truncated => {
                        out.extend(sealer.seal_chunk(event, false).unwrap());
                    }
                    Answer::Altered => {
                        out.extend(sealer.seal_chunk(event, false).unwrap());
                        let mut second = sealer.seal_chunk(event, false).unwrap();
                        let last = second.len() - 1;
                        second[last] ^= 1;
                        out.extend(second);
                        out.extend(sealer.seal_chunk(b"", true).unwrap());
                    }
                }
                Response::builder()
                    .header(header::CONTENT_TYPE, E2E_STREAM_TYPE)
                    .body(Body::from(out))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

/// A proxy that already holds `key` as verified (or a refusal), for `base`.
fn proxy_for(base: &str, key: Result<&ServerKey, &str>) -> Arc<Proxy> {
    let current = key
        .map(|k| {
            Arc::new(VerifiedKey {
                key: k.config().clone(),
                encoded: k.config().encode(),
            })
        })
        .map_err(str::to_string);
    Arc::new(Proxy {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        base: base.to_string(),
        prefix: "/v1".into(),
        trust: TrustArgs::default(),
        client_key: None,
        key: tokio::sync::Mutex::new(KeyState {
            current,
            checked_at: Instant::now(),
            generation: 1,
        }),
    })
}

fn chat_request() -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"model":"m","messages":[],"stream":true}"#))
        .unwrap()
}

/// The body's frames until the end or the first error: (bytes, whether it was aborted).
async fn drain(response: Response) -> (Vec<u8>, bool) {
    let mut body = response.into_body().into_data_stream();
    let mut out = Vec::new();
    while let Some(frame) = body.next().await {
        match frame {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

#[tokio::test]
async fn a_whole_answer_opens_and_a_bad_stream_aborts_the_transfer() {
    let key = Arc::new(ServerKey::generate(Suite::X25519));
    let (base, seen) = fake_server(key.clone(), Answer::Whole).await;
    let response = router(proxy_for(&base, Ok(&key)))
        .oneshot(chat_request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (body, aborted) = drain(response).await;
    assert!(!aborted);
    assert_eq!(body, br#"{"object":"chat.completion"}"#);
    assert_eq!(*seen.lock().unwrap(), [true]);

    for answer in [Answer::Truncated, Answer::Altered] {
        let (base, _) = fake_server(key.clone(), answer).await;
        let response = router(proxy_for(&base, Ok(&key)))
            .oneshot(chat_request())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (body, aborted) = drain(response).await;
        assert!(
            aborted,
            "the client sees the transfer fail, not a complete stream"
        );
        // Only what opened, never the altered chunk (a read that holds a bad chunk is
        // dropped whole).
        let event = b"data: {\"choices\":[]}\n\n";
        assert!(body.is_empty() || body == event, "{body:?}");
    }
}

#[tokio::test]
async fn a_refused_attestation_sends_nothing() {
    let key = Arc::new(ServerKey::generate(Suite::X25519));
    let (base, seen) = fake_server(key.clone(), Answer::Whole).await;
    let response = router(proxy_for(&base, Err("the evidence is forged")))
        .oneshot(chat_request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let (body, _) = drain(response).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "attestation_failed", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("the evidence is forged"), "{message}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the server"
    );
}

#[tokio::test]
async fn the_plain_api_listens_on_loopback_only() {
    let e = proxy(ProxyArgs {
        listen: "0.0.0.0:0".parse().unwrap(),
        listen_any: false,
        url: "http://127.0.0.1:1/v1".into(),
        trust: TrustArgs::default(),
        reattest_secs: 300,
        client_key: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("not a loopback address") && e.contains("--listen-any"),
        "{e}"
    );
}
