//! The development KBS as a process, for the demo and for poking at by hand:
//! `dev-kbs --listen 127.0.0.1:0 --resource default/key/1=VALUE --deny default/key/2=VALUE`,
//! `--admin-key-file F` writes the operator key its admin API accepts.
//! It prints its URL (and writes it to `--url-file`), then serves until SIGTERM or SIGINT.
//! It verifies only `sample` evidence: it is a test double, never a real KBS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::exit)]

use ward_tests::kbs::{DevKbs, Policy};

fn usage() -> ! {
    eprintln!(
        "usage: dev-kbs [--listen 127.0.0.1:PORT] [--url-file FILE] \
         [--admin-key-file FILE] [--resource repo/type/tag=VALUE]... [--deny repo/type/tag=VALUE]..."
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut url_file = None;
    let mut admin_key_file = None;
    let mut resources = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = value(),
            "--url-file" => url_file = Some(value()),
            "--admin-key-file" => admin_key_file = Some(value()),
            "--resource" | "--deny" => {
                let v = value();
                let (path, data) = v.split_once('=').unwrap_or_else(|| usage());
                let policy = if a == "--deny" {
                    Policy::Deny
                } else {
                    Policy::Allow
                };
                resources.push((path.to_string(), data.as_bytes().to_vec(), policy));
            }
            _ => usage(),
        }
    }
    let kbs = DevKbs::start_on(&listen).await.unwrap_or_else(|e| {
        eprintln!("dev-kbs: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    for (path, data, policy) in &resources {
        kbs.put(path, data, *policy);
    }
    if let Some(f) = admin_key_file {
        // The operator's Ed25519 key for the admin API (`ward model kbs-put --admin-key`).
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(f)
            .unwrap();
        file.write_all(kbs.admin_key_pem().as_bytes()).unwrap();
    }
    if let Some(f) = url_file {
        std::fs::write(f, kbs.url()).unwrap();
    }
    println!("dev KBS (sample verifier only) listening on {}", kbs.url());
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let (auth, attest, resource) = kbs.counts();
    println!("dev KBS stopping: {auth} auth, {attest} attest, {resource} resource requests");
}
