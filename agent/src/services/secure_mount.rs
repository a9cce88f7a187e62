//! `api.SecureMountService/SecureMount` over [`crate::secure_mount`].
//!
//! CoCo's CDH (guest-components 8246e5e0, `hub/src/bin/ttrpc_server/mod.rs`) answers every
//! failure `INTERNAL` with "[CDH] [ERROR]: Secure Mount failed", and kata-agent (7c6ba40c) only
//! checks for an error. ward keeps finer codes (a malformed request is `INVALID_ARGUMENT`, a
//! missing tool `FAILED_PRECONDITION`, a refused key `PERMISSION_DENIED`) under the same
//! "[CDH] [ERROR]: Secure Mount failed" prefix, followed by the reason.

use std::sync::Arc;

use async_trait::async_trait;
use ttrpc::Code;
use ttrpc::asynchronous::TtrpcContext;
use ward_protos::confidential_data_hub::{SecureMountRequest, SecureMountResponse};
use ward_protos::confidential_data_hub_ttrpc::SecureMountService;

use crate::secure_mount::{SecureMountError, SecureMounts};

pub(super) struct SecureMount {
    mounts: Arc<SecureMounts>,
}

impl SecureMount {
    pub(super) fn new(mounts: Arc<SecureMounts>) -> SecureMount {
        SecureMount { mounts }
    }
}

fn status(e: &SecureMountError) -> ttrpc::Error {
    use SecureMountError as E;
    let code = match e {
        E::VolumeType(_) | E::Unsupported(_) => Code::UNIMPLEMENTED,
        E::Options(_)
        | E::DeviceId
        | E::NoDevice
        | E::KeyScheme
        | E::MapperName(_)
        | E::MountPoint(_) => Code::INVALID_ARGUMENT,
        E::NoDeviceFound { .. } | E::NotBlockDevice(_) => Code::NOT_FOUND,
        E::FileKeysOff | E::ToolMissing(_) => Code::FAILED_PRECONDITION,
        E::Key { .. } => Code::PERMISSION_DENIED,
        E::InUse(_) => Code::ALREADY_EXISTS,
        E::Tool { .. } | E::Mount { .. } | E::Io { .. } => Code::INTERNAL,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        code,
        format!("[CDH] [ERROR]: Secure Mount failed: {e}"),
    ))
}

#[async_trait]
impl SecureMountService for SecureMount {
    async fn secure_mount(
        &self,
        _ctx: &TtrpcContext,
        req: SecureMountRequest,
    ) -> ttrpc::Result<SecureMountResponse> {
        // CDH ignores `flags`; so does ward.
        self.mounts
            .mount(&req.volume_type, &req.options, &req.mount_point)
            .await
            .map_err(|e| status(&e))?;
        Ok(SecureMountResponse::default())
    }
}
