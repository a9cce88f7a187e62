//! Azure SEV-SNP confidential VMs: the guest runs behind a paravisor and attests through its
//! vTPM (crate `az-snp-vtpm`, `attester` feature: needs libtss2). Compiled only with the
//! `azure` feature. Evidence version 2 (see [`super::az_evidence`]), as CoCo's attester
//! (guest-components 8246e5e0, `attestation-agent/attester/src/az_snp_vtpm/mod.rs`) writes it
//! and Trustee's `EvidenceV2` (trustee 78962cd4, `deps/verifier/src/az_snp_vtpm/compat.rs`)
//! reads it: v2 puts the report data in the HCL runtime data's `user-data` as well as in the
//! TPM quote. Untested without Azure hardware: unit tests cover the JSON shaping (in
//! `az_evidence`, against the real v2 fixture) and the PEM decoding.

use std::path::Path;

use async_trait::async_trait;
use az_snp_vtpm::{imds, is_snp_cvm, vtpm};

use super::az_evidence::snp_evidence;
use super::az_tdx_vtpm::{INIT_DATA_PCR, azure_error, blocking, extend_pcr, quote_parts};
use super::{Attester, AttesterError, InitDataBinding, Tee};
use crate::report_data::ReportData;

/// The Azure SEV-SNP vTPM platform.
#[derive(Debug, Default)]
pub struct AzSnpVtpmAttester;

/// Probes only on the real root with a TPM (`/dev/tpmrm0`): the crate talks to the TPM device
/// itself and reads the HCL report's type from its NV index.
pub(crate) fn probe(root: &Path) -> Option<AzSnpVtpmAttester> {
    if root != Path::new("/") || !root.join("dev/tpmrm0").exists() {
        return None;
    }
    match is_snp_cvm() {
        Ok(true) => Some(AzSnpVtpmAttester),
        Ok(false) => None,
        Err(e) => {
            tracing::debug!(error = %e, "no Azure HCL report in the vTPM");
            None
        }
    }
}

/// DER from a PEM certificate (IMDS returns the VCEK as PEM).
pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err("no PEM certificate".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| format!("PEM body: {e}"))
}

#[async_trait]
impl Attester for AzSnpVtpmAttester {
    fn tee(&self) -> Tee {
        Tee::AzSnpVtpm
    }

    async fn evidence(&self, report_data: &ReportData) -> Result<serde_json::Value, AttesterError> {
        let tee = Tee::AzSnpVtpm;
        let rd = report_data.as_bytes().to_vec();
        blocking(tee, move || {
            let hcl_report = vtpm::get_report_with_report_data(&rd)
                .map_err(|e| azure_error(tee, "HCL report", e))?;
            let quote = vtpm::get_quote(&rd).map_err(|e| azure_error(tee, "vTPM quote", e))?;
            let certs = imds::get_certs().map_err(|e| azure_error(tee, "IMDS certificates", e))?;
            let vcek = pem_to_der(&certs.vcek).map_err(|e| azure_error(tee, "VCEK", e))?;
            Ok(snp_evidence(&quote_parts(&quote), &hcl_report, &vcek))
        })
        .await
    }

    async fn extend_runtime_measurement(
        &self,
        digest: &[u8],
        register: u64,
    ) -> Result<(), AttesterError> {
        extend_pcr(Tee::AzSnpVtpm, digest, register).await
    }

    /// Extends PCR 8 with the (SHA-256) initdata digest, as CoCo does on vTPM platforms.
    async fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        extend_pcr(Tee::AzSnpVtpm, digest, INIT_DATA_PCR).await?;
        Ok(InitDataBinding::Extended {
            register: INIT_DATA_PCR,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_becomes_der() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n0zCC\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_to_der(pem).unwrap(),
            [0x30, 0x82, 0x01, 0xd3, 0x30, 0x82]
        );
        assert!(pem_to_der("garbage").is_err());
        assert!(probe(&std::env::temp_dir()).is_none());
    }
}
