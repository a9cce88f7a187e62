//! wardd's CoCo ImagePull end to end: an image built with umoci, encrypted by ward's owner-side
//! encryptor with CoCo key-provider packets whose KEK lives in the (development) KBS, pushed by
//! skopeo to a real registry, pulled by wardd through the ttrpc API kata-agent uses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ward_image::encrypt::{Recipients, encrypt_layout};
use ward_image::ocicrypt::{PacketVersion, ProviderRecipient};
use ward_protos::confidential_data_hub::ImagePullRequest;
use ward_protos::confidential_data_hub_ttrpc::ImagePullServiceClient;
use ward_protos::keyprovider::KeyProviderKeyWrapProtocolInput;
use ward_protos::keyprovider_ttrpc::KeyProviderServiceClient;
use ward_tests::kbs::{DevKbs, Policy};
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools};
use ward_tests::{Wardd, config_text};

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(60_000_000_000)
}

/// Encrypts `layout:v1` in place with CoCo key-provider packets (v2) naming `kid`, under `kek`.
fn encrypt_for_kbs(layout: &std::path::Path, kid: &str, kek: &[u8]) {
    let recipients = Recipients {
        jwe: Vec::new(),
        providers: vec![ProviderRecipient {
            kid: kid.into(),
            kek: zeroize::Zeroizing::new(kek.to_vec()),
            version: PacketVersion::V2,
        }],
    };
    encrypt_layout(layout, "v1", &recipients).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardd_pulls_an_image_whose_key_the_kbs_releases() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kek = [0x5cu8; 32];
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/image-kek/1", &kek, Policy::Allow);
    // Registry credentials held by the KBS (the test registry is open, so they go unused).
    kbs.put(
        "default/credential/registry",
        br#"{"auths":{"registry.example":{"auth":"dXNlcjpwYXNz"}}}"#,
        Policy::Allow,
    );
    let (reg, reference, packet_annotation) = tokio::task::spawn_blocking(move || {
        let reg = TestRegistry::start();
        let img = ImageBuilder::new("v1");
        std::fs::write(img.rootfs().join("app"), "confidential payload\n").unwrap();
        img.layer();
        std::fs::write(img.rootfs().join("app2"), "second\n").unwrap();
        img.layer();
        encrypt_for_kbs(&img.layout, "kbs:///default/image-kek/1", &kek);
        let reference = reg.push(&img.layout, "v1", "test/coco-encrypted");
        // One layer's provider annotation, to exercise UnWrapKey directly.
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(img.layout.join("index.json")).unwrap()).unwrap();
        let mdigest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(img.layout.join("blobs/sha256").join(mdigest)).unwrap()).unwrap();
        let packet = manifest["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.provider.attestation-agent"]
            .as_str()
            .unwrap()
            .to_string();
        (reg, reference, packet)
    })
    .await
    .unwrap();

    let host = reg.host();
    let kbs_url = kbs.url();
    let w = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = config_text(dir.path(), &["all"]).replace(
            "[images]\n",
            &format!("[images]\ninsecure_registries = [{host:?}]\nauth = \"kbs:///default/credential/registry\"\n"),
        ) + &format!("\n[kbs]\nurl = \"{kbs_url}\"\n");
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let client = ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap();
    let images = ImagePullServiceClient::new(client.clone());
    let bundle = w.dir.path().join("bundles/c1");
    let mut req = ImagePullRequest::new();
    req.image_url = reference.clone();
    req.bundle_path = bundle.display().to_string();
    let resp = images.pull_image(ctx(), &req).await.unwrap();
    assert!(resp.manifest_digest.starts_with("sha256:"), "{resp:?}");
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/app")).unwrap(),
        "confidential payload\n"
    );
    assert!(bundle.join("config.json").exists());

    // The KEK was released once, audited by URI; the pull is audited and measured.
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    assert!(
        audit.contains(r#""event":"resource.release","subject":"kbs:///default/image-kek/1""#),
        "{audit}"
    );
    assert!(audit.contains(r#""event":"image.pull""#), "{audit}");
    assert_eq!(
        audit
            .matches(r#""subject":"kbs:///default/image-kek/1""#)
            .count(),
        1,
        "two layers share one KEK, released once per pull: {audit}"
    );
    assert!(
        audit.contains(
            r#""event":"resource.release","subject":"kbs:///default/credential/registry""#
        ),
        "registry credentials came from the KBS: {audit}"
    );
    assert!(
        !audit.contains("dXNlcjpwYXNz"),
        "no credential in the audit log"
    );
    assert!(!audit.contains("5c5c5c5c"), "no key bytes in the audit log");
    let eventlog = std::fs::read(w.dir.path().join("eventlog")).unwrap();
    // CoCo's exact content: `image` first, a space after the comma.
    let needle = format!(
        "github.com/confidential-containers PullImage {{\"image\":\"{reference}\", \"digest\":\"{}\"}}",
        resp.manifest_digest
    );
    assert!(
        eventlog
            .windows(needle.len())
            .any(|win| win == needle.as_bytes()),
        "PullImage measured"
    );

    // A relative bundle path is refused.
    req.bundle_path = "relative/bundle".into();
    let e = images.pull_image(ctx(), &req).await.unwrap_err();
    assert!(format!("{e:?}").contains("INVALID_ARGUMENT"), "{e:?}");

    // UnWrapKey, as ocicrypt's key-provider protocol carries it (Go encodes bytes as base64).
    use base64::Engine;
    let annotation = base64::engine::general_purpose::STANDARD
        .decode(&packet_annotation)
        .unwrap();
    let input = serde_json::json!({
        "op": "keyunwrap",
        "keyunwrapparams": {"dc": {}, "annotation": base64::engine::general_purpose::STANDARD.encode(&annotation)},
    });
    let kp = KeyProviderServiceClient::new(client);
    let mut kreq = KeyProviderKeyWrapProtocolInput::new();
    kreq.KeyProviderKeyWrapProtocolInput = input.to_string().into_bytes();
    let out = kp.un_wrap_key(ctx(), &kreq).await.unwrap();
    let out: serde_json::Value =
        serde_json::from_slice(&out.KeyProviderKeyWrapProtocolOutput).unwrap();
    // CoCo's answer: optsdata as an integer array whatever the request's encoding.
    let opts: Vec<u8> =
        serde_json::from_value(out["keyunwrapresults"]["optsdata"].clone()).unwrap();
    let opts: serde_json::Value = serde_json::from_slice(&opts).unwrap();
    assert!(
        opts["symkey"].is_string() && opts["digest"].as_str().unwrap().starts_with("sha256:"),
        "{opts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_encrypts_for_the_owner_and_pulls_on_its_own() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let kek = [7u8; 32];
    kbs.put("default/image-kek/cli", &kek, Policy::Allow);
    let kbs_url = kbs.url();
    let (code, out, err, bundle_file, no_key) = tokio::task::spawn_blocking(move || {
        let reg = TestRegistry::start();
        let img = ImageBuilder::new("v1");
        std::fs::write(img.rootfs().join("hello"), "from the owner\n").unwrap();
        img.layer();
        let work = tempfile::tempdir().unwrap();
        img.encrypt_for_key_provider("kbs:///default/image-kek/cli", &kek);
        let reference = reg.push(&img.layout, "v1", "test/cli");
        let bundle = work.path().join("bundle");
        let store = work.path().join("store");
        let args = |kbs: bool| {
            let mut a = vec![
                "pull".to_string(),
                reference.clone(),
                "--bundle".into(),
                bundle.display().to_string(),
                "--insecure-registry".into(),
                reg.host(),
                "--blob-cache".into(),
                store.display().to_string(),
            ];
            if kbs {
                a.extend([
                    "--kbs".into(),
                    kbs_url.clone(),
                    "--tee".into(),
                    "sample".into(),
                ]);
            }
            a
        };
        let no_key_args = args(false);
        let no_key = ward_tests::run_ward(
            "ward",
            &no_key_args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let with = args(true);
        let (code, out, err) =
            ward_tests::run_ward("ward", &with.iter().map(String::as_str).collect::<Vec<_>>());
        let content = std::fs::read_to_string(bundle.join("rootfs/hello")).ok();
        (code, out, err, content, no_key)
    })
    .await
    .unwrap();
    assert_eq!(no_key.0, 1, "{no_key:?}");
    assert!(
        no_key.2.contains("provider.attestation-agent"),
        "{no_key:?}"
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 layers (1 encrypted)"), "{out}");
    assert_eq!(bundle_file.as_deref(), Some("from the owner\n"));
}

/// An image chooses what its key-provider packets name, and the registry (the host) chooses the
/// image. A packet naming another secret (here the registry credentials the config reads from
/// the KBS, or a plugin with a query) is refused before anything is fetched, and the error says
/// nothing of that resource; `[images] kek_resources` narrows the plain KEKs an image may name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_cannot_make_the_guest_fetch_other_secrets() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let secret = [0x42u8; 32];
    kbs.put(
        "default/credential/registry",
        br#"{"auths":{"registry.example":{"auth":"dXNlcjpwYXNz"}}}"#,
        Policy::Allow,
    );
    kbs.put("default/app/token", &secret, Policy::Allow);
    let (reg, references) = tokio::task::spawn_blocking(move || {
        let reg = TestRegistry::start();
        let mut references = Vec::new();
        for (name, kid) in [
            ("creds", "kbs:///default/credential/registry"),
            ("plugin", "kbs+pkcs11://host/wrap/key?label=x"),
            ("app", "kbs:///default/app/token"),
        ] {
            let img = ImageBuilder::new("v1");
            std::fs::write(img.rootfs().join("f"), "x\n").unwrap();
            img.layer();
            encrypt_for_kbs(&img.layout, kid, &secret);
            references.push(reg.push(&img.layout, "v1", &format!("test/{name}")));
        }
        (reg, references)
    })
    .await
    .unwrap();
    let host = reg.host();
    let kbs_url = kbs.url();
    let w = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = config_text(dir.path(), &["all"]).replace(
            "[images]\n",
            &format!(
                "[images]\ninsecure_registries = [{host:?}]\nauth = \"kbs:///default/credential/registry\"\n\
                 kek_resources = [\"kbs:///default/image-kek/\"]\n"
            ),
        ) + &format!("\n[kbs]\nurl = \"{kbs_url}\"\n");
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let client = ttrpc::asynchronous::Client::connect(&w.addr).await.unwrap();
    let images = ImagePullServiceClient::new(client);
    for reference in &references {
        let mut req = ImagePullRequest::new();
        req.image_url = reference.clone();
        req.bundle_path = w.dir.path().join("bundle").display().to_string();
        let e = format!("{:?}", images.pull_image(ctx(), &req).await.unwrap_err());
        assert!(
            e.contains("not a key-encryption key this guest fetches"),
            "{e}"
        );
        assert!(!e.contains("bytes"), "no length of another resource: {e}");
    }
    // Nothing was asked of the KBS for them: no release, no refusal on record.
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    for line in audit
        .lines()
        .filter(|l| l.contains(r#""event":"resource."#))
    {
        assert!(
            line.contains(r#""subject":"kbs:///default/credential/registry""#),
            "only the config's own credentials were fetched: {line}"
        );
    }
    assert_eq!(
        audit.matches(r#""event":"resource.release""#).count(),
        1,
        "the credentials, once, for the registry client: {audit}"
    );
}
