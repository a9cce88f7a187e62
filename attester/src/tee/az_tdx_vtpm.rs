//! Azure TDX confidential VMs: the guest runs behind a paravisor and attests through its vTPM
//! (crate `az-tdx-vtpm`, `attester` feature: needs libtss2); the TD quote comes from Azure's
//! IMDS for the TD report inside the HCL report. Compiled only with the `azure` feature.
//! Evidence `{"version":1,"tpm_quote":{"signature":hex,"message":hex,"pcrs":[hex;24]},
//! "hcl_report":b64url,"td_quote":b64url}`: Trustee's `EvidenceV1` (trustee
//! `deps/verifier/src/az_tdx_vtpm/compat.rs`, which does not check the number; the shared
//! fixture `az-tdx-vtpm/evidence-v1.json` carries 1). Also the vTPM helpers the SNP variant
//! shares. Untested without Azure hardware: unit tests cover only the JSON shaping.

use std::path::Path;

use async_trait::async_trait;
use az_tdx_vtpm::{hcl, imds, is_tdx_cvm, tdx, vtpm};
use base64::Engine;

use super::{Attester, AttesterError, InitDataBinding, Tee};
use crate::report_data::ReportData;

/// The PCR CoCo extends initdata into on vTPM platforms.
pub(crate) const INIT_DATA_PCR: u64 = 8;

/// The Azure TDX vTPM platform.
#[derive(Debug, Default)]
pub struct AzTdxVtpmAttester;

/// Probes only on the real root with a TPM (`/dev/tpmrm0`), like the SNP variant.
pub(crate) fn probe(root: &Path) -> Option<AzTdxVtpmAttester> {
    if root != Path::new("/") || !root.join("dev/tpmrm0").exists() {
        return None;
    }
    match is_tdx_cvm() {
        Ok(true) => Some(AzTdxVtpmAttester),
        Ok(false) => None,
        Err(e) => {
            tracing::debug!(error = %e, "no Azure HCL report in the vTPM");
            None
        }
    }
}

pub(crate) fn azure_error(tee: Tee, what: &str, e: impl std::fmt::Display) -> AttesterError {
    AttesterError::Malformed {
        tee,
        detail: format!("{what}: {e}"),
    }
}

/// base64url with padding, as serde_with's `Base64<UrlSafe>` writes it.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

/// The hex form of a vTPM quote (Trustee's `TpmQuote`).
pub(crate) fn tpm_quote_json(quote: &vtpm::Quote) -> serde_json::Value {
    let pcrs: Vec<String> = quote.pcrs_sha256().map(hex::encode).collect();
    serde_json::json!({
        "signature": hex::encode(quote.signature()),
        "message": hex::encode(quote.message()),
        "pcrs": pcrs,
    })
}

/// Runs TPM and IMDS calls (blocking I/O) on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    tee: Tee,
    f: impl FnOnce() -> Result<T, AttesterError> + Send + 'static,
) -> Result<T, AttesterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| azure_error(tee, "vTPM task", e))?
}

/// Extends a vTPM PCR (0..=23) with a SHA-256 digest.
pub(crate) async fn extend_pcr(
    tee: Tee,
    digest: &[u8],
    register: u64,
) -> Result<(), AttesterError> {
    let digest: [u8; 32] = digest.try_into().map_err(|_| AttesterError::Malformed {
        tee,
        detail: format!(
            "a vTPM PCR digest is 32 bytes (SHA-256), not {}",
            digest.len()
        ),
    })?;
    let pcr = u8::try_from(register)
        .ok()
        .filter(|p| *p <= 23)
        .ok_or_else(|| AttesterError::Malformed {
            tee,
            detail: format!("PCR {register} does not exist (0..=23)"),
        })?;
    blocking(tee, move || {
        vtpm::extend_pcr(pcr, &digest).map_err(|e| azure_error(tee, "extending a PCR", e))
    })
    .await
}

#[async_trait]
impl Attester for AzTdxVtpmAttester {
    fn tee(&self) -> Tee {
        Tee::AzTdxVtpm
    }

    async fn evidence(&self, report_data: &ReportData) -> Result<serde_json::Value, AttesterError> {
        let tee = Tee::AzTdxVtpm;
        let rd = report_data.as_bytes().to_vec();
        blocking(tee, move || {
            let hcl_bytes = vtpm::get_report().map_err(|e| azure_error(tee, "HCL report", e))?;
            let hcl_report = hcl::HclReport::new(hcl_bytes.clone())
                .map_err(|e| azure_error(tee, "HCL report", e))?;
            let td_report: tdx::TdReport = (&hcl_report)
                .try_into()
                .map_err(|e| azure_error(tee, "TD report", e))?;
            let td_quote =
                imds::get_td_quote(&td_report).map_err(|e| azure_error(tee, "IMDS TD quote", e))?;
            let quote = vtpm::get_quote(&rd).map_err(|e| azure_error(tee, "vTPM quote", e))?;
            Ok(serde_json::json!({
                "version": 1,
                "tpm_quote": tpm_quote_json(&quote),
                "hcl_report": b64url(&hcl_bytes),
                "td_quote": b64url(&td_quote),
            }))
        })
        .await
    }

    async fn extend_runtime_measurement(
        &self,
        digest: &[u8],
        register: u64,
    ) -> Result<(), AttesterError> {
        extend_pcr(Tee::AzTdxVtpm, digest, register).await
    }

    /// Extends PCR 8 with the (SHA-256) initdata digest, as CoCo does on vTPM platforms.
    async fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        extend_pcr(Tee::AzTdxVtpm, digest, INIT_DATA_PCR).await?;
        Ok(InitDataBinding::Extended {
            register: INIT_DATA_PCR,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pcr_arguments_are_checked_before_the_tpm_is_touched() {
        assert!(extend_pcr(Tee::AzTdxVtpm, &[0; 48], 8).await.is_err());
        assert!(extend_pcr(Tee::AzTdxVtpm, &[0; 32], 24).await.is_err());
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8=");
        assert!(probe(&std::env::temp_dir()).is_none());
    }
}
