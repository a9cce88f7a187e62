//! Standard Oblivious HTTP (RFC 9458) and chunked OHTTP to a real wardd serving the tiny llama,
//! with Mozilla's client (the `ohttp` and `bhttp` crates, an implementation nobody here wrote):
//! the key configuration served is the one the attestation binds; a Binary HTTP chat request
//! is answered whole, and a streamed one event by event; a replay and a request without `Date`
//! are refused inside the encapsulation; the audit entry is written as for any request; an
//! encrypted-only listener takes OHTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures::io::{AsyncReadExt as _, AsyncWriteExt as _};
use serde_json::{Value, json};
use ward_tests::served::{inference_entries, serve_model};

const LISTENERS: &str = "[[listener]]\naddress = \"unix://{dir}/enc-http.sock\"\n\
    protocol = \"http\"\nservices = [\"inference\"]\nencrypted_only = true\n";

fn chat(stream: bool) -> Value {
    json!({"model": "tiny", "temperature": 0, "max_tokens": 6, "stream": stream,
           "messages": [{"role": "user", "content": "an oblivious prompt"}]})
}

fn bhttp_request(body: &Value, date: Option<std::time::SystemTime>) -> Vec<u8> {
    let mut m = bhttp::Message::request(
        b"POST".to_vec(),
        b"https".to_vec(),
        b"wardd".to_vec(),
        b"/v1/chat/completions".to_vec(),
    );
    m.put_header("content-type", "application/json");
    if let Some(d) = date {
        m.put_header("date", httpdate::fmt_http_date(d));
    }
    m.write_content(body.to_string());
    let mut out = Vec::new();
    m.write_bhttp(bhttp::Mode::KnownLength, &mut out).unwrap();
    out
}

fn parse(bytes: &[u8]) -> bhttp::Message {
    bhttp::Message::read_bhttp(&mut std::io::Cursor::new(bytes)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mozillas_ohttp_client_talks_to_wardd() {
    let gguf = &ward_inference::test_models::fixture().gguf;
    let served = serve_model("tiny", &[("model.gguf", gguf)], LISTENERS).await;
    let w = &served.wardd;
    let sock = format!("{}/enc-http.sock", w.dir.path().display());
    let post = |ct: &'static str, body: Vec<u8>| {
        let sock = sock.clone();
        async move { ward_tests::http_unix(&sock, "POST", "/v1/ohttp", ct, &body).await }
    };

    // The key configuration is the attested one.
    let nonce: [u8; 32] = rand::random();
    let uri = format!(
        "/v1/attestation?nonce={}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, nonce)
    );
    let (_, _, att) = ward_tests::http_unix(&sock, "GET", &uri, "application/json", b"").await;
    let attested = ward_tests::checked_key(&serde_json::from_slice(&att).unwrap(), &nonce);
    let (status, ct, keys) =
        ward_tests::http_unix(&sock, "GET", "/v1/ohttp-keys", "application/json", b"").await;
    assert_eq!((status, ct.as_str()), (200, "application/ohttp-keys"));
    let config = attested.encode();
    assert_eq!(
        &keys[2..],
        &config[..],
        "the bound key configuration, length-prefixed"
    );

    // RFC 9458, one answer.
    let client = ohttp::ClientRequest::from_encoded_config_list(&keys).unwrap();
    let request = bhttp_request(&chat(false), Some(std::time::SystemTime::now()));
    let (msg, opener) = client.encapsulate(&request).unwrap();
    let (status, ct, sealed) = post("message/ohttp-req", msg.clone()).await;
    assert_eq!((status, ct.as_str()), (200, "message/ohttp-res"));
    let answer = parse(&opener.decapsulate(&sealed).unwrap());
    assert_eq!(answer.control().status().map(|s| s.code()), Some(200));
    let body: Value = serde_json::from_slice(answer.content()).unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 6);

    // The same message again (a host replaying it): refused inside the encapsulation, which
    // the host cannot open; the status outside says only 200.
    let (status, ct, _) = post("message/ohttp-req", msg).await;
    assert_eq!((status, ct.as_str()), (200, "message/ohttp-res"));
    // Without a Date: refused inside, with wardd's Date so an honest client can correct.
    let client = ohttp::ClientRequest::from_encoded_config_list(&keys).unwrap();
    let (msg, opener) = client
        .encapsulate(&bhttp_request(&chat(false), None))
        .unwrap();
    let (_, _, sealed) = post("message/ohttp-req", msg).await;
    let refused = parse(&opener.decapsulate(&sealed).unwrap());
    assert_eq!(refused.control().status().map(|s| s.code()), Some(400));
    assert!(
        refused.header().get(b"date").is_some(),
        "the client can correct its clock"
    );
    let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let client = ohttp::ClientRequest::from_encoded_config_list(&keys).unwrap();
    let (msg, opener) = client
        .encapsulate(&bhttp_request(&chat(false), Some(stale)))
        .unwrap();
    let (_, _, sealed) = post("message/ohttp-req", msg).await;
    let refused = parse(&opener.decapsulate(&sealed).unwrap());
    assert_eq!(refused.control().status().map(|s| s.code()), Some(400));

    // Chunked OHTTP, streamed: SSE events inside Binary HTTP content chunks. (AES-128-GCM:
    // Mozilla's chunked client handles no 32-byte response nonce; ward-e2e's tests say more.)
    let mut aes128 = config[..config.len() - 14].to_vec();
    aes128.extend_from_slice(&[0, 4, 0, 1, 0, 1]);
    let mut mozilla = ohttp::KeyConfig::decode(&aes128).unwrap();
    let sink = Sink::default();
    let request = ohttp::ClientRequest::from_config(&mut mozilla).unwrap();
    let mut writer = request.encapsulate_stream(sink.clone()).unwrap();
    writer
        .write_all(&bhttp_request(
            &chat(true),
            Some(std::time::SystemTime::now()),
        ))
        .await
        .unwrap();
    writer.close().await.unwrap();
    let sent = sink.0.lock().unwrap().clone();
    let (status, ct, sealed) = post("message/ohttp-chunked-req", sent).await;
    assert_eq!((status, ct.as_str()), (200, "message/ohttp-chunked-res"));
    let mut plain = Vec::new();
    writer
        .response(&sealed[..])
        .unwrap()
        .read_to_end(&mut plain)
        .await
        .unwrap();
    let answer = parse(&plain);
    assert_eq!(answer.control().status().map(|s| s.code()), Some(200));
    let sse = String::from_utf8(answer.content().to_vec()).unwrap();
    assert!(sse.contains("chat.completion.chunk"), "{sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    // Cut before its final chunk: the client sees a truncation.
    let mut cut = Vec::new();
    assert!(
        writer
            .response(&sealed[..sealed.len() - 10])
            .unwrap()
            .read_to_end(&mut cut)
            .await
            .is_err()
    );

    // Through a relay that only forwards (RFC 9458 section 2: it sees the client, not the
    // request; the gateway sees the request, not the client), to the RFC 9540 well-known URI,
    // whose GET serves the same key configuration.
    let (status, ct, well_known) = ward_tests::http_unix(
        &sock,
        "GET",
        "/.well-known/ohttp-gateway",
        "application/json",
        b"",
    )
    .await;
    assert_eq!(
        (status, ct.as_str(), &well_known),
        (200, "application/ohttp-keys", &keys)
    );
    let relay = relay(sock.clone()).await;
    let client = ohttp::ClientRequest::from_encoded_config_list(&well_known).unwrap();
    let (msg, opener) = client
        .encapsulate(&bhttp_request(
            &chat(false),
            Some(std::time::SystemTime::now()),
        ))
        .unwrap();
    let r = reqwest::Client::new()
        .post(&relay)
        .header("content-type", "message/ohttp-req")
        .body(msg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer = parse(&opener.decapsulate(&r.bytes().await.unwrap()).unwrap());
    assert_eq!(answer.control().status().map(|s| s.code()), Some(200));

    // Audited as any request: the OHTTP suite, the model, tokens; the refusals with reasons.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let entries = inference_entries(&w.audit);
    let ohttp: Vec<_> = entries
        .iter()
        .filter(|e| e["subject"] == "/v1/ohttp")
        .map(|e| &e["detail"])
        .collect();
    assert_eq!(ohttp.len(), 5, "{entries:?}");
    let via_relay = entries
        .iter()
        .filter(|e| e["subject"] == "/.well-known/ohttp-gateway")
        .count();
    assert_eq!(via_relay, 1);
    assert!(ohttp[0]["suite"].as_str().unwrap().starts_with("ohttp "));
    assert_eq!(ohttp[0]["model"], "tiny");
    assert!(ohttp[0]["completion_tokens"].as_u64().is_some());
    assert_eq!(ohttp[1]["refused"], "replay");
    assert!(
        ohttp[4]["suite"]
            .as_str()
            .unwrap()
            .starts_with("ohttp-chunked")
    );
    let log = std::fs::read_to_string(&w.audit).unwrap() + &w.stderr();
    assert!(!log.contains("oblivious prompt"), "no prompt in the logs");
}

/// An Oblivious Relay Resource that only forwards: the body and its content type to the
/// gateway's well-known URI on wardd's socket, the answer back; its URL.
async fn relay(sock: String) -> String {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/relay",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sock = sock.clone();
                async move {
                    let ct = headers
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let (status, ct, body) = ward_tests::http_unix(
                        &sock,
                        "POST",
                        "/.well-known/ohttp-gateway",
                        &ct,
                        &body,
                    )
                    .await;
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [(CONTENT_TYPE, ct)],
                        body,
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/relay", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A writer whose bytes the test reads while the writer lives on.
#[derive(Clone, Default)]
struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl futures::io::AsyncWrite for Sink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
