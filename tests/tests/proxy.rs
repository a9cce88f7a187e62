//! `ward proxy`: unchanged OpenAI clients, every request encrypted end to end. Checked with the
//! real things: OpenAI's Python SDK (the virtual environment of `openai_client.rs`) through
//! `ward proxy` against wardd serving the tiny generated llama on an encrypted-only listener
//! (sample TEE, so the proxy runs with `--allow-sample`): models, chat, streamed chat with
//! usage, completions, each audited by wardd as encrypted. A second proxy without
//! `--allow-sample` refuses the attestation: every request is answered 502
//! `attestation_failed` and nothing reaches wardd. Then wardd restarts with a new key mid-session:
//! the proxy re-attests, verifies the new key and retries the request once.
//!
//! Skipped, with a message, when python3 cannot make a virtual environment or PyPI cannot be
//! reached.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use ward_tests::Wardd;
use ward_tests::proxy::ProxyProcess;
use ward_tests::python::{free_port, python_with_openai, run};
use ward_tests::served::{inference_entries, serve_model};

const SCRIPT: &str = r#"
import sys
import openai
from openai import OpenAI

proxied, refusing = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=proxied, api_key="unused", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "Say hello."}]

assert [m.id for m in client.models.list().data] == ["tiny"]

chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
assert chat.object == "chat.completion", chat
content = chat.choices[0].message.content
assert isinstance(content, str), chat
assert 0 < chat.usage.completion_tokens <= 8, chat.usage

text, usage, chunks = "", None, 0
for chunk in client.chat.completions.create(
    model="tiny", messages=messages, max_tokens=8, temperature=0,
    stream=True, stream_options={"include_usage": True},
):
    chunks += 1
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert chunks >= 3, chunks
assert text == content, (text, content)
assert usage.completion_tokens == chat.usage.completion_tokens, usage

completion = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0)
assert completion.object == "text_completion", completion
assert 0 < completion.usage.completion_tokens <= 5, completion.usage

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.code == "model_not_found", e

refused = OpenAI(base_url=refusing, api_key="unused", max_retries=0, timeout=120)
calls = [
    lambda: refused.models.list(),
    lambda: refused.chat.completions.create(model="tiny", messages=messages, max_tokens=4),
    lambda: refused.chat.completions.create(model="tiny", messages=messages, max_tokens=4, stream=True),
    lambda: refused.completions.create(model="tiny", prompt="x", max_tokens=4),
]
for call in calls:
    try:
        call()
        raise AssertionError("a refused attestation answered")
    except openai.APIStatusError as e:
        assert e.status_code == 502 and e.code == "attestation_failed", e
        assert "sample evidence" in e.message, e.message

print("openai", openai.__version__, "ok through ward proxy")
"#;

/// A running `ward proxy`, killed when dropped.
async fn wait_ready(wardd: &Wardd) {
    let until = Instant::now() + Duration::from_secs(120);
    while !wardd.stderr().contains("inference engine ready") {
        assert!(
            Instant::now() < until,
            "no engine after a restart:\n{}",
            wardd.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_clients_work_unchanged_through_ward_proxy_and_every_request_is_encrypted() {
    let python = match tokio::task::spawn_blocking(python_with_openai)
        .await
        .unwrap()
    {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: no Python openai SDK: {why}");
            return;
        }
    };
    let port = free_port();
    // Encrypted-only: a plaintext request would be refused (415), so every answer the SDK gets
    // came through an encrypted request.
    let listeners = format!(
        "[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"inference\"]\n\
         encrypted_only = true\n"
    );
    let gguf = &ward_inference::test_models::fixture().gguf;
    let mut served = serve_model("tiny", &[("model.gguf", gguf)], &listeners).await;
    let url = format!("http://127.0.0.1:{port}/v1");
    let work = tempfile::tempdir().unwrap();
    let (dir, url2) = (work.path().to_path_buf(), url.clone());
    let (proxy, refusing) = tokio::task::spawn_blocking(move || {
        (
            ProxyProcess::start(&dir, "proxy", &url2, &["--allow-sample"]),
            ProxyProcess::start(&dir, "refusing", &url2, &[]),
        )
    })
    .await
    .unwrap();
    assert!(
        refusing.log().contains("REFUSED") && refusing.log().contains("--allow-sample"),
        "{}",
        refusing.log()
    );

    let script = work.path().join("client.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let (base, refusing_base) = (proxy.base(), refusing.base());
    let out = tokio::task::spawn_blocking(move || {
        run(
            Command::new(python)
                .arg(&script)
                .arg(base)
                .arg(refusing_base),
            Duration::from_secs(300),
        )
    })
    .await
    .unwrap()
    .expect("the client script ran out of time");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the OpenAI SDK script failed:\n{stdout}\n{stderr}\nproxy:\n{}\nwardd:\n{}",
        proxy.log(),
        served.wardd.stderr()
    );
    eprintln!("{}", stdout.trim());

    // wardd saw the chat, the stream, the completion and the unknown model, each encrypted;
    // nothing from the refusing proxy.
    let entries = inference_entries(&served.wardd.audit);
    assert_eq!(entries.len(), 4, "{entries:#?}");
    for e in &entries {
        assert_eq!(e["detail"]["encrypted"], true, "{e}");
    }
    let statuses: Vec<_> = entries
        .iter()
        .map(|e| e["detail"]["status"].clone())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 404], "{entries:#?}");
    for log in [proxy.log(), refusing.log()] {
        assert!(
            !log.contains("Say hello") && !log.contains("Once upon"),
            "{log}"
        );
    }

    // wardd restarts, with a new key: the proxy's next request is sealed to the old key and
    // refused; the proxy re-attests, verifies the new key and retries once.
    let config = std::fs::read_to_string(served.wardd.dir.path().join("ward.toml")).unwrap();
    let old_dir = served.wardd.dir.path().display().to_string();
    served.wardd.child.kill().unwrap();
    served.wardd.child.wait().unwrap();
    let restarted = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = config.replace(&old_dir, &dir.path().display().to_string());
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    wait_ready(&restarted).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let answer = http
        .post(format!("{}/chat/completions", proxy.base()))
        .json(&serde_json::json!({
            "model": "tiny", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}],
        }))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        status,
        200,
        "{body}\nproxy:\n{}\nwardd:\n{}",
        proxy.log(),
        restarted.stderr()
    );
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(
        proxy.log().contains("the server's key changed"),
        "{}",
        proxy.log()
    );
    // The new wardd refused the request sealed to the old key, then answered the retry.
    let entries = inference_entries(&restarted.audit);
    let statuses: Vec<_> = entries
        .iter()
        .map(|e| e["detail"]["status"].clone())
        .collect();
    assert_eq!(statuses, [400, 200], "{entries:#?}");
    for e in &entries {
        assert_eq!(e["detail"]["encrypted"], true, "{e}");
    }
}
