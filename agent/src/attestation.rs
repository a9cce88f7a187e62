//! wardd's attestation side: the TEE it detected and the one KBS session every service shares.
//!
//! Built once at start-up from the config. A guest without a TEE (and without the sample TEE
//! enabled) still serves health; attestation requests then fail with the detection error.
//! Key release is recorded in the audit log by URI and size, never by value.

use std::sync::Arc;

use ward_attester::kbs::{KbsClient, KbsConfig, KbsError, ResourceUri, RetryPolicy};
use ward_attester::report_data::ReportData;
use ward_attester::tee::{self, Attester, AttesterError, DetectOptions, Tee};
use zeroize::Zeroizing;

use crate::audit::AuditLog;
use crate::config::Config;

/// Why an attestation request failed, mapped to a ttrpc code in one place (`services`).
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// No TEE was detected at start-up.
    #[error("no TEE: {0}")]
    NoTee(String),
    /// No `[kbs]` section (or `ward.kbs_url`) is configured.
    #[error("no KBS is configured ([kbs] url or ward.kbs_url)")]
    NoKbs,
    /// The request itself is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Evidence(#[from] AttesterError),
    #[error(transparent)]
    Kbs(#[from] KbsError),
    /// The audit log could not record a key release, so it was not released.
    #[error("audit log: {0}")]
    Audit(String),
}

/// Why start-up could not build the attestation side.
#[derive(Debug, thiserror::Error)]
pub enum AttestationSetupError {
    #[error("kbs.cacert {path}: {source}")]
    CaCert {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kbs(#[from] KbsError),
    /// A TEE named in the config is not here, or sample was asked for on real hardware.
    #[error(transparent)]
    Tee(AttesterError),
}

/// The detected TEE and the shared KBS client.
pub struct Attestation {
    attester: Result<Arc<dyn Attester>, String>,
    kbs: Option<KbsClient>,
    coco_token_reply: bool,
    audit: Option<Arc<AuditLog>>,
}

impl Attestation {
    /// Detects the TEE and prepares (but does not yet run) the KBS session.
    ///
    /// An explicitly named TEE that is absent, or the sample TEE on real hardware, is an error;
    /// finding no TEE at all under `auto` is not (wardd still serves health).
    pub fn from_config(
        config: &Config,
        audit: Option<Arc<AuditLog>>,
    ) -> Result<Attestation, AttestationSetupError> {
        let opts = DetectOptions {
            allow_sample: config.attestation.allow_sample,
            want: config.attestation.tee,
            ..Default::default()
        };
        let attester = match tee::detect(&opts) {
            Ok(a) => Ok(a),
            Err(e @ AttesterError::NoTee { .. }) => Err(e.to_string()),
            Err(e) => return Err(AttestationSetupError::Tee(e)),
        };
        let kbs = match (&config.kbs, &attester) {
            (Some(k), Ok(a)) => {
                let ca_pem = match &k.cacert {
                    Some(path) => Some(std::fs::read(path).map_err(|source| {
                        AttestationSetupError::CaCert {
                            path: path.display().to_string(),
                            source,
                        }
                    })?),
                    None => None,
                };
                let mut kc = KbsConfig::new(k.url.clone());
                kc.ca_pem = ca_pem;
                kc.key_kind = k.key;
                kc.retry = RetryPolicy {
                    attempts: k.attempts,
                    timeout: k.timeout,
                    ..RetryPolicy::default()
                };
                Some(KbsClient::new(kc, a.clone())?)
            }
            _ => None,
        };
        Ok(Attestation {
            attester,
            kbs,
            coco_token_reply: config.kbs.as_ref().is_some_and(|k| k.coco_token_reply),
            audit,
        })
    }

    fn attester(&self) -> Result<&Arc<dyn Attester>, AttestationError> {
        self.attester
            .as_ref()
            .map_err(|e| AttestationError::NoTee(e.clone()))
    }

    fn kbs(&self) -> Result<&KbsClient, AttestationError> {
        self.kbs.as_ref().ok_or(AttestationError::NoKbs)
    }

    /// The TEE in use.
    pub fn tee(&self) -> Result<Tee, AttestationError> {
        Ok(self.attester()?.tee())
    }

    /// Evidence for caller-chosen report data (at most 64 bytes).
    pub async fn evidence(&self, report_data: &[u8]) -> Result<Vec<u8>, AttestationError> {
        let rd = ReportData::new(report_data.to_vec())
            .map_err(|e| AttestationError::InvalidArgument(e.to_string()))?;
        let evidence = self.attester()?.evidence(&rd).await?;
        self.record(
            "attestation.evidence",
            self.tee()?.as_ref(),
            serde_json::json!({
                "report_data": hex::encode(report_data),
            }),
        )?;
        serde_json::to_vec(&evidence).map_err(|e| AttestationError::InvalidArgument(e.to_string()))
    }

    /// The KBS token (running the handshake when there is none), as GetToken returns it.
    pub async fn token(&self, token_type: &str) -> Result<Zeroizing<Vec<u8>>, AttestationError> {
        if token_type != "kbs" {
            return Err(AttestationError::InvalidArgument(format!(
                "token type `{token_type}` is not supported (only `kbs`)"
            )));
        }
        let kbs = self.kbs()?;
        let reply = if self.coco_token_reply {
            let (token, keypair) = kbs.token_with_keypair_pem().await?;
            Zeroizing::new(
                serde_json::to_vec(
                    &serde_json::json!({"token": token.as_str(), "tee_keypair": keypair.as_str()}),
                )
                .map_err(|e| AttestationError::InvalidArgument(e.to_string()))?,
            )
        } else {
            Zeroizing::new(kbs.token().await?.into_bytes())
        };
        self.record(
            "kbs.token",
            "kbs",
            serde_json::json!({
                "with_private_key": self.coco_token_reply,
            }),
        )?;
        Ok(reply)
    }

    /// A KBS resource, decrypted, in memory. Recorded in the audit log by URI before it is
    /// returned; a release that cannot be recorded is not made.
    pub async fn resource(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, AttestationError> {
        let uri = ResourceUri::parse(path)
            .map_err(|e| AttestationError::InvalidArgument(e.to_string()))?;
        let kbs = self.kbs()?;
        match kbs.get_resource(&uri).await {
            Ok(value) => {
                self.record(
                    "resource.release",
                    &uri.to_string(),
                    serde_json::json!({
                        "bytes": value.len(),
                    }),
                )?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.record(
                    "resource.refused",
                    &uri.to_string(),
                    serde_json::json!({
                        "error": e.to_string(),
                    }),
                );
                Err(e.into())
            }
        }
    }

    fn record(
        &self,
        event: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<(), AttestationError> {
        if let Some(audit) = &self.audit {
            audit
                .record(event, subject, Some(detail))
                .map_err(|e| AttestationError::Audit(e.to_string()))?;
        }
        Ok(())
    }
}
