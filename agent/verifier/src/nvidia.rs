//! NVIDIA confidential GPUs (Hopper, Blackwell) and NVSwitches: the `nvidia` evidence wardd binds
//! into the CPU's report data (`{"nvidia": {"device_evidence_list": [...]}}`, CoCo's and
//! Trustee's shape), verified offline and failing closed.
//!
//! For every device: the SPDM GET_MEASUREMENTS request carries the expected nonce; each
//! certificate of its chain is signed by the next, valid at [`Options::at`], and the last one is
//! NVIDIA's Device Identity CA, pinned here (nvtrust's `verifier_device_root.pem`); the report's
//! ECDSA P-384 signature verifies with the chain's leaf; the leaf's FWID (TCG DICE extension)
//! equals the report's; no device appears twice. For every GPU: the driver and VBIOS versions
//! and the measurements against the reference values (`[gpu]`), and the number of GPUs.
//!
//! Not checked, and said so in [`VerifiedGpus::checked`]: revocation (NVIDIA publishes it only
//! by OCSP, an online service; ward never fetches), and NVIDIA's signed RIMs (the reference
//! values stand in for them: pin the measurements a known-good machine reported). The parsers
//! are the attester's (`ward_attester::nvidia::report`): one reader per format in the workspace.

use std::collections::BTreeSet;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use ward_attester::nvidia::report::{
    GpuCert, GpuReport, check_chain, parse_cert_chain_pem, parse_report,
};
use ward_attester::nvidia::{Arch, DeviceEvidence, NvidiaEvidence};
use x509_cert::Certificate;
use x509_cert::der::Decode as _;

use crate::reference::GpuReference;
use crate::values::ValueError;
use crate::{Log, Options};

/// SHA-256 of the DER of NVIDIA's Device Identity CA (self-signed, P-384, valid 2021-11-05 to
/// 9999-12-31): nvtrust's `guest_tools/gpu_verifiers/local_gpu_verifier/src/verifier/certs/
/// verifier_device_root.pem`, the root Trustee's nvidia attester test and the shared fixtures'
/// chains end with. One root for every architecture.
pub const NVIDIA_DEVICE_ROOT_SHA256: &str =
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";

/// The most devices accepted (an HGX board: 8 GPUs and 4 NVSwitches).
const MAX_DEVICES: usize = 64;

/// Why GPU evidence was refused. `device` is the index in `device_evidence_list`.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("the GPU evidence does not parse: {0}")]
    Parse(String),
    #[error("GPU device {device} ({arch}): {detail}")]
    Device {
        device: usize,
        arch: &'static str,
        detail: String,
    },
    #[error(
        "GPU device {device} ({arch}) signed the nonce {got}, not {want}: the report is not from this attestation"
    )]
    Nonce {
        device: usize,
        arch: &'static str,
        got: String,
        want: String,
    },
    #[error("GPU device {device} ({arch}): its certificate chain {detail}")]
    Chain {
        device: usize,
        arch: &'static str,
        detail: String,
    },
    #[error(
        "GPU device {device} ({arch}): the chain ends at {subject:?} (SHA-256 {fingerprint}), not NVIDIA's pinned Device Identity CA"
    )]
    Root {
        device: usize,
        arch: &'static str,
        subject: String,
        fingerprint: String,
    },
    #[error(
        "GPU device {device} ({arch}): the report's signature does not verify with its leaf certificate"
    )]
    Signature { device: usize, arch: &'static str },
    #[error(
        "GPU device {device} ({arch}): the report's FWID {report} is not its leaf certificate's {cert}"
    )]
    Fwid {
        device: usize,
        arch: &'static str,
        report: String,
        cert: String,
    },
    #[error("GPU devices {first} and {second} are the same device (one leaf certificate)")]
    Duplicate { first: usize, second: usize },
    #[error("the reference values expect GPUs ([gpu]) and the server offered no GPU evidence")]
    Missing,
    #[error(transparent)]
    Value(#[from] ValueError),
}

/// GPU evidence that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedGpus {
    /// The GPUs (not counting NVSwitches).
    pub gpus: usize,
    /// The NVSwitches.
    pub switches: usize,
    /// What was checked and passed, one line each.
    pub checked: Vec<String>,
    /// What `insecure` skipped, one line each.
    pub skipped: Vec<String>,
}

/// The nonce GPUs sign for a client's `nonce` (wardd's `/v1/attestation` derives it so, and
/// binds the GPU evidence into the CPU's report data).
pub fn gpu_nonce(nonce: &[u8]) -> [u8; 32] {
    Sha256::digest(nonce).into()
}

/// Verifies `evidence` (the JSON wardd binds, `{"nvidia": {...}}` or the bare
/// `{"device_evidence_list": [...]}`) for `nonce` against `reference`.
pub fn verify(
    evidence: &[u8],
    reference: &GpuReference,
    nonce: &[u8; 32],
    opts: &Options,
) -> Result<VerifiedGpus, GpuError> {
    let mut log = Log::new(opts);
    let v: serde_json::Value =
        serde_json::from_slice(evidence).map_err(|e| GpuError::Parse(e.to_string()))?;
    if let Some(map) = v.as_object()
        && let Some(other) = map.keys().find(|k| k.as_str() != "nvidia")
        && !map.contains_key("device_evidence_list")
    {
        return Err(GpuError::Parse(format!(
            "evidence of kind {other:?}, which this verifier does not know"
        )));
    }
    let list: NvidiaEvidence = serde_json::from_value(v.get("nvidia").unwrap_or(&v).clone())
        .map_err(|e| GpuError::Parse(e.to_string()))?;
    let devices = &list.device_evidence_list;
    if devices.len() > MAX_DEVICES {
        return Err(GpuError::Parse(format!(
            "{} devices; at most {MAX_DEVICES}",
            devices.len()
        )));
    }
    let mut leaves: Vec<Vec<u8>> = Vec::with_capacity(devices.len());
    let (mut gpus, mut switches) = (0usize, 0usize);
    for (i, d) in devices.iter().enumerate() {
        let leaf = device(&mut log, i, d, reference, nonce, opts.at)?;
        if let Some(first) = leaves.iter().position(|l| *l == leaf) {
            return Err(GpuError::Duplicate { first, second: i });
        }
        leaves.push(leaf);
        match d.arch {
            Arch::Ls10 => switches = switches.saturating_add(1),
            Arch::Hopper | Arch::Blackwell => gpus = gpus.saturating_add(1),
        }
    }
    match reference.count {
        Some(want) if want == gpus => log.ok(format!("gpu.count: {gpus} GPUs, as pinned")),
        Some(want) => {
            return Err(ValueError::Mismatch {
                field: "gpu.count".into(),
                got: gpus.to_string(),
                allowed: want.to_string(),
            }
            .into());
        }
        None if reference.unpinned.contains("count") => log.ok(format!(
            "gpu.count: {gpus} GPUs (any number: the reference values leave it unpinned)"
        )),
        None => log.cannot(
            "gpu.count (not pinned by the reference values)",
            GpuError::Value(ValueError::NotPinned {
                field: "gpu.count".into(),
            }),
        )?,
    }
    log.ok(
        "not checked, by design: certificate revocation (NVIDIA publishes it only by OCSP, an online service ward never calls)",
    );
    let (checked, skipped) = log.into_lines();
    Ok(VerifiedGpus {
        gpus,
        switches,
        checked,
        skipped,
    })
}

/// Verifies one device; returns its leaf certificate's DER (its identity).
fn device(
    log: &mut Log,
    i: usize,
    d: &DeviceEvidence,
    reference: &GpuReference,
    nonce: &[u8; 32],
    at: u64,
) -> Result<Vec<u8>, GpuError> {
    let arch = d.arch.as_str();
    let fail = |detail: String| GpuError::Device {
        device: i,
        arch,
        detail,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let report = b64
        .decode(&d.evidence)
        .map_err(|e| fail(format!("the report is not base64: {e}")))?;
    let report = parse_report(&report).map_err(|e| fail(format!("the report: {e}")))?;
    if report.request_nonce != *nonce {
        return Err(GpuError::Nonce {
            device: i,
            arch,
            got: hex::encode(report.request_nonce),
            want: hex::encode(nonce),
        });
    }
    let pem = b64
        .decode(&d.certificate)
        .map_err(|e| fail(format!("the certificate chain is not base64: {e}")))?;
    let pem =
        String::from_utf8(pem).map_err(|_| fail("the certificate chain is not PEM".into()))?;
    let chain = parse_cert_chain_pem(&pem).map_err(|e| fail(e.to_string()))?;
    anchor(i, arch, &chain, at)?;
    let leaf = chain.first().ok_or_else(|| GpuError::Chain {
        device: i,
        arch,
        detail: "is empty".into(),
    })?;
    report
        .verify_signature(leaf.der())
        .map_err(|_| GpuError::Signature { device: i, arch })?;
    let name = format!("GPU device {i} ({arch})");
    log.ok(format!(
        "{name}: the report signs this attestation's nonce, its chain of {} certificates ends at NVIDIA's pinned Device Identity CA, and the signature verifies with the leaf",
        chain.len()
    ));
    match (report.opaque.fwid.as_ref(), leaf.fwid()) {
        (Some(r), Some(c)) if *r == c => log.ok(format!("{name}: the FWID is the leaf's")),
        (Some(r), Some(c)) => {
            return Err(GpuError::Fwid {
                device: i,
                arch,
                report: hex::encode(r),
                cert: hex::encode(c),
            });
        }
        _ => log.ok(format!(
            "{name}: no FWID to compare (the report or the leaf has none)"
        )),
    }
    if d.arch == Arch::Ls10 {
        log.ok(format!(
            "{name}: an NVSwitch; its versions and measurements are not compared (the reference values hold GPUs')"
        ));
    } else {
        values(log, &name, &report, reference)?;
    }
    Ok(leaf.der().to_vec())
}

/// Every link signed by the next, every certificate valid at `at`, the last NVIDIA's root.
fn anchor(i: usize, arch: &'static str, chain: &[GpuCert], at: u64) -> Result<(), GpuError> {
    let chain_err = |detail: String| GpuError::Chain {
        device: i,
        arch,
        detail,
    };
    for (n, link) in check_chain(chain).iter().enumerate() {
        if !link.status.is_ok() {
            return Err(chain_err(format!(
                "breaks at certificate {n} ({}): {}",
                link.subject, link.status
            )));
        }
    }
    let root = chain.last().ok_or_else(|| chain_err("is empty".into()))?;
    let fingerprint = hex::encode(Sha256::digest(root.der()));
    if fingerprint != NVIDIA_DEVICE_ROOT_SHA256 {
        return Err(GpuError::Root {
            device: i,
            arch,
            subject: root.subject(),
            fingerprint,
        });
    }
    for (n, c) in chain.iter().enumerate() {
        let cert = Certificate::from_der(c.der()).map_err(|e| chain_err(e.to_string()))?;
        let v = &cert.tbs_certificate.validity;
        let (from, until) = (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        );
        if at < from || at > until {
            return Err(chain_err(format!(
                "has certificate {n} ({}) valid from {} until {}, not at {at} (Unix seconds)",
                c.subject(),
                v.not_before,
                v.not_after
            )));
        }
    }
    Ok(())
}

/// The driver and VBIOS versions and the measurements against the reference values.
fn values(log: &mut Log, name: &str, report: &GpuReport, r: &GpuReference) -> Result<(), GpuError> {
    let o = &report.opaque;
    for (field, got, allowed) in [
        ("driver_version", &o.driver_version, &r.driver_version),
        ("vbios_version", &o.vbios_version, &r.vbios_version),
    ] {
        version(
            log,
            name,
            field,
            got.as_deref(),
            allowed.as_ref(),
            &r.unpinned,
        )?;
    }
    match &r.measurements {
        Some(pinned) => {
            for m in &report.measurements {
                let field = format!("gpu.measurements.{}", m.index);
                let allowed = pinned.get(&m.index.to_string());
                match allowed {
                    Some(list) if list.iter().any(|h| h.0.as_slice() == m.value.as_slice()) => {}
                    None if m.value.iter().all(|b| *b == 0) => {}
                    Some(list) => {
                        return Err(ValueError::Mismatch {
                            field: format!("{name}: {field}"),
                            got: hex::encode(&m.value),
                            allowed: list.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or "),
                        }
                        .into());
                    }
                    None => {
                        return Err(ValueError::Mismatch {
                            field: format!("{name}: {field}"),
                            got: hex::encode(&m.value),
                            allowed: "nothing (the index is not in gpu.measurements; unused indices are all zero)".into(),
                        }
                        .into());
                    }
                }
            }
            log.ok(format!(
                "{name}: all {} measurements match gpu.measurements",
                report.measurements.len()
            ));
        }
        None if r.unpinned.contains("measurements") => log.ok(format!(
            "{name}: {} measurements (any value: the reference values leave gpu.measurements unpinned)",
            report.measurements.len()
        )),
        None => log.cannot(
            format!("{name}: gpu.measurements (not pinned by the reference values)"),
            GpuError::Value(ValueError::NotPinned {
                field: "gpu.measurements".into(),
            }),
        )?,
    }
    Ok(())
}

fn version(
    log: &mut Log,
    name: &str,
    field: &str,
    got: Option<&str>,
    allowed: Option<&Vec<String>>,
    unpinned: &BTreeSet<String>,
) -> Result<(), GpuError> {
    let full = format!("gpu.{field}");
    match (got, allowed) {
        (Some(g), Some(list)) if list.iter().any(|a| a.eq_ignore_ascii_case(g)) => {
            log.ok(format!("{name}: {full} {g} is listed"));
            Ok(())
        }
        (got, Some(list)) => Err(ValueError::Mismatch {
            field: format!("{name}: {full}"),
            got: got.unwrap_or("absent from the report").to_string(),
            allowed: list.join(" or "),
        }
        .into()),
        (got, None) if unpinned.contains(field) => {
            log.ok(format!(
                "{name}: {full} is {} (any value: the reference values leave it unpinned)",
                got.unwrap_or("absent")
            ));
            Ok(())
        }
        (_, None) => log.cannot(
            format!("{name}: {full} (not pinned by the reference values)"),
            GpuError::Value(ValueError::NotPinned {
                field: full.clone(),
            }),
        ),
    }
}

#[cfg(test)]
mod tests;
