use rand::rngs::OsRng;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ocicrypt::annotations::{LayerAnnotations, PrivateOptions};
use crate::ocicrypt::jwe::*;
use crate::ocicrypt::keys::tests::{
    EC_PKCS8, EC_SEC1_WITH_PARAMS, P384_PKCS8, P521_PKCS8, RSA_PKCS1, RSA_PKCS8,
};
use crate::ocicrypt::keys::{PrivateKey, PublicKey};

const SKOPEO: &str = include_str!("../testdata/skopeo-1.9.3-jwe.json");

fn skopeo_case(name: &str) -> (LayerAnnotations, Value) {
    let all: Value = serde_json::from_str(SKOPEO).unwrap();
    let case = all["cases"][name].clone();
    let ann = case["annotations"].as_object().unwrap();
    let pairs = ann
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()));
    (LayerAnnotations::parse(pairs).unwrap(), case)
}

fn key(pem: &str) -> PrivateKey {
    PrivateKey::from_pem(pem).unwrap()
}

#[test]
fn round_trip_every_algorithm() {
    let keys = [
        key(RSA_PKCS1),
        key(EC_SEC1_WITH_PARAMS),
        key(P384_PKCS8),
        key(P521_PKCS8),
    ];
    for k in &keys {
        let jwe = encrypt(b"private options", &[k.public_key()]).unwrap();
        let plain = decrypt(&[jwe], std::slice::from_ref(k)).unwrap();
        assert_eq!(&plain[..], b"private options", "{}", k.describe());
    }
    let all: Vec<PublicKey> = keys.iter().map(PrivateKey::public_key).collect();
    let jwe = encrypt(b"po", &all).unwrap();
    for k in keys {
        assert_eq!(
            &decrypt(std::slice::from_ref(&jwe), &[k]).unwrap()[..],
            b"po"
        );
    }
}

/// What skopeo 1.9.3 wrote: flattened RSA-OAEP (SHA-1), flattened ECDH-ES+A256KW on P-256,
/// P-384 and P-521, and the general form with both RSA and P-256 recipients.
#[test]
fn opens_skopeo_jwes() {
    for (case, pem) in [
        ("rsa", RSA_PKCS8),
        ("ec", EC_PKCS8),
        ("two", RSA_PKCS1),
        ("two", EC_SEC1_WITH_PARAMS),
        ("384", P384_PKCS8),
        ("521", P521_PKCS8),
    ] {
        let (ann, _) = skopeo_case(case);
        let plain = decrypt(&ann.jwe, &[key(pem)]).unwrap();
        let opts = PrivateOptions::from_json(&plain).unwrap();
        assert!(opts.digest().starts_with("sha256:"), "{case}");
    }
}

#[test]
fn wrong_key_lists_what_the_layer_carries() {
    let (ann, _) = skopeo_case("two");
    let err = decrypt(&ann.jwe, &[key(P384_PKCS8)]).unwrap_err();
    assert_eq!(
        err,
        JweError::NoMatchingRecipient {
            carried: vec![
                "RSA-OAEP".to_string(),
                "ECDH-ES+A256KW on P-256".to_string()
            ],
            keys: vec!["EC P-384".to_string()],
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("RSA-OAEP") && msg.contains("EC P-384"),
        "{msg}"
    );
    // A P-256 key that is not the recipient's.
    let other = p256::SecretKey::random(&mut OsRng);
    let err = decrypt(&ann.jwe, &[PrivateKey::P256(other)]).unwrap_err();
    assert!(matches!(err, JweError::NoMatchingRecipient { .. }));
}

#[test]
fn tampered_content_is_an_authentication_error() {
    let k = key(EC_PKCS8);
    let jwe = encrypt(b"private options", &[k.public_key()]).unwrap();
    let mut doc: Value = serde_json::from_slice(&jwe).unwrap();
    let mut ct = b64("ct", doc["ciphertext"].as_str().unwrap()).unwrap();
    ct[0] ^= 1;
    doc["ciphertext"] = Value::String(b64u(&ct));
    let err = decrypt(&[serde_json::to_vec(&doc).unwrap()], &[k]).unwrap_err();
    assert_eq!(err, JweError::Authentication);
}

#[test]
fn truncated_and_unsupported() {
    let k = key(RSA_PKCS8);
    let jwe = encrypt(b"x", &[k.public_key()]).unwrap();
    let truncated = jwe[..jwe.len() / 2].to_vec();
    assert!(matches!(
        decrypt(&[truncated], std::slice::from_ref(&k)),
        Err(JweError::Malformed(_))
    ));
    let mut doc: Value = serde_json::from_slice(&jwe).unwrap();
    doc["protected"] = Value::String(b64u(br#"{"enc":"A128CBC-HS256"}"#));
    assert_eq!(
        decrypt(
            &[serde_json::to_vec(&doc).unwrap()],
            std::slice::from_ref(&k)
        ),
        Err(JweError::Unsupported {
            field: "enc",
            value: "A128CBC-HS256".to_string()
        })
    );
    let mut doc: Value = serde_json::from_slice(&jwe).unwrap();
    doc["recipients"][0]["header"]["alg"] = Value::String("RSA1_5".to_string());
    assert_eq!(
        decrypt(
            &[serde_json::to_vec(&doc).unwrap()],
            std::slice::from_ref(&k)
        ),
        Err(JweError::NoMatchingRecipient {
            carried: vec!["RSA1_5".to_string()],
            keys: vec!["RSA-2048".to_string()],
        })
    );
    let mut doc: Value = serde_json::from_slice(&jwe).unwrap();
    doc["iv"] = Value::String(b64u(&[0; 8]));
    assert!(matches!(
        decrypt(&[serde_json::to_vec(&doc).unwrap()], &[k]),
        Err(JweError::Malformed(_))
    ));
}

#[test]
fn concat_kdf_layout() {
    // RFC 7518 §4.6.2: counter, Z, AlgorithmID, PartyUInfo, PartyVInfo (each length-prefixed),
    // SuppPubInfo = keydatalen in bits. Interop itself is checked by `opens_skopeo_jwes`.
    let z = [7u8; 32];
    let k = concat_kdf(&z, "ECDH-ES+A256KW", b"", b"");
    let mut h = Sha256::new();
    h.update([0, 0, 0, 1]);
    h.update(z);
    h.update([0, 0, 0, 14]);
    h.update(b"ECDH-ES+A256KW");
    h.update([0u8; 8]);
    h.update([0, 0, 1, 0]);
    assert_eq!(&k[..], &h.finalize()[..]);
}
