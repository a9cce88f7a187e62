//! The inference API's surface through a real wardd serving the tiny generated llama, sealed and
//! released by the development KBS: the ttrpc `InferenceService` (unary and streamed, plaintext
//! and end-to-end encrypted), encrypted-only listeners over ttrpc and HTTP (unix sockets stand
//! in for vsock, which has no loopback on a development machine), the allow-list on streaming
//! methods, and one audit entry per request with model digest, token counts and ciphertext
//! hashes, never text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use ttrpc::Code;
use ward_e2e::{KeyConfig, RequestSealer};
use ward_protos::ward_inference::{
    AttestationRequest, InferenceRequest, InferenceResponse, ListModelsRequest,
};
use ward_protos::ward_inference_ttrpc::InferenceServiceClient;
use ward_tests::http_unix;
use ward_tests::served::{inference_entries, serve_model};
use ward_tests::unix_now;

const LISTENERS: &str = "[[listener]]\naddress = \"unix://{dir}/enc.sock\"\n\
    services = [\"inference\"]\nencrypted_only = true\n\n\
    [[listener]]\naddress = \"unix://{dir}/enc-http.sock\"\nprotocol = \"http\"\n\
    services = [\"inference\", \"health\"]\nencrypted_only = true\n\n\
    [[listener]]\naddress = \"unix://{dir}/health.sock\"\nservices = [\"health\"]\n";

/// Words of the prompts, which must never reach the audit log or wardd's logs.
const SECRET: &str = "confidential-prompt-words";

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(60_000_000_000)
}

async fn client(addr: &str) -> InferenceServiceClient {
    InferenceServiceClient::new(ttrpc::asynchronous::Client::connect(addr).await.unwrap())
}

fn plain(body: &Value) -> InferenceRequest {
    InferenceRequest {
        content_type: "application/json".into(),
        body: serde_json::to_vec(body).unwrap(),
        ..Default::default()
    }
}

fn sealed(msg: Vec<u8>) -> InferenceRequest {
    InferenceRequest {
        content_type: "application/ward-e2e".into(),
        body: msg,
        ..Default::default()
    }
}

fn chat(stream: bool) -> Value {
    json!({"model": "tiny", "messages": [{"role": "user", "content": SECRET}],
           "max_tokens": 8, "temperature": 0, "stream": stream,
           "stream_options": {"include_usage": true}})
}

fn json_of(r: &InferenceResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r))
}

/// Every message of a server stream; the first carries status and content type.
async fn drain(
    mut rx: ttrpc::asynchronous::ClientStreamReceiver<InferenceResponse>,
) -> Vec<InferenceResponse> {
    let mut out = Vec::new();
    while let Some(m) = rx.recv().await.unwrap() {
        out.push(m);
    }
    assert!(!out.is_empty(), "a stream has at least one message");
    out
}

fn concat(messages: &[InferenceResponse]) -> Vec<u8> {
    messages.iter().flat_map(|m| m.body.clone()).collect()
}

/// The `data:` payloads of an SSE body.
fn sse(body: &[u8]) -> Vec<String> {
    String::from_utf8(body.to_vec())
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_string))
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The key of the ttrpc `Attestation` call, checked as a client would.
async fn attested(c: &InferenceServiceClient) -> KeyConfig {
    let nonce: [u8; 32] = rand::random();
    let r = c
        .attestation(
            ctx(),
            &AttestationRequest {
                nonce: nonce.to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    ward_tests::checked_key(&json_of(&r), &nonce)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_over_ttrpc_and_encrypted_only_listeners() {
    let gguf = &ward_inference::test_models::fixture().gguf;
    let served = serve_model("tiny", &[("model.gguf", gguf)], LISTENERS).await;
    let w = &served.wardd;
    let dir = w.dir.path().display().to_string();
    let open = client(&w.addr).await;
    let enc_addr = format!("unix://{dir}/enc.sock");
    let enc = client(&enc_addr).await;

    // 1. Listing models and attestation are open everywhere inference is served.
    for c in [&open, &enc] {
        let r = c
            .list_models(ctx(), &ListModelsRequest::new())
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.content_type.as_str()),
            (200, "application/json")
        );
        assert_eq!(json_of(&r)["data"][0]["id"], "tiny");
    }

    // 2. Plaintext where it is allowed: unary chat with usage, and a streamed completion whose
    // messages add up to the SSE body of the HTTP API.
    let r = open
        .chat_completion(ctx(), &plain(&chat(false)))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let v = json_of(&r);
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let rx = open
        .completion_stream(
            ctx(),
            &plain(&json!({"model": "tiny", "prompt": SECRET, "max_tokens": 6,
                           "temperature": 0, "stream": true})),
        )
        .await
        .unwrap();
    let messages = drain(rx).await;
    assert_eq!(messages[0].status, 200);
    assert!(messages[0].content_type.starts_with("text/event-stream"));
    assert!(
        messages[1..]
            .iter()
            .all(|m| m.status == 0 && m.content_type.is_empty())
    );
    let events = sse(&concat(&messages));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunk: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(chunk["object"], "text_completion");

    // 3. An encrypted-only listener refuses plaintext with OpenAI's error shape, unary and
    // streamed alike.
    let r = enc
        .chat_completion(ctx(), &plain(&chat(false)))
        .await
        .unwrap();
    assert_eq!(r.status, 415, "{r:?}");
    assert_eq!(json_of(&r)["error"]["code"], "encryption_required");
    let messages = drain(
        enc.chat_completion_stream(ctx(), &plain(&chat(true)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].status, 415);

    // 4. ...and answers encrypted requests: unary, then streamed chunk by chunk.
    let key = attested(&enc).await;
    let (msg, opener) = RequestSealer::seal(
        &key,
        "POST",
        "/v1/chat/completions",
        &chat(false),
        unix_now(),
    )
    .unwrap();
    let unary_request_sha = sha(&msg);
    let r = enc.chat_completion(ctx(), &sealed(msg)).await.unwrap();
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (200, "application/ward-e2e")
    );
    let unary_response_sha = sha(&r.body);
    let v: Value = serde_json::from_slice(&opener.open_whole(&r.body).unwrap()).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let (msg, mut opener) = RequestSealer::seal(
        &key,
        "POST",
        "/v1/chat/completions",
        &chat(true),
        unix_now(),
    )
    .unwrap();
    let stream_request_sha = sha(&msg);
    let messages = drain(
        enc.chat_completion_stream(ctx(), &sealed(msg))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(messages[0].content_type, "application/ward-e2e-stream");
    assert!(messages.len() > 2, "sealed chunk by chunk");
    let mut plain_sse = Vec::new();
    for m in &messages {
        for c in opener.feed(&m.body).unwrap() {
            plain_sse.extend_from_slice(&c);
        }
    }
    opener.finish().unwrap();
    let events = sse(&plain_sse);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let stream_response_sha = sha(&concat(&messages));

    // 5. The same rules over HTTP on an encrypted-only listener.
    let http_sock = format!("{dir}/enc-http.sock");
    let body = serde_json::to_vec(&chat(false)).unwrap();
    let (status, ct, b) = http_unix(
        &http_sock,
        "POST",
        "/v1/chat/completions",
        "application/json",
        &body,
    )
    .await;
    assert_eq!((status, ct.as_str()), (415, "application/json"));
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "encryption_required");
    let (status, _, b) = http_unix(&http_sock, "GET", "/v1/models", "application/json", b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["data"][0]["id"],
        "tiny"
    );
    let (msg, opener) = RequestSealer::seal(
        &key,
        "POST",
        "/v1/chat/completions",
        &chat(false),
        unix_now(),
    )
    .unwrap();
    let http_request_sha = sha(&msg);
    let (status, ct, b) = http_unix(
        &http_sock,
        "POST",
        "/v1/chat/completions",
        "application/ward-e2e",
        &msg,
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/ward-e2e"));
    let v: Value = serde_json::from_slice(&opener.open_whole(&b).unwrap()).unwrap();
    assert_eq!(v["object"], "chat.completion");

    // 6. A listener without inference refuses every method, streaming ones included.
    let denied = client(&format!("unix://{dir}/health.sock")).await;
    for result in [
        denied
            .chat_completion(ctx(), &plain(&chat(false)))
            .await
            .err(),
        match denied
            .chat_completion_stream(ctx(), &plain(&chat(true)))
            .await
        {
            Ok(mut rx) => rx.recv().await.err(),
            Err(e) => Some(e),
        },
    ] {
        match result {
            Some(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), Code::PERMISSION_DENIED, "{s:?}")
            }
            other => panic!("expected PERMISSION_DENIED, got {other:?}"),
        }
    }

    // 7. One audit entry per inference request: model and digest, counts, finish reason, and
    // the ciphertext hashes of encrypted ones; never text.
    let entries = inference_entries(&w.audit);
    assert_eq!(entries.len(), 8, "{entries:#?}");
    let open_listener = w.addr.clone();
    let find = |pred: &dyn Fn(&Value) -> bool| -> Value {
        entries
            .iter()
            .find(|e| pred(&e["detail"]))
            .cloned()
            .unwrap_or_else(|| panic!("no such entry in {entries:#?}"))
    };
    let served_ok = |d: &Value| {
        d["status"] == 200
            && d["complete"] == true
            && d["model"] == "tiny"
            && d["model_digest"] == served.manifest_digest.as_str()
            && d["prompt_tokens"].as_u64().unwrap_or(0) > 0
            && d["completion_tokens"].as_u64().unwrap_or(0) > 0
            && ["stop", "length"].contains(&d["finish_reason"].as_str().unwrap_or(""))
    };
    let e = find(&|d| d["listener"] == open_listener.as_str() && !d["stream"].as_bool().unwrap());
    assert_eq!(e["subject"], "/v1/chat/completions");
    assert!(served_ok(&e["detail"]), "{e}");
    assert_eq!(e["detail"]["transport"], "ttrpc");
    assert_eq!(e["detail"]["encrypted"], false);
    let e = find(&|d| d["listener"] == open_listener.as_str() && d["stream"] == true);
    assert_eq!(e["subject"], "/v1/completions");
    assert!(served_ok(&e["detail"]), "{e}");
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| e["detail"]["status"] == 415)
        .collect();
    assert_eq!(refused.len(), 3, "two over ttrpc, one over HTTP");
    for e in &refused {
        assert_eq!(
            e["detail"]["refused"],
            "plaintext on an encrypted-only listener"
        );
        assert_eq!(e["detail"]["encrypted"], false);
    }
    for (req, resp, transport) in [
        (&unary_request_sha, Some(&unary_response_sha), "ttrpc"),
        (&stream_request_sha, Some(&stream_response_sha), "ttrpc"),
        (&http_request_sha, None, "http"),
    ] {
        let e = find(&|d| d["request_sha256"] == req.as_str());
        let d = &e["detail"];
        assert!(served_ok(d), "{e}");
        assert_eq!(d["encrypted"], true);
        assert_eq!(d["transport"], transport);
        assert_eq!(
            d["listener"],
            if transport == "http" {
                format!("unix://{http_sock}")
            } else {
                enc_addr.clone()
            }
        );
        assert_eq!(d["suite"], "XWing");
        assert_eq!(d["response_sha256"].as_str().unwrap().len(), 64);
        if let Some(resp) = resp {
            assert_eq!(
                d["response_sha256"],
                resp.as_str(),
                "the hash of what the client got"
            );
        }
    }
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    assert!(!audit.contains(SECRET), "no prompt in the audit log");
    assert!(
        !audit.contains("inference.e2e"),
        "one entry per request, not two"
    );
    assert!(!w.stderr().contains(SECRET), "no prompt in wardd's logs");
}

/// The start-up self-check does what a remote client of an encrypted-only listener does
/// (attestation, plaintext refused, an encrypted request answered sealed); the boot test does
/// the same over vsock in a guest.
#[test]
fn the_self_check_asks_an_encrypted_only_listener_as_a_client_would() {
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("enc.sock");
    let config = ward_tests::config_text(dir.path(), &["health"]).replace(
        "[[listener]]",
        &format!(
            "[[listener]]\naddress = \"unix://{}\"\nservices = [\"inference\"]\n\
             encrypted_only = true\n\n[[listener]]",
            enc.display()
        ),
    );
    let mut w = ward_tests::Wardd::start_with(
        dir,
        &config,
        "ward.tee=sample ward.self_check=poweroff",
        &[],
    );
    let status = w.wait(std::time::Duration::from_secs(60));
    let stderr = w.stderr();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("self-check: encrypted inference answered")
            && stderr.contains(&format!("unix://{}", enc.display())),
        "{stderr}"
    );
    assert!(stderr.contains("self-check passed"), "{stderr}");
}
