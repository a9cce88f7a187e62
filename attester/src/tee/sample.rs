//! The `sample` TEE: development-only evidence that proves nothing, in the shape Trustee's
//! sample verifier parses: `{"svn": "1", "report_data": base64(report data as given)}`.

use async_trait::async_trait;
use base64::Engine;

use super::{Attester, AttesterError, InitDataBinding, Tee};
use crate::report_data::ReportData;

/// The development TEE. Chosen only when enabled explicitly; see [`super::detect`].
#[derive(Debug, Default)]
pub struct SampleAttester;

#[async_trait]
impl Attester for SampleAttester {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    async fn evidence(&self, report_data: &ReportData) -> Result<serde_json::Value, AttesterError> {
        Ok(serde_json::json!({
            "svn": "1",
            "report_data": base64::engine::general_purpose::STANDARD.encode(report_data.as_bytes()),
        }))
    }

    async fn extend_runtime_measurement(
        &self,
        _digest: &[u8],
        _register: u64,
    ) -> Result<(), AttesterError> {
        // Nothing to extend; the event log still records the event.
        Ok(())
    }

    async fn bind_init_data(&self, _digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        Ok(InitDataBinding::Unbound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn evidence_carries_the_report_data_unpadded() {
        let rd = ReportData::new(vec![0xab; 48]).unwrap();
        let ev = SampleAttester.evidence(&rd).await.unwrap();
        assert_eq!(ev["svn"], "1");
        let b = base64::engine::general_purpose::STANDARD
            .decode(ev["report_data"].as_str().unwrap())
            .unwrap();
        assert_eq!(b, vec![0xab; 48]);
    }
}
