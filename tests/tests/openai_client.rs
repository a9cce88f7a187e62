//! The promise that existing OpenAI clients work by changing only the base URL, checked with the
//! real thing: OpenAI's Python SDK (`pip install openai`, into a virtual environment kept under
//! the target directory and reused) against wardd serving the tiny generated llama, sealed and
//! released by the development KBS. It lists models, asks for a chat completion plainly and
//! streamed (with usage), and a text completion, and checks the SDK's error types for an
//! unknown model and for plaintext on an encrypted-only listener (415).
//!
//! Skipped, with a message, when python3 cannot make a virtual environment or PyPI cannot be
//! reached.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use ward_tests::python::{free_port, python_with_openai, run};
use ward_tests::served::{inference_entries, serve_model};

const SCRIPT: &str = r#"
import sys
import openai
from openai import OpenAI

base, encrypted_base = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "Say hello."}]

models = client.models.list()
assert [m.id for m in models.data] == ["tiny"], models
assert models.data[0].object == "model"

chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
assert chat.object == "chat.completion", chat
assert chat.id.startswith("chatcmpl-")
choice = chat.choices[0]
assert choice.message.role == "assistant" and isinstance(choice.message.content, str), chat
assert choice.finish_reason in ("stop", "length"), chat
usage = chat.usage
assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8, usage
assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage

text, finish, streamed_usage, chunks = "", None, None, 0
for chunk in client.chat.completions.create(
    model="tiny", messages=messages, max_tokens=8, temperature=0,
    stream=True, stream_options={"include_usage": True},
):
    chunks += 1
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        streamed_usage = chunk.usage
assert chunks >= 3, chunks
assert text == choice.message.content, (text, choice.message.content)
assert finish == choice.finish_reason, finish
assert streamed_usage.completion_tokens == usage.completion_tokens, streamed_usage

completion = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0)
assert completion.object == "text_completion", completion
assert isinstance(completion.choices[0].text, str)
assert 0 < completion.usage.completion_tokens <= 5, completion.usage

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.code == "model_not_found", e

encrypted = OpenAI(base_url=encrypted_base, api_key="unused", max_retries=0, timeout=120)
assert [m.id for m in encrypted.models.list().data] == ["tiny"]
try:
    encrypted.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    raise AssertionError("plaintext was accepted on an encrypted-only listener")
except openai.APIStatusError as e:
    assert e.status_code == 415 and e.code == "encryption_required", e

print("openai", openai.__version__, "ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_by_changing_only_the_base_url() {
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
    let (port, encrypted_port) = (free_port(), free_port());
    let listeners = format!(
        "[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"inference\"]\n\n\
         [[listener]]\naddress = \"tcp://127.0.0.1:{encrypted_port}\"\nservices = [\"inference\"]\n\
         encrypted_only = true\n"
    );
    let gguf = &ward_inference::test_models::fixture().gguf;
    let served = serve_model("tiny", &[("model.gguf", gguf)], &listeners).await;
    let script = served.wardd.dir.path().join("client.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        run(
            Command::new(python)
                .arg(&script)
                .arg(format!("http://127.0.0.1:{port}/v1"))
                .arg(format!("http://127.0.0.1:{encrypted_port}/v1")),
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
        "the OpenAI SDK script failed:\n{stdout}\n{stderr}\nwardd:\n{}",
        served.wardd.stderr()
    );
    eprintln!("{}", stdout.trim());

    // What the SDK did is in the audit log, one entry per request, with its counts.
    let entries = inference_entries(&served.wardd.audit);
    let ok: Vec<_> = entries
        .iter()
        .filter(|e| e["detail"]["status"] == 200)
        .collect();
    assert_eq!(ok.len(), 3, "{entries:#?}");
    for e in ok {
        let d = &e["detail"];
        assert_eq!(d["transport"], "http");
        assert_eq!(d["model_digest"], served.manifest_digest.as_str());
        assert!(d["completion_tokens"].as_u64().unwrap() > 0, "{e}");
    }
    assert_eq!(entries.len(), 5, "plus the 404 and the 415: {entries:#?}");
}
