//! `api.ImagePullService/PullImage` and `keyprovider.KeyProviderService/UnWrapKey`, over
//! wardd's puller and the KBS-backed key-encryption keys.

use std::sync::Arc;

use async_trait::async_trait;
use ttrpc::Code;
use ttrpc::asynchronous::TtrpcContext;
use ward_protos::confidential_data_hub::{ImagePullRequest, ImagePullResponse};
use ward_protos::confidential_data_hub_ttrpc::ImagePullService;
use ward_protos::keyprovider::{KeyProviderKeyWrapProtocolInput, KeyProviderKeyWrapProtocolOutput};
use ward_protos::keyprovider_ttrpc::KeyProviderService;

use crate::images::{Images, ImagesError};

fn status(e: &ImagesError) -> ttrpc::Error {
    use ward_image::pull::PullError;
    let code = match e {
        ImagesError::BundlePath(_) => Code::INVALID_ARGUMENT,
        ImagesError::Setup(_) => Code::FAILED_PRECONDITION,
        ImagesError::Unwrap(_) => Code::PERMISSION_DENIED,
        ImagesError::UnwrapRequest(_) => Code::INVALID_ARGUMENT,
        ImagesError::Measurement(_) => Code::INTERNAL,
        ImagesError::Pull(p) => match p {
            PullError::Registry(_) => Code::UNAVAILABLE,
            PullError::Policy(ward_image::policy::PolicyError::Fetch { .. }) => Code::UNAVAILABLE,
            PullError::Policy(_) => Code::PERMISSION_DENIED,
            PullError::NoKey { .. } | PullError::Decrypt { .. } => Code::PERMISSION_DENIED,
            PullError::MediaType { .. } | PullError::User { .. } => Code::INVALID_ARGUMENT,
            PullError::DiffId { .. } | PullError::Unpack { .. } => Code::DATA_LOSS,
            PullError::NoSpace { .. } | PullError::Full { .. } => Code::RESOURCE_EXHAUSTED,
            PullError::Space { .. } => Code::INVALID_ARGUMENT,
            PullError::Io { .. } => Code::INTERNAL,
        },
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

pub(super) struct ImagePuller {
    images: Arc<Images>,
}

impl ImagePuller {
    pub(super) fn new(images: Arc<Images>) -> ImagePuller {
        ImagePuller { images }
    }
}

#[async_trait]
impl ImagePullService for ImagePuller {
    async fn pull_image(
        &self,
        _ctx: &TtrpcContext,
        req: ImagePullRequest,
    ) -> ttrpc::Result<ImagePullResponse> {
        let pulled = self
            .images
            .pull(&req.image_url, &req.bundle_path)
            .await
            .map_err(|e| status(&e))?;
        Ok(ImagePullResponse {
            manifest_digest: pulled.manifest_digest.to_string(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl KeyProviderService for ImagePuller {
    async fn un_wrap_key(
        &self,
        _ctx: &TtrpcContext,
        req: KeyProviderKeyWrapProtocolInput,
    ) -> ttrpc::Result<KeyProviderKeyWrapProtocolOutput> {
        let out = self
            .images
            .unwrap_key(&req.KeyProviderKeyWrapProtocolInput)
            .await
            .map_err(|e| status(&e))?;
        Ok(KeyProviderKeyWrapProtocolOutput {
            KeyProviderKeyWrapProtocolOutput: out.to_vec(),
            ..Default::default()
        })
    }

    /// Wrapping is the owner's job (`ward` encrypts images), never the guest's.
    async fn wrap_key(
        &self,
        _ctx: &TtrpcContext,
        _req: KeyProviderKeyWrapProtocolInput,
    ) -> ttrpc::Result<KeyProviderKeyWrapProtocolOutput> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            Code::UNIMPLEMENTED,
            "WrapKey is the image owner's operation; wardd only unwraps",
        )))
    }
}
