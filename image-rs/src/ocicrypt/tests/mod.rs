//! End to end: layers skopeo encrypted (a stored fixture, and a live `skopeo copy` when skopeo
//! is installed) decrypt to the exact source blob; ward's own encryptor round-trips through
//! every kind of key wrap.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;
use crate::ocicrypt::keys::tests::{EC_PKCS8, EC_PUB, P384_PKCS8, RSA_PKCS1, RSA_PUB};
use crate::ocicrypt::provider::tests::keks;

mod jwe;

const SKOPEO: &str = include_str!("../testdata/skopeo-1.9.3-jwe.json");

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[derive(Debug)]
enum Failure {
    Unwrap(OcicryptError),
    Read(std::io::Error),
}

async fn decrypt_layer(
    media_type: &str,
    annotations: &BTreeMap<String, String>,
    blob: &[u8],
    keys: &[PrivateKey],
    kek: Option<&dyn KbsResources>,
) -> Result<Vec<u8>, Failure> {
    let mt = LayerMediaType::parse(media_type).unwrap();
    assert!(mt.is_encrypted(), "{media_type}");
    let ann = LayerAnnotations::parse(annotations).unwrap();
    let private = unwrap_private_options(&ann, keys, kek)
        .await
        .map_err(Failure::Unwrap)?;
    let mut out = Vec::new();
    LayerDecryptor::new(blob, &private, &ann.public)
        .read_to_end(&mut out)
        .map_err(Failure::Read)?;
    assert_eq!(private.digest(), sha256(&out));
    Ok(out)
}

#[tokio::test]
async fn stored_skopeo_layers_decrypt_to_the_source_blob() {
    let all: Value = serde_json::from_str(SKOPEO).unwrap();
    let source = STANDARD
        .decode(all["source_layer"]["blob"].as_str().unwrap())
        .unwrap();
    assert_eq!(sha256(&source), all["source_layer"]["digest"]);
    for (case, pem) in [
        ("rsa", RSA_PKCS1),
        ("ec", EC_PKCS8),
        ("two", EC_PKCS8),
        ("two", RSA_PKCS1),
        ("384", P384_PKCS8),
    ] {
        let c = &all["cases"][case];
        let ann: BTreeMap<String, String> =
            serde_json::from_value(c["annotations"].clone()).unwrap();
        let blob = STANDARD.decode(c["blob"].as_str().unwrap()).unwrap();
        assert_eq!(sha256(&blob), c["digest"]);
        let keys = [PrivateKey::from_pem(pem).unwrap()];
        let media_type = c["mediaType"].as_str().unwrap();
        let plain = decrypt_layer(media_type, &ann, &blob, &keys, None)
            .await
            .unwrap();
        assert_eq!(plain, source, "{case}");
        assert_eq!(
            LayerMediaType::parse(media_type).unwrap().decrypted(),
            all["source_layer"]["mediaType"]
        );
    }
}

#[tokio::test]
async fn own_layers_round_trip_through_every_wrap() {
    let plain: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let mut enc = LayerEncryptor::new(plain.as_slice());
    let mut blob = Vec::new();
    enc.read_to_end(&mut blob).unwrap();
    let keys = enc.finish().unwrap();
    let recipients = [
        PublicKey::from_pem(RSA_PUB).unwrap(),
        PublicKey::from_pem(EC_PUB).unwrap(),
        PrivateKey::from_pem(P384_PKCS8).unwrap().public_key(),
    ];
    let providers = [
        ProviderRecipient {
            kid: "kbs:///default/key/1".to_string(),
            kek: Zeroizing::new(vec![5; 32]),
            version: PacketVersion::V1,
        },
        ProviderRecipient {
            kid: "kbs:///default/key/2".to_string(),
            kek: Zeroizing::new(vec![6; 32]),
            version: PacketVersion::V2,
        },
    ];
    let ann = annotations_for(&keys, &recipients, &providers).unwrap();
    let mt = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
    for pem in [RSA_PKCS1, EC_PKCS8, P384_PKCS8] {
        let k = [PrivateKey::from_pem(pem).unwrap()];
        assert_eq!(
            decrypt_layer(mt, &ann, &blob, &k, None).await.unwrap(),
            plain
        );
    }
    let kek = keks();
    assert_eq!(
        decrypt_layer(mt, &ann, &blob, &[], Some(&kek))
            .await
            .unwrap(),
        plain
    );

    // A key that is no recipient, and no KEK source: a typed error listing the JWE recipients.
    let stranger = [PrivateKey::P256(p256::SecretKey::random(
        &mut rand::rngs::OsRng,
    ))];
    match decrypt_layer(mt, &ann, &blob, &stranger, None).await {
        Err(Failure::Unwrap(OcicryptError::Jwe(JweError::NoMatchingRecipient {
            carried, ..
        }))) => {
            assert_eq!(carried.len(), 3, "{carried:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decrypt_layer(mt, &ann, &blob, &[], None).await,
        Err(Failure::Unwrap(OcicryptError::NothingToTry(_)))
    ));
    // One flipped bit in the blob fails at EOF.
    let mut bad = blob.clone();
    bad[50_000] ^= 1;
    let k = [PrivateKey::from_pem(EC_PKCS8).unwrap()];
    match decrypt_layer(mt, &ann, &bad, &k, None).await {
        Err(Failure::Read(e)) => {
            assert_eq!(layer::layer_error(&e), Some(&LayerError::HmacMismatch));
        }
        other => panic!("{other:?}"),
    }
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Value {
    let digest = sha256(bytes);
    let hex = digest.trim_start_matches("sha256:");
    std::fs::write(dir.join("blobs/sha256").join(hex), bytes).unwrap();
    json!({ "digest": digest, "size": bytes.len() })
}

/// A one-layer OCI layout written by hand: returns the layer blob.
fn write_layout(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let data = b"hello from a layer skopeo encrypted\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "etc/hello.txt", &data[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let layer = gz.finish().unwrap();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [sha256(&tar)] }, "config": {}
    });
    let mut config_desc = write_blob(dir, &serde_json::to_vec(&config).unwrap());
    config_desc["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let mut layer_desc = write_blob(dir, &layer);
    layer_desc["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc, "layers": [layer_desc],
    });
    let mut manifest_desc = write_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    manifest_desc["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    manifest_desc["annotations"] = json!({ "org.opencontainers.image.ref.name": "v1" });
    let index = json!({ "schemaVersion": 2, "manifests": [manifest_desc] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    layer
}

fn read_layer(dir: &Path) -> (String, BTreeMap<String, String>, Vec<u8>) {
    let blob = |digest: &str| {
        std::fs::read(
            dir.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let layer = &manifest["layers"][0];
    let ann = serde_json::from_value(layer["annotations"].clone()).unwrap_or_default();
    (
        layer["mediaType"].as_str().unwrap().to_string(),
        ann,
        blob(layer["digest"].as_str().unwrap()),
    )
}

/// Live interop: `skopeo copy --encryption-key jwe:...` for an RSA key, a P-256 key and both,
/// decrypted here to the exact source blob. Skipped when skopeo is not installed.
#[tokio::test]
async fn live_skopeo_encrypted_layers_decrypt() {
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("skipping live_skopeo_encrypted_layers_decrypt: skopeo is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let source = write_layout(&src);
    let rsa_pub = tmp.path().join("rsa.pub.pem");
    let ec_pub = tmp.path().join("ec.pub.pem");
    std::fs::write(&rsa_pub, RSA_PUB).unwrap();
    std::fs::write(&ec_pub, EC_PUB).unwrap();
    let cases: [(&str, Vec<&Path>, &str); 3] = [
        ("rsa", vec![&rsa_pub], RSA_PKCS1),
        ("ec", vec![&ec_pub], EC_PKCS8),
        ("two", vec![&rsa_pub, &ec_pub], EC_PKCS8),
    ];
    for (name, pubs, pem) in cases {
        let dst = tmp.path().join(name);
        let mut cmd = Command::new("skopeo");
        cmd.arg("copy").arg("--quiet");
        for p in &pubs {
            cmd.arg("--encryption-key")
                .arg(format!("jwe:{}", p.display()));
        }
        cmd.arg(format!("oci:{}:v1", src.display()))
            .arg(format!("oci:{}:v1", dst.display()));
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (media_type, ann, blob) = read_layer(&dst);
        assert_ne!(blob, source);
        let keys = [PrivateKey::from_pem(pem).unwrap()];
        let plain = decrypt_layer(&media_type, &ann, &blob, &keys, None)
            .await
            .unwrap();
        assert_eq!(sha256(&plain), sha256(&source), "{name}");
    }
}
