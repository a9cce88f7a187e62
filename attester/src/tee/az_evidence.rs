//! The JSON of Azure vTPM evidence, version 2, kept apart from the TPM and IMDS calls (which
//! need the `azure` feature and Azure hardware) so the wire shape is built and tested in every
//! build.
//!
//! Version 2 is what CoCo's attesters write (guest-components 8246e5e0,
//! `attestation-agent/attester/src/az_snp_vtpm/mod.rs` and `.../az_tdx_vtpm/mod.rs`, both
//! `EVIDENCE_VERSION = 2`): `{"version":2,"tpm_quote":{"signature":hex,"message":hex,
//! "pcrs":[hex;24]},"hcl_report":b64url,` and `"vcek":b64url` (SNP, DER) or `"td_quote":b64url`
//! (TDX)`}`, base64url with padding as serde_with's `Base64<UrlSafe>` writes it. It is
//! structurally version 1, but the HCL report is fetched with the report data
//! (`vtpm::get_report_with_report_data`), which puts it in the HCL runtime data's `user-data`;
//! Trustee (78962cd4, `deps/verifier/src/az_{snp,tdx}_vtpm/compat.rs` `EvidenceV2`, and
//! `verify_user_data` in `az_snp_vtpm/mod.rs`) checks that field only when the version is 2 or
//! more, so a version 1 document would skip a binding check the KBS makes for CoCo.

use base64::Engine;

/// The number CoCo and Trustee call the evidence version.
pub(crate) const EVIDENCE_VERSION: u32 = 2;

/// A vTPM quote, as the evidence carries it (Trustee's `TpmQuote`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TpmQuoteParts {
    /// RSA signature over `message`.
    pub signature: Vec<u8>,
    /// The TPMS_ATTEST structure (nonce and PCR digest).
    pub message: Vec<u8>,
    /// The 24 SHA-256 PCRs, in order.
    pub pcrs: Vec<Vec<u8>>,
}

/// base64url with padding, as serde_with's `Base64<UrlSafe>` writes it.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

fn tpm_quote_json(quote: &TpmQuoteParts) -> serde_json::Value {
    let pcrs: Vec<String> = quote.pcrs.iter().map(hex::encode).collect();
    serde_json::json!({
        "signature": hex::encode(&quote.signature),
        "message": hex::encode(&quote.message),
        "pcrs": pcrs,
    })
}

/// Azure SEV-SNP vTPM evidence: the HCL report (with the report data in `user-data`), the vTPM
/// quote over the report data and the VCEK (DER).
pub(crate) fn snp_evidence(
    quote: &TpmQuoteParts,
    hcl_report: &[u8],
    vcek_der: &[u8],
) -> serde_json::Value {
    serde_json::json!({
        "version": EVIDENCE_VERSION,
        "tpm_quote": tpm_quote_json(quote),
        "hcl_report": b64url(hcl_report),
        "vcek": b64url(vcek_der),
    })
}

/// Azure TDX vTPM evidence: the HCL report (with the report data in `user-data`), the vTPM
/// quote over the report data and the TD quote IMDS made of the HCL report's TD report.
pub(crate) fn tdx_evidence(
    quote: &TpmQuoteParts,
    hcl_report: &[u8],
    td_quote: &[u8],
) -> serde_json::Value {
    serde_json::json!({
        "version": EVIDENCE_VERSION,
        "tpm_quote": tpm_quote_json(quote),
        "hcl_report": b64url(hcl_report),
        "td_quote": b64url(td_quote),
    })
}

#[cfg(test)]
mod tests;
