//! wardd end to end as an ordinary process: health over a unix socket through the generated
//! ttrpc client and the `ward` CLI, allow-lists, SecureMount's refusals, config errors, kernel
//! command-line overrides, sd_notify, graceful SIGTERM, and the audit chain it leaves behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use nix::sys::signal::Signal;
use ttrpc::Code;
use ward_agent::client::HealthClient;
use ward_protos::confidential_data_hub::{GetResourceRequest, SecureMountRequest};
use ward_protos::confidential_data_hub_ttrpc::{
    GetResourceServiceClient, SecureMountServiceClient,
};
use ward_protos::ward_health::ServingStatus;
use ward_tests::{Wardd, config_text, rt, run_ward};

fn status_code(err: ttrpc::Error) -> (Code, String) {
    match err {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected an rpc status, got {other:?}"),
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(5_000_000_000)
}

#[test]
fn health_over_unix_socket_with_the_generated_client_and_the_cli() {
    let w = Wardd::start(&["health"]);
    let check = rt().block_on(async {
        let c = HealthClient::connect(&w.addr, Duration::from_secs(5))
            .await
            .unwrap();
        let check = c.check().await.unwrap();
        let version = c.version().await.unwrap();
        assert_eq!(version.services, vec!["ward.health.HealthService"]);
        check
    });
    assert_eq!(
        check.status.enum_value(),
        Ok(ServingStatus::SERVING_STATUS_SERVING)
    );
    assert_eq!(check.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        check.mode, "systemd",
        "NOTIFY_SOCKET was set, so wardd says systemd"
    );

    let (code, out, err) = run_ward("ward", &["health", "--addr", &w.addr]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.starts_with("SERVING wardd "), "{out}");
}

#[test]
fn ward_health_fails_when_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}", dir.path().join("absent.sock").display());
    let (code, out, err) = run_ward("ward", &["health", "--addr", &addr, "--timeout", "2"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn secure_mount_names_what_it_cannot_mount_and_other_services_are_denied() {
    let w = Wardd::start(&["health", "secure-mount"]);
    rt().block_on(async {
        let client = ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap();
        let mounts = SecureMountServiceClient::new(client.clone());
        // No volume type: CoCo's CDH answers INTERNAL "[CDH] [ERROR]: Secure Mount failed";
        // ward keeps that text and says why, with a finer code.
        let err = mounts
            .secure_mount(ctx(), &SecureMountRequest::new())
            .await
            .unwrap_err();
        let (code, msg) = status_code(err);
        assert_eq!(code, Code::UNIMPLEMENTED, "{msg}");
        assert!(
            msg.starts_with("[CDH] [ERROR]: Secure Mount failed: volume type ``"),
            "{msg}"
        );
        // kata-agent's request for a device this machine does not have.
        let kata = [
            ("deviceId", "4095:1048575"),
            ("sourceType", "empty"),
            ("targetType", "fileSystem"),
            ("filesystemType", "ext4"),
            ("mkfsOpts", "-E lazy_journal_init"),
            ("encryptionType", "luks2"),
            ("dataIntegrity", "true"),
        ];
        let req = SecureMountRequest {
            volume_type: "block-device".to_string(),
            options: kata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mount_point: w.dir.path().join("mnt").display().to_string(),
            ..Default::default()
        };
        let err = mounts.secure_mount(ctx(), &req).await.unwrap_err();
        let (code, msg) = status_code(err);
        assert_eq!(code, Code::NOT_FOUND, "{msg}");
        assert!(msg.contains("no block device 4095:1048575"), "{msg}");

        let cdh = GetResourceServiceClient::new(client);
        let err = cdh
            .get_resource(ctx(), &GetResourceRequest::new())
            .await
            .unwrap_err();
        let (code, msg) = status_code(err);
        assert_eq!(code, Code::PERMISSION_DENIED, "{msg}");
        assert!(
            msg.contains("api.GetResourceService is not served on"),
            "{msg}"
        );
    });
}

#[test]
fn sigterm_stops_cleanly_and_leaves_a_verifiable_audit_chain() {
    let mut w = Wardd::start(&["all"]);
    let sock = w.dir.path().join("ward.sock");
    assert!(sock.exists());
    w.signal(Signal::SIGTERM);
    w.notify
        .wait_for("STOPPING=1", Duration::from_secs(10))
        .unwrap();
    let status = w.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", w.stderr());
    assert!(!sock.exists(), "the socket file is removed on stop");

    let log = std::fs::read_to_string(&w.audit).unwrap();
    let events: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
        .collect();
    assert_eq!(events, vec!["\"agent.start\"", "\"agent.stop\""]);

    let audit = w.audit.display().to_string();
    let (code, out, _) = run_ward("ward", &["audit", "verify", &audit]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK ") && out.contains("2 entries"), "{out}");

    // A second run continues the same chain.
    let config = std::fs::read_to_string(w.dir.path().join("ward.toml")).unwrap();
    let dir = std::mem::replace(&mut w.dir, tempfile::tempdir().unwrap());
    drop(w);
    let mut w2 = Wardd::start_with(dir, &config, "", &[]);
    w2.signal(Signal::SIGINT);
    assert_eq!(w2.wait(Duration::from_secs(15)).code(), Some(0));
    let (code, out, _) = run_ward("ward", &["audit", "verify", &audit]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 entries"), "{out}");

    // Tampering is caught by the CLI.
    let text = std::fs::read_to_string(&w2.audit).unwrap();
    std::fs::write(&w2.audit, text.replacen("agent.stop", "agent.stoq", 1)).unwrap();
    let (code, out, _) = run_ward("ward", &["audit", "verify", &audit]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("BROKEN") && out.contains("line 2"), "{out}");
}

#[test]
fn a_config_error_is_one_line_naming_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let cases = [
        (
            "[[listener]]\naddress = \"vsock://-1:5000\"\nservices = [\"get-resource\"]\n",
            "listener[0].services: `get-resource` may not be served on vsock://-1:5000",
        ),
        ("[log]\nformat = \"xml\"\n", "bad.toml:2:"),
    ];
    for (text, want) in cases {
        std::fs::write(&cfg, text).unwrap();
        let (code, out, err) = run_ward(
            "wardd",
            &["--config", cfg.to_str().unwrap(), "--cmdline", "/dev/null"],
        );
        assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("wardd: config error: ") && err.contains(want),
            "{err}"
        );
    }
    let (code, _, err) = run_ward("wardd", &["--config", "/nonexistent/ward.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn kernel_command_line_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(dir.path(), &["health"]);
    let other = dir.path().join("from-cmdline.sock");
    let cmdline = format!(
        "console=ttyS0 ward.listen=unix://{}#health,attestation-agent ward.log_format=json ward.bogus=1",
        other.display()
    );
    let mut w = Wardd::start_with(dir, &config, &cmdline, &[]);
    assert!(
        !w.dir.path().join("ward.sock").exists(),
        "ward.listen replaced the file's listener"
    );
    let addr = format!("unix://{}", other.display());
    let (code, out, _) = run_ward("ward", &["health", "--addr", &addr]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("attestation_agent.AttestationAgentService"),
        "{out}"
    );
    w.signal(Signal::SIGTERM);
    w.wait(Duration::from_secs(15));
    let stderr = w.stderr();
    let warn = stderr
        .lines()
        .find(|l| l.contains("unknown kernel command-line key"))
        .unwrap_or_else(|| panic!("no warning about ward.bogus in:\n{stderr}"));
    let json: serde_json::Value = serde_json::from_str(warn).expect("ward.log_format=json");
    assert_eq!(json["fields"]["key"], "ward.bogus");
}

#[test]
fn check_config_prints_the_effective_listeners() {
    let (code, out, err) = run_ward(
        "wardd",
        &[
            "--config",
            "/nonexistent-default-is-not-explicit",
            "--check-config",
        ],
    );
    assert_eq!(code, 2, "an explicit missing file is an error: {err}");

    let dir = tempfile::tempdir().unwrap();
    let defaults = dir.path().join("defaults.toml");
    let (code, text, _) = run_ward("wardd", &["--print-default-config"]);
    assert_eq!(code, 0);
    std::fs::write(&defaults, text).unwrap();
    let (code, out2, err) = run_ward(
        "wardd",
        &[
            "--config",
            defaults.to_str().unwrap(),
            "--cmdline",
            "/dev/null",
            "--check-config",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out2.contains("vsock://-1:1030 health\n"), "{out2}");
    assert!(
        out2.contains("unix:///run/confidential-containers/cdh.sock get-resource,sealed-secret,secure-mount,image-pull,key-provider,health")
            || out2.contains("unix:///run/confidential-containers/cdh.sock health,get-resource"),
        "{out2}"
    );
    let _ = out;
}

/// The settings a verifier must see (the KBS URL the command line may have moved, the
/// development switches) are extended into the runtime measurement before anything attests;
/// a guest that cannot measure them does not start.
#[test]
fn settings_are_measured_at_start_or_wardd_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(dir.path(), &["health"]);
    let mut w = Wardd::start_with(
        dir,
        &config,
        "ward.tee=sample ward.allow_sample=true ward.kbs_url=http://127.0.0.1:9",
        &[],
    );
    let eventlog = std::fs::read(w.dir.path().join("eventlog")).unwrap();
    let needle = br#"github.com/ward Settings {"#;
    let at = eventlog
        .windows(needle.len())
        .position(|win| win == needle)
        .expect("the Settings event is in the event log");
    let text = String::from_utf8_lossy(&eventlog[at..]);
    assert!(text.contains(r#""kbs_url":"http://127.0.0.1:9""#), "{text}");
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait(Duration::from_secs(15)).code(), Some(0));
    // At stop the audit chain's head goes into the measurement too: it names the agent.stop
    // entry, after which only the runtime.extend entry of that very measurement follows.
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(&w.audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stop = audit.iter().find(|e| e["event"] == "agent.stop").unwrap();
    let eventlog =
        String::from_utf8_lossy(&std::fs::read(w.dir.path().join("eventlog")).unwrap()).to_string();
    let want = format!(
        r#"github.com/ward AuditHead {{"entries":{},"head":"{}"}}"#,
        stop["seq"].as_u64().unwrap() + 1,
        stop["hash"].as_str().unwrap()
    );
    assert!(eventlog.contains(&want), "{want} not in {eventlog}");
    assert_eq!(audit.last().unwrap()["event"], "runtime.extend");

    // /dev/full opens, and every write to it fails.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ward.toml");
    std::fs::write(
        &cfg,
        config_text(dir.path(), &["health"]).replace(
            &format!(
                "eventlog = {:?}",
                dir.path().join("eventlog").display().to_string()
            ),
            "eventlog = \"/dev/full\"",
        ),
    )
    .unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "ward.tee=sample ward.allow_sample=true").unwrap();
    let (code, out, err) = run_ward(
        "wardd",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--cmdline",
            cmdline.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("measuring the settings"), "{err}");
}

/// A pull that fails is on the audit record too, not only the ones that succeed.
#[test]
fn a_failed_pull_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(dir.path(), &["image-pull"]).replace(
        "[images]\n",
        "[images]\ninsecure_registries = [\"127.0.0.1:9\"]\n",
    );
    let mut w = Wardd::start_with(dir, &config, "", &[]);
    let bundle = w.dir.path().join("bundle");
    let (code, out, err) = run_ward(
        "ward",
        &[
            "pull",
            "--addr",
            &w.addr,
            "127.0.0.1:9/none/such:v1",
            "--bundle",
            bundle.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0, "{out}{err}");
    w.signal(Signal::SIGTERM);
    w.wait(Duration::from_secs(15));
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    assert!(
        audit.contains(r#""event":"image.pull_failed","subject":"127.0.0.1:9/none/such:v1""#),
        "{audit}"
    );
}
