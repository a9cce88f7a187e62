//! wardd's CoCo-compatible attestation-agent and GetResource services end to end: a real wardd
//! process with the sample TEE, talking to the development KBS on 127.0.0.1, called through the
//! generated ttrpc clients exactly as kata-agent and CDH clients call CoCo's daemons.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use base64::Engine;
use nix::sys::signal::Signal;
use ttrpc::Code;
use ward_protos::attestation_agent::{
    GetAdditionalTeesRequest, GetEvidenceRequest, GetTeeTypeRequest, GetTokenRequest,
};
use ward_protos::attestation_agent_ttrpc::AttestationAgentServiceClient;
use ward_protos::confidential_data_hub::GetResourceRequest;
use ward_protos::confidential_data_hub_ttrpc::GetResourceServiceClient;
use ward_tests::kbs::{DevKbs, Policy};
use ward_tests::{Wardd, config_text};

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(20_000_000_000)
}

fn code_of(e: ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Starts wardd serving everything; `extra` is appended to the config, `cmdline` is its kernel
/// command line, `initdata` (if any) is written where the config points.
async fn start_wardd(extra: String, cmdline: &str, initdata: Option<&str>) -> Wardd {
    let cmdline = cmdline.to_string();
    let initdata = initdata.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        if let Some(doc) = initdata {
            std::fs::write(dir.path().join("initdata.toml"), doc).unwrap();
        }
        let config = format!("{}{extra}", config_text(dir.path(), &["all"]));
        Wardd::start_with(dir, &config, &cmdline, &[])
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coco_clients_get_evidence_tokens_and_resources() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"the-secret-value", Policy::Allow);
    kbs.put("default/key/denied", b"nope", Policy::Deny);
    let mut w = start_wardd(
        format!("\n[kbs]\nurl = \"{}\"\ntimeout_secs = 5\n", kbs.url()),
        "ward.tee=sample",
        None,
    )
    .await;

    let client = ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap();
    let aa = AttestationAgentServiceClient::new(client.clone());
    let cdh = GetResourceServiceClient::new(client);

    let tee = aa
        .get_tee_type(ctx(), &GetTeeTypeRequest::new())
        .await
        .unwrap();
    assert_eq!(tee.tee, "sample");
    let extra = aa
        .get_additional_tees(ctx(), &GetAdditionalTeesRequest::new())
        .await
        .unwrap();
    assert!(extra.additional_tees.is_empty());

    let mut req = GetEvidenceRequest::new();
    req.RuntimeData = vec![0x5a; 32];
    let ev = aa.get_evidence(ctx(), &req).await.unwrap();
    let ev: serde_json::Value = serde_json::from_slice(&ev.Evidence).unwrap();
    let rd = base64::engine::general_purpose::STANDARD
        .decode(ev["report_data"].as_str().unwrap())
        .unwrap();
    assert_eq!(rd, vec![0x5a; 32]);

    req.RuntimeData = vec![0; 65];
    let (code, msg) = code_of(aa.get_evidence(ctx(), &req).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");

    let mut tr = GetTokenRequest::new();
    tr.TokenType = "kbs".into();
    let token = aa.get_token(ctx(), &tr).await.unwrap();
    let token = String::from_utf8(token.Token).unwrap();
    assert_eq!(
        token.split('.').count(),
        3,
        "a bare JWT, no private key: {token}"
    );
    tr.TokenType = "coco_as".into();
    let (code, _) = code_of(aa.get_token(ctx(), &tr).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);

    for path in ["kbs:///default/key/1", "default/key/1"] {
        let mut r = GetResourceRequest::new();
        r.ResourcePath = path.into();
        let got = cdh.get_resource(ctx(), &r).await.unwrap();
        assert_eq!(got.Resource, b"the-secret-value");
    }
    let cases = [
        ("kbs:///default/key/denied", Code::PERMISSION_DENIED),
        ("kbs:///default/key/absent", Code::NOT_FOUND),
        ("kbs:///default/../etc", Code::INVALID_ARGUMENT),
        ("kbs:///default//x", Code::INVALID_ARGUMENT),
    ];
    for (path, want) in cases {
        let mut r = GetResourceRequest::new();
        r.ResourcePath = path.into();
        let (code, msg) = code_of(cdh.get_resource(ctx(), &r).await.unwrap_err());
        assert_eq!(code, want, "{path}: {msg}");
    }
    let (auth, attest, _) = kbs.counts();
    assert_eq!(
        (auth, attest),
        (1, 1),
        "one KBS session for the token and every resource"
    );

    w.signal(Signal::SIGTERM);
    tokio::task::spawn_blocking(move || {
        assert_eq!(w.wait(Duration::from_secs(15)).code(), Some(0));
        let log = std::fs::read_to_string(&w.audit).unwrap();
        assert!(
            !log.contains("the-secret-value"),
            "no secret in the audit log"
        );
        let stderr = w.stderr();
        assert!(
            !stderr.contains("the-secret-value"),
            "no secret in the logs"
        );
        let events: Vec<(String, String)> = log
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["event"].as_str().unwrap().to_string(),
                    v["subject"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            events.contains(&("resource.release".into(), "kbs:///default/key/1".into())),
            "{events:?}"
        );
        assert!(
            events.contains(&(
                "resource.refused".into(),
                "kbs:///default/key/denied".into()
            )),
            "{events:?}"
        );
        assert!(events.iter().any(|(e, _)| e == "kbs.token"), "{events:?}");
        assert_eq!(
            events.iter().filter(|(e, _)| e == "kbs.attest").count(),
            1,
            "one attestation, audited: {events:?}"
        );
        assert!(
            events.iter().any(|(e, _)| e == "attestation.evidence"),
            "{events:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tee_or_kbs_the_answers_say_why() {
    let w = start_wardd(String::new(), "", None).await;
    let client = ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap();
    let aa = AttestationAgentServiceClient::new(client.clone());
    let (code, msg) = code_of(
        aa.get_tee_type(ctx(), &GetTeeTypeRequest::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("no TEE found"), "{msg}");

    let w2 = start_wardd(String::new(), "ward.tee=sample", None).await;
    let client = ttrpc::asynchronous::Client::connect(&w2.addr)
        .await
        .unwrap();
    let cdh = GetResourceServiceClient::new(client);
    let mut r = GetResourceRequest::new();
    r.ResourcePath = "kbs:///a/b/c".into();
    let (code, msg) = code_of(cdh.get_resource(ctx(), &r).await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("no KBS is configured"), "{msg}");
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_attests_and_fetches_on_its_own() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/cli", b"cli-secret", Policy::Allow);
    kbs.put("default/key/no", b"x", Policy::Deny);
    let url = kbs.url();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("secret");
    let out_s = out.display().to_string();
    let results = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| ward_tests::run_ward("ward", args);
        (
            run(&[
                "get-resource",
                "--kbs",
                &url,
                "--tee",
                "sample",
                "kbs:///default/key/cli",
            ]),
            run(&[
                "get-resource",
                "--kbs",
                &url,
                "--tee",
                "sample",
                "--out",
                &out_s,
                "kbs:///default/key/cli",
            ]),
            run(&[
                "get-resource",
                "--kbs",
                &url,
                "--tee",
                "sample",
                "kbs:///default/key/no",
            ]),
            run(&["attest", "--kbs", &url, "--tee", "sample"]),
            run(&["evidence", "--tee", "sample", "--report-data", "00ff"]),
            run(&[
                "evidence",
                "--tee",
                "sample",
                "--report-data",
                &"00".repeat(65),
            ]),
            run(&["attest", "--kbs", &url]),
        )
    })
    .await
    .unwrap();
    let (plain, to_file, denied, attest, evidence, too_long, no_tee) = results;
    assert_eq!(plain.0, 0, "{plain:?}");
    assert_eq!(plain.1, "cli-secret");
    assert_eq!(to_file.0, 0, "{to_file:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"cli-secret");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(denied.0, 1);
    assert!(
        denied.2.contains("policy denied kbs:///default/key/no"),
        "{denied:?}"
    );
    assert_eq!(attest.0, 0, "{attest:?}");
    let claims: serde_json::Value = serde_json::from_str(&attest.1).unwrap();
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
    assert_eq!(evidence.0, 0, "{evidence:?}");
    let ev: serde_json::Value = serde_json::from_str(&evidence.1).unwrap();
    assert_eq!(ev["report_data"], "AP8=");
    assert_eq!(too_long.0, 1);
    assert!(too_long.2.contains("65 bytes"), "{too_long:?}");
    assert_eq!(no_tee.0, 1, "no TEE here and no --tee sample: {no_tee:?}");
    assert!(no_tee.2.contains("no TEE found"), "{no_tee:?}");
}

const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"package agent_policy\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initdata_goes_to_the_kbs_and_runtime_events_to_the_log() {
    use sha2::Digest;
    use ward_protos::attestation_agent::{
        BindInitDataRequest, ExtendRuntimeMeasurementRequest, RuntimeMeasurementResult,
    };
    let kbs = DevKbs::start().await.unwrap();
    let w = start_wardd(
        format!("\n[kbs]\nurl = \"{}\"\n", kbs.url()),
        "ward.tee=sample",
        Some(INITDATA),
    )
    .await;
    let client = ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap();
    let aa = AttestationAgentServiceClient::new(client);

    // The initdata body went into the attestation; the dev KBS records its SHA-256.
    let mut tr = GetTokenRequest::new();
    tr.TokenType = "kbs".into();
    let token = String::from_utf8(aa.get_token(ctx(), &tr).await.unwrap().Token).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data"],
        hex::encode(sha2::Sha256::digest(INITDATA.as_bytes()))
    );

    let mut b = BindInitDataRequest::new();
    b.Digest = sha2::Sha256::digest(INITDATA.as_bytes()).to_vec();
    aa.bind_init_data(ctx(), &b).await.unwrap();
    b.Digest = Vec::new();
    let (code, _) = code_of(aa.bind_init_data(ctx(), &b).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);

    let mut e = ExtendRuntimeMeasurementRequest::new();
    e.Domain = "github.com/confidential-containers".into();
    e.Operation = "PullImage".into();
    e.Content = r#"{"image":"busybox","digest":"sha256:00"}"#.into();
    let r = aa.extend_runtime_measurement(ctx(), &e).await.unwrap();
    assert_eq!(r.Result.enum_value(), Ok(RuntimeMeasurementResult::OK));
    let log = std::fs::read(w.dir.path().join("eventlog")).unwrap();
    let text = b"github.com/confidential-containers PullImage {\"image\":\"busybox\",\"digest\":\"sha256:00\"}";
    assert!(
        log.windows(text.len()).any(|win| win == text),
        "the event text is in the log"
    );
    assert_eq!(
        &log[0..4],
        &4u32.to_le_bytes(),
        "PCR 17 maps to CC MR 4 (RTMR3)"
    );

    e.Content = "two\nlines".into();
    let (code, _) = code_of(aa.extend_runtime_measurement(ctx(), &e).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);

    // With the event log off, the answer says so.
    let dir = tempfile::tempdir().unwrap();
    let eventlog = format!(
        "eventlog = {:?}",
        dir.path().join("eventlog").display().to_string()
    );
    let cfg = config_text(dir.path(), &["all"]).replace(&eventlog, "eventlog = \"\"");
    assert!(cfg.contains("eventlog = \"\""));
    let off = tokio::task::spawn_blocking(move || {
        ward_tests::Wardd::start_with(dir, &cfg, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let aa = AttestationAgentServiceClient::new(
        ttrpc::asynchronous::Client::connect(&off.addr)
            .await
            .unwrap(),
    );
    e.Content = "x".into();
    let r = aa.extend_runtime_measurement(ctx(), &e).await.unwrap();
    assert_eq!(
        r.Result.enum_value(),
        Ok(RuntimeMeasurementResult::NOT_ENABLED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_initdata_stops_wardd_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("initdata.toml"),
        "version = \"0.1.0\"\nalgorithm = \"md5\"\n",
    )
    .unwrap();
    let config = config_text(dir.path(), &["health"]);
    std::fs::write(dir.path().join("ward.toml"), &config).unwrap();
    let cfg = dir.path().join("ward.toml").display().to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        ward_tests::run_ward("wardd", &["--config", &cfg, "--cmdline", "/dev/null"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("initdata") && err.contains("md5"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_secrets_are_verified_then_released() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::ecdsa::signature::Signer;
    use ward_protos::confidential_data_hub::UnsealSecretInput;
    use ward_protos::confidential_data_hub_ttrpc::SealedSecretServiceClient;

    let signer = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let jwk = p256::PublicKey::from(signer.verifying_key()).to_jwk_string();
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/keys/signer", jwk.as_bytes(), Policy::Allow);
    kbs.put("default/secret/db", b"db-password", Policy::Allow);
    let seal = |kid: &str, name: &str| {
        let h = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "ES256", "kid": kid}).to_string());
        let p = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"version": "0.1.0", "type": "vault", "name": name, "provider": "kbs",
                "provider_settings": {}, "annotations": {}})
            .to_string(),
        );
        let sig: p256::ecdsa::Signature = signer.sign(format!("{h}.{p}").as_bytes());
        format!("sealed.{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    };
    let w = start_wardd(
        format!("\n[kbs]\nurl = \"{}\"\n", kbs.url()),
        "ward.tee=sample",
        None,
    )
    .await;
    let cdh = SealedSecretServiceClient::new(
        ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap(),
    );

    let mut req = UnsealSecretInput::new();
    req.secret = seal("kbs:///default/keys/signer", "kbs:///default/secret/db").into_bytes();
    assert_eq!(
        cdh.unseal_secret(ctx(), &req).await.unwrap().plaintext,
        b"db-password"
    );

    // Signed by the right key but altered: the payload names another resource.
    let good = seal("kbs:///default/keys/signer", "kbs:///default/secret/db");
    let parts: Vec<&str> = good.split('.').collect();
    let other = seal("kbs:///default/keys/signer", "kbs:///default/secret/other");
    let other_payload = other.split('.').nth(2).unwrap();
    req.secret = format!("sealed.{}.{other_payload}.{}", parts[1], parts[3]).into_bytes();
    let (code, msg) = code_of(cdh.unseal_secret(ctx(), &req).await.unwrap_err());
    assert_eq!(code, Code::UNAUTHENTICATED, "{msg}");

    req.secret = b"sealed.not.a.secret".to_vec();
    let (code, _) = code_of(cdh.unseal_secret(ctx(), &req).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);

    req.secret = seal("kbs:///default/keys/absent", "kbs:///default/secret/db").into_bytes();
    let (code, msg) = code_of(cdh.unseal_secret(ctx(), &req).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_rest_paths_over_loopback_http() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"over-http", Policy::Allow);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "\n[kbs]\nurl = \"{}\"\n\n[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"get-resource\", \"health\"]\n",
        kbs.url()
    );
    let w = start_wardd(extra, "ward.tee=sample", None).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    // Statuses and bodies as api-server-rest (guest-components 8246e5e0, router.rs) answers.
    let answer =
        |r: reqwest::Response| async move { (r.status().as_u16(), r.text().await.unwrap()) };
    let r = get("/cdh/resource/default/key/1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"over-http");
    let (status, body) = answer(get("/cdh/resource/default/key/absent").await.unwrap()).await;
    assert_eq!(status, 500, "a failure is 500 with its text: {body}");
    assert!(body.contains("default/key/absent"), "{body}");
    assert_eq!(
        answer(get("/aa/token?token_type=kbs").await.unwrap()).await,
        (404, "Attestation Feature Not Enabled".into()),
        "attestation-agent is not on this listener's list"
    );
    assert_eq!(
        answer(get("/nope").await.unwrap()).await,
        (404, "URL NOT FOUND".into())
    );
    assert_eq!(
        answer(
            http.post(format!("{base}/cdh/resource/default/key/1"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (404, "URL NOT FOUND".into())
    );
    assert_eq!(
        answer(http.post(format!("{base}/info")).send().await.unwrap()).await,
        (405, "Method Not Allowed".into())
    );
    let info = get("/info").await.unwrap().text().await.unwrap();
    assert_eq!(
        info,
        format!(
            r#"{{"version":"{}","feature":"resource"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
        "no tee without the attestation feature, feature a string"
    );
    drop(w);

    // A listener that allows the attestation agent answers tokens and evidence.
    let extra = format!(
        "\n[kbs]\nurl = \"{}\"\n\n[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"attestation-agent\"]\n",
        kbs.url()
    );
    let _w = start_wardd(extra, "ward.tee=sample", None).await;
    let r = get("/aa/token?token_type=kbs").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().split('.').count(), 3);
    assert_eq!(
        answer(get("/aa/token").await.unwrap()).await,
        (400, "BAD REQUEST".into())
    );
    let r = get("/aa/evidence?runtime_data=hello").await.unwrap();
    assert_eq!(r.status(), 200);
    let ev: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ev["report_data"], "aGVsbG8=");
    // encoding=base64: URL-safe base64 without padding, decoded before it is bound.
    let r = get("/aa/evidence?runtime_data=_-8&encoding=base64")
        .await
        .unwrap();
    let ev: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        ev["report_data"], "/+8=",
        "the bytes ff ef, not the text `_-8`"
    );
    for bad in [
        "runtime_data=***&encoding=base64",
        "runtime_data=a&encoding=hex",
    ] {
        assert_eq!(
            answer(get(&format!("/aa/evidence?{bad}")).await.unwrap()).await,
            (400, "BAD REQUEST".into()),
            "{bad}"
        );
    }
    let r = get("/aa/additional-evidence?runtime_data=AQID&encoding=base64")
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "present, empty without devices");
    let r = http
        .post(format!("{base}/aa/aael"))
        .body(r#"{"domain":"example.org","operation":"Run","content":"job-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(answer(r).await, (200, r#"{"success":"true"}"#.into()));
    let (status, body) = answer(
        http.post(format!("{base}/aa/aael"))
            .body("not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert!(body.starts_with("Illegal AAEL eventry format"), "{body}");
    let info = get("/info").await.unwrap().text().await.unwrap();
    assert_eq!(
        info,
        format!(
            r#"{{"version":"{}","tee":"sample","feature":"attestation"}}"#,
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_evidence_through_the_coco_api() {
    use ward_protos::attestation_agent::GetAdditionalEvidenceRequest;
    let kbs = DevKbs::start().await.unwrap();
    let extra = format!("\n[kbs]\nurl = \"{}\"\n", kbs.url());
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(dir.path(), &["all"]).replace(
        "[attestation]\n",
        "[attestation]\nsample_device = true\ngpus = \"off\"\n",
    ) + &extra;
    let w = tokio::task::spawn_blocking(move || {
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let aa = AttestationAgentServiceClient::new(
        ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap(),
    );
    let tees = aa
        .get_additional_tees(ctx(), &GetAdditionalTeesRequest::new())
        .await
        .unwrap();
    assert_eq!(tees.additional_tees, vec!["sampledevice"]);
    let mut req = GetAdditionalEvidenceRequest::new();
    req.RuntimeData = vec![7; 32];
    let ev = aa.get_additional_evidence(ctx(), &req).await.unwrap();
    let ev: serde_json::Value = serde_json::from_slice(&ev.Evidence).unwrap();
    let rd = base64::engine::general_purpose::STANDARD
        .decode(ev["sampledevice"]["report_data"].as_str().unwrap())
        .unwrap();
    // As CoCo's attestation-agent hands it on: the caller's bytes, not zero-padded.
    assert_eq!(rd, [7; 32]);
    assert_eq!(ev["sampledevice"]["svn"], "2");
    let mut tr = GetTokenRequest::new();
    tr.TokenType = "kbs".into();
    let token = String::from_utf8(aa.get_token(ctx(), &tr).await.unwrap().Token).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["submods"]["gpu0"]["device"], "sampledevice");
}

/// With `coco_token_reply` (the only way the TEE key leaves wardd), GetToken answers what CoCo's
/// attestation-agent answers (`token/kbs.rs`: `{"token", "tee_keypair"}`, in that order) with
/// the key in the encoding CoCo's clients parse: PKCS#1 for RSA (PKCS#8 was refused by
/// `from_pkcs1_pem`), PKCS#8 for EC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coco_token_reply_is_cocos_json_with_a_key_coco_parses() {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let kbs = DevKbs::start().await.unwrap();
    for (key, header) in [
        ("rsa", "-----BEGIN RSA PRIVATE KEY-----"),
        ("ec", "-----BEGIN PRIVATE KEY-----"),
    ] {
        let w = start_wardd(
            format!(
                "\n[kbs]\nurl = \"{}\"\nkey = \"{key}\"\ncoco_token_reply = true\n",
                kbs.url()
            ),
            "ward.tee=sample",
            None,
        )
        .await;
        let client = ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap();
        let aa = AttestationAgentServiceClient::new(client);
        let mut req = GetTokenRequest::new();
        req.TokenType = "kbs".into();
        let reply = aa.get_token(ctx(), &req).await.unwrap().Token;
        assert!(reply.starts_with(br#"{"token":""#), "token first, as CoCo");
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        let pem = v["tee_keypair"].as_str().unwrap();
        assert!(pem.starts_with(header), "{key}: {}", &pem[..40]);
        if key == "rsa" {
            rsa::RsaPrivateKey::from_pkcs1_pem(pem).unwrap();
        } else {
            p256::SecretKey::from_pkcs8_pem(pem).unwrap();
        }
        assert_eq!(v["token"].as_str().unwrap().split('.').count(), 3);
    }
}
