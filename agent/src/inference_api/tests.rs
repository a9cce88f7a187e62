//! The whole inference front (audit, gate, encryption, policy, OpenAI routes) over the tiny
//! generated llama, served on loopback TCP and on a unix socket as wardd serves them: who is
//! granted, refused, limited, and what the audit log and its usage report say afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use ward_e2e::{ClientKey, KeyConfig, RequestSealer, ServerKey, Suite};
use ward_inference::test_models::gguf_model;
use ward_inference::{Engine, EngineConfig};

use super::openai::{Backend, Serving, now};
use super::{Shared, e2e};
use crate::access::AccessPolicy;
use crate::audit::{Audit, AuditLog};

struct Front {
    base: String,
    socket: std::path::PathBuf,
    key: KeyConfig,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn serve(policy: Value) -> Front {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let audit = Audit::new(Some(Arc::new(AuditLog::open(&audit_path).unwrap())));
    let raw: crate::config::RawConfig = toml::from_str("").unwrap();
    let config = crate::config::Config::from_raw(raw).unwrap();
    let attestation = Arc::new(
        crate::attestation::Attestation::from_config(&config, Audit::default())
            .await
            .unwrap(),
    );
    let key = ServerKey::generate(Suite::X25519);
    let key_config = key.config().clone();
    let engine = Engine::new(
        gguf_model(),
        EngineConfig {
            max_concurrent: 2,
            queue_capacity: 8,
        },
    )
    .unwrap();
    let serving = Serving::default();
    serving.policies.write().unwrap().insert(
        "tiny".into(),
        Arc::new(AccessPolicy::from_bytes(policy.to_string().as_bytes()).unwrap()),
    );
    serving
        .engines
        .write()
        .unwrap()
        .insert("tiny".into(), Backend::Embedded(Arc::new(engine)));
    let shared = Arc::new(Shared {
        e2e: Arc::new(e2e::E2e { key, attestation }),
        serving,
        models: Arc::new(crate::models::Models::new(&[], audit.clone(), dir.path())),
        audit,
    });
    let app = super::router(&shared, "test", false);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", tcp.local_addr().unwrap());
    let socket = dir.path().join("inference.sock");
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let unix_app = app
        .clone()
        .into_make_service_with_connect_info::<crate::listen::UnixPeer>();
    tokio::spawn(async move { axum::serve(tcp, app).await });
    tokio::spawn(async move { axum::serve(unix, unix_app).await });
    Front {
        base,
        socket,
        key: key_config,
        audit: audit_path,
        _dir: dir,
    }
}

fn ask(max_tokens: Option<u64>) -> Value {
    let mut b = json!({"model": "tiny", "temperature": 0,
        "messages": [{"role": "user", "content": "hello there"}]});
    if let Some(n) = max_tokens {
        b["max_tokens"] = n.into();
    }
    b
}

/// A sealed request, signed by `client` when given: (status, Retry-After, the opened body).
async fn sealed(
    f: &Front,
    client: Option<&ClientKey>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let (msg, opener) =
        RequestSealer::seal_as(&f.key, "POST", "/v1/chat/completions", body, now(), client)
            .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/chat/completions", f.base))
        .header("content-type", e2e::E2E_TYPE)
        .body(msg)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = r.bytes().await.unwrap();
    let plain = opener.open_whole(&bytes).unwrap();
    (status, retry, serde_json::from_slice(&plain).unwrap())
}

/// A plaintext request on the unix socket: (status, body).
async fn over_unix(f: &Front, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut s = tokio::net::UnixStream::connect(&f.socket).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: wardd\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let json_start = out.find("\r\n\r\n").unwrap() + 4;
    let mut rest = &out[json_start..];
    // A chunked body: the JSON is on the line after the first chunk size.
    if !rest.starts_with('{') {
        rest = &rest[rest.find("\r\n").unwrap() + 2..];
        rest = &rest[..rest.rfind('}').unwrap() + 1];
    }
    (status, serde_json::from_str(rest).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_limits_and_refusals_end_to_end_with_their_audit() {
    let (alice, bob, eve) = (
        ClientKey::generate(),
        ClientKey::generate(),
        ClientKey::generate(),
    );
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let f = serve(json!({"version": 1, "clients": [
        {"name": "lab-a", "keys": [alice.id().to_string()], "requests_per_minute": 2,
         "max_output_tokens": 4},
        {"name": "lab-b", "keys": [bob.id().to_string()], "tokens_per_day": 10,
         "endpoints": ["chat"]},
        {"name": "ops", "keys": [format!("uid:{uid}")]},
    ]}))
    .await;

    // Granted: served, and the grant's output limit applies when the request sets none.
    let (status, _, body) = sealed(&f, Some(&alice), &ask(None)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
    // Over the limit: refused, as OpenAI shapes it.
    let (status, _, body) = sealed(&f, Some(&alice), &ask(Some(5))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");
    // The rate: two a minute (the refused request above did not count).
    let (status, _, body) = sealed(&f, Some(&alice), &ask(Some(2))).await;
    assert_eq!(status, 200, "{body}");
    let (status, retry, body) = sealed(&f, Some(&alice), &ask(Some(2))).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");

    // Not granted, or not identified: refused. A host that strips the identity has to reseal
    // the request, and then it is anonymous; one that signs with its own key is not granted.
    let (status, _, body) = sealed(&f, Some(&eve), &ask(Some(2))).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (403, Some("permission_error"))
    );
    let (status, _, _) = sealed(&f, None, &ask(Some(2))).await;
    assert_eq!(status, 403);
    let r = reqwest::Client::new()
        .post(format!("{}/chat/completions", f.base))
        .json(&ask(Some(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "plaintext TCP names nobody");

    // The token quota: the first request may finish over it; the next is refused.
    let (status, _, body) = sealed(&f, Some(&bob), &ask(Some(8))).await;
    assert_eq!(status, 200, "{body}");
    let (status, retry, body) = sealed(&f, Some(&bob), &ask(Some(8))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("quota_exceeded"))
    );
    assert!(retry.unwrap().parse::<u64>().unwrap() > 86_000);

    // The unix socket's peer, as the kernel names it.
    let (status, body) = over_unix(&f, &ask(Some(3))).await;
    assert_eq!(status, 200, "{body}");

    // Every request audited with who asked; the usage report is their sum.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(&f.audit).unwrap();
    let entries: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["detail"].clone())
        .collect();
    assert_eq!(entries.len(), 10);
    let alice_id = alice.id().to_string();
    let of = |id: String| entries.iter().filter(move |e| e["client"] == id.as_str());
    assert_eq!(of(alice_id.clone()).count(), 4);
    assert_eq!(
        of(alice_id.clone())
            .filter_map(|e| e["refused"].as_str())
            .collect::<Vec<_>>(),
        ["output_tokens", "rate_limited"]
    );
    assert!(of(format!("uid:{uid}")).all(|e| e["grant"] == "ops"));
    assert!(!text.contains("hello there"), "no prompt in the audit log");
    let report = crate::audit::usage::usage(
        std::io::BufReader::new(std::fs::File::open(&f.audit).unwrap()),
        &Default::default(),
    )
    .unwrap();
    let sum = |k: &str| -> u64 { entries.iter().filter_map(|e| e[k].as_u64()).sum() };
    assert_eq!(
        report.rows.iter().map(|r| r.prompt_tokens).sum::<u64>(),
        sum("prompt_tokens")
    );
    assert_eq!(
        report.rows.iter().map(|r| r.completion_tokens).sum::<u64>(),
        sum("completion_tokens")
    );
    let alice_row = report.rows.iter().find(|r| r.client == alice_id).unwrap();
    assert_eq!((alice_row.requests, alice_row.refused), (2, 2));
    assert_eq!(alice_row.grants, ["lab-a"]);
}
