//! OCI artifacts that are not images (the packaging of sealed models) against a real registry:
//! pushed from an OCI layout by ward's own client, resolved with their digests checked, and
//! streamed back byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use sha2::{Digest as _, Sha256};
use ward_image::digest::Digest;
use ward_image::registry::Registry;
use ward_tests::registry::{TestRegistry, image_tools};

fn put(layout: &Path, bytes: &[u8]) -> String {
    let d = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_push_and_resolve_with_their_own_media_types() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let reg = tokio::task::spawn_blocking(TestRegistry::start)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("model");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let w = put(&layout, &weights);
    let c = put(&layout, b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.ward.model.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": c, "size": 2},
        "layers": [{"mediaType": "application/vnd.ward.model.file.v1.sealed", "digest": w,
                    "size": weights.len(),
                    "annotations": {"org.opencontainers.image.title": "model.safetensors"}}],
        "annotations": {"dev.ward.model.kek": "kbs:///default/model-kek/1"},
    })
    .to_string();
    let m = put(&layout, manifest.as_bytes());
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "v1"}}]})
        .to_string(),
    )
    .unwrap();

    let registry = reg.client();
    let reference = Registry::reference(&format!("{}/models/tiny:v1", reg.host())).unwrap();
    let pushed = registry
        .push_layout(&layout, "v1", &reference)
        .await
        .unwrap();
    assert_eq!(pushed.to_string(), m);
    // Pushing again skips the blobs the registry has.
    registry
        .push_layout(&layout, "v1", &reference)
        .await
        .unwrap();

    let a = registry.resolve_artifact(&reference).await.unwrap();
    assert_eq!(a.manifest_digest.to_string(), m);
    assert_eq!(
        a.artifact_type.as_deref(),
        Some("application/vnd.ward.model.v1")
    );
    assert_eq!(
        a.annotations["dev.ward.model.kek"],
        "kbs:///default/model-kek/1"
    );
    assert_eq!(
        a.layers[0].annotations["org.opencontainers.image.title"],
        "model.safetensors"
    );
    let mut back = Vec::new();
    registry
        .stream_blob(
            &a.reference,
            &a.layers[0],
            &Digest::parse(&w).unwrap(),
            &mut back,
            1 << 30,
        )
        .await
        .unwrap();
    assert_eq!(back, weights);

    // By digest, and a digest that does not match what the registry serves.
    let by_digest = Registry::reference(&format!("{}/models/tiny@{m}", reg.host())).unwrap();
    registry.resolve_artifact(&by_digest).await.unwrap();
    let wrong = Registry::reference(&format!("{}/models/tiny@{c}", reg.host())).unwrap();
    let e = registry
        .resolve_artifact(&wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest"), "{e}");
    // A missing tag in the layout is a clear error.
    let e = registry
        .push_layout(&layout, "v2", &reference)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no manifest tagged v2"), "{e}");
}
