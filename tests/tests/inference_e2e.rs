//! Encrypted inference through a real wardd: the attestation endpoint binds the client's nonce
//! and the boot-time HPKE key (sample TEE here: the binding is what a client can check), and an
//! encrypted request is opened by wardd, answered by the OpenAI-compatible routes and sealed
//! back; tampered and replayed requests are refused. (The real model's encrypted answer is in
//! models.rs when SmolLM2 is available; here no model is loaded, so the answer is an encrypted
//! OpenAI error.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use ward_e2e::RequestSealer;
use ward_tests::{Wardd, config_text};

use ward_tests::unix_now as now;

async fn post_sealed(http: &reqwest::Client, url: &str, msg: Vec<u8>) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/ward-e2e")
        .body(msg)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_key_and_encrypted_requests() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let w = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = config_text(dir.path(), &["all"]).replace(
            "[[listener]]",
            &format!(
                "[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"inference\"]\nprotocol = \"http\"\n\n[[listener]]"
            ),
        );
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{port}/v1");
    let http = reqwest::Client::new();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    // 1. Attestation for a fresh nonce; the client checks the binding.
    let config = ward_tests::attested_key(&http, &base).await;
    assert_eq!(
        config.suite,
        ward_e2e::Suite::XWing,
        "post-quantum by default"
    );
    let short = http
        .get(format!("{base}/attestation?nonce={}", b64.encode([1u8; 8])))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 400);

    // 2. An encrypted request: the (encrypted) answer is OpenAI's error for an unknown model.
    let body = serde_json::json!({"model": "no-such-model",
        "messages": [{"role": "user", "content": "a confidential prompt"}]});
    let (msg, opener) =
        RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body, now()).unwrap();
    let resp = post_sealed(&http, &format!("{base}/chat/completions"), msg.clone()).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/ward-e2e");
    let sealed = resp.bytes().await.unwrap();
    assert!(
        !sealed.windows(5).any(|w| w == b"model"),
        "the answer is encrypted"
    );
    let plain = opener.open_whole(&sealed).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");

    // 3. The same message again is a replay; a flipped bit does not open.
    let replay = post_sealed(&http, &format!("{base}/chat/completions"), msg.clone()).await;
    assert_eq!(replay.status(), 400);
    let (mut tampered, _) =
        RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body, now()).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let r = post_sealed(&http, &format!("{base}/chat/completions"), tampered).await;
    assert_eq!(r.status(), 400);
    // A chat request sealed for /v1/chat/completions is refused on /v1/completions.
    let (rerouted, _) =
        RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body, now()).unwrap();
    let r = post_sealed(&http, &format!("{base}/completions"), rerouted).await;
    assert_eq!(r.status(), 400);

    // 4. `ward chat` does the same as a client: refuses sample evidence unless told, and shows
    // the decrypted error of an unknown model.
    let b = base.clone();
    let (refused, unknown) = tokio::task::spawn_blocking(move || {
        (
            ward_tests::run_ward("ward", &["chat", "hi", "--url", &b, "--model", "nope"]),
            ward_tests::run_ward(
                "ward",
                &[
                    "chat",
                    "hi",
                    "--url",
                    &b,
                    "--model",
                    "nope",
                    "--allow-sample",
                ],
            ),
        )
    })
    .await
    .unwrap();
    assert_eq!(refused.0, 1, "{refused:?}");
    assert!(refused.2.contains("sample evidence"), "{refused:?}");
    assert_eq!(unknown.0, 1, "{unknown:?}");
    assert!(unknown.2.contains("`nope` does not exist"), "{unknown:?}");

    let audit = std::fs::read_to_string(&w.audit).unwrap();
    let entries = ward_tests::served::inference_entries(&w.audit);
    let model_not_found = entries
        .iter()
        .find(|e| e["detail"]["status"] == 404)
        .unwrap_or_else(|| panic!("{entries:?}"));
    let d = &model_not_found["detail"];
    assert_eq!(d["encrypted"], true, "{d}");
    assert_eq!(d["model"], "no-such-model", "{d}");
    assert_eq!(d["transport"], "http", "{d}");
    assert!(
        d["request_sha256"].is_string() && d["response_sha256"].is_string(),
        "{d}"
    );
    assert!(audit.contains(r#""refused":"replay""#), "{audit}");
    assert!(audit.contains(r#""refused":"does not decrypt""#), "{audit}");
    assert!(
        !audit.contains("confidential prompt"),
        "no plaintext in the audit log"
    );
}
