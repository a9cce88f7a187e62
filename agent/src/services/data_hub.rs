//! The confidential-data-hub services wardd implements: `api.GetResourceService`.

use std::sync::Arc;

use async_trait::async_trait;
use ttrpc::asynchronous::TtrpcContext;
use ward_protos::confidential_data_hub::{GetResourceRequest, GetResourceResponse};
use ward_protos::confidential_data_hub_ttrpc::GetResourceService;

use super::status;
use crate::attestation::Attestation;

pub(super) struct GetResource {
    attestation: Arc<Attestation>,
}

impl GetResource {
    pub(super) fn new(attestation: Arc<Attestation>) -> GetResource {
        GetResource { attestation }
    }
}

#[async_trait]
impl GetResourceService for GetResource {
    /// `ResourcePath` is `kbs:///repo/type/tag` (or CoCo's bare `repo/type/tag`).
    async fn get_resource(
        &self,
        _ctx: &TtrpcContext,
        req: GetResourceRequest,
    ) -> ttrpc::Result<GetResourceResponse> {
        let value = self
            .attestation
            .resource(&req.ResourcePath)
            .await
            .map_err(|e| status::attestation(&e))?;
        Ok(GetResourceResponse {
            Resource: value.to_vec(),
            ..Default::default()
        })
    }
}
