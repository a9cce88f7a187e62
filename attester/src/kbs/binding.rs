//! How evidence is bound to a KBS session (PROTOCOLS.md §1.3): the report data is
//! `H(JCS({"additional-evidence": A, "nonce": N, "tee-pubkey": JWK}))`, where `A` is the JSON
//! string of the device evidence map (or `""`), `JCS` is RFC 8785 canonical JSON and `H` the
//! hash the KBS selected (SHA-384 when it names none). Device attesters get
//! `H(JCS({"nonce": N, "tee-pubkey": JWK}))`.

use kbs_types::TeePubKey;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The hash algorithm of the binding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindingHash {
    Sha256,
    #[default]
    Sha384,
    Sha512,
}

impl BindingHash {
    /// Parses the KBS's `selected-hash-algorithm` (absent means SHA-384).
    pub fn from_kbs(name: Option<&str>) -> Option<BindingHash> {
        match name.map(str::to_ascii_lowercase).as_deref() {
            None => Some(BindingHash::Sha384),
            Some("sha256") => Some(BindingHash::Sha256),
            Some("sha384") => Some(BindingHash::Sha384),
            Some("sha512") => Some(BindingHash::Sha512),
            Some(_) => None,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            BindingHash::Sha256 => Sha256::digest(data).to_vec(),
            BindingHash::Sha384 => Sha384::digest(data).to_vec(),
            BindingHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// Why the binding could not be computed.
#[derive(Debug, thiserror::Error)]
#[error("cannot canonicalise the binding: {0}")]
pub struct BindingError(String);

#[derive(serde::Serialize)]
struct Primary<'a> {
    #[serde(rename = "additional-evidence")]
    additional_evidence: &'a str,
    nonce: &'a str,
    #[serde(rename = "tee-pubkey")]
    tee_pubkey: &'a TeePubKey,
}

#[derive(serde::Serialize)]
struct Device<'a> {
    nonce: &'a str,
    #[serde(rename = "tee-pubkey")]
    tee_pubkey: &'a TeePubKey,
}

/// Report data for the primary (CPU) evidence.
pub fn primary_report_data(
    hash: BindingHash,
    nonce: &str,
    key: &TeePubKey,
    additional_evidence: &str,
) -> Result<Vec<u8>, BindingError> {
    let canonical = serde_jcs::to_vec(&Primary {
        additional_evidence,
        nonce,
        tee_pubkey: key,
    })
    .map_err(|e| BindingError(e.to_string()))?;
    Ok(hash.digest(&canonical))
}

/// Report data handed to device attesters (GPUs).
pub fn device_report_data(
    hash: BindingHash,
    nonce: &str,
    key: &TeePubKey,
) -> Result<Vec<u8>, BindingError> {
    let canonical = serde_jcs::to_vec(&Device {
        nonce,
        tee_pubkey: key,
    })
    .map_err(|e| BindingError(e.to_string()))?;
    Ok(hash.digest(&canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TeePubKey {
        TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        }
    }

    #[test]
    fn canonical_form_is_sorted_and_compact() {
        // Written out by hand from RFC 8785: keys sorted by UTF-16 code units, no whitespace.
        let text = r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#;
        let got = primary_report_data(BindingHash::Sha384, "bm9uY2U=", &key(), "").unwrap();
        assert_eq!(got, Sha384::digest(text.as_bytes()).to_vec());
        assert_eq!(got.len(), 48);

        let dev = r#"{"nonce":"n","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#;
        let got = device_report_data(BindingHash::Sha256, "n", &key()).unwrap();
        assert_eq!(got, Sha256::digest(dev.as_bytes()).to_vec());
    }

    #[test]
    fn additional_evidence_is_hashed_as_a_string() {
        let a = r#"{"nvidia":{"device_evidence_list":[]}}"#;
        let text = format!(
            r#"{{"additional-evidence":{},"nonce":"n","tee-pubkey":{{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}}}"#,
            serde_json::to_string(a).unwrap()
        );
        let got = primary_report_data(BindingHash::Sha512, "n", &key(), a).unwrap();
        assert_eq!(got, Sha512::digest(text.as_bytes()).to_vec());
    }

    #[test]
    fn kbs_hash_names() {
        assert_eq!(BindingHash::from_kbs(None), Some(BindingHash::Sha384));
        assert_eq!(
            BindingHash::from_kbs(Some("SHA256")),
            Some(BindingHash::Sha256)
        );
        assert_eq!(BindingHash::from_kbs(Some("md5")), None);
    }
}
