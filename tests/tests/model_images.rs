//! Models shipped as ordinary OCI images, encrypted with ocicrypt by the tools people use today:
//! layers built by umoci, JWE-encrypted and pushed by skopeo (or encrypted for the CoCo key
//! provider by `ward image encrypt`, KEK in the KBS), pushed to a real registry, and loaded by the
//! guest straight into memory: decrypted, unpacked in memory, whiteouts applied, each pinned file
//! checked. Nothing of the model reaches the guest's disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use ward_agent::images::KbsClientResources;
use ward_attester::kbs::{KbsClient, KbsConfig};
use ward_attester::tee::SampleAttester;
use ward_image::digest::Digest;
use ward_image::model_artifact::{ModelError, PinnedDigests, fetch_model};
use ward_image::ocicrypt::PrivateKey;

use ward_tests::kbs::{DevKbs, Policy};
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools, rsa_keypair};
use ward_tests::{Wardd, config_text};

fn weights(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Two layers: the second replaces `config.json` and deletes `old.bin` (a whiteout).
fn model_image() -> (ImageBuilder, Vec<u8>) {
    let img = ImageBuilder::new("v1");
    let dir = img.rootfs().join("models/tiny");
    std::fs::create_dir_all(&dir).unwrap();
    let w = weights(3_000_000, 1);
    std::fs::write(dir.join("model.safetensors"), &w).unwrap();
    std::fs::write(dir.join("config.json"), b"{\"v\":1}").unwrap();
    std::fs::write(dir.join("old.bin"), b"stale").unwrap();
    std::fs::write(img.rootfs().join("unrelated"), b"not part of the model").unwrap();
    img.layer();
    std::fs::write(dir.join("config.json"), b"{\"v\":2}").unwrap();
    std::fs::remove_file(dir.join("old.bin")).unwrap();
    img.layer();
    (img, w)
}

fn pins(w: &[u8]) -> PinnedDigests {
    let mut p = PinnedDigests::new();
    p.insert("models/tiny/model.safetensors".into(), Digest::of(w));
    p.insert("models/tiny/config.json".into(), Digest::of(b"{\"v\":2}"));
    p
}

/// A registry holding the model image JWE-encrypted by skopeo as `models/NAME:v1`, then
/// `prepare` run on it (it returns the reference to load); the private key's PEM and the weights.
struct Encrypted {
    reg: TestRegistry,
    reference: String,
    key_pem: String,
    weights: Vec<u8>,
    _keep: (ImageBuilder, tempfile::TempDir),
}

async fn encrypted_model_image(
    name: &'static str,
    prepare: fn(&TestRegistry, &str, &std::path::Path) -> String,
) -> Encrypted {
    tokio::task::spawn_blocking(move || {
        let reg = TestRegistry::start();
        let (img, weights) = model_image();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = rsa_keypair(keys.path());
        let pushed = reg.push_encrypted(&img.layout, "v1", &format!("models/{name}"), &public);
        let reference = prepare(&reg, &pushed, keys.path());
        Encrypted {
            key_pem: std::fs::read_to_string(key).unwrap(),
            reg,
            reference,
            weights,
            _keep: (img, keys),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_image_encrypted_by_skopeo_loads_into_memory_with_its_whiteouts() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let img = encrypted_model_image("image", |_, pushed, _| pushed.to_string()).await;
    let (reference, w) = (img.reference.as_str(), img.weights.as_slice());
    let registry = img.reg.client();
    let keys = PrivateKey::all_from_pem(&img.key_pem).unwrap();
    // No KBS resource is involved: the KBS client must not be asked (JWE opens every layer).
    let keks = KbsClientResources(
        KbsClient::new(KbsConfig::new(kbs.url()), Arc::new(SampleAttester)).unwrap(),
    );

    let m = fetch_model(&registry, reference, &keks, &keys, Some(&pins(w)), 2)
        .await
        .unwrap();
    let files: BTreeMap<&str, &[u8]> = m
        .files
        .iter()
        .map(|f| (f.name.as_str(), &f.data[..]))
        .collect();
    assert_eq!(files.len(), 2, "only the pinned files are kept");
    assert_eq!(files["models/tiny/model.safetensors"], w);
    assert_eq!(
        files["models/tiny/config.json"], b"{\"v\":2}",
        "the upper layer wins"
    );
    assert!(m.files.iter().all(|f| f.sealed), "encrypted layers");
    assert_eq!(m.kek_id, "", "no KBS key was needed");

    // A whited-out file is gone, as it is in a container's rootfs.
    let mut gone = pins(w);
    gone.insert("models/tiny/old.bin".into(), Digest::of(b"stale"));
    assert!(matches!(
        fetch_model(&registry, reference, &keks, &keys, Some(&gone), 2).await,
        Err(ModelError::MissingFile(f)) if f == "models/tiny/old.bin"
    ));
    // The lower layer's config.json is not what the upper one says.
    let mut stale = pins(w);
    stale.insert("models/tiny/config.json".into(), Digest::of(b"{\"v\":1}"));
    assert!(matches!(
        fetch_model(&registry, reference, &keks, &keys, Some(&stale), 2).await,
        Err(ModelError::Policy { name, .. }) if name == "models/tiny/config.json"
    ));
    // Without the private key, and without a KBS packet, nothing opens.
    let e = fetch_model(&registry, reference, &keks, &[], Some(&pins(w)), 2)
        .await
        .unwrap_err();
    assert!(matches!(e, ModelError::Layer { .. }), "{e}");
    assert!(e.to_string().contains("no key opens it"), "{e}");
    // An image needs pins: they say which of its files are the model.
    let e = fetch_model(&registry, reference, &keks, &keys, None, 2)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pin the digests"), "{e}");
}

/// Replaces the largest layer of `layout:tag` by the same ciphertext with one bit flipped, under
/// its new digest (what a registry or host that substitutes blobs can do); the ocicrypt
/// annotations, with the original HMAC, are kept.
fn tamper_largest_layer(layout: &std::path::Path, tag: &str) {
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes).to_string();
        std::fs::write(blob(&d), bytes).unwrap();
        d
    };
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(entry["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer = manifest["layers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap();
    assert!(layer["mediaType"].as_str().unwrap().ends_with("+encrypted"));
    let mut bytes = std::fs::read(blob(layer["digest"].as_str().unwrap())).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    layer["digest"] = put(&bytes).into();
    let m = serde_json::to_vec(&manifest).unwrap();
    entry["digest"] = put(&m).into();
    entry["size"] = m.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substituted_ciphertext_fails_its_hmac_and_releases_nothing() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let img = encrypted_model_image("honest", |reg, honest, dir| {
        // Copy the encrypted image back (still encrypted), tamper, push it under another name.
        let copy = dir.join("copy");
        ward_tests::registry::run(std::process::Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{honest}"),
            &format!("oci:{}:v1", copy.display()),
        ]));
        tamper_largest_layer(&copy, "v1");
        reg.push(&copy, "v1", "models/tampered")
    })
    .await;
    let (reference, w) = (img.reference.as_str(), img.weights.as_slice());
    let registry = img.reg.client();
    let keys = PrivateKey::all_from_pem(&img.key_pem).unwrap();
    let keks = KbsClientResources(
        KbsClient::new(KbsConfig::new(kbs.url()), Arc::new(SampleAttester)).unwrap(),
    );
    let e = fetch_model(&registry, reference, &keks, &keys, Some(&pins(w)), 2)
        .await
        .unwrap_err();
    assert!(matches!(e, ModelError::Layer { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("hmac"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardd_loads_a_model_image_encrypted_for_the_kbs_key_provider() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let kek = [0x5au8; 32];
    let kid = "kbs:///default/model-kek/image";
    kbs.put("default/model-kek/image", &kek, Policy::Allow);
    let kbs_url = kbs.url();
    let mut w = tokio::task::spawn_blocking(move || {
        let reg = TestRegistry::start();
        let (img, w) = model_image();
        img.encrypt_for_key_provider(kid, &kek);
        let reference = reg.push(&img.layout, "v1", "models/provider");
        let host = reg.host();
        let digests: String = pins(&w)
            .iter()
            .map(|(n, d)| format!("{n:?} = \"{d}\"\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let models = format!(
            "[[model]]\nname = \"from-image\"\nsource = \"{reference}\"\nkek = \"{kid}\"\n[model.digests]\n{digests}\n"
        );
        let config = config_text(dir.path(), &["all"])
            .replace("[images]\n", &format!("[images]\ninsecure_registries = [{host:?}]\n"))
            .replace("[[listener]]", &format!("{models}\n[[listener]]"))
            + &format!("\n[kbs]\nurl = \"{kbs_url}\"\n");
        (Wardd::start_with(dir, &config, "ward.tee=sample", &[]), reg, img)
    })
    .await
    .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let audit = loop {
        let audit = std::fs::read_to_string(&w.0.audit).unwrap_or_default();
        if audit.contains("\"event\":\"model.load") {
            break audit;
        }
        assert!(
            std::time::Instant::now() < until,
            "the model did not load: {audit}\n{}",
            w.0.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        audit.contains(r#""event":"model.load","subject":"from-image""#),
        "{audit}\n{}",
        w.0.stderr()
    );
    assert!(audit.contains(kid), "the KEK id is audited: {audit}");
    assert!(audit.contains("models/tiny/model.safetensors"), "{audit}");
    // Nothing of the model was written under wardd's directory (its image store included).
    let needle = &weights(3_000_000, 1)[1000..1064];
    for entry in walk(w.0.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|x| x == needle),
            "model plaintext in {}",
            entry.display()
        );
    }
    w.0.signal(nix::sys::signal::Signal::SIGTERM);
    w.0.wait(std::time::Duration::from_secs(10));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}
