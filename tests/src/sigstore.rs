//! Cosign-format image signatures for the signature-policy tests. Debian's skopeo is built with
//! sigstore signing disabled and cosign is not packaged, so the tests sign the way cosign does
//! (`cosign sign --key`, attached signatures): a simple-signing payload naming the repository
//! and the manifest digest, an ECDSA P-256 signature over it (DER, base64) in the
//! `dev.cosignproject.cosign/signature` annotation of the payload layer, all in an OCI manifest
//! tagged `sha256-<hex>.sig` beside the image. The artifact is pushed by the real skopeo to the
//! real registry. (The verifier is also tested on a genuine cosign artifact in `ward-image`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use sha2::{Digest as _, Sha256};

use crate::registry::{TestRegistry, run};

/// A signing key and its public half on disk (PEM, as `cosign generate-key-pair` writes it).
pub struct SigstoreKey {
    pub signing: p256::ecdsa::SigningKey,
    pub public: PathBuf,
}

impl SigstoreKey {
    /// A new P-256 key whose public half is `dir/name.pub`.
    pub fn generate(dir: &Path, name: &str) -> SigstoreKey {
        let signing = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let public = dir.join(format!("{name}.pub"));
        std::fs::write(
            &public,
            signing
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        SigstoreKey { signing, public }
    }

    /// The base64 DER signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.signing.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der())
    }
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.trim_start_matches("sha256:")), bytes).unwrap();
    d
}

impl TestRegistry {
    /// Pushes `layout:tag` as `name:tag` and signs it with `key` the way cosign does, claiming
    /// `identity` (default: the repository, tagless, as cosign writes it). Returns the reference.
    pub fn push_signed(
        &self,
        layout: &Path,
        tag: &str,
        name: &str,
        key: &SigstoreKey,
        identity: Option<&str>,
    ) -> String {
        let reference = format!("{}/{name}:{tag}", self.host());
        let digest_file = self
            .dir
            .path()
            .join(format!("digest-{}", rand::random::<u64>()));
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{reference}")));
        let digest = std::fs::read_to_string(&digest_file)
            .unwrap()
            .trim()
            .to_string();
        let claimed = identity.map_or_else(|| format!("{}/{name}", self.host()), str::to_string);
        self.push_signature(name, &digest, &claimed, key);
        reference
    }

    /// Stores a cosign signature of manifest `digest` claiming `claimed`, in repository `name`.
    pub fn push_signature(&self, name: &str, digest: &str, claimed: &str, key: &SigstoreKey) {
        let payload = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{claimed}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("sig");
        std::fs::create_dir_all(&layout).unwrap();
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let payload_digest = put_blob(&layout, payload.as_bytes());
        let config = format!(
            r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{payload_digest}"]}},"config":{{}}}}"#
        );
        let config_digest = put_blob(&layout, config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "size": config.len(), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        "size": payload.len(), "digest": payload_digest,
                        "annotations": {"dev.cosignproject.cosign/signature": key.sign(payload.as_bytes())}}],
        })
        .to_string();
        let manifest_digest = put_blob(&layout, manifest.as_bytes());
        std::fs::write(
            layout.join("index.json"),
            serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "size": manifest.len(), "digest": manifest_digest,
                               "annotations": {"org.opencontainers.image.ref.name": "sig"}}],
            })
            .to_string(),
        )
        .unwrap();
        let tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
        run(Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--preserve-digests",
            ])
            .arg(format!("oci:{}:sig", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.host())));
    }
}
