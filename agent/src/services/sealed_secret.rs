//! `api.SealedSecretService/UnsealSecret`: verify the sealed secret's signature, then release the
//! KBS resource it names.

use std::sync::Arc;

use async_trait::async_trait;
use ttrpc::Code;
use ttrpc::asynchronous::TtrpcContext;
use ward_protos::confidential_data_hub::{UnsealSecretInput, UnsealSecretOutput};
use ward_protos::confidential_data_hub_ttrpc::SealedSecretService;

use super::status;
use crate::attestation::Attestation;
use crate::unseal::{self, SealedSecretError, UnsealError};

pub(super) struct Unsealer {
    attestation: Arc<Attestation>,
}

impl Unsealer {
    pub(super) fn new(attestation: Arc<Attestation>) -> Unsealer {
        Unsealer { attestation }
    }
}

fn refused(e: &SealedSecretError) -> ttrpc::Error {
    let code = match e {
        SealedSecretError::Format(_) | SealedSecretError::Algorithm(_) => Code::INVALID_ARGUMENT,
        SealedSecretError::Key { .. } => Code::FAILED_PRECONDITION,
        SealedSecretError::Signature(_) => Code::UNAUTHENTICATED,
        SealedSecretError::Unsupported(_) => Code::UNIMPLEMENTED,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

#[async_trait]
impl SealedSecretService for Unsealer {
    async fn unseal_secret(
        &self,
        _ctx: &TtrpcContext,
        req: UnsealSecretInput,
    ) -> ttrpc::Result<UnsealSecretOutput> {
        let value = unseal::unseal(&self.attestation, &req.secret)
            .await
            .map_err(|e| match e {
                UnsealError::Sealed(e) => refused(&e),
                UnsealError::Attestation(e) => status::attestation(&e),
            })?;
        Ok(UnsealSecretOutput {
            plaintext: value.to_vec(),
            ..Default::default()
        })
    }
}
