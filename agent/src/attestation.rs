//! wardd's attestation side: the TEE it detected and the one KBS session every service shares.
//!
//! Built once at start-up from the config. A guest without a TEE (and without the sample TEE
//! enabled) still serves health; attestation requests then fail with the detection error.
//! Key release is recorded in the audit log by URI and size, never by value.

use std::sync::Arc;

use sha2::Digest as _;
use ward_attester::eventlog::{self, EventHash, EventLog, EventLogError};
use ward_attester::initdata::{InitData, InitDataError};
use ward_attester::kbs::{KbsClient, KbsConfig, KbsError, RetryPolicy};
use ward_attester::nvidia::{self, CollectOptions, GpuBackend, GpuError, NvmlBackend};
use ward_attester::report_data::ReportData;
use ward_attester::tee::{
    self, Attester, AttesterError, DetectOptions, DeviceAttester, InitDataBinding, NvidiaAttester,
    SampleDeviceAttester, Tee,
};
use ward_kbs_wire::ResourceUri;
use zeroize::Zeroizing;

use crate::audit::Audit;
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
    #[error(transparent)]
    EventLog(#[from] EventLogError),
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
    #[error("initdata {path}: {detail}")]
    InitData { path: String, detail: String },
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    /// GPUs are required but cannot be attested.
    #[error("GPUs required but not attestable: {0}")]
    Gpus(GpuError),
    /// A plain-HTTP KBS on a real TEE without `[kbs] insecure_http = true`.
    #[error(
        "the KBS {url} is plain HTTP: the network could substitute any resource (policies, keys, \
         credentials); use https:// with [kbs] cacert, or set [kbs] insecure_http = true in the \
         config file for development"
    )]
    InsecureKbs { url: String },
}

/// Whether the KBS at `url` may be used by a guest on `tee`: `https://` always; `http://` only
/// with the file's development switch, or on the sample TEE (which protects nothing).
pub fn kbs_transport_allowed(
    url: &str,
    insecure_http: bool,
    tee: Tee,
) -> Result<(), AttestationSetupError> {
    if url.starts_with("https://") || insecure_http || tee == Tee::Sample {
        Ok(())
    } else {
        Err(AttestationSetupError::InsecureKbs {
            url: url.to_string(),
        })
    }
}

/// What ExtendRuntimeMeasurement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extended {
    Ok,
    /// The platform has no runtime measurement register.
    NotSupported,
    /// Runtime measurement is off in the config.
    NotEnabled,
}

/// The detected TEE and the shared KBS client.
pub struct Attestation {
    attester: Result<Arc<dyn Attester>, String>,
    kbs: Option<KbsClient>,
    coco_token_reply: bool,
    audit: Audit,
    initdata: Option<InitData>,
    eventlog: Option<EventLog>,
    measurement_pcr: u64,
    devices: Vec<Arc<dyn DeviceAttester>>,
    /// The security-relevant settings in force, measured at start ([`Self::measure_settings`]).
    settings: serde_json::Value,
    /// The NVIDIA backend and the submods the token must name (`gpu0`.., `switch0`.., `ppcie0`),
    /// to set the ready state after the KBS said yes.
    gpus: Option<(Arc<dyn GpuBackend>, Vec<String>, std::time::Duration)>,
    gpus_ready: tokio::sync::OnceCell<()>,
}

/// Finds attestable NVIDIA GPUs per the policy.
async fn nvidia_attester(config: &Config) -> Result<Option<NvidiaAttester>, AttestationSetupError> {
    use crate::config::GpuPolicy;
    let policy = config.attestation.gpus;
    if policy == GpuPolicy::Off {
        return Ok(None);
    }
    let opts = CollectOptions {
        allow_devtools: config.attestation.allow_gpu_devtools,
        ..CollectOptions::default()
    };
    let found = match tokio::task::spawn_blocking(NvmlBackend::init).await {
        Ok(Ok(backend)) => NvidiaAttester::new(Arc::new(backend), opts).await,
        Ok(Err(e)) => Err(e),
        Err(e) => Err(GpuError::ReadyState(e.to_string())),
    };
    match (found, policy) {
        (Ok(a), _) => Ok(Some(a)),
        (Err(e), GpuPolicy::Required) => Err(AttestationSetupError::Gpus(e)),
        (Err(e), _) => {
            match e {
                GpuError::LibraryMissing(_) | GpuError::DriverNotLoaded | GpuError::NoGpus => {
                    tracing::info!(reason = %e, "no NVIDIA GPU to attest")
                }
                other => {
                    tracing::warn!(reason = %other, "NVIDIA GPUs present but not attested; they stay not ready")
                }
            }
            Ok(None)
        }
    }
}

impl Attestation {
    /// Detects the TEE and prepares (but does not yet run) the KBS session.
    ///
    /// An explicitly named TEE that is absent, or the sample TEE on real hardware, is an error;
    /// finding no TEE at all under `auto` is not (wardd still serves health).
    pub async fn from_config(
        config: &Config,
        audit: Audit,
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
        let initdata = match &config.attestation.initdata {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some(InitData::parse(text).map_err(|e: InitDataError| {
                    AttestationSetupError::InitData {
                        path: path.display().to_string(),
                        detail: e.to_string(),
                    }
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(AttestationSetupError::InitData {
                        path: path.display().to_string(),
                        detail: e.to_string(),
                    });
                }
            },
            None => None,
        };
        let eventlog = match &config.attestation.eventlog {
            Some(path) if attester.is_ok() => Some(EventLog::open(path)?),
            _ => None,
        };
        let mut devices: Vec<Arc<dyn DeviceAttester>> = Vec::new();
        let mut gpus = None;
        if attester.is_ok() {
            if let Some(n) = nvidia_attester(config).await? {
                gpus = Some((
                    n.backend().clone(),
                    n.expected_submods().to_vec(),
                    n.call_timeout(),
                ));
                devices.push(Arc::new(n));
            }
            if config.attestation.sample_device {
                devices.push(Arc::new(SampleDeviceAttester));
            }
        }
        // Read once: the KBS client trusts it, and the settings measurement records its digest.
        let ca_pem = match config.kbs.as_ref().and_then(|k| k.cacert.as_ref()) {
            Some(path) => {
                Some(
                    std::fs::read(path).map_err(|source| AttestationSetupError::CaCert {
                        path: path.display().to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let kbs = match (&config.kbs, &attester) {
            (Some(k), Ok(a)) => {
                kbs_transport_allowed(&k.url, k.insecure_http, a.tee())?;
                if k.url.starts_with("http://") {
                    tracing::warn!(url = %k.url, "plain-HTTP KBS: development only");
                }
                let mut kc = KbsConfig::new(k.url.clone());
                kc.ca_pem = ca_pem.clone();
                kc.key_kind = k.key;
                kc.init_data = initdata.as_ref().map(|d| d.body().to_string());
                kc.retry = RetryPolicy {
                    attempts: k.attempts,
                    timeout: k.timeout,
                    ..RetryPolicy::default()
                };
                let client = KbsClient::new(kc, a.clone())?
                    .with_devices(devices.clone())
                    .with_handshake_timer(Arc::new(|took, ok| {
                        crate::metrics::metrics().kbs_handshake(took, ok);
                    }));
                Some(match audit.log() {
                    Some(log) => {
                        let log = log.clone();
                        let url = k.url.clone();
                        client.with_observer(Arc::new(move |claims: &serde_json::Value| {
                            let submods: Vec<String> = claims["submods"]
                                .as_object()
                                .map(|m| m.keys().cloned().collect())
                                .unwrap_or_default();
                            let status = claims["submods"]["cpu0"]["ear.status"].clone();
                            let detail = serde_json::json!({"submods": submods, "cpu0": status});
                            if let Err(e) = log.record("kbs.attest", &url, Some(detail)) {
                                tracing::error!(error = %e, "cannot audit the attestation");
                            }
                        }))
                    }
                    None => client,
                })
            }
            _ => None,
        };
        let settings = serde_json::json!({
            "tee": attester.as_ref().map(|a| a.tee().to_string()).ok(),
            "allow_sample": config.attestation.allow_sample,
            "kbs_url": config.kbs.as_ref().map(|k| k.url.clone()),
            "kbs_cacert_sha256": ca_pem.as_ref().map(|pem| hex::encode(sha2::Sha256::digest(pem))),
            "kbs_insecure_http": config.kbs.as_ref().is_some_and(|k| k.insecure_http),
            "coco_token_reply": config.kbs.as_ref().is_some_and(|k| k.coco_token_reply),
            "audit_log": config.audit_log.is_some(),
            "secure_mount_file_keys": config.secure_mount_file_keys,
        });
        Ok(Attestation {
            attester,
            kbs,
            settings,
            coco_token_reply: config.kbs.as_ref().is_some_and(|k| k.coco_token_reply),
            audit,
            initdata,
            eventlog,
            measurement_pcr: config.attestation.measurement_pcr,
            devices,
            gpus,
            gpus_ready: tokio::sync::OnceCell::new(),
        })
    }

    /// Whether there are GPUs to attest (and so to set ready after the KBS said yes).
    pub fn has_gpus(&self) -> bool {
        self.gpus.is_some()
    }

    /// The device attesters' names (GetAdditionalTees).
    pub fn additional_tees(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.tee().to_string()).collect()
    }

    /// GetAdditionalEvidence: `{"<tee>": evidence}` for caller-chosen report data (at most 64
    /// bytes), handed to each device as given, as CoCo's attestation-agent does (GPUs use its
    /// first 32 bytes, zero-padded, as their nonce), or empty bytes without devices.
    pub async fn additional_evidence(
        &self,
        report_data: &[u8],
    ) -> Result<Vec<u8>, AttestationError> {
        if self.devices.is_empty() {
            return Ok(Vec::new());
        }
        // Checked for size only: devices get the bytes as the caller gave them.
        ReportData::new(report_data.to_vec())
            .map_err(|e| AttestationError::InvalidArgument(e.to_string()))?;
        let mut map = serde_json::Map::new();
        for d in &self.devices {
            map.insert(d.tee().to_string(), d.evidence(report_data).await?);
        }
        serde_json::to_vec(&map).map_err(|e| AttestationError::InvalidArgument(e.to_string()))
    }

    /// After a successful KBS call: if the GPUs are not ready yet (the boot-time attempt
    /// failed), try again now that the KBS answers.
    async fn retry_gpus_ready(&self) {
        if self.gpus.is_some()
            && self.gpus_ready.get().is_none()
            && let Err(e) = self.make_gpus_ready().await
        {
            tracing::error!(error = %e, "GPUs left not ready");
        }
    }

    /// Sets the GPUs-ready state once, after the KBS accepted the composite evidence and only
    /// if its token appraised every GPU. Runs the handshake if there is no token yet.
    pub async fn make_gpus_ready(&self) -> Result<(), AttestationError> {
        let Some((backend, expected, timeout)) = &self.gpus else {
            return Ok(());
        };
        self.gpus_ready
            .get_or_try_init(|| async {
                let claims = self.kbs()?.token_claims().await?;
                let submods: Vec<String> = claims["submods"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let result =
                    nvidia::set_ready_after_attestation(backend, expected, &submods, *timeout)
                        .await;
                self.record(
                    "gpu.ready",
                    "nvidia",
                    serde_json::json!({
                        "expected": expected,
                        "appraised": submods,
                        "ready": result.is_ok(),
                        "error": result.as_ref().err().map(ToString::to_string),
                    }),
                )?;
                result.map_err(|e| {
                    AttestationError::Evidence(AttesterError::Malformed {
                        tee: Tee::Nvidia,
                        detail: e.to_string(),
                    })
                })
            })
            .await
            .map(|_| ())
    }

    /// Checks the boot initdata against the TEE's launch measurement (or extends it into a
    /// register). A mismatch means the host handed over other initdata than it launched the
    /// guest with: the caller must not go on.
    pub async fn bind_boot_initdata(&self) -> Result<Option<InitDataBinding>, AttestationError> {
        let Some(initdata) = &self.initdata else {
            return Ok(None);
        };
        let binding = self.bind_init_data(initdata.digest()).await?;
        Ok(Some(binding))
    }

    /// BindInitData: checks (or extends) an initdata digest.
    pub async fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttestationError> {
        if digest.is_empty() || digest.len() > 64 {
            return Err(AttestationError::InvalidArgument(format!(
                "an initdata digest of {} bytes is not a SHA-2 digest",
                digest.len()
            )));
        }
        let binding = self.attester()?.bind_init_data(digest).await?;
        self.record(
            "initdata.bind",
            &hex::encode(digest),
            serde_json::json!({
                "binding": format!("{binding:?}"),
            }),
        )?;
        Ok(binding)
    }

    /// ExtendRuntimeMeasurement: records `domain operation content` in the event log and extends
    /// the platform's runtime register with the event's digest.
    pub async fn extend_runtime_measurement(
        &self,
        domain: &str,
        operation: &str,
        content: &str,
        register: Option<u64>,
    ) -> Result<Extended, AttestationError> {
        let Some(log) = &self.eventlog else {
            return Ok(Extended::NotEnabled);
        };
        let attester = self.attester()?;
        let pcr = register.unwrap_or(self.measurement_pcr);
        let (hash, index) = match attester.tee() {
            Tee::Tdx | Tee::Sample => (EventHash::Sha384, eventlog::pcr_to_ccmr(pcr)),
            Tee::AzSnpVtpm | Tee::AzTdxVtpm => (
                EventHash::Sha256,
                u32::try_from(pcr)
                    .map_err(|_| AttestationError::InvalidArgument(format!("PCR {pcr}")))?,
            ),
            _ => return Ok(Extended::NotSupported),
        };
        let event = eventlog::build_event(hash, index, domain, operation, content)?;
        match attester
            .extend_runtime_measurement(&event.digest, pcr)
            .await
        {
            Ok(()) => {}
            Err(AttesterError::NotSupported { .. }) => return Ok(Extended::NotSupported),
            Err(e) => return Err(e.into()),
        }
        log.append(&event)?;
        self.record(
            "runtime.extend",
            &event.text,
            serde_json::json!({
                "register": event.register,
                "digest": hex::encode(&event.digest),
            }),
        )?;
        Ok(Extended::Ok)
    }

    /// Extends the runtime measurement with the security-relevant settings in force (the KBS URL
    /// and CA, the development switches, whether the audit log is on), so that a verifier sees
    /// what the kernel command line (not always measured) may have overridden. Run at start,
    /// before the first attestation.
    pub async fn measure_settings(&self) -> Result<Extended, AttestationError> {
        let content = self.settings.to_string();
        self.extend_runtime_measurement("github.com/ward", "Settings", &content, None)
            .await
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
            /// CoCo's reply, members in its order (`token` first), serialized straight from the
            /// zeroizing strings rather than through a `serde_json::Value` copy.
            #[derive(serde::Serialize)]
            struct CocoToken<'a> {
                token: &'a str,
                tee_keypair: &'a str,
            }
            Zeroizing::new(
                serde_json::to_vec(&CocoToken {
                    token: token.as_str(),
                    tee_keypair: keypair.as_str(),
                })
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
        self.retry_gpus_ready().await;
        Ok(reply)
    }

    /// A KBS resource, decrypted, in memory. Recorded in the audit log by URI before it is
    /// returned; a release that cannot be recorded is not made.
    pub async fn resource(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, AttestationError> {
        let uri = ResourceUri::parse(path)
            .map_err(|e| AttestationError::InvalidArgument(e.to_string()))?;
        let kbs = self.kbs()?;
        let got = kbs.get_resource(&uri).await;
        crate::metrics::metrics().kbs_resource(got.is_ok());
        match got {
            Ok(value) => {
                self.record(
                    "resource.release",
                    &uri.to_string(),
                    serde_json::json!({
                        "bytes": value.len(),
                    }),
                )?;
                self.retry_gpus_ready().await;
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

    /// Records a release (or refusal) in the audit log.
    fn record(
        &self,
        event: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<(), AttestationError> {
        self.audit
            .record(event, subject, detail)
            .map_err(|e| AttestationError::Audit(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over plain HTTP the network can swap any KBS resource: refused on a real TEE unless the
    /// file's development switch says otherwise; the sample TEE protects nothing anyway.
    #[test]
    fn a_plain_http_kbs_needs_the_development_switch() {
        let http = "http://kbs.example:8080";
        for tee in [Tee::Snp, Tee::Tdx, Tee::AzSnpVtpm, Tee::AzTdxVtpm] {
            let e = kbs_transport_allowed(http, false, tee).unwrap_err();
            assert!(e.to_string().contains("insecure_http"), "{e}");
            assert!(kbs_transport_allowed(http, true, tee).is_ok());
            assert!(kbs_transport_allowed("https://kbs.example", false, tee).is_ok());
        }
        assert!(kbs_transport_allowed(http, false, Tee::Sample).is_ok());
    }
}
