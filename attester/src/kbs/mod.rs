//! The KBS protocol 0.4.0 (RCAR) client, as Trustee serves it (PROTOCOLS.md §1).
//!
//! One [`KbsClient`] per boot holds one session and token, shared by every caller: the first
//! request runs the handshake (auth, challenge, evidence bound to the nonce and a fresh TEE key,
//! attest), later requests reuse the token, and the client re-attests once only when the KBS says
//! the session or token is gone. Concurrent callers that find no valid token wait for a single
//! handshake rather than each running their own.
//!
//! This module never logs or stores a resource, the token, or the TEE private key: resources come
//! back in zeroizing buffers, errors name URIs and statuses only.

pub mod admin;
mod answer;
mod binding;
mod client;
mod jwe;
mod tee_key;
mod tls;
mod token;

pub use binding::{BindingHash, device_report_data, primary_report_data};
pub use client::{AttestObserver, HandshakeTimer, KbsClient, KbsConfig, RetryPolicy};
pub use jwe::{JweError, MAX_JWE_BYTES, decrypt as decrypt_jwe};
pub use tee_key::{KeyKind, TeeKey};
pub use token::{Token, TokenError};

use crate::tee::AttesterError;

/// The protocol version ward speaks; Trustee accepts exactly this.
pub const PROTOCOL_VERSION: &str = "0.4.0";

/// Why a KBS call failed. Variants that say "final" are not retried and not re-attested.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The KBS URL or CA certificate in the configuration is unusable.
    #[error("KBS configuration: {0}")]
    Config(String),
    /// No answer after every retry (connection refused, reset, DNS, TLS).
    #[error("KBS {url} unreachable after {attempts} attempts: {detail}")]
    Unreachable {
        url: String,
        attempts: u32,
        detail: String,
    },
    /// The KBS's TLS certificate is not trusted by the configured CA (final: retrying cannot
    /// change a certificate, and "unreachable" would send an operator looking at the network).
    #[error("KBS {url}: its TLS certificate is refused (not retried): {detail}")]
    Certificate { url: String, detail: String },
    /// A call took longer than its timeout on every attempt.
    #[error("KBS {url} did not answer within {timeout:?} ({attempts} attempts)")]
    Timeout {
        url: String,
        timeout: std::time::Duration,
        attempts: u32,
    },
    /// The policy denied the release (final).
    #[error("KBS policy denied {what}: {detail}")]
    PolicyDenied { what: String, detail: String },
    /// The resource does not exist or its plugin failed (final).
    #[error("KBS could not provide {uri} (missing resource or plugin error): {detail}")]
    ResourceUnavailable { uri: String, detail: String },
    /// The KBS refused the attestation (evidence did not verify).
    #[error("KBS rejected the attestation ({kind}): {detail}")]
    AttestationRejected { kind: String, detail: String },
    /// The session or token is gone and re-attesting once did not help.
    #[error("KBS session or token rejected after re-attesting ({kind}): {detail}")]
    Unauthorized { kind: String, detail: String },
    /// Any other error status.
    #[error("KBS answered {status} to {what} ({kind}): {detail}")]
    Status {
        what: String,
        status: u16,
        kind: String,
        detail: String,
    },
    /// The KBS answered something that is not the protocol (bad JSON, missing cookie, ...).
    #[error("KBS protocol violation in {what}: {detail}")]
    Protocol { what: String, detail: String },
    /// The resource's JWE could not be opened.
    #[error("resource {uri}: {source}")]
    Jwe {
        uri: String,
        #[source]
        source: JweError,
    },
    /// The TEE could not produce evidence.
    #[error("evidence: {0}")]
    Evidence(#[from] AttesterError),
    /// The TEE key could not be made, or the binding not computed.
    #[error("{0}")]
    Crypto(String),
}

impl KbsError {
    /// Whether the KBS said the session or token is gone (worth one re-attestation).
    fn is_session_gone(&self) -> bool {
        matches!(self, KbsError::Unauthorized { .. })
    }
}
