//! The OpenAI-compatible API over the tiny generated llama, on a real loopback HTTP server,
//! called the way OpenAI clients call it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use serde_json::{Value, json};

use ward_inference::test_models::gguf_model;
use ward_inference::{Engine, EngineConfig};

use super::{Backend, Engines, Outcome, OutcomeSlot, router};

async fn serve() -> String {
    serve_with(None).await
}

/// Serves the tiny model; with `outcome`, every request carries that slot (as wardd's audit
/// layer does).
async fn serve_with(outcome: Option<OutcomeSlot>) -> String {
    let engine = Engine::new(
        gguf_model(),
        EngineConfig {
            max_concurrent: 2,
            queue_capacity: 4,
        },
    )
    .unwrap();
    let engines: Engines = [("tiny".to_string(), Backend::Embedded(Arc::new(engine)))].into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut app = router(Arc::new(std::sync::RwLock::new(engines)));
    if let Some(slot) = outcome {
        app = app.layer(axum::middleware::from_fn(
            move |mut req: axum::extract::Request, next: axum::middleware::Next| {
                req.extensions_mut().insert(slot.clone());
                next.run(req)
            },
        ));
    }
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

async fn post(url: &str, body: Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The `data:` payloads of an SSE body.
fn sse(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "tiny", "messages": [{"role": "system", "content": "be brief"},
           {"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
           "max_tokens": 12, "temperature": 0, "stream": stream,
           "stream_options": {"include_usage": true}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_chat_completions_look_like_openai() {
    let base = serve().await;
    let models: Value = reqwest::get(format!("{base}/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");

    let (status, body) = post(&format!("{base}/chat/completions"), chat_body(false)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()));

    // Streaming: the deltas add up to the same text (greedy), then a finish chunk, a usage
    // chunk with no choices, and [DONE].
    let (status, body) = post(&format!("{base}/chat/completions"), chat_body(true)).await;
    assert_eq!(status, 200, "{body}");
    let events = sse(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text, "streaming equals non-streaming");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(&usage_chunk["usage"], usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_errors() {
    let base = serve().await;
    let (status, body) = post(
        &format!("{base}/completions"),
        json!({"model": "tiny", "prompt": "hello there", "max_tokens": 5, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 5);

    let cases = [
        (
            json!({"model": "gpt-9", "prompt": "x"}),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "tiny", "prompt": "x", "max_tokens": 0}),
            400,
            "max_tokens",
        ),
        (
            json!({"model": "tiny", "prompt": "x", "n": 3}),
            400,
            "n = 1",
        ),
        (json!({"model": "tiny", "prompt": 7}), 400, "prompt"),
        (json!({"prompt": "no model"}), 400, "model"),
    ];
    for (req, want_status, want) in cases {
        let (status, body) = post(&format!("{base}/completions"), req.clone()).await;
        assert_eq!(status, want_status, "{req}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"]["message"].is_string() && v["error"]["type"].is_string(),
            "{body}"
        );
        assert!(body.contains(want), "{req}: {body}");
    }
    let (status, body) = post(
        &format!("{base}/chat/completions"),
        json!({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_slot_gets_model_counts_and_finish_reason_but_no_text() {
    let slot = OutcomeSlot::default();
    let base = serve_with(Some(slot.clone())).await;
    for stream in [false, true] {
        let (status, body) = post(&format!("{base}/chat/completions"), chat_body(stream)).await;
        assert_eq!(status, 200, "{body}");
        let o = slot.get();
        assert_eq!(o.model.as_deref(), Some("tiny"));
        assert_eq!(o.stream, stream);
        let usage = o.usage.unwrap();
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
        assert!(usage.completion_tokens <= 12);
        assert!(["stop", "length"].contains(&o.finish_reason.unwrap()));
    }
    // A refused request names its model, with no counts.
    let slot = OutcomeSlot::default();
    let base = serve_with(Some(slot.clone())).await;
    let (status, _) = post(
        &format!("{base}/completions"),
        json!({"model": "gpt-9", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        slot.get(),
        Outcome {
            model: Some("gpt-9".into()),
            ..Outcome::default()
        }
    );
}
