//! A sealed model served by llama.cpp's real OpenAI server (PyPI `llama-cpp-python[server]`,
//! built on this machine by `scripts/llama-venv.sh`) behind wardd: wardd opens SmolLM2 (sealed
//! by the owner, its KEK from the KBS) into sealed memfds, starts the server on them, and serves
//! it through its one inference front: plain and streamed chat, an encrypted request and an
//! encrypted stream, the audit's token counts from the engine's usage, the weights only in
//! memory (the engine's fd is a memfd; its model path is a link to it), OpenAI's Python SDK
//! through `ward proxy` (so its requests leave encrypted), and a crashed engine answered with 503
//! until it is back.
//!
//! Skipped, with a message, without the environment (`scripts/llama-venv.sh`, which `just test`
//! runs) or the model (`scripts/fetch-model.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ward_e2e::RequestSealer;
use ward_tests::proxy::ProxyProcess;
use ward_tests::python::{python_with_openai, run};
use ward_tests::served::{inference_entries, serve_model_with};
use ward_tests::unix_now as now;

fn llama_python() -> Option<PathBuf> {
    let p = std::env::var_os("WARD_LLAMA_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            ward_tests::bin_dir()
                .parent()
                .map(|t| t.join("llama-venv/bin/python"))
        })?;
    let ok = std::process::Command::new(&p)
        .args(["-c", "import llama_cpp.server"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(p)
}

fn smollm2() -> Option<PathBuf> {
    let p = std::env::var_os("WARD_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/ward/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    p.exists().then_some(p)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_server_behind_wardd_serves_a_sealed_model() {
    let Some(python) = llama_python() else {
        eprintln!("skipped: no llama-cpp-python server (run scripts/llama-venv.sh)");
        return;
    };
    let Some(gguf) = smollm2() else {
        eprintln!("skipped: SmolLM2 is missing (run scripts/fetch-model.sh)");
        return;
    };
    let bytes = std::fs::read(&gguf).unwrap();
    let port = free_port();
    let listeners =
        format!("[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"inference\"]\n");
    let keys = format!(
        "engine = \"llama-server\"\nready_timeout_secs = 300\nrequest_timeout_secs = 120\n\
         command = [{python:?}, \"-m\", \"llama_cpp.server\", \"--model\", \"{{model}}\", \
         \"--model_alias\", \"{{name}}\", \"--host\", \"{{host}}\", \"--port\", \"{{port}}\", \
         \"--n_ctx\", \"2048\", \"--n_threads\", \"2\", \"--verbose\", \"false\"]\n",
        python = python.display().to_string()
    );
    let served = serve_model_with(
        "smollm2",
        &[("model.gguf", &bytes)],
        &listeners,
        &keys,
        "external engine serving",
    )
    .await;
    let w = &served.wardd;
    let base = format!("http://127.0.0.1:{port}/v1");
    let http = reqwest::Client::new();

    // The engine reads the weights from a sealed memfd, through a link in wardd's tmpfs dir.
    // wardd's human log is coloured: strip the escapes before reading fields.
    let stderr = ward_tests::qemu::plain(&w.stderr());
    let pid: u32 = stderr
        .lines()
        .find_map(|l| {
            l.contains("engine started")
                .then(|| {
                    l.split("pid=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten()
        })
        .unwrap_or_else(|| panic!("no engine pid in:\n{stderr}"));
    let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    assert!(
        fd3.to_string_lossy().starts_with("/memfd:ward-weights"),
        "the engine's fd 3 is {}",
        fd3.display()
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    let model_path = cmdline
        .split('\0')
        .skip_while(|a| *a != "--model")
        .nth(1)
        .unwrap()
        .to_string();
    // wardd's own copy of the plaintext goes once the engine has its memfds (just after the
    // "serving" line): its anonymous memory falls well under the model's size (the memfd pages
    // are the engine's to map).
    let anon_kb = || -> usize {
        std::fs::read_to_string(format!("/proc/{}/status", w.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while anon_kb() * 1024 >= bytes.len() / 2 {
        assert!(
            std::time::Instant::now() < until,
            "wardd still holds {} KiB of anonymous memory after handing over a {}-byte model",
            anon_kb(),
            bytes.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let meta = std::fs::symlink_metadata(&model_path).unwrap();
    assert!(meta.file_type().is_symlink(), "{model_path} is not a link");
    assert_eq!(
        std::fs::read_link(&model_path).unwrap(),
        PathBuf::from("/proc/self/fd/3")
    );

    // Listed, and a plain chat answered with the engine's usage.
    let models: Value = http
        .get(format!("{base}/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smollm2", "{models}");
    let ask = |stream: bool| {
        json!({"model": "smollm2", "max_tokens": 12, "temperature": 0, "stream": stream,
               "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    };
    let r = http
        .post(format!("{base}/chat/completions"))
        .json(&ask(false))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}\n{}", w.stderr());
    assert_eq!(v["model"], "smollm2");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // llama.cpp applies the GGUF's own chat template, so its words differ from candle's; what
    // matters is that it answered, and the same way every time (greedy).
    assert!(answer.chars().count() > 3, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");

    // Streamed, event by event, the same greedy text.
    let r = http
        .post(format!("{base}/chat/completions"))
        .json(&ask(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(streamed_text(&events), answer);

    // Encrypted, whole and streamed: only the client opens the answer.
    let config = ward_tests::attested_key(&http, &base).await;
    for stream in [false, true] {
        let (msg, opener) =
            RequestSealer::seal(&config, "POST", "/v1/chat/completions", &ask(stream), now())
                .unwrap();
        let r = http
            .post(format!("{base}/chat/completions"))
            .header("content-type", "application/ward-e2e")
            .body(msg)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let sealed = r.bytes().await.unwrap();
        let probe = answer.as_bytes().get(..6).unwrap_or(answer.as_bytes());
        assert!(
            !sealed.windows(probe.len()).any(|w| w == probe),
            "the answer shows in clear"
        );
        let plain = opener.open_whole(&sealed).unwrap();
        let text = String::from_utf8_lossy(&plain).into_owned();
        let got = if stream {
            streamed_text(&sse(&text))
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(got, answer, "stream={stream}");
    }

    // OpenAI's Python SDK, unchanged, through `ward proxy`: its requests leave encrypted.
    let sdk_requests = match tokio::task::spawn_blocking(python_with_openai)
        .await
        .unwrap()
    {
        Err(why) => {
            eprintln!("OpenAI SDK part skipped: {why}");
            0
        }
        Ok(sdk) => {
            let (dir, url) = (w.dir.path().to_path_buf(), base.clone());
            let out = tokio::task::spawn_blocking(move || {
                let proxy = ProxyProcess::start(&dir, "proxy", &url, &["--allow-sample"]);
                let script = "import sys\nfrom openai import OpenAI\n\
                    c = OpenAI(base_url=sys.argv[1], api_key='unused', max_retries=0, timeout=120)\n\
                    m = [{'role': 'user', 'content': 'What is the capital of France?'}]\n\
                    a = c.chat.completions.create(model='smollm2', messages=m, max_tokens=12, temperature=0)\n\
                    s = ''.join(x.choices[0].delta.content or '' for x in c.chat.completions.create(\n\
                        model='smollm2', messages=m, max_tokens=12, temperature=0, stream=True) if x.choices)\n\
                    assert a.choices[0].message.content == s, (a, s)\n\
                    print(s)\n";
                run(
                    Command::new(sdk).args(["-c", script, &proxy.base()]),
                    Duration::from_secs(180),
                )
            })
            .await
            .unwrap()
            .expect("the SDK script finished");
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), answer.trim());
            2
        }
    };

    // The audit has the engine's token counts for every request, never the text.
    let entries = inference_entries(&w.audit);
    let chats: Vec<&Value> = entries
        .iter()
        .filter(|e| e["detail"]["model"] == "smollm2" && e["detail"]["status"] == 200)
        .collect();
    assert_eq!(chats.len(), 4 + sdk_requests, "{entries:?}");
    let encrypted = chats
        .iter()
        .filter(|e| e["detail"]["encrypted"] == true)
        .count();
    assert_eq!(encrypted, 2 + sdk_requests, "{entries:?}");
    for e in &chats {
        let d = &e["detail"];
        assert!(d["completion_tokens"].as_u64().unwrap_or(0) > 0, "{d}");
        // llama-cpp-python sends usage with whole answers only: a stream's prompt is uncounted.
        if d["stream"] == false {
            assert!(d["prompt_tokens"].as_u64().unwrap_or(0) > 0, "{d}");
        }
    }
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    assert!(!audit.contains(answer.as_str()) && !audit.contains("capital"));
    assert!(audit.contains("\"engine.start\""), "{audit}");

    // A client that leaves mid-stream: wardd drops the engine's stream with it, audits the
    // answer as incomplete with what was streamed, and serves the next request.
    let mut r = http
        .post(format!("{base}/chat/completions"))
        .json(
            &json!({"model": "smollm2", "max_tokens": 400, "temperature": 0, "stream": true,
            "messages": [{"role": "user", "content": "Write a long story about the sea."}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().expect("a first event");
    assert!(!first.is_empty());
    drop(r);
    let until = Instant::now() + Duration::from_secs(60);
    let left = loop {
        let entries = inference_entries(&w.audit);
        if let Some(e) = entries
            .iter()
            .find(|e| e["detail"]["stream"] == true && e["detail"]["complete"] == false)
        {
            break e.clone();
        }
        assert!(
            Instant::now() < until,
            "no entry for the abandoned stream: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(left["detail"]["status"], 200, "{left}");
    assert!(
        left["detail"]["finish_reason"].is_null(),
        "it did not finish: {left}"
    );
    let r = http
        .post(format!("{base}/chat/completions"))
        .json(&ask(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "served after the client left");

    // The engine crashes: 503 while it is down, served again once restarted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut saw_503 = false;
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        let r = http
            .post(format!("{base}/chat/completions"))
            .json(&ask(false))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            503 => saw_503 = true,
            200 if saw_503 => break,
            s => assert!(s == 200 || s == 503, "status {s}"),
        }
        assert!(Instant::now() < until, "the engine did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(w.stderr().contains("restarting the engine"));
}
