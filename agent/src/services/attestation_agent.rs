//! `attestation_agent.AttestationAgentService`, CoCo-compatible, over wardd's shared attester
//! and KBS session.

use std::sync::Arc;

use async_trait::async_trait;
use ttrpc::asynchronous::TtrpcContext;
use ward_protos::attestation_agent::{
    BindInitDataRequest, BindInitDataResponse, ExtendRuntimeMeasurementRequest,
    ExtendRuntimeMeasurementResponse, GetAdditionalEvidenceRequest, GetAdditionalTeesRequest,
    GetAdditionalTeesResponse, GetEvidenceRequest, GetEvidenceResponse, GetTeeTypeRequest,
    GetTeeTypeResponse, GetTokenRequest, GetTokenResponse, RuntimeMeasurementResult,
};
use ward_protos::attestation_agent_ttrpc::AttestationAgentService;

use super::status;
use crate::attestation::{Attestation, Extended};

pub(super) struct AttestationAgent {
    attestation: Arc<Attestation>,
}

impl AttestationAgent {
    pub(super) fn new(attestation: Arc<Attestation>) -> AttestationAgent {
        AttestationAgent { attestation }
    }
}

#[async_trait]
impl AttestationAgentService for AttestationAgent {
    async fn get_evidence(
        &self,
        _ctx: &TtrpcContext,
        req: GetEvidenceRequest,
    ) -> ttrpc::Result<GetEvidenceResponse> {
        let evidence = self
            .attestation
            .evidence(&req.RuntimeData)
            .await
            .map_err(|e| status::attestation(&e))?;
        Ok(GetEvidenceResponse {
            Evidence: evidence,
            ..Default::default()
        })
    }

    /// `{"<tee>": evidence}` over the device attesters; empty bytes without devices, as CoCo.
    async fn get_additional_evidence(
        &self,
        _ctx: &TtrpcContext,
        req: GetAdditionalEvidenceRequest,
    ) -> ttrpc::Result<GetEvidenceResponse> {
        let evidence = self
            .attestation
            .additional_evidence(&req.RuntimeData)
            .await
            .map_err(|e| status::attestation(&e))?;
        Ok(GetEvidenceResponse {
            Evidence: evidence,
            ..Default::default()
        })
    }

    async fn get_token(
        &self,
        _ctx: &TtrpcContext,
        req: GetTokenRequest,
    ) -> ttrpc::Result<GetTokenResponse> {
        let token = self
            .attestation
            .token(&req.TokenType)
            .await
            .map_err(|e| status::attestation(&e))?;
        Ok(GetTokenResponse {
            Token: token.to_vec(),
            ..Default::default()
        })
    }

    async fn extend_runtime_measurement(
        &self,
        _ctx: &TtrpcContext,
        req: ExtendRuntimeMeasurementRequest,
    ) -> ttrpc::Result<ExtendRuntimeMeasurementResponse> {
        let outcome = self
            .attestation
            .extend_runtime_measurement(
                &req.Domain,
                &req.Operation,
                &req.Content,
                req.RegisterIndex,
            )
            .await
            .map_err(|e| status::attestation(&e))?;
        let result = match outcome {
            Extended::Ok => RuntimeMeasurementResult::OK,
            Extended::NotSupported => RuntimeMeasurementResult::NOT_SUPPORTED,
            Extended::NotEnabled => RuntimeMeasurementResult::NOT_ENABLED,
        };
        Ok(ExtendRuntimeMeasurementResponse {
            Result: result.into(),
            ..Default::default()
        })
    }

    async fn bind_init_data(
        &self,
        _ctx: &TtrpcContext,
        req: BindInitDataRequest,
    ) -> ttrpc::Result<BindInitDataResponse> {
        self.attestation
            .bind_init_data(&req.Digest)
            .await
            .map_err(|e| status::attestation(&e))?;
        Ok(BindInitDataResponse::default())
    }

    async fn get_tee_type(
        &self,
        _ctx: &TtrpcContext,
        _req: GetTeeTypeRequest,
    ) -> ttrpc::Result<GetTeeTypeResponse> {
        let tee = self
            .attestation
            .tee()
            .map_err(|e| status::attestation(&e))?;
        Ok(GetTeeTypeResponse {
            tee: tee.to_string(),
            ..Default::default()
        })
    }

    async fn get_additional_tees(
        &self,
        _ctx: &TtrpcContext,
        _req: GetAdditionalTeesRequest,
    ) -> ttrpc::Result<GetAdditionalTeesResponse> {
        Ok(GetAdditionalTeesResponse {
            additional_tees: self.attestation.additional_tees(),
            ..Default::default()
        })
    }
}
