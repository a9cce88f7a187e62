//! NVIDIA confidential GPUs (Hopper, Blackwell): the attestation report NVML returns and the
//! certificate chain that comes with it.
//!
//! - [`spdm`]: the report, an SPDM 1.1 GET_MEASUREMENTS request followed by its signed
//!   MEASUREMENTS response ([`parse_report`]), and its ECDSA P-384 signature
//!   ([`GpuReport::verify_signature`]);
//! - [`certs`]: the device certificate chain (PEM, leaf first) and the check that each
//!   certificate is signed by the next one ([`check_chain`]).
//!
//! This module reads untrusted bytes through bounds-checked readers: truncated or garbage input
//! is a [`ReportError`], never a panic. It checks signatures and says what it found; it does not
//! anchor the chain to NVIDIA's root certificate, compare measurements with NVIDIA's reference
//! values (RIMs) or decide whether a GPU is trustworthy: that is a verifier's job.

pub mod certs;
pub mod spdm;

#[cfg(test)]
mod tests;

pub use certs::{ChainLink, GpuCert, LinkStatus, check_chain, parse_cert_chain_pem};
pub use spdm::{
    GpuReport, MAX_REPORT_LEN, MeasurementBlock, NONCE_LEN, OpaqueData, OpaqueField, SIGNATURE_LEN,
    parse_report,
};

use crate::explain::Truncated;

/// Why a GPU report or certificate chain could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The input ends inside a structure, or a size it declares runs past its end.
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// A structure holds a value its format does not allow.
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// A certificate of the chain is not valid PEM/DER X.509.
    #[error("certificate {index} of the chain: {detail}")]
    Certificate { index: usize, detail: String },
}

/// Why a report signature (or a certificate's key) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The certificate is not DER X.509.
    #[error("the certificate is not DER X.509: {0}")]
    Certificate(String),
    /// The certificate's key is not an ECDSA P-384 key.
    #[error("the certificate's key is not an ECDSA P-384 key: {0}")]
    Key(String),
    /// The signature does not verify with that key.
    #[error("the signature does not verify with the certificate's key")]
    Mismatch,
}

pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> ReportError {
    ReportError::Invalid {
        what,
        detail: detail.into(),
    }
}
