//! Azure confidential VMs (`az-snp-vtpm`, `az-tdx-vtpm` evidence): the guest runs behind
//! Microsoft's paravisor (the HCL), which attests through a vTPM. What chains to hardware is the
//! HCL report: an SNP report (or a TD report, quoted by Intel's QE) whose report data starts with
//! SHA-256 of the HCL's runtime data, which holds the vTPM's attestation key (`HCLAkPub`) and, in
//! evidence version 2, the caller's report data as `user-data`. The AK signs the TPM quote,
//! whose nonce is the caller's report data and whose PCR digest covers the PCRs sent beside it.
//!
//! The steps are Trustee's (78962cd4, `deps/verifier/src/az_snp_vtpm/mod.rs` and
//! `az_tdx_vtpm/mod.rs`): the quote's RSA signature by the AK; its nonce; the PCRs against its
//! digest; the hardware report binding the runtime data; `user-data` (version 2 and later); the
//! hardware report itself, in full, by [`crate::snp::verify`] or [`crate::tdx::verify`] (VMPL 0
//! on SNP, the paravisor's level). Then what Trustee leaves to policy: the PCRs the reference
//! values pin (`[vtpm]`), each of which must be inside the quote's SHA-256 selection (a PCR
//! outside it is not signed by anything).
//!
//! The parsers are the attester's (`ward_attester::explain::azure`).

use std::collections::BTreeSet;

use base64::Engine as _;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier as _;
use rsa::{BigUint, RsaPublicKey};
use sha2::{Digest as _, Sha256};
use ward_attester::explain::{AzureEvidence, HclHardware, parse_azure_evidence};

use crate::reference::{ReferenceValues, VtpmReference};
use crate::snp::{AmdCerts, SnpError};
use crate::tdx::{Collateral, TdxError};
use crate::values::ValueError;
use crate::{Log, Options, Verified};

/// TPM_ALG_SHA256, the PCR bank Azure's vTPM quotes.
const TPM_ALG_SHA256: u16 = 0x000b;

/// Why Azure vTPM evidence was refused.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    #[error("the Azure vTPM evidence does not parse: {0}")]
    Parse(String),
    #[error("the HCL runtime data holds no usable vTPM attestation key (HCLAkPub): {0}")]
    AkPub(String),
    #[error("the vTPM quote is not signed by the attestation key in the HCL report")]
    QuoteSignature,
    #[error(
        "the vTPM quote's nonce is {got}, not the expected {want}: the evidence does not bind this nonce and key"
    )]
    Nonce { got: String, want: String },
    #[error("the PCR values sent do not hash to the digest the vTPM quote signs")]
    PcrDigest,
    #[error(
        "the hardware report's data does not start with SHA-256 of the HCL runtime data: the vTPM key is not the hardware's"
    )]
    RuntimeDataBinding,
    #[error("the HCL runtime data's user-data does not start with the expected report data")]
    UserData,
    #[error("vtpm.pcrs.{index} is pinned, but PCR {index} is not in the quote's SHA-256 selection")]
    PcrNotQuoted { index: u32 },
    #[error("the Azure SNP report comes from VMPL {0}, not the paravisor's VMPL 0")]
    Vmpl(u32),
    #[error("the HCL report holds a {0} report, but the evidence is Azure {1}")]
    Kind(&'static str, &'static str),
    #[error("the Azure SNP report: {0}")]
    Snp(#[from] SnpError),
    #[error("the Azure TD quote: {0}")]
    Tdx(#[from] TdxError),
    #[error(transparent)]
    Value(#[from] ValueError),
}

/// What vouches for the hardware report, from the caller.
#[derive(Default)]
pub struct Vouchers<'a> {
    /// SNP: the VCEK (and chain). Without it, the VCEK the evidence carries (from Azure's IMDS;
    /// safe to use, since it must chain to AMD's pinned root like any other).
    pub amd: Option<&'a AmdCerts>,
    /// TDX: Intel's collateral for the TD quote's platform.
    pub intel: Option<&'a Collateral>,
}

/// Verifies Azure vTPM evidence (the JSON as the attester wrote it) whose TPM quote must carry
/// `want` as its nonce, against `reference` (`[snp]` or `[tdx]` for the hardware report,
/// `[vtpm]` for the PCRs).
pub fn verify(
    evidence: &serde_json::Value,
    vouchers: &Vouchers<'_>,
    reference: &ReferenceValues,
    want: &[u8],
    opts: &Options,
) -> Result<Verified, AzureError> {
    let ev = parse_azure_evidence(evidence).map_err(|e| AzureError::Parse(e.to_string()))?;
    let mut log = Log::new(opts);
    let q = &ev.tpm_quote;
    ak(&ev)?
        .verify(
            &q.message,
            &Signature::try_from(q.signature.as_slice()).map_err(|_| AzureError::QuoteSignature)?,
        )
        .map_err(|_| AzureError::QuoteSignature)?;
    log.ok("the vTPM quote is signed by the attestation key the HCL runtime data holds");
    if q.extra_data != want {
        return Err(AzureError::Nonce {
            got: hex::encode(&q.extra_data),
            want: hex::encode(want),
        });
    }
    log.ok("the vTPM quote's nonce is the expected report data (binds the nonce and key)");
    if !q.pcr_digest_matches || q.pcrs.iter().any(|p| p.len() != 32) {
        return Err(AzureError::PcrDigest);
    }
    log.ok("the PCR values hash to the digest the quote signs");
    if !ev.hcl.runtime_data_bound {
        return Err(AzureError::RuntimeDataBinding);
    }
    log.ok("the hardware report's data starts with SHA-256 of the HCL runtime data");
    if ev.version >= 2 {
        let user_data = ev
            .hcl
            .user_data
            .as_deref()
            .and_then(|u| hex::decode(u).ok())
            .ok_or(AzureError::UserData)?;
        if !user_data.starts_with(want) {
            return Err(AzureError::UserData);
        }
        log.ok("the HCL runtime data's user-data is the expected report data (evidence version 2)");
    } else {
        log.ok(format!(
            "evidence version {}: no user-data in the HCL runtime data (the quote's nonce binds the report data)",
            ev.version
        ));
    }
    let mut hw = hardware(&ev, evidence, vouchers, reference, opts)?;
    // Its report data was compared with itself there; what it binds was checked above.
    for line in &mut hw.checked {
        if line.starts_with("the report data is the expected one") {
            *line =
                "the report data binds the HCL runtime data (above), not a caller's nonce directly"
                    .into();
        }
    }
    log.absorb("hardware report", hw);
    pcrs(&mut log, &ev, reference.vtpm.as_ref())?;
    let mut report_data = [0u8; 64];
    let n = want.len().min(64);
    report_data[..n].copy_from_slice(&want[..n]);
    Ok(log.finish(
        if ev.td_quote.is_some() {
            "az-tdx-vtpm"
        } else {
            "az-snp-vtpm"
        },
        report_data,
    ))
}

/// The vTPM's attestation key: the RSA JWK with `kid` `HCLAkPub` in the runtime data.
fn ak(ev: &AzureEvidence) -> Result<VerifyingKey<Sha256>, AzureError> {
    let data: serde_json::Value = serde_json::from_slice(&ev.hcl.runtime_data)
        .map_err(|e| AzureError::AkPub(format!("the runtime data is not JSON: {e}")))?;
    let key = data["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == "HCLAkPub"))
        .ok_or_else(|| AzureError::AkPub("no key with kid HCLAkPub".into()))?;
    if key["kty"] != "RSA" {
        return Err(AzureError::AkPub(format!("kty {}, not RSA", key["kty"])));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let part = |name: &str| {
        key[name]
            .as_str()
            .and_then(|v| b64.decode(v.trim_end_matches('=')).ok())
            .map(|b| BigUint::from_bytes_be(&b))
            .ok_or_else(|| AzureError::AkPub(format!("`{name}` is not base64url")))
    };
    let public =
        RsaPublicKey::new(part("n")?, part("e")?).map_err(|e| AzureError::AkPub(e.to_string()))?;
    Ok(VerifyingKey::new(public))
}

/// The hardware report, in full, with the values its own section of the reference pins. Its
/// report data is checked here against the runtime data's digest (above), not a caller's.
fn hardware(
    ev: &AzureEvidence,
    evidence: &serde_json::Value,
    vouchers: &Vouchers<'_>,
    reference: &ReferenceValues,
    opts: &Options,
) -> Result<Verified, AzureError> {
    let b64url = |name: &str| {
        evidence[name].as_str().and_then(|s| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .ok()
        })
    };
    match (&ev.hcl.hardware, ev.td_quote.is_some()) {
        (HclHardware::Snp(report), false) => {
            if report.report.vmpl != 0 {
                return Err(AzureError::Vmpl(report.report.vmpl));
            }
            let carried;
            let certs = match vouchers.amd {
                Some(c) => Some(c),
                None => match b64url("vcek") {
                    Some(der) => {
                        carried = AmdCerts::from_bytes(&der)?;
                        Some(&carried)
                    }
                    None => None,
                },
            };
            let rd = report.report.report_data;
            Ok(crate::snp::verify(
                &ev.hcl.hardware_bytes,
                certs,
                &reference.snp.clone().unwrap_or_default(),
                &rd,
                opts,
            )?)
        }
        (HclHardware::Tdx(_), true) => {
            let quote = b64url("td_quote")
                .ok_or_else(|| AzureError::Parse("td_quote is not base64url".into()))?;
            // The TD quote is what Intel signs; its report data must bind the runtime data
            // as the HCL's TD report does (Trustee's `verify_hcl_var_data`).
            let digest = Sha256::digest(&ev.hcl.runtime_data);
            let body_data = ev
                .td_quote
                .as_ref()
                .map(|q| q.body.report_data)
                .ok_or_else(|| AzureError::Parse("no TD quote".into()))?;
            if body_data[..32] != digest[..] {
                return Err(AzureError::RuntimeDataBinding);
            }
            Ok(crate::tdx::verify(
                &quote,
                vouchers.intel,
                &reference.tdx.clone().unwrap_or_default(),
                &body_data,
                opts,
            )?)
        }
        (HclHardware::Snp(_), true) => Err(AzureError::Kind("SNP", "TDX")),
        (HclHardware::Tdx(_), false) => Err(AzureError::Kind("TD", "SEV-SNP")),
    }
}

/// The PCRs `[vtpm]` pins, each inside the quote's SHA-256 selection.
fn pcrs(
    log: &mut Log,
    ev: &AzureEvidence,
    reference: Option<&VtpmReference>,
) -> Result<(), AzureError> {
    let empty = BTreeSet::new();
    let unpinned = reference.map_or(&empty, |r| &r.unpinned);
    let Some(pinned) = reference.and_then(|r| r.pcrs.as_ref()) else {
        if unpinned.contains("pcrs") {
            log.ok("vtpm.pcrs: any values (the reference values leave them unpinned)");
            return Ok(());
        }
        log.cannot(
            "vtpm.pcrs (not pinned by the reference values)",
            ValueError::NotPinned {
                field: "vtpm.pcrs".into(),
            },
        )?;
        return Ok(());
    };
    let selected: BTreeSet<u32> = ev
        .tpm_quote
        .selections
        .iter()
        .filter(|(alg, _)| *alg == TPM_ALG_SHA256)
        .flat_map(|(_, s)| s.iter().copied())
        .collect();
    for (index, allowed) in pinned {
        let i: u32 = index
            .parse()
            .map_err(|_| AzureError::Parse(format!("vtpm.pcrs.{index} is not a PCR number")))?;
        if !selected.contains(&i) {
            return Err(AzureError::PcrNotQuoted { index: i });
        }
        let got = usize::try_from(i)
            .ok()
            .and_then(|i| ev.tpm_quote.pcrs.get(i))
            .ok_or(AzureError::PcrNotQuoted { index: i })?;
        if !allowed.iter().any(|a| a.0.as_slice() == got.as_slice()) {
            return Err(ValueError::Mismatch {
                field: format!("vtpm.pcrs.{index}"),
                got: hex::encode(got),
                allowed: allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or "),
            }
            .into());
        }
    }
    log.ok(format!(
        "vtpm.pcrs: PCRs {} match the reference values",
        pinned.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    Ok(())
}

#[cfg(test)]
mod tests;
