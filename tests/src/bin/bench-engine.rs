//! The inference front's cost over an external engine, in one run on one engine process:
//! llama.cpp's OpenAI server (llama-cpp-python, `scripts/llama-venv.sh`) serving SmolLM2, which
//! wardd started on the sealed model, asked directly on its own loopback port (the baseline)
//! and through wardd's front, plainly and end-to-end encrypted, at 1, 8 and 32 concurrent
//! clients, alternating. Printed: time to first token, per-token latency (mean gap between
//! content events), requests/s, and each as a ratio to the bare engine. The server runs one
//! generation at a time (`--interrupt_requests false`: a new request waits instead of cutting
//! the running one short), so concurrent clients queue at the engine.
//!
//! Then the weights' path to a serving engine: the sealed model pushed to a `docker-registry` on
//! 127.0.0.1 (a local layout when the registry tools are missing), fetched, decrypted and
//! checked into guest memory by wardd and handed to the engine as memfds, against the same
//! engine started on the plaintext GGUF on its own disk; one untimed engine start first, so
//! that both sides find Python's modules and libllama.so in the page cache.
//! `just bench-engine` (release builds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use ward_e2e::RequestSealer;
use ward_tests::served::{serve_model_from_registry, serve_model_with};

const TOKENS: usize = 16;
const PER_CLIENT: usize = 3;
const ROUNDS: usize = 2;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    Bare,
    Front,
    Encrypted,
}

#[derive(Default, Clone)]
struct Sample {
    ttft: Vec<Duration>,
    gaps: Vec<Duration>,
    requests: usize,
    wall: Duration,
}

fn ask() -> Value {
    json!({"model": "smollm2", "max_tokens": TOKENS, "temperature": 0, "stream": true,
           "messages": [{"role": "user", "content": "Write one sentence about the sea."}]})
}

/// One streamed request; returns (time to first content, gaps between content events).
async fn one(
    http: &reqwest::Client,
    url: &str,
    path: Path,
    e2e: &ward_e2e::KeyConfig,
) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let (req, mut opener) = if path == Path::Encrypted {
        let (msg, opener) = RequestSealer::seal(
            e2e,
            "POST",
            "/v1/chat/completions",
            &ask(),
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
        (http.post(url).json(&ask()), None)
    };
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut body = resp.bytes_stream();
    let mut text = Vec::new();
    let mut times = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        let plain: Vec<u8> = match &mut opener {
            Some(o) => o
                .feed(&chunk)
                .unwrap()
                .into_iter()
                .flat_map(|c| c.to_vec())
                .collect(),
            None => chunk.to_vec(),
        };
        text.extend_from_slice(&plain);
        let now = start.elapsed();
        // Every content event that completed in this read counts at this instant.
        while let Some(end) = text.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = text.drain(..end + 2).collect();
            if event.windows(9).any(|w| w == b"\"content\"") && !event.ends_with(b"[DONE]\n\n") {
                times.push(now);
            }
        }
    }
    let ttft = times.first().copied().unwrap_or_else(|| start.elapsed());
    let gaps = times.windows(2).map(|w| w[1] - w[0]).collect();
    (ttft, gaps)
}

async fn load(clients: usize, url: &str, path: Path, e2e: &ward_e2e::KeyConfig) -> Sample {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let runs = futures_util::future::join_all((0..clients).map(|_| {
        let (http, url, e2e) = (http.clone(), url.to_string(), e2e.clone());
        async move {
            let mut out = Vec::new();
            for _ in 0..PER_CLIENT {
                out.push(one(&http, &url, path, &e2e).await);
            }
            out
        }
    }))
    .await;
    let mut s = Sample {
        wall: started.elapsed(),
        ..Sample::default()
    };
    for (ttft, gaps) in runs.into_iter().flatten() {
        s.ttft.push(ttft);
        s.gaps.extend(gaps);
        s.requests += 1;
    }
    s
}

fn median(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn mean(v: &[Duration]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let python = std::env::var_os("WARD_LLAMA_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ward_tests::bin_dir().join("../llama-venv/bin/python"));
    let gguf = std::env::var_os("WARD_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/ward/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !python.exists() || !gguf.exists() {
        eprintln!(
            "bench-engine needs {} (scripts/llama-venv.sh) and {} (scripts/fetch-model.sh)",
            python.display(),
            gguf.display()
        );
        std::process::exit(2);
    }
    let bytes = std::fs::read(&gguf).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listeners =
        format!("[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"inference\"]\n");
    let keys = format!(
        "engine = \"llama-server\"\nqueue = 64\nmax_batch = 8\nready_timeout_secs = 300\n\
         command = [{:?}, \"-m\", \"llama_cpp.server\", \"--model\", \"{{model}}\", \
         \"--model_alias\", \"{{name}}\", \"--host\", \"{{host}}\", \"--port\", \"{{port}}\", \
         \"--n_ctx\", \"2048\", \"--verbose\", \"false\", \"--interrupt_requests\", \"false\"]\n",
        python.display().to_string()
    );
    // One start of the engine first, not timed: its Python modules and libllama.so come from
    // disk once, so that neither side of the load comparison below pays that alone.
    bare_start(&python, &gguf).await;
    // The sealed model from a registry on this machine when its tools are here, else from a
    // local layout.
    let via_registry = ward_tests::registry::image_tools().is_ok();
    let files: &[(&str, &[u8])] = &[("model.gguf", &bytes)];
    let served = if via_registry {
        serve_model_from_registry(
            "smollm2",
            files,
            &listeners,
            &keys,
            "external engine serving",
        )
        .await
    } else {
        serve_model_with(
            "smollm2",
            files,
            &listeners,
            &keys,
            "external engine serving",
        )
        .await
    };
    let stderr = ward_tests::qemu::plain(&served.wardd.stderr());
    let engine_port: u16 = stderr
        .lines()
        .filter(|l| l.contains("engine serving"))
        .find_map(|l| {
            l.split("port=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("the engine's port in wardd's log");
    let bare = format!("http://127.0.0.1:{engine_port}/v1/chat/completions");
    let front = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let http = reqwest::Client::new();
    let e2e = ward_tests::attested_key(&http, &format!("http://127.0.0.1:{port}/v1")).await;
    // Warm up both paths.
    load(1, &bare, Path::Bare, &e2e).await;
    load(1, &front, Path::Front, &e2e).await;

    println!(
        "front over llama.cpp's server (llama-cpp-python), SmolLM2 Q4_1, {TOKENS} tokens, \
         {PER_CLIENT} requests per client, {ROUNDS} alternating rounds"
    );
    println!(
        "{:>7} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8}",
        "clients", "path", "ttft ms", "tok ms", "req/s", "ttft x", "tok x", "req/s x"
    );
    for clients in [1, 8, 32] {
        let mut by_path: Vec<(Path, Sample)> = Vec::new();
        for _ in 0..ROUNDS {
            for path in [Path::Bare, Path::Front, Path::Encrypted] {
                let url = if path == Path::Bare { &bare } else { &front };
                let s = load(clients, url, path, &e2e).await;
                match by_path.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, acc)) => {
                        acc.ttft.extend(s.ttft);
                        acc.gaps.extend(s.gaps);
                        acc.requests += s.requests;
                        acc.wall += s.wall;
                    }
                    None => by_path.push((path, s)),
                }
            }
        }
        let figures = |s: &Sample| {
            (
                median(&s.ttft),
                mean(&s.gaps),
                s.requests as f64 / s.wall.as_secs_f64(),
            )
        };
        let base = figures(&by_path[0].1);
        for (path, s) in &by_path {
            let f = figures(s);
            println!(
                "{clients:>7} {:>10} {:>10.1} {:>10.2} {:>9.2} {:>8.3} {:>8.3} {:>8.3}",
                format!("{path:?}").to_lowercase(),
                f.0,
                f.1,
                f.2,
                f.0 / base.0,
                f.1 / base.1,
                f.2 / base.2
            );
        }
    }

    weights_to_serving(
        &python,
        &gguf,
        &stderr,
        served.wardd.child.id(),
        bytes.len(),
        if via_registry {
            "a registry on 127.0.0.1"
        } else {
            "a local sealed layout"
        },
    )
    .await;
}

/// Starts llama.cpp's server on `gguf` and waits for its first `200` on `/v1/models`; returns
/// how long that took, and stops it.
async fn bare_start(python: &std::path::Path, gguf: &std::path::Path) -> Duration {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let mut child = std::process::Command::new(python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(gguf)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--n_ctx", "2048", "--verbose", "false"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/models");
    loop {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the bare engine never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// The weights' path to a serving engine: wardd's (KBS handshake, KEK, fetching and decrypting
/// the sealed model from `source` into guest memory and checking it, sealed memfds, the
/// engine's start; from wardd's own log) against the engine loading the same plaintext from its
/// own disk (spawned here, timed to its first `200` on `/v1/models`, three runs, after an
/// untimed start that warmed both sides' files). And what wardd keeps after the handoff.
async fn weights_to_serving(
    python: &std::path::Path,
    gguf: &std::path::Path,
    wardd_log: &str,
    wardd_pid: u32,
    model_bytes: usize,
    source: &str,
) {
    let secs_of = |line: &str| -> f64 {
        wardd_log
            .lines()
            .find(|l| l.contains(line))
            .and_then(|l| {
                l.split("secs=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no `{line}` with secs= in wardd's log"))
    };
    let (load, start) = (
        secs_of("model loaded into guest memory"),
        secs_of("external engine serving"),
    );
    let mut bare = Vec::new();
    for _ in 0..3 {
        bare.push(bare_start(python, gguf).await);
    }
    let bare = median(&bare) / 1e3;
    println!();
    println!("weights to a serving engine ({model_bytes} bytes)");
    println!(
        "  wardd: sealed model from {source} -> guest memory {load:.3} s, -> memfds and engine serving {start:.3} s, total {:.3} s",
        load + start
    );
    println!(
        "  engine on the plaintext file on its disk: {bare:.3} s (median of 3); wardd / bare = {:.3}",
        (load + start) / bare
    );
    let anon_kb: usize = std::fs::read_to_string(format!("/proc/{wardd_pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    println!(
        "  wardd's anonymous memory after the handoff: {} MiB (the model is {} MiB)",
        anon_kb / 1024,
        model_bytes / (1 << 20)
    );
}
