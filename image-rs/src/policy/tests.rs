#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::sigstore::testkit::{keypair, payload, sign};
use super::*;
use crate::kbs::ResourceError;
use zeroize::Zeroizing;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Signatures by digest, and a count of the lookups made.
#[derive(Default)]
struct Sigs {
    by_digest: Mutex<BTreeMap<String, Vec<UntrustedSignature>>>,
    lookups: AtomicUsize,
    fail: bool,
}

impl Sigs {
    fn with(self, digest: &str, sig: UntrustedSignature) -> Sigs {
        self.by_digest
            .lock()
            .unwrap()
            .entry(digest.to_string())
            .or_default()
            .push(sig);
        self
    }
}

#[async_trait]
impl SignatureSource for Sigs {
    async fn sigstore_signatures(
        &self,
        _reference: &Reference,
        digest: &Digest,
    ) -> Result<Vec<UntrustedSignature>, String> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err("registry said 500".into());
        }
        Ok(self
            .by_digest
            .lock()
            .unwrap()
            .get(&digest.to_string())
            .cloned()
            .unwrap_or_default())
    }
}

struct Kbs(BTreeMap<String, String>, AtomicUsize);

#[async_trait]
impl KbsResources for Kbs {
    async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, ResourceError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0
            .get(&uri.to_string())
            .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
            .ok_or_else(|| ResourceError::new("no such resource"))
    }
}

fn r(s: &str) -> Reference {
    s.parse().unwrap()
}

fn d(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn policy_with_key(scope: &str, pem: &str) -> (Policy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cosign.pub"), pem).unwrap();
    let json = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {
            scope: [{"type": "sigstoreSigned", "keyPath": "cosign.pub"}],
            "docker.io": [{"type": "insecureAcceptAnything"}],
        }},
    });
    let p = Policy::from_json(json.to_string().as_bytes(), Some(dir.path())).unwrap();
    (p, dir)
}

#[tokio::test]
async fn accept_and_reject_need_no_signatures() {
    let sigs = Sigs::default();
    let ok = Policy::accept_anything()
        .check(&r("r.io/app:v1"), &[d(D1)], &sigs, None)
        .await
        .unwrap();
    assert_eq!(ok.to_string(), "insecureAcceptAnything (scope default)");
    let err = Policy::reject()
        .check(&r("r.io/app:v1"), &[d(D1)], &sigs, None)
        .await
        .unwrap_err();
    assert!(matches!(err, PolicyError::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("r.io/app:v1"), "{err}");
    assert_eq!(sigs.lookups.load(Ordering::SeqCst), 0);
    assert!(!Policy::reject().needs_signatures(&r("r.io/app:v1")));
}

#[tokio::test]
async fn the_most_specific_scope_wins() {
    let (sk, pem) = keypair(1);
    let (p, _dir) = policy_with_key("r.io/team", &pem);
    let sigs = Sigs::default().with(D1, sign(&sk, payload("r.io/team/app:v1", D1)));
    let ok = p
        .check(&r("r.io/team/app:v1"), &[d(D1)], &sigs, None)
        .await
        .unwrap();
    assert_eq!(ok.scope, "r.io/team");
    assert!(ok.by[0].starts_with("sigstoreSigned by ") && ok.by[0].ends_with("cosign.pub"));
    // Docker Hub is accepted without signatures; anything else is rejected by default.
    p.check(&r("busybox"), &[d(D1)], &sigs, None).await.unwrap();
    let e = p
        .check(&r("other.io/app:v1"), &[d(D1)], &sigs, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`reject`"), "{e}");
    assert!(p.needs_signatures(&r("r.io/team/app:v1")));
    assert!(!p.needs_signatures(&r("busybox")));
}

#[tokio::test]
async fn unsigned_wrongly_signed_and_misnamed_images_are_refused() {
    let (sk, pem) = keypair(1);
    let (other_sk, _) = keypair(2);
    let (p, _dir) = policy_with_key("r.io", &pem);
    let image = r("r.io/app:v1");

    let none = p
        .check(&image, &[d(D1)], &Sigs::default(), None)
        .await
        .unwrap_err();
    assert!(none.to_string().contains("none is stored"), "{none}");
    assert!(none.to_string().contains("sha256-1111"), "{none}");

    let wrong_key = Sigs::default().with(D1, sign(&other_sk, payload("r.io/app:v1", D1)));
    let e = p
        .check(&image, &[d(D1)], &wrong_key, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");

    // A valid signature of another image, replayed under this image's tag.
    let replayed = Sigs::default().with(D1, sign(&sk, payload("r.io/app:v1", D2)));
    let e = p
        .check(&image, &[d(D1)], &replayed, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not this image"), "{e}");

    // A valid signature for this digest under another name.
    let renamed = Sigs::default().with(D1, sign(&sk, payload("r.io/evil:v1", D1)));
    let e = p.check(&image, &[d(D1)], &renamed, None).await.unwrap_err();
    assert!(e.to_string().contains("r.io/evil:v1"), "{e}");

    // One good signature among bad ones is enough.
    let mixed = Sigs::default()
        .with(D1, sign(&other_sk, payload("r.io/app:v1", D1)))
        .with(D1, sign(&sk, payload("r.io/app:v1", D1)));
    p.check(&image, &[d(D1)], &mixed, None).await.unwrap();

    let failing = Sigs {
        fail: true,
        ..Sigs::default()
    };
    let e = p.check(&image, &[d(D1)], &failing, None).await.unwrap_err();
    assert!(matches!(e, PolicyError::Fetch { .. }), "{e}");
}

#[tokio::test]
async fn a_signature_of_the_index_covers_the_platform_manifest() {
    let (sk, pem) = keypair(1);
    let (p, _dir) = policy_with_key("r.io", &pem);
    // Pulled by digest: only the repository must match.
    let image = r(&format!("r.io/app@{D1}"));
    let sigs = Sigs::default().with(D1, sign(&sk, payload("r.io/app:v1", D1)));
    p.check(&image, &[d(D1), d(D2)], &sigs, None).await.unwrap();
    assert_eq!(sigs.lookups.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn kbs_keys_are_fetched_once_and_must_be_there() {
    let (sk, pem) = keypair(1);
    let uri = "kbs:///default/cosign-key/1";
    let json = serde_json::json!({
        "default": [{"type": "sigstoreSigned", "keyPath": uri}],
    });
    let p = Policy::from_json(json.to_string().as_bytes(), None).unwrap();
    let sigs = Sigs::default().with(D1, sign(&sk, payload("r.io/app:v1", D1)));
    let e = p
        .check(&r("r.io/app:v1"), &[d(D1)], &sigs, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no KBS"), "{e}");
    let kbs = Kbs([(uri.to_string(), pem)].into(), AtomicUsize::new(0));
    for _ in 0..3 {
        let ok = p
            .check(&r("r.io/app:v1"), &[d(D1)], &sigs, Some(&kbs))
            .await
            .unwrap();
        assert_eq!(ok.by, [format!("sigstoreSigned by {uri}")]);
    }
    assert_eq!(kbs.1.load(Ordering::SeqCst), 1);
    let empty = Kbs(BTreeMap::new(), AtomicUsize::new(0));
    let p = Policy::from_json(json.to_string().as_bytes(), None).unwrap();
    let e = p
        .check(&r("r.io/app:v1"), &[d(D1)], &sigs, Some(&empty))
        .await
        .unwrap_err();
    assert!(matches!(e, PolicyError::Key { .. }), "{e}");
}

#[test]
fn bad_policies_are_refused_with_the_reason() {
    let cases = [
        (r#"{}"#, "`default` is missing"),
        (r#"{"default": []}"#, "empty list"),
        (
            r#"{"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}"#,
            "GPG",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned"}]}"#,
            "names no key",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "fulcio": {}}]}"#,
            "keyless",
        ),
        (
            r#"{"default": [{"type": "maybe"}]}"#,
            "unknown requirement type",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "keyPath": "/nonexistent/k.pub"}]}"#,
            "/nonexistent/k.pub",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "keyData": "bm90IGEga2V5"}]}"#,
            "keyData",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "keyPath": "kbs:///only-two/parts"}]}"#,
            "kbs:///only-two/parts",
        ),
        (
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"r.io": {}}}}"#,
            "not a list",
        ),
        (r#"not json"#, "not JSON"),
    ];
    for (json, want) in cases {
        let e = Policy::from_json(json.as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{json}: {e}");
    }
}

#[tokio::test]
async fn key_data_and_the_builder_work_like_key_path() {
    use base64::Engine as _;
    let (sk, pem) = keypair(3);
    let json = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {"r.io/app": [{
            "type": "sigstoreSigned",
            "keyData": base64::engine::general_purpose::STANDARD.encode(&pem),
            "signedIdentity": {"type": "matchRepository"},
        }]}},
    });
    let p = Policy::from_json(json.to_string().as_bytes(), None).unwrap();
    let sigs = Sigs::default().with(D1, sign(&sk, payload("r.io/app:other-tag", D1)));
    p.check(&r("r.io/app:v1"), &[d(D1)], &sigs, None)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.pub"), &pem).unwrap();
    let mut built = Policy::reject();
    built
        .require_signature("r.io/app", "k.pub", Some(dir.path()))
        .unwrap();
    let sigs = Sigs::default().with(D1, sign(&sk, payload("r.io/app:v1", D1)));
    built
        .check(&r("r.io/app:v1"), &[d(D1)], &sigs, None)
        .await
        .unwrap();
    built
        .check(&r("r.io/else:v1"), &[d(D1)], &sigs, None)
        .await
        .unwrap_err();
}
