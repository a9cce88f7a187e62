//! What a model's access policy costs per request, in one run: the tiny generated llama behind
//! wardd's OpenAI routes in process (no network, so the policy's share is not hidden in
//! loopback noise), asked for one token by a granted client, with and without a policy on the
//! model, alternating request by request; then the admission check alone (workload digest, grant,
//! rate bucket) on the same body. `just bench-policy` (release build).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use ward_agent::access::{AccessPolicy, Ask, Client, Endpoint, workload_digest};
use ward_agent::inference_api::openai::{Backend, Serving, router};
use ward_inference::test_models::gguf_model;
use ward_inference::{Engine, EngineConfig};

const WARMUP: usize = 20;
const REQUESTS: usize = 1000;
const CHECKS: usize = 200_000;

fn body() -> Value {
    json!({"model": "tiny", "max_tokens": 1, "temperature": 0,
           "messages": [{"role": "system", "content": "Answer in one word."},
                        {"role": "user", "content": "Name a colour of the sea."}]})
}

fn policy(client: &str) -> AccessPolicy {
    let doc = json!({"version": 1, "clients": [
        {"name": "bench", "keys": [client], "requests_per_minute": 100_000_000u64,
         "tokens_per_day": 1_000_000_000_000u64, "max_output_tokens": 64}]});
    AccessPolicy::from_bytes(doc.to_string().as_bytes()).unwrap()
}

async fn one(app: &axum::Router, client: &Client, bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut req = axum::http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(bytes.to_vec()))
        .unwrap();
    req.extensions_mut().insert(client.clone());
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    start.elapsed()
}

/// The 25th, 50th and 75th percentiles.
fn quartiles(mut v: Vec<Duration>) -> [Duration; 3] {
    v.sort();
    [v[v.len() / 4], v[v.len() / 2], v[v.len() * 3 / 4]]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let key = ward_e2e::ClientKey::generate().id();
    let client = Client::key(&key);
    let engine = Arc::new(
        Engine::new(
            gguf_model(),
            EngineConfig {
                max_concurrent: 1,
                queue_capacity: 4,
            },
        )
        .unwrap(),
    );
    let open = Serving::default();
    open.engines
        .write()
        .unwrap()
        .insert("tiny".into(), Backend::Embedded(engine.clone()));
    let guarded = Serving {
        engines: open.engines.clone(),
        policies: Default::default(),
    };
    guarded
        .policies
        .write()
        .unwrap()
        .insert("tiny".into(), Arc::new(policy(&key.to_string())));
    let (open_app, guarded_app) = (router(open), router(guarded));
    let bytes = body().to_string().into_bytes();
    for _ in 0..WARMUP {
        one(&open_app, &client, &bytes).await;
        one(&guarded_app, &client, &bytes).await;
    }
    // Request by request, alternating (which goes first alternating too), so a load that drifts
    // during the run weighs on both alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for i in 0..REQUESTS {
        if i % 2 == 0 {
            without.push(one(&open_app, &client, &bytes).await);
            with.push(one(&guarded_app, &client, &bytes).await);
        } else {
            with.push(one(&guarded_app, &client, &bytes).await);
            without.push(one(&open_app, &client, &bytes).await);
        }
    }
    let (qa, qb) = (quartiles(without), quartiles(with));
    let (a, b) = (qa[1], qb[1]);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("one-token chat completion, in process, {REQUESTS} requests each, alternating:");
    println!(
        "  without a policy  {:>9.1} us (median; quartiles {:.1} to {:.1})",
        us(a),
        us(qa[0]),
        us(qa[2])
    );
    println!(
        "  with a policy     {:>9.1} us (median; quartiles {:.1} to {:.1})",
        us(b),
        us(qb[0]),
        us(qb[2])
    );
    println!(
        "  policy / none     {:>9.3}x  ({:+.1} us)",
        b.as_secs_f64() / a.as_secs_f64(),
        (b.as_secs_f64() - a.as_secs_f64()) * 1e6
    );

    let p = policy(&key.to_string());
    let value = body();
    let start = Instant::now();
    for _ in 0..CHECKS {
        let ask = Ask {
            endpoint: Endpoint::Chat,
            stream: false,
            max_tokens: Some(1),
            workload: workload_digest(std::hint::black_box(&value)),
        };
        std::hint::black_box(p.admit(Some(&client), &ask).unwrap());
    }
    let each = start.elapsed() / CHECKS as u32;
    println!(
        "admission alone (workload digest, grant, rate bucket): {:.2} us per check, {:.4}% of a \
         one-token request",
        each.as_secs_f64() * 1e6,
        100.0 * each.as_secs_f64() / a.as_secs_f64()
    );
}
