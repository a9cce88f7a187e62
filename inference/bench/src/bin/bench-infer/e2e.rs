//! `bench-infer --e2e`: what end-to-end encryption (`ward_e2e`) costs per request and
//! per streamed token, next to the decode time of one token of a real model measured in the same
//! run (SmolLM2-135M Q4_1 by default).
//!
//! Per request: the client sealing a typical chat request (X-Wing and X25519; HPKE setup,
//! AES-256-GCM, export of the response secret), the server opening it (the same plus the clock
//! and replay checks and the JSON re-serialisation), and the client deriving the response keys
//! from the response's prelude. Per token: sealing one SSE `chat.completion.chunk` event as a
//! response chunk, and opening it.

use std::path::Path;
use std::time::Instant;

use ward_e2e::{KeyConfig, RequestSealer, ServerKey, Suite};

use crate::{BoxError, median};

const NOW: u64 = 1_800_000_000;

/// A typical streamed chat request: a system prompt and a paragraph-long question.
fn request_body() -> serde_json::Value {
    let question = "I am planning a three-day trip to Lisbon in early spring with two children \
        aged seven and ten. We like museums, short walks and trying local food, but we do not \
        want to spend more than two hours a day on public transport. Could you suggest a \
        day-by-day plan, with one rainy-day alternative for each day, and tell me which \
        neighbourhood would be the most practical place to stay? Please keep the answer short.";
    serde_json::json!({
        "model": "smollm2-135m-instruct",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer concisely."},
            {"role": "user", "content": question},
        ],
        "max_tokens": 256,
        "temperature": 0.7,
        "top_p": 0.9,
        "stream": true,
    })
}

/// One SSE event of a streamed token, as the OpenAI API writes it.
fn token_event() -> Vec<u8> {
    let chunk = serde_json::json!({
        "id": "chatcmpl-5f1c2d9e8a7b4c3d2e1f0a9b", "object": "chat.completion.chunk",
        "created": NOW, "model": "smollm2-135m-instruct",
        "choices": [{"index": 0, "delta": {"content": " museum"}, "logprobs": null,
                     "finish_reason": null}],
    });
    format!("data: {chunk}\n\n").into_bytes()
}

/// Seconds per call of `f`, median over 5 batches of `n` calls.
fn per_call(n: usize, mut f: impl FnMut() -> Result<(), BoxError>) -> Result<f64, BoxError> {
    let mut batches = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        batches.push(t.elapsed().as_secs_f64() / n as f64);
    }
    Ok(median(batches))
}

struct RequestCosts {
    seal: f64,
    open: f64,
    response_keys: f64,
    message_bytes: usize,
}

fn request_costs(suite: Suite, n: usize) -> Result<RequestCosts, BoxError> {
    let server = ServerKey::generate(suite);
    let config = KeyConfig::decode(&server.config().encode())?;
    let body = request_body();
    let seal = per_call(n, || {
        RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body, NOW)?;
        Ok(())
    })?;
    // Each message opens once (replay cache): seal fresh ones for every batch.
    let mut opens = Vec::new();
    let mut message_bytes = 0;
    for _ in 0..5 {
        let messages: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body, NOW)
                    .map(|(m, _)| m)
            })
            .collect::<Result<_, _>>()?;
        message_bytes = messages.first().map_or(0, Vec::len);
        let t = Instant::now();
        for m in &messages {
            server.open_request(m, "POST", "/v1/chat/completions", NOW)?;
        }
        opens.push(t.elapsed().as_secs_f64() / n as f64);
    }
    // The client's first read of a response: the 32-byte prelude gives the response keys.
    let (message, _) = RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body, NOW)?;
    let prelude = server
        .open_request(&message, "POST", "/v1/chat/completions", NOW)?
        .sealer
        .prelude();
    let mut keys = Vec::new();
    for _ in 0..5 {
        let mut openers = (0..n)
            .map(|_| {
                RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body, NOW)
                    .map(|(_, o)| o)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let t = Instant::now();
        for o in &mut openers {
            o.feed(&prelude)?;
        }
        keys.push(t.elapsed().as_secs_f64() / n as f64);
    }
    Ok(RequestCosts {
        seal,
        open: median(opens),
        response_keys: median(keys),
        message_bytes,
    })
}

/// (seal, open) seconds per streamed token event.
fn token_costs(n: usize) -> Result<(f64, f64, usize), BoxError> {
    let server = ServerKey::generate(Suite::XWing);
    let event = token_event();
    let (mut seals, mut opens) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (message, mut opener) = RequestSealer::seal(
            server.config(),
            "POST",
            "/v1/chat/completions",
            &request_body(),
            NOW,
        )?;
        let mut sealer = server
            .open_request(&message, "POST", "/v1/chat/completions", NOW)?
            .sealer;
        opener.feed(&sealer.prelude())?;
        let t = Instant::now();
        let chunks: Vec<Vec<u8>> = (0..n)
            .map(|_| sealer.seal_chunk(&event, false))
            .collect::<Result<_, _>>()?;
        seals.push(t.elapsed().as_secs_f64() / n as f64);
        let t = Instant::now();
        for c in &chunks {
            let opened = opener.feed(c)?;
            if opened.len() != 1 {
                return Err("a chunk did not open".into());
            }
        }
        opens.push(t.elapsed().as_secs_f64() / n as f64);
    }
    Ok((median(seals), median(opens), event.len()))
}

fn us(s: f64) -> String {
    format!("{:9.1} µs", s * 1e6)
}

pub(crate) fn run(gguf: &Path, gen_tokens: usize, runs: usize) -> Result<(), BoxError> {
    let decode = if gguf.exists() {
        let (model, label, _) = crate::load(gguf, ward_inference::DeviceKind::Cpu)?;
        let prompt = model.encode("The quick brown fox jumps over the lazy dog.", true)?;
        let f = crate::measure(&model, &prompt, gen_tokens.max(1), runs)?;
        println!(
            "{label}: decode {:.2} tok/s = {:.2} ms per token ({gen_tokens} tokens, median of {runs})",
            f.decode_tps,
            1e3 / f.decode_tps
        );
        Some(1.0 / f.decode_tps)
    } else {
        println!(
            "{}: not found (scripts/fetch-model.sh); crypto figures only",
            gguf.display()
        );
        None
    };
    let vs_token = |s: f64| match decode {
        Some(d) => format!("{:8.4}% of a decode token", 100.0 * s / d),
        None => String::new(),
    };
    let body_len = serde_json::to_vec(&request_body())?.len();
    println!("\nper request (chat request of {body_len} bytes of JSON, median of 5 batches):");
    for (suite, name, n) in [
        (Suite::XWing, "X-Wing", 200),
        (Suite::X25519, "X25519", 500),
    ] {
        let c = request_costs(suite, n)?;
        println!(
            "  {name:6} client seal {}  {}   ({} bytes on the wire)",
            us(c.seal),
            vs_token(c.seal),
            c.message_bytes
        );
        println!(
            "  {name:6} server open {}  {}",
            us(c.open),
            vs_token(c.open)
        );
        if suite == Suite::XWing {
            println!(
                "  client response keys (HKDF on the prelude) {}  {}",
                us(c.response_keys),
                vs_token(c.response_keys)
            );
        }
    }
    let (seal, open, len) = token_costs(20_000)?;
    println!(
        "\nper token (one SSE chat.completion.chunk event of {len} bytes, +16-byte tag and 1-2 length bytes):"
    );
    println!("  server seal chunk {}  {}", us(seal), vs_token(seal));
    println!("  client open chunk {}  {}", us(open), vs_token(open));
    println!(
        "  both              {}  {}",
        us(seal + open),
        vs_token(seal + open)
    );
    Ok(())
}
