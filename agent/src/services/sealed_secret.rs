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
use crate::unseal::{self, Sealed, SealedSecretError};

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
        let unverified = unseal::parse(&req.secret).map_err(|e| refused(&e))?;
        let kid = unverified.kid().to_string();
        let jwk = if kid.starts_with("kbs:") {
            self.attestation
                .resource(&kid)
                .await
                .map_err(|e| status::attestation(&e))?
        } else {
            let dir = std::path::Path::new(unseal::DEFAULT_KEY_DIR);
            let path = unseal::local_key_path(dir, &kid).map_err(|e| refused(&e))?;
            zeroize::Zeroizing::new(tokio::fs::read(&path).await.map_err(|e| {
                refused(&SealedSecretError::Key {
                    kid: kid.clone(),
                    detail: format!("{}: {e}", path.display()),
                })
            })?)
        };
        let Sealed::Vault { name } = unverified.verify(&jwk).map_err(|e| refused(&e))?;
        let value = self
            .attestation
            .resource(&name)
            .await
            .map_err(|e| status::attestation(&e))?;
        Ok(UnsealSecretOutput {
            plaintext: value.to_vec(),
            ..Default::default()
        })
    }
}
