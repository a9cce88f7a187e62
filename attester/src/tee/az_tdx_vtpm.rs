//! Azure TDX confidential VMs: the guest runs behind a paravisor and attests through its vTPM
//! (crate `az-tdx-vtpm`, `attester` feature: needs libtss2); the TD quote comes from Azure's
//! IMDS for the TD report inside the HCL report. Compiled only with the `azure` feature.
//! Evidence version 2 (see [`super::az_evidence`]): the HCL report is fetched with the report
//! data, as CoCo's attester does (guest-components 8246e5e0,
//! `attestation-agent/attester/src/az_tdx_vtpm/mod.rs`), so Trustee's `EvidenceV2` path also
//! checks the HCL `user-data` (trustee 78962cd4, `deps/verifier/src/az_tdx_vtpm/mod.rs`).
//! Also the vTPM helpers the SNP variant shares. Untested without Azure hardware: unit tests
//! cover the JSON shaping (in `az_evidence`) and the argument checks.

use std::path::Path;

use async_trait::async_trait;
use az_tdx_vtpm::{hcl, imds, is_tdx_cvm, tdx, vtpm};

use super::az_evidence::{TpmQuoteParts, tdx_evidence};
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

/// The parts of a vTPM quote the evidence carries (Trustee's `TpmQuote`).
pub(crate) fn quote_parts(quote: &vtpm::Quote) -> TpmQuoteParts {
    TpmQuoteParts {
        signature: quote.signature(),
        message: quote.message(),
        pcrs: quote.pcrs_sha256().map(|p| p.to_vec()).collect(),
    }
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
            // v2: the report data goes into the HCL runtime data's `user-data` too
            let hcl_bytes = vtpm::get_report_with_report_data(&rd)
                .map_err(|e| azure_error(tee, "HCL report", e))?;
            let hcl_report = hcl::HclReport::new(hcl_bytes.clone())
                .map_err(|e| azure_error(tee, "HCL report", e))?;
            let td_report: tdx::TdReport = (&hcl_report)
                .try_into()
                .map_err(|e| azure_error(tee, "TD report", e))?;
            let td_quote =
                imds::get_td_quote(&td_report).map_err(|e| azure_error(tee, "IMDS TD quote", e))?;
            let quote = vtpm::get_quote(&rd).map_err(|e| azure_error(tee, "vTPM quote", e))?;
            Ok(tdx_evidence(&quote_parts(&quote), &hcl_bytes, &td_quote))
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
        assert!(probe(&std::env::temp_dir()).is_none());
    }
}
