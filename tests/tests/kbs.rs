//! ward's KBS client against the development KBS on 127.0.0.1: the full RCAR handshake, one
//! session for many callers, re-attestation when the KBS forgets, and every failure the issue
//! names giving a clear, typed error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ward_attester::kbs::{JweError, KbsClient, KbsConfig, KbsError, KeyKind, RetryPolicy};
use ward_attester::report_data::ReportData;
use ward_attester::tee::{Attester, AttesterError, SampleAttester, Tee};
use ward_kbs_wire::ResourceUri;
use ward_tests::kbs::{DevKbs, Faults, JweFault, Policy};

fn config(kbs: &DevKbs) -> KbsConfig {
    let mut c = KbsConfig::new(kbs.url());
    c.retry = RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
    };
    c
}

fn client(kbs: &DevKbs) -> KbsClient {
    KbsClient::new(config(kbs), Arc::new(SampleAttester)).unwrap()
}

fn uri(s: &str) -> ResourceUri {
    ResourceUri::parse(s).unwrap()
}

#[tokio::test]
async fn handshake_then_resources_with_one_session() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"secret-one", Policy::Allow);
    kbs.put("default/key/2", &[0u8; 4096], Policy::Allow);
    let c = client(&kbs);
    assert_eq!(
        &c.get_resource(&uri("kbs:///default/key/1")).await.unwrap()[..],
        b"secret-one"
    );
    for _ in 0..10 {
        assert_eq!(
            c.get_resource(&uri("kbs:///default/key/2"))
                .await
                .unwrap()
                .len(),
            4096
        );
    }
    let (auth, attest, resource) = kbs.counts();
    assert_eq!(
        (auth, attest, resource),
        (1, 1, 11),
        "one handshake for eleven resources"
    );
    let claims = c.token_claims().await.unwrap();
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
}

#[tokio::test]
async fn thirty_two_concurrent_callers_share_one_handshake() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"shared", Policy::Allow);
    let c = Arc::new(client(&kbs));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_resource(&uri("kbs:///default/key/1")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(&t.await.unwrap().unwrap()[..], b"shared");
    }
    let (auth, attest, _) = kbs.counts();
    assert_eq!((auth, attest), (1, 1));
}

#[tokio::test]
async fn rsa_tee_keys_work_too() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"rsa-secret", Policy::Allow);
    let mut cfg = config(&kbs);
    cfg.key_kind = KeyKind::Rsa2048;
    let c = KbsClient::new(cfg, Arc::new(SampleAttester)).unwrap();
    assert_eq!(
        &c.get_resource(&uri("kbs:///default/key/1")).await.unwrap()[..],
        b"rsa-secret"
    );
}

#[tokio::test]
async fn a_forgetful_kbs_costs_exactly_one_reattestation() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"v", Policy::Allow);
    let c = client(&kbs);
    c.get_resource(&uri("kbs:///default/key/1")).await.unwrap();
    kbs.forget_sessions();
    assert_eq!(
        &c.get_resource(&uri("kbs:///default/key/1")).await.unwrap()[..],
        b"v"
    );
    let (auth, attest, resource) = kbs.counts();
    assert_eq!((auth, attest, resource), (2, 2, 3));
}

#[tokio::test]
async fn an_expiring_token_is_renewed_before_use() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"v", Policy::Allow);
    kbs.set_token_ttl(Duration::from_secs(10)); // inside the client's 30 s renewal margin
    let c = client(&kbs);
    c.get_resource(&uri("kbs:///default/key/1")).await.unwrap();
    c.get_resource(&uri("kbs:///default/key/1")).await.unwrap();
    let (_, attest, resource) = kbs.counts();
    assert_eq!(
        (attest, resource),
        (2, 2),
        "renewed before the second use, no failed request"
    );
}

#[tokio::test]
async fn policy_denial_and_missing_resources_are_final() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/denied", b"x", Policy::Deny);
    let c = client(&kbs);
    let e = c
        .get_resource(&uri("kbs:///default/key/denied"))
        .await
        .unwrap_err();
    assert!(matches!(e, KbsError::PolicyDenied { .. }), "{e}");
    assert!(e.to_string().contains("kbs:///default/key/denied"), "{e}");
    let e = c
        .get_resource(&uri("kbs:///default/key/missing"))
        .await
        .unwrap_err();
    assert!(matches!(e, KbsError::ResourceUnavailable { .. }), "{e}");
    let (_, attest, resource) = kbs.counts();
    assert_eq!(
        (attest, resource),
        (1, 3),
        "no re-attestation; a policy denial is final, a plugin error asked once more"
    );
    // Trustee's 401 PluginInternalError is also what a transient backend failure looks like:
    // asked once more, the resource comes.
    kbs.put("default/key/flaky", b"second time", Policy::Allow);
    kbs.set_faults(ward_tests::kbs::Faults {
        plugin_error_next: 1,
        ..Default::default()
    });
    assert_eq!(
        &c.get_resource(&uri("kbs:///default/key/flaky"))
            .await
            .unwrap()[..],
        b"second time"
    );
}

/// The session cookie's `Expires` is read: a session about to expire on the KBS's side is not
/// used for another request (which Trustee would refuse), a new one is made first.
#[tokio::test]
async fn an_expiring_session_cookie_is_renewed_before_use() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"v", Policy::Allow);
    let c = client(&kbs);
    c.get_resource(&uri("kbs:///default/key/1")).await.unwrap();
    c.get_resource(&uri("kbs:///default/key/1")).await.unwrap();
    assert_eq!(kbs.counts().0, 1, "a long session serves both");
    // Sessions shorter than the client's 30 s margin: every use starts a new one.
    kbs.set_session_ttl(Duration::from_secs(10));
    let c = client(&kbs);
    c.get_resource(&uri("kbs:///default/key/1")).await.unwrap();
    c.get_resource(&uri("kbs:///default/key/1")).await.unwrap();
    assert_eq!(kbs.counts().0, 3, "the cookie's expiry was read");
}

#[tokio::test]
async fn kbs_down_slow_failing_or_garbled() {
    // Down: nothing listens on the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = KbsConfig::new(format!("http://127.0.0.1:{port}"));
    cfg.retry = RetryPolicy {
        attempts: 2,
        first_backoff: Duration::from_millis(10),
        timeout: Duration::from_millis(500),
    };
    let c = KbsClient::new(cfg.clone(), Arc::new(SampleAttester)).unwrap();
    let e = c.token().await.unwrap_err();
    assert!(
        matches!(e, KbsError::Unreachable { attempts: 2, .. }),
        "{e}"
    );

    // Slow: every answer takes longer than the timeout.
    let kbs = DevKbs::start().await.unwrap();
    kbs.set_faults(Faults {
        delay: Some(Duration::from_secs(2)),
        ..Default::default()
    });
    cfg.url = kbs.url();
    let c = KbsClient::new(cfg.clone(), Arc::new(SampleAttester)).unwrap();
    let e = c.token().await.unwrap_err();
    assert!(matches!(e, KbsError::Timeout { attempts: 2, .. }), "{e}");

    // 500 on every attempt, then a KBS that recovers after one 500.
    kbs.set_faults(Faults {
        fail_next: 2,
        ..Default::default()
    });
    let c = KbsClient::new(cfg.clone(), Arc::new(SampleAttester)).unwrap();
    let e = c.token().await.unwrap_err();
    assert!(matches!(e, KbsError::Status { status: 500, .. }), "{e}");
    kbs.set_faults(Faults {
        fail_next: 1,
        ..Default::default()
    });
    c.token().await.expect("one 500 is retried");

    // Garbage instead of JSON.
    kbs.set_faults(Faults {
        garbage: true,
        ..Default::default()
    });
    let c = KbsClient::new(cfg, Arc::new(SampleAttester)).unwrap();
    let e = c.token().await.unwrap_err();
    assert!(matches!(e, KbsError::Protocol { .. }), "{e}");
}

#[tokio::test]
async fn damaged_jwes_are_refused_with_the_reason() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"0123456789abcdef", Policy::Allow);
    let c = client(&kbs);
    let cases = [
        (JweFault::Truncated, "truncated"),
        (JweFault::ForeignKey, "another key"),
        (JweFault::WrongAlg, "wrong alg"),
        (JweFault::FlippedBit, "flipped bit"),
    ];
    for (fault, name) in cases {
        kbs.set_faults(Faults {
            jwe: fault,
            ..Default::default()
        });
        let e = c
            .get_resource(&uri("kbs:///default/key/1"))
            .await
            .unwrap_err();
        let KbsError::Jwe { source, .. } = &e else {
            panic!("{name}: {e}");
        };
        match fault {
            JweFault::WrongAlg => assert!(
                matches!(source, JweError::Unsupported { field: "alg", .. }),
                "{name}: {e}"
            ),
            JweFault::Truncated => assert!(
                matches!(source, JweError::Authentication(_) | JweError::Malformed(_)),
                "{name}: {e}"
            ),
            _ => assert!(matches!(source, JweError::Authentication(_)), "{name}: {e}"),
        }
    }
    kbs.set_faults(Faults::default());
    assert_eq!(
        &c.get_resource(&uri("kbs:///default/key/1")).await.unwrap()[..],
        b"0123456789abcdef"
    );
}

/// A TEE that binds the wrong thing: the KBS must refuse its evidence.
type Rebind = fn(&ReportData) -> ReportData;

struct Misbinding(Rebind);

#[async_trait]
impl Attester for Misbinding {
    fn tee(&self) -> Tee {
        Tee::Sample
    }
    async fn evidence(&self, rd: &ReportData) -> Result<serde_json::Value, AttesterError> {
        SampleAttester.evidence(&(self.0)(rd)).await
    }
}

#[tokio::test]
async fn evidence_bound_to_anything_else_is_rejected() {
    let kbs = DevKbs::start().await.unwrap();
    let cases: [(&str, Rebind); 2] = [
        ("another key or nonce", |rd| {
            let mut b = rd.as_bytes().to_vec();
            b[0] ^= 1;
            ReportData::new(b).unwrap()
        }),
        ("padded to 64", |rd| {
            ReportData::new(rd.padded().to_vec()).unwrap()
        }),
    ];
    for (name, f) in cases {
        let c = KbsClient::new(config(&kbs), Arc::new(Misbinding(f))).unwrap();
        let e = c.token().await.unwrap_err();
        assert!(
            matches!(e, KbsError::AttestationRejected { .. }),
            "{name}: {e}"
        );
        assert!(e.to_string().contains("does not bind"), "{name}: {e}");
    }
}

#[tokio::test]
async fn a_replayed_nonce_is_rejected_by_the_kbs() {
    // Raw protocol: take session A's nonce and present it in session B.
    let kbs = DevKbs::start().await.unwrap();
    let http = reqwest::Client::new();
    let auth = || async {
        let r = http
            .post(format!("{}/kbs/v0/auth", kbs.url()))
            .body(r#"{"version":"0.4.0","tee":"sample","extra-params":""}"#)
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let nonce = r.json::<serde_json::Value>().await.unwrap()["nonce"]
            .as_str()
            .unwrap()
            .to_string();
        (cookie, nonce)
    };
    let (_cookie_a, nonce_a) = auth().await;
    let (cookie_b, _nonce_b) = auth().await;
    let body = serde_json::json!({
        "init-data": null,
        "runtime-data": {"nonce": nonce_a, "tee-pubkey": {"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"AA","y":"AA"}},
        "tee-evidence": {"primary_evidence": {"svn":"1","report_data":""}, "additional_evidence": ""},
    });
    let r = http
        .post(format!("{}/kbs/v0/attest", kbs.url()))
        .header("cookie", cookie_b)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let err: serde_json::Value = r.json().await.unwrap();
    assert!(
        err["type"]
            .as_str()
            .unwrap()
            .ends_with("/AttestationFailed"),
        "{err}"
    );
    assert!(err["detail"].as_str().unwrap().contains("nonce"), "{err}");
}

#[tokio::test]
async fn wrong_protocol_version_and_bad_paths_get_trustee_statuses() {
    let kbs = DevKbs::start().await.unwrap();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/kbs/v0/auth", kbs.url()))
        .body(r#"{"version":"0.3.0","tee":"sample","extra-params":""}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let c = client(&kbs);
    c.token().await.unwrap();
    let token = c.token().await.unwrap();
    let r = http
        .get(format!("{}/kbs/v0/resource/a/../b", kbs.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(r.status() == 404 || r.status() == 401, "{}", r.status());
    let r = http
        .get(format!("{}/kbs/v0/nosuchplugin/a/b/c", kbs.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A CA and a `localhost` server certificate it signed, as PEM.
fn test_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ward test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    (ca_cert.pem(), server.pem(), server_key.serialize_pem())
}

#[tokio::test]
async fn tls_to_the_kbs_trusts_only_the_configured_ca() {
    let (ca, cert, key) = test_pki();
    let kbs = DevKbs::start_tls(&cert, &key).await.unwrap();
    kbs.put("default/key/1", b"over-tls", Policy::Allow);
    assert!(kbs.url().starts_with("https://localhost:"));

    let mut cfg = config(&kbs);
    cfg.ca_pem = Some(ca.into_bytes());
    let c = KbsClient::new(cfg.clone(), Arc::new(SampleAttester)).unwrap();
    assert_eq!(
        &c.get_resource(&uri("kbs:///default/key/1")).await.unwrap()[..],
        b"over-tls"
    );

    // Another CA: the certificate is refused, said as such and at once: retrying cannot change
    // a certificate (it was retried three times and reported as "unreachable").
    let (other_ca, _, _) = test_pki();
    cfg.ca_pem = Some(other_ca.into_bytes());
    cfg.retry.attempts = 3;
    // A retry would sleep this long first.
    cfg.retry.first_backoff = Duration::from_secs(5);
    let c = KbsClient::new(cfg.clone(), Arc::new(SampleAttester)).unwrap();
    let started = std::time::Instant::now();
    let e = c.token().await.unwrap_err();
    assert!(matches!(e, KbsError::Certificate { .. }), "{e}");
    assert!(e.to_string().contains("certificate is refused"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no retry: {:?}",
        started.elapsed()
    );
    cfg.retry.first_backoff = Duration::from_millis(10);

    cfg.ca_pem = Some(b"not a certificate".to_vec());
    assert!(matches!(
        KbsClient::new(cfg, Arc::new(SampleAttester)),
        Err(KbsError::Config(_))
    ));
}

/// A self-signed certificate for `localhost` with `CA:TRUE`, what `openssl req -x509` makes and
/// Trustee's guides use for the KBS: (certificate PEM, key PEM).
fn self_signed_ca_cert(not_after_year: i32) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The KBS's own self-signed `CA:TRUE` certificate as `cacert` works, as with curl and Python
/// (webpki alone refuses a CA certificate as the server's); another one, or the same one
/// expired, is refused.
#[tokio::test]
async fn a_self_signed_kbs_certificate_can_be_the_cacert() {
    let (cert, key) = self_signed_ca_cert(2099);
    let kbs = DevKbs::start_tls(&cert, &key).await.unwrap();
    kbs.put("default/key/1", b"pinned", Policy::Allow);
    let mut cfg = config(&kbs);
    cfg.ca_pem = Some(cert.clone().into_bytes());
    let c = KbsClient::new(cfg.clone(), Arc::new(SampleAttester)).unwrap();
    assert_eq!(
        &c.get_resource(&uri("kbs:///default/key/1")).await.unwrap()[..],
        b"pinned"
    );
    let (other, _) = self_signed_ca_cert(2099);
    cfg.ca_pem = Some(other.into_bytes());
    let e = KbsClient::new(cfg.clone(), Arc::new(SampleAttester))
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert!(matches!(e, KbsError::Certificate { .. }), "{e}");

    let (old, old_key) = self_signed_ca_cert(2021);
    let expired = DevKbs::start_tls(&old, &old_key).await.unwrap();
    let mut cfg = config(&expired);
    cfg.ca_pem = Some(old.into_bytes());
    let e = KbsClient::new(cfg, Arc::new(SampleAttester))
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert!(matches!(e, KbsError::Certificate { .. }), "{e}");
}

fn nvidia_fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../shared/fixtures/evidence/nvidia/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn scripted_gpus(gpus: u32) -> Arc<ward_attester::nvidia::ScriptedGpus> {
    use ward_attester::nvidia::{Script, ScriptedGpus};
    let template = hex::decode(
        String::from_utf8(nvidia_fixture("hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    Arc::new(ScriptedGpus::new(
        Script {
            gpus,
            arch_code: 9,
            ..Default::default()
        },
        template,
        nvidia_fixture("hopper_cert_chain_case1.txt"),
    ))
}

#[tokio::test]
async fn composite_cpu_and_gpu_evidence_is_bound_and_appraised() {
    use sha2::Digest;
    use ward_attester::nvidia::{CollectOptions, GpuBackend};
    use ward_attester::tee::{DeviceAttester, NvidiaAttester, SampleDeviceAttester};
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", b"gpu-workload-key", Policy::Allow);

    // Two (scripted) H100s with real report bytes: the KBS checks each echoes the device nonce.
    let gpus = scripted_gpus(2);
    let backend: Arc<dyn GpuBackend> = gpus.clone();
    let nvidia = NvidiaAttester::new(backend.clone(), CollectOptions::default())
        .await
        .unwrap();
    let c = client(&kbs).with_devices(vec![Arc::new(nvidia) as Arc<dyn DeviceAttester>]);
    assert_eq!(
        &c.get_resource(&uri("kbs:///default/key/1")).await.unwrap()[..],
        b"gpu-workload-key"
    );
    let claims = c.token_claims().await.unwrap();
    let mut submods: Vec<_> = claims["submods"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    submods.sort();
    assert_eq!(submods, ["cpu0", "gpu0", "gpu1"]);
    assert_eq!(claims["submods"]["gpu1"]["arch"], "HOPPER");
    assert_eq!(
        gpus.set_ready_calls(),
        0,
        "the KBS client never touches the ready state"
    );

    // The sampledevice double, and the binding recomputed here from the protocol text.
    let c = client(&kbs).with_devices(vec![
        Arc::new(SampleDeviceAttester) as Arc<dyn DeviceAttester>
    ]);
    let claims = c.token_claims().await.unwrap();
    assert_eq!(claims["submods"]["gpu0"]["device"], "sampledevice");
    let ev = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    let rt = &ev["runtime_data_claims"];
    let device_rd = sha2::Sha384::digest(
        format!(
            r#"{{"nonce":{},"tee-pubkey":{}}}"#,
            rt["nonce"],
            serde_json::to_string(&sorted(&rt["tee-pubkey"])).unwrap()
        )
        .as_bytes(),
    );
    let additional = serde_json::json!({"sampledevice": {"report_data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, device_rd), "svn": "2"}}).to_string();
    let primary = sha2::Sha384::digest(
        format!(
            r#"{{"additional-evidence":{},"nonce":{},"tee-pubkey":{}}}"#,
            serde_json::to_string(&additional).unwrap(),
            rt["nonce"],
            serde_json::to_string(&sorted(&rt["tee-pubkey"])).unwrap()
        )
        .as_bytes(),
    );
    assert_eq!(
        ev["report_data"],
        hex::encode(primary),
        "primary binding recomputed independently"
    );
}

/// A JSON value with object keys sorted (serde_json's default map already sorts).
fn sorted(v: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(&v.to_string()).unwrap()
}

#[tokio::test]
async fn a_gpu_that_ignores_the_nonce_fails_the_attestation() {
    use ward_attester::nvidia::{CollectOptions, GpuBackend, Script, ScriptedGpus};
    use ward_attester::tee::{DeviceAttester, NvidiaAttester};
    let kbs = DevKbs::start().await.unwrap();
    let template = hex::decode(
        String::from_utf8(nvidia_fixture("hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let backend: Arc<dyn GpuBackend> = Arc::new(ScriptedGpus::new(
        Script {
            gpus: 1,
            arch_code: 9,
            ignore_nonce: true,
            ..Default::default()
        },
        template,
        nvidia_fixture("hopper_cert_chain_case1.txt"),
    ));
    let nvidia = NvidiaAttester::new(backend, CollectOptions::default())
        .await
        .unwrap();
    let c = client(&kbs).with_devices(vec![Arc::new(nvidia) as Arc<dyn DeviceAttester>]);
    let e = c.token().await.unwrap_err();
    assert!(e.to_string().contains("does not echo the nonce"), "{e}");
    assert_eq!(
        kbs.counts().1,
        0,
        "refused before anything reached the KBS's attest endpoint"
    );
}

#[tokio::test]
async fn owners_upload_resources_with_an_admin_jwt() {
    use ward_attester::kbs::admin::{AdminAuth, AdminClaims, AdminError, AdminKey, put_resource};
    let kbs = DevKbs::start().await.unwrap();
    let signed = |claims: AdminClaims| AdminAuth::Key {
        key: Box::new(AdminKey::from_pem(&kbs.admin_key_pem()).unwrap()),
        claims,
    };
    let target = uri("kbs:///default/model-kek/1");
    put_resource(
        &kbs.url(),
        None,
        &signed(AdminClaims::default()),
        &target,
        &[0x42; 32],
    )
    .await
    .unwrap();
    // Trustee requires a `role` its ACL grants: another role is refused.
    let e = put_resource(
        &kbs.url(),
        None,
        &signed(AdminClaims {
            role: "guest".into(),
            ..AdminClaims::default()
        }),
        &target,
        b"evil",
    )
    .await
    .unwrap_err();
    assert!(matches!(&e, AdminError::Refused { status: 401, .. }), "{e}");
    // A ready-made token (what Trustee's kbs-client takes from a file) is sent as it is.
    let token = AdminKey::from_pem(&kbs.admin_key_pem())
        .unwrap()
        .token(&AdminClaims::default(), ward_tests::unix_now());
    put_resource(
        &kbs.url(),
        None,
        &AdminAuth::Token(zeroize::Zeroizing::new(format!("{token}\n"))),
        &target,
        &[0x42; 32],
    )
    .await
    .unwrap();
    // The guest gets it after attestation.
    assert_eq!(
        &client(&kbs).get_resource(&target).await.unwrap()[..],
        &[0x42; 32]
    );
    // Another operator's key is refused, with Trustee's error shape.
    let other = {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
        AdminAuth::Key {
            key: Box::new(
                AdminKey::from_pem(&sk.to_pkcs8_pem(Default::default()).unwrap()).unwrap(),
            ),
            claims: AdminClaims::default(),
        }
    };
    let e = put_resource(&kbs.url(), None, &other, &target, b"evil")
        .await
        .unwrap_err();
    match &e {
        AdminError::Refused { status, body, .. } => {
            assert_eq!(*status, 401);
            assert!(
                body.contains("/errors/AdminAuthInitialization")
                    && body.contains("Cannot verify token with any of the issuers"),
                "{body}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        &client(&kbs).get_resource(&target).await.unwrap()[..],
        &[0x42; 32],
        "the refused upload changed nothing"
    );
}

/// Runs `openssl` with `args` in `dir`, `stdin` fed in; its stdout.
fn openssl(dir: &std::path::Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `ward model kbs-put` and the KBS client against what Trustee's own tooling makes, with the
/// real `openssl` (Trustee 78962cd4): the admin key pair and admin token of
/// `kbs/config/docker-compose/setup.sh` (`openssl genpkey -algorithm ed25519`, `pkey -pubout`,
/// an EdDSA JWT with `iss`, `aud` as an array, `role`, signed by `openssl pkeyutl -rawin`), the
/// identity provider and ACL of its `kbs-config.toml` (issuer `TrusteeInDocker`, `role =
/// "admin"`), checked as `admin/authentication/bearer_jwt.rs` checks; and the KBS's HTTPS
/// certificate both as `kbs/docs/self-signed-https.md` makes it (`openssl req -x509` with its
/// config: subjectAltName, no basicConstraints) and as plain `openssl req -x509` makes it
/// (`CA:TRUE`, critical), each given to `--cacert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kbs_put_and_the_client_take_trustees_admin_token_and_certificates() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl missing: skipping Trustee's key and certificate shapes");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = |name: &str, bytes: &[u8]| std::fs::write(d.join(name), bytes).unwrap();
    let s = |name: &str| d.join(name).display().to_string();
    // kbs/docs/self-signed-https.md's config, and its command.
    w(
        "localhost.conf",
        b"[req]\ndefault_bits = 2048\ndefault_keyfile = localhost.key\n\
          distinguished_name = req_distinguished_name\nreq_extensions = req_ext\n\
          x509_extensions = v3_ca\n\n[req_distinguished_name]\ncommonName = Common Name\n\
          commonName_default = localhost\n\n[req_ext]\nsubjectAltName = @alt_names\n\n\
          [v3_ca]\nsubjectAltName = @alt_names\n\n[alt_names]\nDNS.1 = localhost\n\
          DNS.2 = 127.0.0.1\n",
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-nodes",
            "-days",
            "365",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "doc.key",
            "-out",
            "doc.crt",
            "-config",
            "localhost.conf",
            "-passin",
            "pass:",
            "-batch",
        ],
        b"",
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-nodes",
            "-days",
            "365",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        b"",
    );
    let ext = |crt: &str| {
        String::from_utf8(openssl(
            d,
            &["x509", "-in", crt, "-noout", "-ext", "basicConstraints"],
            b"",
        ))
        .unwrap()
    };
    assert!(!ext("doc.crt").contains("CA:TRUE"), "{}", ext("doc.crt"));
    assert!(ext("ca.crt").contains("CA:TRUE"), "{}", ext("ca.crt"));

    // setup.sh: the key pair and a ten-year admin token.
    w(
        "private.key",
        &openssl(d, &["genpkey", "-algorithm", "ed25519"], b""),
    );
    let public = openssl(d, &["pkey", "-in", "private.key", "-pubout"], b"");
    let token = |claims: serde_json::Value| {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let signing = format!(
            "{}.{}",
            b64(br#"{"alg":"EdDSA","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        w("signing-input", signing.as_bytes());
        let sig = openssl(
            d,
            &[
                "pkeyutl",
                "-sign",
                "-inkey",
                "private.key",
                "-rawin",
                "-in",
                "signing-input",
            ],
            b"",
        );
        format!("{signing}.{}\n", b64(&sig))
    };
    let iat = ward_tests::unix_now();
    let claims = |iss: &str, role: &str| {
        serde_json::json!({"iss": iss, "sub": "admin", "aud": ["KBS"], "role": role,
            "iat": iat, "exp": iat + 315_360_000})
    };
    w(
        "admin-token",
        token(claims("TrusteeInDocker", "admin")).as_bytes(),
    );
    w(
        "wrong-issuer",
        token(claims("Elsewhere", "admin")).as_bytes(),
    );
    w(
        "guest-token",
        token(claims("TrusteeInDocker", "guest")).as_bytes(),
    );
    w("kek", &[0x6b; 32]);

    for (crt, key) in [("doc.crt", "doc.key"), ("ca.crt", "ca.key")] {
        let cert = std::fs::read_to_string(d.join(crt)).unwrap();
        let kbs = DevKbs::start_tls(&cert, &std::fs::read_to_string(d.join(key)).unwrap())
            .await
            .unwrap();
        kbs.set_admin_public_key_pem(std::str::from_utf8(&public).unwrap());
        kbs.set_admin_identity(ward_tests::kbs::AdminIdentity {
            issuer: Some("TrusteeInDocker".into()),
            audience: Some("KBS".into()),
        });
        let url = kbs.url();
        let put = |extra: Vec<String>| {
            let mut args: Vec<String> = [
                "model",
                "kbs-put",
                "--kbs",
                &url,
                "--kid",
                "kbs:///default/model-kek/1",
                "--kek-file",
                &s("kek"),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            args.extend(extra);
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                ward_tests::run_ward("ward", &args)
            })
        };
        let with = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();

        // Without the certificate: refused by TLS before any token is sent.
        let (code, out, err) = put(with(&["--admin-token", &s("admin-token")]))
            .await
            .unwrap();
        assert_ne!(code, 0, "{crt}: {out}{err}");
        // Another issuer, another role: Trustee's 401 with its error type and reason.
        let (code, out, err) = put(with(&[
            "--admin-token",
            &s("wrong-issuer"),
            "--cacert",
            &s(crt),
        ]))
        .await
        .unwrap();
        assert_ne!(code, 0);
        assert!(
            err.contains("401") && err.contains("Cannot verify token with any of the issuers"),
            "{crt}: {out}{err}"
        );
        let (code, out, err) = put(with(&[
            "--admin-token",
            &s("guest-token"),
            "--cacert",
            &s(crt),
        ]))
        .await
        .unwrap();
        assert_ne!(code, 0);
        assert!(
            err.contains("AdminAuthInitialization")
                && err.contains(
                    "Role guest not allowed for path /kbs/v0/resource/default/model-kek/1"
                ),
            "{crt}: {out}{err}"
        );
        // A key from `openssl genpkey` signing here needs the provider's issuer and audience.
        let (code, out, err) = put(with(&[
            "--admin-key",
            &s("private.key"),
            "--issuer",
            "TrusteeInDocker",
            "--cacert",
            &s(crt),
        ]))
        .await
        .unwrap();
        assert_ne!(code, 0, "no audience: {out}{err}");
        let (code, out, err) = put(with(&[
            "--admin-key",
            &s("private.key"),
            "--issuer",
            "TrusteeInDocker",
            "--audience",
            "KBS",
            "--cacert",
            &s(crt),
        ]))
        .await
        .unwrap();
        assert_eq!(code, 0, "{crt}: {out}{err}");
        // setup.sh's token file, as it is (trailing newline included).
        let (code, out, err) = put(with(&[
            "--admin-token",
            &s("admin-token"),
            "--cacert",
            &s(crt),
        ]))
        .await
        .unwrap();
        assert_eq!(code, 0, "{crt}: {out}{err}");
        // The guest side, trusting the same certificate file, gets the KEK.
        let mut cfg = config(&kbs);
        cfg.ca_pem = Some(cert.into_bytes());
        let got = KbsClient::new(cfg, Arc::new(SampleAttester))
            .unwrap()
            .get_resource(&uri("kbs:///default/model-kek/1"))
            .await
            .unwrap();
        assert_eq!(&got[..], &[0x6b; 32], "{crt}");
    }
}
