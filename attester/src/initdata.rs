//! CoCo initdata: the TOML document the host hands a guest at launch (`version`, `algorithm`,
//! `[data]`), whose digest over the raw bytes the TEE measured (SNP HOSTDATA, TDX MRCONFIGID,
//! vTPM PCR 8). ward checks that binding before trusting any of it, and sends the body in the
//! KBS attestation so the verifier can check it too.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Largest initdata document accepted.
pub const MAX_INITDATA: usize = 1 << 20;

/// Why an initdata document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitDataError {
    #[error("initdata is {0} bytes; at most 1 MiB is accepted")]
    TooLarge(usize),
    #[error("initdata is not valid TOML of the expected shape: {0}")]
    Parse(String),
    #[error("initdata version `{0}` is not supported (expected 0.1.0)")]
    Version(String),
    #[error("initdata algorithm `{0}` is not supported (sha256, sha384 or sha512)")]
    Algorithm(String),
}

/// The digest algorithm an initdata document names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitDataAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// A parsed initdata document with its digest.
#[derive(Clone, Debug)]
pub struct InitData {
    body: String,
    algorithm: InitDataAlgorithm,
    digest: Vec<u8>,
    data: BTreeMap<String, String>,
}

impl InitData {
    /// Parses `body` and computes its digest over the raw bytes.
    pub fn parse(body: String) -> Result<InitData, InitDataError> {
        if body.len() > MAX_INITDATA {
            return Err(InitDataError::TooLarge(body.len()));
        }
        let raw: Raw =
            toml::from_str(&body).map_err(|e| InitDataError::Parse(e.message().to_string()))?;
        if raw.version != "0.1.0" {
            return Err(InitDataError::Version(raw.version));
        }
        let (algorithm, digest) = match raw.algorithm.as_str() {
            "sha256" => (
                InitDataAlgorithm::Sha256,
                Sha256::digest(body.as_bytes()).to_vec(),
            ),
            "sha384" => (
                InitDataAlgorithm::Sha384,
                Sha384::digest(body.as_bytes()).to_vec(),
            ),
            "sha512" => (
                InitDataAlgorithm::Sha512,
                Sha512::digest(body.as_bytes()).to_vec(),
            ),
            other => return Err(InitDataError::Algorithm(other.to_string())),
        };
        Ok(InitData {
            body,
            algorithm,
            digest,
            data: raw.data,
        })
    }

    /// The document exactly as given (sent to the KBS as `init-data.body`).
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The digest over the raw bytes, with the document's own algorithm.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    pub fn algorithm(&self) -> InitDataAlgorithm {
        self.algorithm
    }

    /// The `[data]` entries (e.g. `aa.toml`, `cdh.toml`, `policy.rego`).
    pub fn data(&self) -> &BTreeMap<String, String> {
        &self.data
    }
}

/// Fits a digest to a launch field of `len` bytes the way CoCo does: truncated when longer,
/// zero-padded when shorter (SNP HOSTDATA is 32 bytes, TDX MRCONFIGID 48).
pub fn fit_to_field(digest: &[u8], len: usize) -> Vec<u8> {
    let mut out = digest.iter().copied().take(len).collect::<Vec<u8>>();
    out.resize(len, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''\n[token_configs]\n'''\n";

    #[test]
    fn digest_is_over_the_raw_bytes() {
        let d = InitData::parse(DOC.to_string()).unwrap();
        assert_eq!(d.digest(), Sha384::digest(DOC.as_bytes()).as_slice());
        assert_eq!(d.algorithm(), InitDataAlgorithm::Sha384);
        assert!(d.data().contains_key("aa.toml"));
        assert_eq!(d.body(), DOC);
        // A semantically equal document with other bytes has another digest.
        let spaced = DOC.replace("version = ", "version  = ");
        assert_ne!(InitData::parse(spaced).unwrap().digest(), d.digest());
    }

    #[test]
    fn refuses_bad_documents() {
        assert!(matches!(
            InitData::parse("version = 1".into()),
            Err(InitDataError::Parse(_))
        ));
        assert!(matches!(
            InitData::parse("version = \"0.2.0\"\nalgorithm = \"sha256\"\n".into()),
            Err(InitDataError::Version(_))
        ));
        assert!(matches!(
            InitData::parse("version = \"0.1.0\"\nalgorithm = \"md5\"\n".into()),
            Err(InitDataError::Algorithm(_))
        ));
        assert!(matches!(
            InitData::parse("x".repeat(MAX_INITDATA + 1)),
            Err(InitDataError::TooLarge(_))
        ));
    }

    #[test]
    fn fitting_truncates_or_pads() {
        assert_eq!(fit_to_field(&[1; 48], 32), vec![1; 32]);
        let padded = fit_to_field(&[2; 32], 48);
        assert_eq!(&padded[..32], &[2; 32]);
        assert_eq!(&padded[32..], &[0; 16]);
    }
}
