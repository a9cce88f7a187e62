//! Evidence explained: parsers that turn attestation evidence into a readable, multi-line
//! explanation, for `ward evidence --explain FILE [--vcek DER]`.
//!
//! [`explain`] recognises its input by content: a raw SEV-SNP report (1184 bytes), a TDX quote
//! (v4, v5), a TCG2 event log (the CCEL table), an NVIDIA GPU attestation report (raw or hex
//! text), or evidence JSON of the `snp`, `tdx`, `sample`, `az-snp-vtpm`, `az-tdx-vtpm` and
//! `nvidia` shapes (also inside an RCAR `tee-evidence` / `primary_evidence` wrapper, or
//! `{"nvidia": ...}`). Every parser reads untrusted bytes through bounds-checked
//! readers: truncated or garbage input is an [`ExplainError`], never a panic. This module only
//! reads and explains; apart from [`verify_snp_signature`] and the GPU report and chain
//! signatures of `nvidia` evidence it judges nothing.

mod azure;
mod ccel;
mod nvidia;
pub(crate) mod reader;
mod snp;
mod tdx;

use std::fmt;

use crate::nvidia::report::{GpuReport, ReportError, parse_report};
use base64::Engine;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertTableEntry;

pub use azure::{AzureEvidence, HclHardware, HclReport, TdReport, TpmQuote, parse_azure_evidence};
#[cfg(test)]
pub(crate) use azure::{parse_hcl_report, parse_tpm_quote};
pub use ccel::{CcelEvent, CcelLog, algorithm_name, event_type_name, parse_ccel_log};
pub use nvidia::{NvidiaDevice, ParsedNvidiaEvidence, parse_nvidia_evidence};
pub use reader::Truncated;
pub use snp::{
    CertSummary, SNP_REPORT_LEN, SignatureError, SnpReport, parse_snp_report, policy_text,
    verify_snp_signature,
};
pub use tdx::{TdAttributes, TdReportBody, TdxQuote, parse_tdx_quote};

/// The largest input accepted (a CCEL table is 64 KiB to 1 MiB; evidence JSON carries one).
pub const MAX_INPUT: usize = 16 << 20;

/// Why evidence could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The input ends inside a structure.
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// A structure holds a value its format does not allow.
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// The content matches none of the formats.
    #[error(
        "unrecognised input ({len} bytes): not an SNP report, TDX quote, TCG2 event log, NVIDIA GPU report or evidence JSON"
    )]
    Unrecognised { len: usize },
    /// The input is larger than [`MAX_INPUT`].
    #[error("input is {0} bytes; at most {MAX_INPUT} are accepted")]
    TooLarge(usize),
    /// An NVIDIA GPU report or certificate chain that does not parse.
    #[error(transparent)]
    Gpu(#[from] ReportError),
    /// Evidence JSON that does not parse.
    #[error("evidence JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A base64 field that does not decode.
    #[error("`{field}` is not valid base64: {source}")]
    Base64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
}

/// What the input was, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Explanation {
    /// A raw SEV-SNP attestation report.
    SnpReport(Box<SnpReport>),
    /// A raw TDX quote.
    TdxQuote(Box<TdxQuote>),
    /// A raw TCG2 event log.
    CcelLog(CcelLog),
    /// `snp` evidence JSON.
    SnpEvidence {
        report: Box<SnpReport>,
        /// `None` when `cert_chain` is null (the verifier fetches the VCEK itself).
        certs: Option<Vec<CertSummary>>,
    },
    /// `tdx` evidence JSON.
    TdxEvidence {
        quote: Box<TdxQuote>,
        event_log: Option<CcelLog>,
    },
    /// `sample` evidence JSON (development only; proves nothing).
    SampleEvidence { svn: String, report_data: Vec<u8> },
    /// `az-snp-vtpm` or `az-tdx-vtpm` evidence JSON.
    Azure(Box<AzureEvidence>),
    /// A bare NVIDIA GPU attestation report (raw bytes or hex text), without its chain.
    GpuReport(Box<GpuReport>),
    /// `nvidia` evidence JSON: reports, chains and their signature checks.
    Nvidia(Box<ParsedNvidiaEvidence>),
}

impl Explanation {
    /// The SNP report inside, for a signature check with a VCEK/VLEK the user gives
    /// (`--vcek DER`): raw reports, `snp` evidence and Azure SNP evidence.
    pub fn snp_report(&self) -> Option<&SnpReport> {
        match self {
            Explanation::SnpReport(r) => Some(r),
            Explanation::SnpEvidence { report, .. } => Some(report),
            Explanation::Azure(a) => match &a.hcl.hardware {
                HclHardware::Snp(r) => Some(r),
                HclHardware::Tdx(_) => None,
            },
            _ => None,
        }
    }
}

/// Writes one `label: value` line of an explanation.
pub(crate) fn field(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    value: impl fmt::Display,
) -> fmt::Result {
    writeln!(f, "  {label:<26} {value}")
}

/// Recognises and parses `input`.
pub fn explain(input: &[u8]) -> Result<Explanation, ExplainError> {
    if input.len() > MAX_INPUT {
        return Err(ExplainError::TooLarge(input.len()));
    }
    let first = input.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let v: serde_json::Value = serde_json::from_slice(input).map_err(ExplainError::Json)?;
        return explain_json(&v);
    }
    if nvidia::looks_like_gpu_report(input) {
        return Ok(Explanation::GpuReport(Box::new(parse_report(input)?)));
    }
    if let Some(bytes) = nvidia::hex_gpu_report(input) {
        return Ok(Explanation::GpuReport(Box::new(parse_report(&bytes?)?)));
    }
    if tdx::looks_like_tdx_quote(input) {
        return Ok(Explanation::TdxQuote(Box::new(parse_tdx_quote(input)?)));
    }
    if ccel::looks_like_ccel_log(input) {
        return Ok(Explanation::CcelLog(parse_ccel_log(input)?));
    }
    let version = input
        .get(0..4)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_le_bytes);
    if input.len() == SNP_REPORT_LEN && matches!(version, Some(2..=5)) {
        return Ok(Explanation::SnpReport(Box::new(parse_snp_report(input)?)));
    }
    Err(ExplainError::Unrecognised { len: input.len() })
}

fn json_invalid(what: &'static str, detail: impl Into<String>) -> ExplainError {
    ExplainError::Invalid {
        what,
        detail: detail.into(),
    }
}

fn b64_std(v: &serde_json::Value, field: &'static str) -> Result<Vec<u8>, ExplainError> {
    let s = v
        .get(field)
        .and_then(|s| s.as_str())
        .ok_or_else(|| json_invalid("evidence JSON", format!("`{field}` is not a string")))?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|source| ExplainError::Base64 { field, source })
}

/// Explains evidence JSON of one of the known shapes.
pub fn explain_json(v: &serde_json::Value) -> Result<Explanation, ExplainError> {
    // An RCAR attestation body or its `tee-evidence`: explain the primary evidence.
    if let Some(inner) = v.get("tee-evidence").or_else(|| v.get("primary_evidence")) {
        return explain_json(inner);
    }
    if v.get("attestation_report").is_some() {
        #[derive(serde::Deserialize)]
        struct SnpEvidence {
            attestation_report: AttestationReport,
            cert_chain: Option<Vec<CertTableEntry>>,
        }
        let e: SnpEvidence = serde_json::from_value(v.clone()).map_err(ExplainError::Json)?;
        return Ok(Explanation::SnpEvidence {
            report: Box::new(SnpReport {
                report: e.attestation_report,
            }),
            certs: e
                .cert_chain
                .map(|c| c.iter().map(CertSummary::from).collect()),
        });
    }
    if v.get("device_evidence_list").is_some() || v.get("nvidia").is_some() {
        return Ok(Explanation::Nvidia(Box::new(parse_nvidia_evidence(v)?)));
    }
    if v.get("tpm_quote").is_some() {
        return Ok(Explanation::Azure(Box::new(parse_azure_evidence(v)?)));
    }
    if v.get("quote").is_some() {
        let quote = parse_tdx_quote(&b64_std(v, "quote")?)?;
        let event_log = match v.get("cc_eventlog") {
            None | Some(serde_json::Value::Null) => None,
            Some(_) => Some(parse_ccel_log(&b64_std(v, "cc_eventlog")?)?),
        };
        return Ok(Explanation::TdxEvidence {
            quote: Box::new(quote),
            event_log,
        });
    }
    if let (Some(svn), Some(_)) = (v.get("svn"), v.get("report_data")) {
        return Ok(Explanation::SampleEvidence {
            svn: svn
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| svn.to_string()),
            report_data: b64_std(v, "report_data")?,
        });
    }
    Err(json_invalid(
        "evidence JSON",
        "none of the snp, tdx, sample, az-snp-vtpm, az-tdx-vtpm or nvidia shapes",
    ))
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Explanation::SnpReport(r) => write!(f, "{r}"),
            Explanation::TdxQuote(q) => write!(f, "{q}"),
            Explanation::CcelLog(l) => write!(f, "{l}"),
            Explanation::SnpEvidence { report, certs } => {
                writeln!(f, "snp evidence")?;
                match certs {
                    None => field(f, "cert_chain", "null (the verifier fetches the VCEK)")?,
                    Some(certs) => {
                        for c in certs {
                            field(f, "certificate", format!("{} ({} bytes)", c.kind, c.len))?;
                        }
                    }
                }
                write!(f, "{report}")
            }
            Explanation::TdxEvidence { quote, event_log } => {
                writeln!(f, "tdx evidence")?;
                write!(f, "{quote}")?;
                match event_log {
                    Some(l) => write!(f, "{l}"),
                    None => field(f, "cc_eventlog", "null (no CCEL)"),
                }
            }
            Explanation::SampleEvidence { svn, report_data } => {
                writeln!(f, "sample evidence (development only: proves nothing)")?;
                field(f, "svn", svn)?;
                field(f, "report data", hex::encode(report_data))
            }
            Explanation::Azure(a) => write!(f, "{a}"),
            Explanation::GpuReport(r) => {
                write!(f, "{r}")?;
                field(
                    f,
                    "signature check",
                    "needs the GPU's certificate chain (give nvidia evidence JSON)",
                )
            }
            Explanation::Nvidia(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests;
