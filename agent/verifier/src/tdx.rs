//! Intel TDX quotes (versions 4 and 5, ECDSA P-256), verified with the `dcap-qvl` crate against
//! Intel's SGX root CA that it pins: the PCK chain in the quote (with the root and PCK CRLs),
//! the QE report signed by the PCK key, the QE report data binding the attestation key, the
//! quote signed by that key, the TCB info and QE identity signed by Intel's TCB signing key,
//! the platform's TCB level and the TD attributes. This module adds: the collateral's freshness
//! as a named refusal, the TCB status against the reference values, the DEBUG attribute, MRTD,
//! RTMR0-3, MRCONFIGID and the report data.

use std::path::Path;

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::{Quote, TDReport10};
use dcap_qvl::verify::QuoteVerifier;
use serde::Deserialize;
use x509_cert::crl::CertificateList;
use x509_cert::der::Decode as _;

use crate::reference::TdxReference;
use crate::values::{self, ValueError};
use crate::{Log, Options, Verified};

/// Why a TDX quote was refused.
#[derive(Debug, thiserror::Error)]
pub enum TdxError {
    #[error("reading the TDX collateral {path}: {source}")]
    CollateralRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the TDX collateral is not in Intel PCS's format (dcap-qvl's JSON): {0}")]
    Collateral(String),
    #[error(
        "the TDX collateral's {what} is valid from {from} until {until}, not at {at}: stale collateral is refused"
    )]
    StaleCollateral {
        what: &'static str,
        from: String,
        until: String,
        at: String,
    },
    #[error(
        "no TDX collateral was given: the quote's signature, its PCK chain to Intel's SGX root CA and the platform's TCB cannot be checked"
    )]
    NoCollateral,
    #[error("no collateral in {dir} is for the quote's platform (FMSPC {fmspc})")]
    NoCollateralFor { fmspc: String, dir: String },
    #[error("the TDX quote does not parse: {0}")]
    Quote(String),
    #[error("the quote is an SGX enclave's, not a TD's")]
    NotTd,
    #[error("the TDX quote does not verify to Intel's SGX root CA with this collateral: {0}")]
    Chain(String),
    #[error(
        "the platform's TCB matches no level of Intel's TCB info (it is older than every level listed): {0}"
    )]
    TcbNotListed(String),
    #[error(
        "the platform's TCB status is {status} (advisories: {advisories}), and the reference values accept only {allowed}"
    )]
    TcbStatus {
        status: String,
        advisories: String,
        allowed: String,
    },
    #[error("the TD has the DEBUG attribute (the host can read the guest)")]
    Debug,
    #[error(transparent)]
    Value(#[from] ValueError),
}

/// TDX collateral: TCB info and QE identity with their signatures and issuer chains, the PCK
/// and root CA CRLs, as Intel PCS serves them, gathered in the JSON form that `dcap-qvl` and
/// PCCS clients write (`docs/reference-values.md`, "TDX collateral").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collateral(QuoteCollateralV3);

impl Collateral {
    /// Parses the JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TdxError> {
        serde_json::from_slice(bytes)
            .map(Collateral)
            .map_err(|e| TdxError::Collateral(e.to_string()))
    }

    /// Reads and parses a collateral file.
    pub fn load(path: &Path) -> Result<Self, TdxError> {
        let bytes = std::fs::read(path).map_err(|source| TdxError::CollateralRead {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&bytes)
    }

    /// The collateral for `quote`'s platform from `path`: a file, or a directory of collateral
    /// files (a cache the user keeps, e.g. synced from a PCCS), of which the one whose TCB
    /// info names the quote's FMSPC and is valid at `at` (the latest issued, if several); when
    /// none is valid, the latest for that FMSPC, so that the refusal says it is stale.
    pub fn for_quote(path: &Path, quote: &[u8], at: u64) -> Result<Self, TdxError> {
        if !path.is_dir() {
            return Self::load(path);
        }
        let q = Quote::parse(quote).map_err(|e| TdxError::Quote(format!("{e:#}")))?;
        let fmspc = dcap_qvl::intel::quote_fmspc(&q)
            .map(hex::encode_upper)
            .map_err(|e| TdxError::Quote(format!("the PCK certificate's FMSPC: {e:#}")))?;
        let read = |e: std::io::Error| TdxError::CollateralRead {
            path: path.display().to_string(),
            source: e,
        };
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(read)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        // (valid at `at`, issued, collateral) of each file for this FMSPC; unreadable or
        // foreign files are passed over (a cache holds other platforms' too).
        let mut best: Option<(bool, i64, Collateral)> = None;
        for f in files {
            let Ok(c) = Self::load(&f) else { continue };
            let Ok(info) = serde_json::from_str::<TcbInfoHead>(&c.0.tcb_info) else {
                continue;
            };
            if !info.fmspc.eq_ignore_ascii_case(&fmspc) {
                continue;
            }
            let issued = parse_time("TCB info", &info.issue_date).unwrap_or(i64::MIN);
            let fresh = check_fresh(&c.0, at).is_ok();
            if best
                .as_ref()
                .is_none_or(|(bf, bi, _)| (fresh, issued) > (*bf, *bi))
            {
                best = Some((fresh, issued, c));
            }
        }
        best.map(|(_, _, c)| c)
            .ok_or_else(|| TdxError::NoCollateralFor {
                fmspc,
                dir: path.display().to_string(),
            })
    }

    /// The raw form, for tests that forge it.
    #[cfg(test)]
    pub(crate) fn inner_mut(&mut self) -> &mut QuoteCollateralV3 {
        &mut self.0
    }
}

/// The platform and issue date of a TCB info JSON.
#[derive(Deserialize)]
struct TcbInfoHead {
    fmspc: String,
    #[serde(rename = "issueDate")]
    issue_date: String,
}

/// `issueDate` and `nextUpdate` of the TCB info or QE identity JSON.
#[derive(Deserialize)]
struct Dates {
    #[serde(rename = "issueDate")]
    issue_date: String,
    #[serde(rename = "nextUpdate")]
    next_update: String,
}

/// Seconds since the epoch as RFC 3339, for messages.
pub(crate) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} s after the epoch"))
}

fn parse_time(what: &'static str, s: &str) -> Result<i64, TdxError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| TdxError::Collateral(format!("{what}: {s:?} is not an RFC 3339 time: {e}")))
}

fn window(what: &'static str, from: i64, until: i64, at: i64) -> Result<(), TdxError> {
    if at < from || at > until {
        return Err(TdxError::StaleCollateral {
            what,
            from: rfc3339(from),
            until: rfc3339(until),
            at: rfc3339(at),
        });
    }
    Ok(())
}

/// Refuses collateral that is not valid at `at`, naming the piece: the TCB info, the QE
/// identity and both CRLs. (dcap-qvl checks the same and the certificates' validity too, but
/// its refusal does not say which; this one does.)
fn check_fresh(c: &QuoteCollateralV3, at: u64) -> Result<(), TdxError> {
    let at =
        i64::try_from(at).map_err(|_| TdxError::Collateral(format!("time {at} out of range")))?;
    for (what, json) in [("TCB info", &c.tcb_info), ("QE identity", &c.qe_identity)] {
        let d: Dates =
            serde_json::from_str(json).map_err(|e| TdxError::Collateral(format!("{what}: {e}")))?;
        window(
            what,
            parse_time(what, &d.issue_date)?,
            parse_time(what, &d.next_update)?,
            at,
        )?;
    }
    for (what, der) in [("root CA CRL", &c.root_ca_crl), ("PCK CRL", &c.pck_crl)] {
        let crl = CertificateList::from_der(der)
            .map_err(|e| TdxError::Collateral(format!("{what}: {e}")))?;
        let secs = |t: &x509_cert::time::Time| {
            i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
        };
        let from = secs(&crl.tbs_cert_list.this_update);
        let until = crl
            .tbs_cert_list
            .next_update
            .as_ref()
            .map(secs)
            .ok_or_else(|| TdxError::Collateral(format!("{what} has no nextUpdate")))?;
        window(what, from, until, at)?;
    }
    Ok(())
}

/// Verifies a TDX quote. `collateral` is Intel's, for this quote's platform (FMSPC); without
/// it only `opts.insecure` lets the quote through, its signature unchecked. `want_report_data`
/// is what the report data must be (the binding of the caller's nonce and key).
pub fn verify(
    quote: &[u8],
    collateral: Option<&Collateral>,
    reference: &TdxReference,
    want_report_data: &[u8; 64],
    opts: &Options,
) -> Result<Verified, TdxError> {
    let mut log = Log::new(opts);
    let td = match collateral {
        Some(Collateral(c)) => {
            check_fresh(c, opts.at)?;
            log.ok(format!(
                "the collateral (TCB info, QE identity, CRLs) is valid at {}",
                rfc3339(i64::try_from(opts.at).unwrap_or(i64::MAX))
            ));
            let verified = QuoteVerifier::new_prod()
                .verify(quote, c, opts.at)
                .map_err(|e| {
                    let why = format!("{e:#}");
                    // dcap-qvl's words when the platform's TCB is below every level listed.
                    if why.contains("No matching TCB level") {
                        TdxError::TcbNotListed(why)
                    } else {
                        TdxError::Chain(why)
                    }
                })?;
            log.ok("the quote is signed by a key its QE vouches for, the QE report by a PCK that chains to Intel's SGX root CA (pinned), none revoked; TCB info and QE identity are signed by Intel");
            let status = verified.status.clone();
            if !reference.tcb_status.iter().any(|s| s == &status) {
                return Err(TdxError::TcbStatus {
                    status,
                    advisories: if verified.advisory_ids.is_empty() {
                        "none".into()
                    } else {
                        verified.advisory_ids.join(", ")
                    },
                    allowed: reference.tcb_status.join(", "),
                });
            }
            log.ok(format!(
                "the platform's TCB status is {status}, which the reference values accept"
            ));
            *verified.report.as_td10().ok_or(TdxError::NotTd)?
        }
        None => {
            log.cannot(
                "the quote's signature, its PCK chain to Intel's SGX root CA, the collateral and the TCB status (no collateral given)",
                TdxError::NoCollateral,
            )?;
            let q = Quote::parse(quote).map_err(|e| TdxError::Quote(format!("{e:#}")))?;
            if ![4, 5].contains(&q.header.version) {
                return Err(TdxError::Quote(format!(
                    "version {}, not 4 or 5",
                    q.header.version
                )));
            }
            *q.report.as_td10().ok_or(TdxError::NotTd)?
        }
    };
    check_td(&mut log, &td, reference, want_report_data)?;
    Ok(log.finish("tdx", td.report_data))
}

/// The checks on the TD report itself.
fn check_td(
    log: &mut Log,
    td: &TDReport10,
    r: &TdxReference,
    want_report_data: &[u8; 64],
) -> Result<(), TdxError> {
    if td.td_attributes[0] & 1 != 0 {
        return Err(TdxError::Debug);
    }
    log.ok("the TD's DEBUG attribute is off");
    let u = &r.unpinned;
    values::pin(log, "tdx", "mrtd", &td.mr_td, r.mrtd.as_ref(), u)?;
    values::pin(log, "tdx", "rtmr0", &td.rt_mr0, r.rtmr0.as_ref(), u)?;
    values::pin(log, "tdx", "rtmr1", &td.rt_mr1, r.rtmr1.as_ref(), u)?;
    values::pin(log, "tdx", "rtmr2", &td.rt_mr2, r.rtmr2.as_ref(), u)?;
    values::pin(log, "tdx", "rtmr3", &td.rt_mr3, r.rtmr3.as_ref(), u)?;
    values::pin(
        log,
        "tdx",
        "mrconfigid",
        &td.mr_config_id,
        r.mrconfigid.as_ref(),
        u,
    )?;
    values::report_data(log, &td.report_data, want_report_data)?;
    Ok(())
}

#[cfg(test)]
mod tests;
