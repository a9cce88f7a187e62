//! Azure confidential VM evidence (`az-snp-vtpm`, `az-tdx-vtpm`): the vTPM quote (TPMS_ATTEST,
//! PCRs), the paravisor's HCL report wrapping the hardware report (SNP report or TD report) and
//! its runtime data, and the VCEK or TD quote beside them. Layouts follow the `az-cvm-vtpm`
//! crate (`src/hcl/mod.rs`) and the TPM 2.0 spec (part 2, TPMS_ATTEST). Explains only: the TPM
//! signature is not checked here.

use std::fmt;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::Digest;

use super::reader::Reader;
use super::snp::{SNP_REPORT_LEN, SnpReport, parse_snp_report, verify_snp_signature};
use super::tdx::{TdxQuote, parse_tdx_quote};
use super::{ExplainError, field};

const HCL_SIGNATURE: &[u8; 4] = b"HCLA";
const TD_REPORT_LEN: usize = 1024;
const TPM_GENERATED: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
const TPM_ALG_SHA256: u16 = 0x000b;

/// base64url, padded or not (serde_with writes it padded).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The vTPM quote: TPMS_ATTEST decoded, and the PCR values sent beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmQuote {
    /// The marshalled TPMS_ATTEST, as the signature covers it.
    pub message: Vec<u8>,
    /// The AK's signature over `message` (RSASSA-PKCS1-v1_5 on Azure).
    pub signature: Vec<u8>,
    /// The caller's nonce (extraData): the report data on Azure.
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub firmware_version: u64,
    /// (hash algorithm, selected PCR indices).
    pub selections: Vec<(u16, Vec<u32>)>,
    pub pcr_digest: Vec<u8>,
    pub pcrs: Vec<Vec<u8>>,
    /// Whether SHA-256 over the selected PCR values equals the quoted digest.
    pub pcr_digest_matches: bool,
}

/// The hardware report inside the HCL report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HclHardware {
    Snp(Box<SnpReport>),
    Tdx(Box<TdReport>),
}

/// A TDX TDREPORT (1024 bytes): the fields a reader checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReport {
    pub report_data: [u8; 64],
    pub td_attributes: [u8; 8],
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
}

/// The paravisor's HCL report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HclReport {
    pub version: u32,
    pub request_type: u32,
    pub status: u32,
    pub hardware: HclHardware,
    pub hash_type: u32,
    /// Whether the hardware report data starts with SHA-256 of the runtime data.
    pub runtime_data_bound: bool,
    /// The runtime data's `user-data` (the report data in evidence version 2).
    pub user_data: Option<String>,
    /// The `kid`s of the keys in the runtime data (the vTPM AK is `HCLAkPub`).
    pub key_ids: Vec<String>,
    /// The runtime data ("variable data") as it was hashed into the hardware report: JSON
    /// holding the vTPM's keys and `user-data`.
    pub runtime_data: Vec<u8>,
    /// The hardware report's bytes as they were signed (SNP: the 1184-byte report; TDX: the
    /// 1024-byte TD report).
    pub hardware_bytes: Vec<u8>,
}

/// Azure vTPM evidence, SNP (with `vcek`) or TDX (with `td_quote`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureEvidence {
    pub version: u64,
    pub tpm_quote: TpmQuote,
    pub hcl: HclReport,
    /// SNP: the VCEK's size and whether it verifies the embedded report's signature.
    pub vcek: Option<(usize, Result<(), String>)>,
    /// TDX: the TD quote.
    pub td_quote: Option<TdxQuote>,
}

fn invalid(detail: impl Into<String>) -> ExplainError {
    ExplainError::Invalid {
        what: "Azure vTPM evidence",
        detail: detail.into(),
    }
}

fn str_field<'a>(v: &'a serde_json::Value, name: &str) -> Result<&'a str, ExplainError> {
    v.get(name)
        .and_then(|s| s.as_str())
        .ok_or_else(|| invalid(format!("`{name}` is missing or not a string")))
}

fn hex_field(v: &serde_json::Value, name: &str) -> Result<Vec<u8>, ExplainError> {
    hex::decode(str_field(v, name)?).map_err(|e| invalid(format!("`{name}`: {e}")))
}

fn b64url_field(v: &serde_json::Value, name: &'static str) -> Result<Vec<u8>, ExplainError> {
    B64URL
        .decode(str_field(v, name)?)
        .map_err(|source| ExplainError::Base64 {
            field: name,
            source,
        })
}

/// Parses the JSON evidence of `az-snp-vtpm` or `az-tdx-vtpm`.
pub fn parse_azure_evidence(v: &serde_json::Value) -> Result<AzureEvidence, ExplainError> {
    let version = v
        .get("version")
        .and_then(|n| n.as_u64())
        .ok_or_else(|| invalid("`version` is missing"))?;
    let q = v
        .get("tpm_quote")
        .ok_or_else(|| invalid("`tpm_quote` is missing"))?;
    let signature = hex_field(q, "signature")?;
    let message = hex_field(q, "message")?;
    let pcrs = q
        .get("pcrs")
        .and_then(|p| p.as_array())
        .ok_or_else(|| invalid("`tpm_quote.pcrs` is missing"))?
        .iter()
        .map(|p| {
            p.as_str()
                .and_then(|s| hex::decode(s).ok())
                .ok_or_else(|| invalid("a PCR is not hex"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tpm_quote = parse_tpm_quote(&message, signature, pcrs)?;
    let hcl = parse_hcl_report(&b64url_field(v, "hcl_report")?)?;
    let vcek = match v.get("vcek") {
        Some(_) => {
            let der = b64url_field(v, "vcek")?;
            let check = match &hcl.hardware {
                HclHardware::Snp(report) => {
                    verify_snp_signature(report, &der).map_err(|e| e.to_string())
                }
                HclHardware::Tdx(_) => Err("the HCL report holds a TD report".into()),
            };
            Some((der.len(), check))
        }
        None => None,
    };
    let td_quote = match v.get("td_quote") {
        Some(_) => Some(parse_tdx_quote(&b64url_field(v, "td_quote")?)?),
        None => None,
    };
    Ok(AzureEvidence {
        version,
        tpm_quote,
        hcl,
        vcek,
        td_quote,
    })
}

/// Decodes a marshalled TPMS_ATTEST of a quote.
pub fn parse_tpm_quote(
    message: &[u8],
    signature: Vec<u8>,
    pcrs: Vec<Vec<u8>>,
) -> Result<TpmQuote, ExplainError> {
    let mut r = Reader::new(message, "TPM quote");
    if r.u32_be()? != TPM_GENERATED || r.u16_be()? != TPM_ST_ATTEST_QUOTE {
        return Err(invalid(
            "the TPM quote message is not a TPM-generated quote",
        ));
    }
    let _signer = r.tpm2b()?;
    let extra_data = r.tpm2b()?.to_vec();
    let clock = r.u64_be()?;
    let reset_count = r.u32_be()?;
    let restart_count = r.u32_be()?;
    let _safe = r.u8()?;
    let firmware_version = r.u64_be()?;
    let count = r.u32_be()?;
    if count > 16 {
        return Err(invalid(format!("{count} PCR selections")));
    }
    let mut selections = Vec::new();
    for _ in 0..count {
        let hash = r.u16_be()?;
        let size = r.u8()?;
        let bitmap = r.take(usize::from(size))?;
        let selected = bitmap
            .iter()
            .enumerate()
            .flat_map(|(byte, bits)| {
                (0..8u32)
                    .filter(move |b| bits >> b & 1 == 1)
                    .map(move |b| byte as u32 * 8 + b)
            })
            .collect();
        let selected: Vec<u32> = selected;
        selections.push((hash, selected));
    }
    let pcr_digest = r.tpm2b()?.to_vec();
    let pcr_digest_matches = {
        let mut h = sha2::Sha256::new();
        let mut complete = true;
        for (_, selected) in selections.iter().filter(|(h, _)| *h == TPM_ALG_SHA256) {
            for i in selected {
                match pcrs.get(*i as usize) {
                    Some(p) => h.update(p),
                    None => complete = false,
                }
            }
        }
        complete && h.finalize().as_slice() == pcr_digest.as_slice()
    };
    Ok(TpmQuote {
        message: message.to_vec(),
        signature,
        extra_data,
        clock,
        reset_count,
        restart_count,
        firmware_version,
        selections,
        pcr_digest,
        pcrs,
        pcr_digest_matches,
    })
}

/// Parses an HCL report (header, hardware report, IGVM request data with runtime data).
pub fn parse_hcl_report(bytes: &[u8]) -> Result<HclReport, ExplainError> {
    let mut r = Reader::new(bytes, "HCL report");
    if r.array::<4>()? != *HCL_SIGNATURE {
        return Err(invalid("the HCL report does not start with HCLA"));
    }
    let version = r.u32()?;
    let report_size = r.u32()? as usize;
    let request_type = r.u32()?;
    let status = r.u32()?;
    r.skip(12)?;
    let hw = r.take(SNP_REPORT_LEN)?;
    let _data_size = r.u32()?;
    let _data_version = r.u32()?;
    let report_type = r.u32()?;
    let hash_type = r.u32()?;
    let var_len = r.u32()? as usize;
    let var_data = r.take(var_len)?;
    if report_size > bytes.len() {
        return Err(ExplainError::Truncated(super::Truncated {
            what: "HCL report",
            offset: 0,
            needed: report_size,
            available: bytes.len(),
        }));
    }
    let hardware_bytes = match report_type {
        4 => hw.get(..TD_REPORT_LEN).unwrap_or(hw).to_vec(),
        _ => hw.to_vec(),
    };
    let (hardware, report_data) = match report_type {
        2 => {
            let report = parse_snp_report(hw)?;
            let rd = report.report.report_data;
            (HclHardware::Snp(Box::new(report)), rd)
        }
        4 => {
            let mut t = Reader::new(hw.get(..TD_REPORT_LEN).unwrap_or(hw), "TD report");
            t.skip(128)?;
            let report_data: [u8; 64] = t.array()?;
            t.skip(512 - 192)?;
            let td_attributes = t.array()?;
            t.skip(8)?;
            let mr_td = t.array()?;
            let mr_config_id = t.array()?;
            t.skip(96)?;
            let rtmr = [t.array()?, t.array()?, t.array()?, t.array()?];
            let hw = HclHardware::Tdx(Box::new(TdReport {
                report_data,
                td_attributes,
                mr_td,
                mr_config_id,
                rtmr,
            }));
            (hw, report_data)
        }
        other => return Err(invalid(format!("HCL report type {other}"))),
    };
    let runtime_data_bound = report_data.get(..32) == Some(&sha2::Sha256::digest(var_data)[..]);
    let json: Option<serde_json::Value> = serde_json::from_slice(var_data).ok();
    let user_data = json
        .as_ref()
        .and_then(|j| j.get("user-data"))
        .and_then(|u| u.as_str())
        .map(str::to_string);
    let key_ids = json
        .as_ref()
        .and_then(|j| j.get("keys"))
        .and_then(|k| k.as_array())
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.get("kid").and_then(|i| i.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(HclReport {
        version,
        request_type,
        status,
        hardware,
        hash_type,
        runtime_data_bound,
        user_data,
        key_ids,
        runtime_data: var_data.to_vec(),
        hardware_bytes,
    })
}

impl fmt::Display for AzureEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.td_quote.is_some() {
            "TDX"
        } else {
            "SEV-SNP"
        };
        writeln!(f, "Azure {kind} vTPM evidence, version {}", self.version)?;
        let q = &self.tpm_quote;
        writeln!(f, "vTPM quote")?;
        field(f, "nonce (extraData)", hex::encode(&q.extra_data))?;
        field(
            f,
            "clock",
            format!(
                "{} ms, reset {} restart {}",
                q.clock, q.reset_count, q.restart_count
            ),
        )?;
        field(f, "TPM firmware", format!("{:#x}", q.firmware_version))?;
        for (hash, selected) in &q.selections {
            field(
                f,
                "PCR selection",
                format!("{} {selected:?}", super::ccel::algorithm_name(*hash)),
            )?;
        }
        let ok = if q.pcr_digest_matches {
            "matches the PCRs"
        } else {
            "DOES NOT match the PCRs"
        };
        field(
            f,
            "PCR digest",
            format!("{} ({ok})", hex::encode(&q.pcr_digest)),
        )?;
        field(f, "signature", format!("{} bytes", q.signature.len()))?;
        for (i, p) in q.pcrs.iter().enumerate() {
            field(f, &format!("PCR{i}"), hex::encode(p))?;
        }
        let h = &self.hcl;
        writeln!(f, "HCL report")?;
        field(
            f,
            "version / request / status",
            format!("{} / {} / {}", h.version, h.request_type, h.status),
        )?;
        field(
            f,
            "runtime data",
            if h.runtime_data_bound {
                "bound (report data = SHA-256 of it)"
            } else {
                "NOT bound to the hardware report"
            },
        )?;
        field(f, "runtime keys", h.key_ids.join(", "))?;
        if let Some(u) = &h.user_data {
            field(f, "user-data", u)?;
        }
        match &h.hardware {
            HclHardware::Snp(report) => write!(f, "{report}")?,
            HclHardware::Tdx(td) => {
                writeln!(f, "TD report")?;
                field(f, "REPORTDATA", hex::encode(td.report_data))?;
                field(f, "TD attributes", hex::encode(td.td_attributes))?;
                field(f, "MRTD", hex::encode(td.mr_td))?;
                field(f, "MRCONFIGID", hex::encode(td.mr_config_id))?;
                for (i, r) in td.rtmr.iter().enumerate() {
                    field(f, &format!("RTMR{i}"), hex::encode(r))?;
                }
            }
        }
        if let Some((len, check)) = &self.vcek {
            let verdict = match check {
                Ok(()) => "verifies the SNP report signature".to_string(),
                Err(e) => format!("does not verify the report: {e}"),
            };
            field(f, "VCEK", format!("{len} bytes DER, {verdict}"))?;
        }
        if let Some(q) = &self.td_quote {
            write!(f, "{q}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../shared/fixtures/evidence/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn snp_evidence_is_explained_and_its_vcek_verifies_the_report() {
        let v: serde_json::Value =
            serde_json::from_slice(&fixture("az-snp-vtpm/evidence-v2.json")).unwrap();
        let e = parse_azure_evidence(&v).unwrap();
        assert_eq!(e.version, 2);
        assert_eq!(e.tpm_quote.pcrs.len(), 24);
        assert!(e.tpm_quote.pcr_digest_matches);
        assert!(e.hcl.runtime_data_bound);
        assert!(
            e.hcl.key_ids.iter().any(|k| k == "HCLAkPub"),
            "{:?}",
            e.hcl.key_ids
        );
        assert!(matches!(e.hcl.hardware, HclHardware::Snp(_)));
        assert_eq!(e.vcek.as_ref().map(|(_, c)| c.is_ok()), Some(true));
        let text = e.to_string();
        assert!(text.contains("AMD SEV-SNP attestation report"), "{text}");
        assert!(text.contains("PCR23"));
    }

    #[test]
    fn tdx_evidence_is_explained_with_its_td_quote() {
        let v: serde_json::Value =
            serde_json::from_slice(&fixture("az-tdx-vtpm/evidence-v1.json")).unwrap();
        let e = parse_azure_evidence(&v).unwrap();
        assert_eq!(e.version, 1);
        assert!(e.tpm_quote.pcr_digest_matches);
        assert!(e.hcl.runtime_data_bound);
        let q = e.td_quote.as_ref().unwrap();
        // the TD quote carries the same report data as the TD report in the HCL report
        let HclHardware::Tdx(td) = &e.hcl.hardware else {
            panic!("not a TD report")
        };
        assert_eq!(q.body.report_data, td.report_data);
        assert!(e.to_string().contains("Intel TDX quote"));
    }
}
