//! A model owner's access policy, released by the development KBS with the model's KEK, through
//! a real wardd: two clients granted different limits, refusals shaped as OpenAI's, the usage
//! report (`ward audit usage`) equal to the audited requests, `/metrics` read by the Prometheus
//! project's own Python parser, and a policy the KBS will not release leaving the model
//! unserved.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use ward_e2e::{ClientKey, KeyConfig, RequestSealer};
use ward_tests::kbs::Policy;
use ward_tests::served::{inference_entries, serve_model_with_resources};
use ward_tests::{http_unix, unix_now};

const LISTENERS: &str = "[[listener]]\naddress = \"unix://{dir}/api.sock\"\nprotocol = \"http\"\n\
    services = [\"inference\", \"metrics\"]\n";
const POLICY_KEY: &str = "policy = \"kbs:///default/model-policy/tiny\"";

fn chat(max_tokens: Option<u64>, stream: bool) -> Value {
    let mut b = json!({"model": "tiny", "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": "a prompt the host must not see"}]});
    if let Some(n) = max_tokens {
        b["max_tokens"] = n.into();
    }
    b
}

async fn key_of(sock: &str) -> KeyConfig {
    let nonce: [u8; 32] = rand::random();
    let uri = format!(
        "/v1/attestation?nonce={}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, nonce)
    );
    let (status, _, body) = http_unix(sock, "GET", &uri, "application/json", b"").await;
    assert_eq!(status, 200);
    ward_tests::checked_key(&serde_json::from_slice(&body).unwrap(), &nonce)
}

/// A sealed request signed by `client`: (status, the opened body).
async fn ask(sock: &str, key: &KeyConfig, client: &ClientKey, body: &Value) -> (u16, Value) {
    let (msg, opener) = RequestSealer::seal_as(
        key,
        "POST",
        "/v1/chat/completions",
        body,
        unix_now(),
        Some(client),
    )
    .unwrap();
    let (status, _, sealed) = http_unix(
        sock,
        "POST",
        "/v1/chat/completions",
        "application/ward-e2e",
        &msg,
    )
    .await;
    let plain = opener.open_whole(&sealed).unwrap();
    (status, serde_json::from_slice(&plain).unwrap())
}

/// The samples of an OpenMetrics text as the Prometheus Python client parses it:
/// `name{labels}` to value.
fn parsed_metrics(text: &str) -> Option<std::collections::BTreeMap<String, f64>> {
    let python = match ward_tests::python::python_with(
        "prometheus-venv",
        "prometheus-client==0.21.1",
        "prometheus_client",
    ) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIP the /metrics parse: no prometheus_client ({why})");
            return None;
        }
    };
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused wardd's /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_grants_two_clients_different_limits_through_the_kbs() {
    let (lab_a, lab_b, stranger) = (
        ClientKey::generate(),
        ClientKey::generate(),
        ClientKey::generate(),
    );
    let policy = json!({"version": 1, "clients": [
        {"name": "lab-a", "keys": [lab_a.id().to_string()], "requests_per_minute": 60,
         "tokens_per_day": 100000},
        {"name": "lab-b", "keys": [lab_b.id().to_string()], "max_output_tokens": 2,
         "endpoints": ["chat"]},
    ]})
    .to_string();
    let gguf = &ward_inference::test_models::fixture().gguf;
    let served = serve_model_with_resources(
        "tiny",
        &[("model.gguf", gguf)],
        LISTENERS,
        POLICY_KEY,
        "inference engine ready",
        &[(
            "default/model-policy/tiny",
            policy.as_bytes(),
            Policy::Allow,
        )],
    )
    .await;
    let w = &served.wardd;
    let sock = format!("{}/api.sock", w.dir.path().display());
    let key = key_of(&sock).await;

    let (status, body) = ask(&sock, &key, &lab_a, &chat(Some(6), false)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ask(&sock, &key, &lab_b, &chat(None, false)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 2);
    let (status, body) = ask(&sock, &key, &lab_b, &chat(Some(6), false)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("permission_denied"))
    );
    let (status, _) = ask(&sock, &key, &lab_b, &chat(Some(2), true)).await;
    assert_eq!(status, 403, "lab-b may not stream");
    let (status, _) = ask(&sock, &key, &stranger, &chat(Some(2), false)).await;
    assert_eq!(status, 403);
    // Plaintext on the unix socket: the peer's uid, which no grant names.
    let (status, _, _) = http_unix(
        &sock,
        "POST",
        "/v1/chat/completions",
        "application/json",
        chat(Some(2), false).to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 403);

    // The audit log: the policy's release, and who asked each time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    assert!(audit.contains("\"event\":\"model.policy\""), "{audit}");
    assert!(
        !audit.contains("must not see"),
        "no prompt in the audit log"
    );
    let entries = inference_entries(&w.audit);
    assert_eq!(entries.len(), 6);
    let granted: Vec<_> = entries
        .iter()
        .filter_map(|e| e["detail"]["grant"].as_str())
        .collect();
    assert_eq!(granted, ["lab-a", "lab-b"]);

    // The usage report, from the verified chain, equals the entries' sums.
    let audit_path = w.audit.display().to_string();
    let (code, out, err) = ward_tests::run_ward("ward", &["audit", "usage", &audit_path, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let sum = |k: &str| -> u64 { entries.iter().filter_map(|e| e["detail"][k].as_u64()).sum() };
    let rows_sum = |k: &str| -> u64 { rows.iter().map(|r| r[k].as_u64().unwrap()).sum() };
    assert_eq!(rows_sum("prompt_tokens"), sum("prompt_tokens"));
    assert_eq!(rows_sum("completion_tokens"), sum("completion_tokens"));
    assert_eq!((rows_sum("requests"), rows_sum("refused")), (2, 4));
    let b = rows
        .iter()
        .find(|r| r["client"] == lab_b.id().to_string().as_str())
        .unwrap();
    assert_eq!(
        (b["requests"].as_u64(), b["refused"].as_u64()),
        (Some(1), Some(2))
    );
    let (code, table, _) = ward_tests::run_ward(
        "ward",
        &[
            "audit",
            "usage",
            &audit_path,
            "--client",
            &lab_a.id().to_string(),
        ],
    );
    assert_eq!(code, 0);
    assert!(
        table.contains("lab-a") && !table.contains("lab-b"),
        "{table}"
    );

    // /metrics, as Prometheus reads it.
    let (status, ct, text) = http_unix(&sock, "GET", "/metrics", "text/plain", b"").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = String::from_utf8(text).unwrap();
    assert!(
        !text.contains(&lab_a.id().to_string()),
        "no client key in a label"
    );
    if let Some(m) = parsed_metrics(&text) {
        let get = |k: &str| {
            m.get(k)
                .copied()
                .unwrap_or_else(|| panic!("no {k} in {m:?}"))
        };
        assert_eq!(
            get(r#"ward_inference_requests_total{model="tiny",status="2xx"}"#),
            2.0
        );
        assert_eq!(
            get(r#"ward_inference_requests_total{model="tiny",status="4xx"}"#),
            4.0
        );
        assert_eq!(
            get(r#"ward_inference_refusals_total{reason="not_granted"}"#),
            2.0
        );
        assert_eq!(
            get(r#"ward_inference_refusals_total{reason="output_tokens"}"#),
            1.0
        );
        assert_eq!(
            get(r#"ward_inference_refusals_total{reason="endpoint"}"#),
            1.0
        );
        assert_eq!(
            get(r#"ward_inference_tokens_total{kind="completion",model="tiny"}"#),
            sum("completion_tokens") as f64
        );
        assert_eq!(get(r#"ward_model_loads_total{outcome="ok"}"#), 1.0);
        assert!(get(r#"ward_kbs_handshakes_total{outcome="ok"}"#) >= 1.0);
        assert_eq!(
            get(r#"ward_kbs_resources_total{outcome="ok"}"#),
            2.0,
            "KEK and policy"
        );
        assert_eq!(get(r#"ward_inference_queue_depth{model="tiny"}"#), 0.0);
        assert_eq!(
            get(r#"ward_inference_request_seconds_count{model="tiny"}"#),
            6.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_kbs_withholds_leaves_the_model_unserved() {
    let policy = br#"{"version": 1, "clients": []}"#;
    let gguf = &ward_inference::test_models::fixture().gguf;
    let served = serve_model_with_resources(
        "tiny",
        &[("model.gguf", gguf)],
        LISTENERS,
        POLICY_KEY,
        "model policy refused",
        &[("default/model-policy/tiny", policy, Policy::Deny)],
    )
    .await;
    let w = &served.wardd;
    let sock = format!("{}/api.sock", w.dir.path().display());
    let (status, _, body) = http_unix(&sock, "GET", "/v1/models", "application/json", b"").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(models["data"], json!([]), "no model without its policy");
    let (status, _, body) = http_unix(
        &sock,
        "POST",
        "/v1/chat/completions",
        "application/json",
        chat(Some(2), false).to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    assert!(
        audit.contains("\"event\":\"model.policy_failed\""),
        "{audit}"
    );
    assert!(!audit.contains("\"event\":\"model.policy\","), "{audit}");
}
