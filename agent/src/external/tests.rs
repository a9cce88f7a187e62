//! The weights handoff and the supervisor, with real child processes (`sh`, `cat`) standing in
//! for an engine: what the child reads through the links is the plaintext, the memfds are
//! sealed, the directory holds links only, and an engine that exits is restarted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ward_image::digest::Digest;
use ward_image::model_artifact::{LoadedModel, ModelFile};
use ward_image::sealed::PlaintextBuffer;

use super::weights::Weights;
use super::*;

fn model(files: &[(&str, &[u8])]) -> LoadedModel {
    LoadedModel {
        reference: "test".into(),
        manifest_digest: Digest::of(b"manifest"),
        kek_id: "kbs:///default/k/1".into(),
        files: files
            .iter()
            .map(|(name, data)| ModelFile {
                name: name.to_string(),
                digest: Digest::of(data),
                data: PlaintextBuffer::copy_from(data).unwrap(),
                sealed: true,
            })
            .collect(),
    }
}

#[test]
fn a_child_reads_the_plaintext_through_links_to_its_inherited_fds() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(&[
        ("config.json", b"{\"a\":1}"),
        ("weights/model.gguf", b"GGUF-plaintext-bytes"),
    ]);
    let w = Weights::open(&m, &dir.path().join("m")).unwrap();
    assert_eq!(w.main_file(), dir.path().join("m/weights/model.gguf"));
    // Links only: nothing of the plaintext is in the directory.
    for entry in ["config.json", "weights/model.gguf"] {
        let meta = std::fs::symlink_metadata(w.dir().join(entry)).unwrap();
        assert!(meta.file_type().is_symlink(), "{entry}");
    }
    let fds = w.inherit();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args([
        "-c",
        "cat \"$1\"; echo; cat \"$2\"; echo; echo x >> \"$2\" && echo WROTE",
        "sh",
    ])
    .arg(w.dir().join("config.json"))
    .arg(w.main_file());
    // SAFETY: dup2 only, as the supervisor does (sources parked above the targets).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for (from, to) in &fds {
                if libc::dup2(*from, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("{\"a\":1}\nGGUF-plaintext-bytes\n"),
        "{text}"
    );
    // Sealed: the engine cannot change the weights.
    assert!(
        !text.contains("WROTE"),
        "a sealed memfd took a write: {text}"
    );
    // Without the inherited fds the links lead nowhere (or to other files): this process has
    // no fd 3/4 pointing at the weights.
    drop(w);
    assert!(
        !dir.path().join("m").exists(),
        "the links are removed with the weights"
    );
}

#[test]
fn unsafe_file_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["../escape.gguf", "/abs.gguf", ""] {
        let m = model(&[(bad, b"x")]);
        assert!(Weights::open(&m, &dir.path().join("m")).is_err(), "{bad:?}");
    }
}

fn started(command: Vec<String>, restart: bool, ready: u64) -> StartedEngine {
    StartedEngine {
        preset: crate::config::EnginePreset::LlamaServer,
        command,
        upstream_model: None,
        ready_timeout: Duration::from_secs(ready),
        request_timeout: Duration::from_secs(5),
        restart,
        gpus: vec![],
    }
}

#[tokio::test]
async fn an_engine_that_never_serves_or_exits_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(&[("m.gguf", b"x")]);
    let exits = started(
        vec!["/bin/sh".into(), "-c".into(), "exit 7".into()],
        false,
        5,
    );
    match start("m", &m, &exits, 4, dir.path()).await {
        Err(ExternalError::Exited(s)) => assert!(s.contains('7'), "{s}"),
        other => panic!("{:?}", other.err()),
    }
    let silent = started(vec!["/bin/sleep".into(), "30".into()], false, 1);
    let t = std::time::Instant::now();
    match start("m", &m, &silent, 4, dir.path()).await {
        Err(ExternalError::NotReady(1)) => {}
        other => panic!("{:?}", other.err()),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        start(
            "m",
            &m,
            &started(vec!["/no/such/engine".into()], false, 1),
            4,
            dir.path()
        )
        .await,
        Err(ExternalError::Spawn { .. })
    ));
}

/// A minimal OpenAI server in Python (`/v1/models` only), which exits after `life` seconds.
fn python_engine(life: u32) -> Option<Vec<String>> {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return None;
    }
    let script = format!(
        "import http.server,sys,threading,os\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20def do_GET(s):\n\
         \x20\x20s.send_response(200);s.send_header('Content-Type','application/json');s.end_headers();s.wfile.write(b'{{\"data\":[]}}')\n\
         \x20def log_message(s,*a): pass\n\
         open(sys.argv[2]).read()\n\
         threading.Timer({life}, lambda: os._exit(3)).start()\n\
         http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    );
    Some(vec![
        "python3".into(),
        "-c".into(),
        script,
        "{port}".into(),
        "{model}".into(),
    ])
}

#[tokio::test]
async fn a_crashed_engine_is_restarted_and_serves_again() {
    let Some(cmd) = python_engine(2) else {
        eprintln!("skipped: no python3");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = model(&[("m.gguf", b"weights")]);
    let s = started(cmd, true, 20);
    let engine = start("m", &m, &s, 4, dir.path()).await.unwrap();
    assert!(engine.upstream.is_up());
    // It exits after 2 s: down, then up again after the 1 s backoff.
    let mut went_down = false;
    let mut back_up = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let up = engine.upstream.is_up();
        went_down |= !up;
        if went_down && up {
            back_up = true;
            break;
        }
    }
    assert!(went_down && back_up, "down {went_down}, back {back_up}");
    assert!(engine.upstream.probe().await);
}
