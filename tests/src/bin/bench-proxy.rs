//! `ward proxy`'s cost per request and per streamed token, in one run on one wardd: the tiny
//! generated llama served by wardd (sample TEE), asked directly in plaintext on its own port
//! (the baseline), directly sealed by the client itself (what `ward chat` does: the cost of the
//! encryption alone) and through `ward proxy` (every request sealed to the attested key, every
//! answer opened, one more loopback hop), alternating request by request. Printed: the median and mean latency of a
//! whole (non-streamed) chat completion, time to first token and the mean gap between streamed
//! content events (the per-token cost; a median would mislead, as a client's read may hold
//! several events), each with the proxy's overhead (absolute and as a ratio to direct).
//! `just bench-proxy` (release builds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use ward_e2e::{KeyConfig, RequestSealer, ResponseOpener};
use ward_tests::bin;
use ward_tests::python::free_port;
use ward_tests::served::serve_model;

const ROUNDS: usize = 40;
const WARMUP: usize = 3;
const TOKENS: usize = 32;

fn ask(stream: bool) -> Value {
    json!({"model": "tiny", "max_tokens": TOKENS, "temperature": 0, "stream": stream,
           "messages": [{"role": "user", "content": "Write one sentence about the sea."}]})
}

/// How a request goes.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    /// Plaintext, straight to wardd.
    Plain,
    /// Sealed by the client itself, straight to wardd.
    Sealed,
    /// Plaintext to `ward proxy`, which seals it.
    Proxy,
}

/// Sends one chat request the `way` says; the response and, when sealed here, its opener.
async fn send(
    http: &reqwest::Client,
    base: &str,
    way: Way,
    key: &KeyConfig,
    stream: bool,
) -> (reqwest::Response, Option<ResponseOpener>) {
    let url = format!("{base}/chat/completions");
    let (req, opener) = if way == Way::Sealed {
        let (msg, opener) = RequestSealer::seal(
            key,
            "POST",
            "/v1/chat/completions",
            &ask(stream),
            ward_tests::unix_now(),
        )
        .unwrap();
        (
            http.post(url)
                .header("content-type", "application/ward-e2e")
                .body(msg),
            Some(opener),
        )
    } else {
        (http.post(url).json(&ask(stream)), None)
    };
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    (r, opener)
}

/// One whole chat completion: its latency.
async fn whole(http: &reqwest::Client, base: &str, way: Way, key: &KeyConfig) -> Duration {
    let t = Instant::now();
    let (r, opener) = send(http, base, way, key, false).await;
    let body = r.bytes().await.unwrap();
    let plain = match opener {
        Some(o) => o.open_whole(&body).unwrap().to_vec(),
        None => body.to_vec(),
    };
    let v: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    t.elapsed()
}

/// One streamed chat completion: time to the first content event, and the gaps between
/// content events.
async fn streamed(
    http: &reqwest::Client,
    base: &str,
    way: Way,
    key: &KeyConfig,
) -> (Duration, Vec<Duration>) {
    let t = Instant::now();
    let (r, mut opener) = send(http, base, way, key, true).await;
    let mut body = r.bytes_stream();
    let (mut text, mut times) = (Vec::new(), Vec::new());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        match &mut opener {
            Some(o) => {
                for c in o.feed(&chunk).unwrap() {
                    text.extend_from_slice(&c);
                }
            }
            None => text.extend_from_slice(&chunk),
        }
        let now = Instant::now();
        while let Some(end) = text.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = text.drain(..end + 2).collect();
            if event.windows(9).any(|w| w == b"\"content\"") {
                times.push(now);
            }
        }
    }
    assert!(!times.is_empty(), "no content events");
    let gaps = times.windows(2).map(|w| w[1] - w[0]).collect();
    (times[0] - t, gaps)
}

#[derive(Default)]
struct Sample {
    whole: Vec<Duration>,
    ttft: Vec<Duration>,
    gaps: Vec<Duration>,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.iter().sum::<Duration>() / v.len() as u32
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One measure: plain, sealed and proxied, and the proxy against plain and against sealed.
fn row(what: &str, plain: Duration, sealed: Duration, proxied: Duration) {
    let (d, s, p) = (ms(plain), ms(sealed), ms(proxied));
    println!(
        "{what:<32} {d:>9.3} {s:>9.3} {p:>9.3} {:>+10.3} {:>7.3}x {:>+10.3} {:>7.3}x",
        p - d,
        p / d,
        p - s,
        p / s
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port = free_port();
    let listeners =
        format!("[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"inference\"]\n");
    let gguf = &ward_inference::test_models::fixture().gguf;
    let served = serve_model("tiny", &[("model.gguf", gguf)], &listeners).await;
    let direct = format!("http://127.0.0.1:{port}/v1");
    let proxy_port = free_port();
    let log = served.wardd.dir.path().join("proxy.stderr");
    let mut proxy = Command::new(bin("ward"))
        .args([
            "proxy",
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--url",
            &direct,
            "--allow-sample",
        ])
        .env("WARD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ward proxy: serving")
    {
        assert!(Instant::now() < until, "the proxy never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proxied = format!("http://127.0.0.1:{proxy_port}/v1");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let key = ward_tests::attested_key(&http, &direct).await;
    let ways = [
        (Way::Plain, direct.as_str()),
        (Way::Sealed, direct.as_str()),
        (Way::Proxy, proxied.as_str()),
    ];
    for _ in 0..WARMUP {
        for (way, base) in ways {
            whole(&http, base, way, &key).await;
            streamed(&http, base, way, &key).await;
        }
    }
    let mut samples: [Sample; 3] = Default::default();
    for round in 0..ROUNDS {
        // A different one first each round, so none always meets a warm cache.
        for i in 0..3 {
            let (way, base) = ways[(round + i) % 3];
            let s = &mut samples[(round + i) % 3];
            s.whole.push(whole(&http, base, way, &key).await);
            let (ttft, gaps) = streamed(&http, base, way, &key).await;
            s.ttft.push(ttft);
            s.gaps.extend(gaps);
        }
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
    let [d, s, p] = &samples;
    println!("ward proxy vs direct, tiny llama, {ROUNDS} rounds, max_tokens {TOKENS}, times in ms");
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>10} {:>8} {:>10} {:>8}",
        "", "plain", "sealed", "proxy", "-plain", "/plain", "-sealed", "/sealed"
    );
    let m = |f: fn(&[Duration]) -> Duration, pick: fn(&Sample) -> &Vec<Duration>| {
        (f(pick(d)), f(pick(s)), f(pick(p)))
    };
    let (a, b, c) = m(median, |x| &x.whole);
    row("whole request, median", a, b, c);
    let (a, b, c) = m(mean, |x| &x.whole);
    row("whole request, mean", a, b, c);
    let (a, b, c) = m(median, |x| &x.ttft);
    row("stream: first token, median", a, b, c);
    let (a, b, c) = m(mean, |x| &x.gaps);
    row("stream: per token (gap), mean", a, b, c);
    println!(
        "(streamed content events: plain {}, sealed {}, proxy {})",
        d.gaps.len() + ROUNDS,
        s.gaps.len() + ROUNDS,
        p.gaps.len() + ROUNDS
    );
}
