//! The front over an external engine: a stand-in engine on loopback answering as OpenAI
//! servers do (llama.cpp's and vLLM's shapes), and misbehaving as engines can. The real
//! llama.cpp server is in `tests/tests/external_engine.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use serde_json::{Value, json};

use super::super::{Backend, Engines, OutcomeSlot, router};
use super::{Relayed, Upstream, event_data, find_event_end, relay_one};

/// What the stand-in engine does with a completion request.
#[derive(Clone, Copy)]
enum Behaviour {
    Good,
    Garbage,
    Hang,
    Refuse,
}

/// The last body the engine got.
type Seen = Arc<std::sync::Mutex<Option<Value>>>;

async fn engine(b: Behaviour, seen: Seen) -> String {
    let chat = move |Json(body): Json<Value>| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap() = Some(body.clone());
            match b {
                Behaviour::Garbage => "<html>oops</html>".to_string().into_response_any(),
                Behaviour::Hang => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late".to_string().into_response_any()
                }
                Behaviour::Refuse => (
                    axum::http::StatusCode::BAD_REQUEST,
                    Json(json!({"error": {"message": "context too long", "type": "invalid_request_error", "param": null, "code": null}})),
                )
                    .into_response_any(),
                Behaviour::Good if body["stream"] == true => {
                    let chunk = |delta: Value, finish: Value| {
                        json!({"id": "c1", "object": "chat.completion.chunk", "model": body["model"],
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                    };
                    let mut out = String::new();
                    for c in [
                        chunk(json!({"role": "assistant"}), Value::Null),
                        chunk(json!({"content": "Hel"}), Value::Null),
                        chunk(json!({"content": "lo"}), Value::Null),
                        chunk(json!({}), json!("stop")),
                    ] {
                        out.push_str(&format!("data: {c}\r\n\r\n"));
                    }
                    if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
                        let u = json!({"id": "c1", "object": "chat.completion.chunk", "model": body["model"], "choices": [],
                                       "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}});
                        out.push_str(&format!("data: {u}\n\n"));
                    }
                    out.push_str("data: [DONE]\n\n");
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                        out,
                    )
                        .into_response_any()
                }
                Behaviour::Good => Json(json!({
                    "id": "c1", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}}))
                .into_response_any(),
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"object": "list", "data": []})) }),
        )
        .route("/v1/chat/completions", axum::routing::post(chat));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

trait AnyResponse {
    fn into_response_any(self) -> axum::response::Response;
}
impl<T: axum::response::IntoResponse> AnyResponse for T {
    fn into_response_any(self) -> axum::response::Response {
        self.into_response()
    }
}

/// The front serving `up` as model `big`; every request carries `slot`.
async fn front(up: Arc<Upstream>, slot: OutcomeSlot) -> String {
    let engines: Engines = [("big".to_string(), Backend::External(up))].into();
    let app = router(Arc::new(std::sync::RwLock::new(engines))).layer(axum::middleware::from_fn(
        move |mut req: axum::extract::Request, next: axum::middleware::Next| {
            req.extensions_mut().insert(slot.clone());
            next.run(req)
        },
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/v1/chat/completions")
}

async fn upstream(b: Behaviour, timeout: Duration, capacity: usize) -> (Arc<Upstream>, Seen) {
    let seen = Seen::default();
    let base = engine(b, seen.clone()).await;
    let up = Arc::new(
        Upstream::new("big", &base, Some("engine-name".into()), timeout, capacity).unwrap(),
    );
    assert!(up.probe().await);
    up.set_up(true);
    (up, seen)
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

fn ask(stream: bool) -> Value {
    json!({"model": "big", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
           "temperature": 0.2, "tools": [{"type": "function", "function": {"name": "f"}}]})
}

#[tokio::test]
async fn answers_pass_through_with_the_clients_model_name_and_usage_audited() {
    let (up, seen) = upstream(Behaviour::Good, Duration::from_secs(5), 4).await;
    let slot = OutcomeSlot::default();
    let url = front(up, slot.clone()).await;
    let (status, body) = post(&url, ask(false)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "big");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello");
    // The engine got the body as sent, fields ward does not know included, under its own name.
    let got = seen.lock().unwrap().clone().unwrap();
    assert_eq!(got["model"], "engine-name");
    assert_eq!(got["tools"][0]["function"]["name"], "f");
    assert_eq!(got["temperature"], 0.2);
    let o = slot.get();
    assert_eq!(o.model.as_deref(), Some("big"));
    assert_eq!(
        o.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((7, 1))
    );
    assert_eq!(o.finish_reason, Some("length"));
}

#[tokio::test]
async fn streams_pass_event_by_event_and_usage_is_asked_for_the_audit_only() {
    let (up, seen) = upstream(Behaviour::Good, Duration::from_secs(5), 4).await;
    let slot = OutcomeSlot::default();
    let url = front(up, slot.clone()).await;
    let (status, body) = post(&url, ask(true)).await;
    assert_eq!(status, 200, "{body}");
    let data: Vec<&str> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(data.len(), 5, "{body}");
    assert_eq!(data.last(), Some(&"[DONE]"));
    let text: String = data[..4]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .inspect(|v| assert_eq!(v["model"], "big"))
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "Hello");
    // Usage was asked of the engine, recorded, and not shown to a client that did not ask.
    assert_eq!(
        seen.lock().unwrap().clone().unwrap()["stream_options"]["include_usage"],
        true
    );
    assert!(!body.contains("\"usage\""), "{body}");
    let o = slot.get();
    assert!(o.stream);
    assert_eq!(
        o.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((7, 2))
    );
    assert_eq!(o.finish_reason, Some("stop"));
    // A client that asks gets OpenAI's usage chunk.
    let mut asked = ask(true);
    asked["stream_options"] = json!({"include_usage": true});
    let (_, body) = post(&url, asked).await;
    assert!(body.contains("\"completion_tokens\":2"), "{body}");
}

#[tokio::test]
async fn misbehaving_engines_get_clear_errors() {
    for (b, want, code) in [
        (Behaviour::Garbage, 502, "engine_error"),
        (Behaviour::Hang, 504, "engine_timeout"),
    ] {
        let (up, _) = upstream(b, Duration::from_millis(700), 4).await;
        let url = front(up, OutcomeSlot::default()).await;
        let started = std::time::Instant::now();
        let (status, body) = post(&url, ask(false)).await;
        assert_eq!(status, want, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{body}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The engine's own OpenAI error passes through with its status.
    let (up, _) = upstream(Behaviour::Refuse, Duration::from_secs(5), 4).await;
    let url = front(up.clone(), OutcomeSlot::default()).await;
    let (status, body) = post(&url, ask(false)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("context too long"), "{body}");
    // Down (restarting): 503, not a hang.
    up.set_up(false);
    let (status, body) = post(&url, ask(false)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("engine_unavailable"), "{body}");
    // Gone: the connection is refused, 503.
    up.set_base("http://127.0.0.1:9");
    up.set_up(true);
    let (status, _) = post(&url, ask(false)).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn requests_beyond_capacity_get_429() {
    let (up, _) = upstream(Behaviour::Hang, Duration::from_secs(3), 1).await;
    let url = front(up, OutcomeSlot::default()).await;
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, ask(false)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = post(&url, ask(false)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("queue_full"), "{body}");
    assert_eq!(first.await.unwrap().0, 504);
}

#[test]
fn sse_events_split_as_the_spec_says() {
    assert_eq!(find_event_end(b"data: a\n\ndata: b"), Some((7, 2)));
    assert_eq!(find_event_end(b"data: a\r\n\r\n"), Some((7, 4)));
    assert_eq!(find_event_end(b"data: a\n"), None);
    assert_eq!(
        event_data("event: x\ndata: {\"a\":\ndata: 1}"),
        Some("{\"a\":\n1}".into())
    );
    assert_eq!(event_data(": comment"), None);
    let mut seen = (None, None);
    assert_eq!(relay_one("[DONE]", "m", false, &mut seen), Relayed::Done);
    assert_eq!(
        relay_one("not json", "m", false, &mut seen),
        Relayed::Garbage
    );
    assert_eq!(
        relay_one("{\"x\":1}", "m", false, &mut seen),
        Relayed::Garbage
    );
    assert_eq!(
        relay_one(
            "{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
            "m",
            false,
            &mut seen
        ),
        Relayed::Drop
    );
    assert_eq!(seen.0.map(|u| u.completion_tokens), Some(2));
}

#[test]
fn events_come_out_the_same_whatever_the_chunking() {
    use super::SseRelay;
    let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":null}],\"model\":\"x\"}\r\n\r\n\
                  : keep-alive\n\n\
                  data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
                  data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
                  data: [DONE]\n\ndata: ignored after done\n\n";
    let mut whole = SseRelay::new("big", false);
    let all = whole.push(stream.as_bytes()).unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[3], Relayed::Done);
    assert_eq!(all[2], Relayed::Drop);
    assert!(matches!(&all[0], Relayed::Send(d) if d.contains("\"model\":\"big\"")));
    assert_eq!(whole.usage().map(|u| u.prompt_tokens), Some(3));
    for size in [1, 2, 3, 7, 64] {
        let mut r = SseRelay::new("big", false);
        let mut got = Vec::new();
        for c in stream.as_bytes().chunks(size) {
            let out = r.push(c).unwrap();
            let done = out.contains(&Relayed::Done);
            got.extend(out);
            if done {
                break;
            }
        }
        assert_eq!(got, all, "chunks of {size}");
        assert!(r.finished());
    }
}
