//! The one place where service errors become ttrpc status codes.

use ttrpc::Code;
use ward_attester::kbs::KbsError;
use ward_attester::tee::AttesterError;

use crate::attestation::AttestationError;

/// Maps an attestation error to the status the caller sees. Messages name URIs and causes,
/// never secret values (the errors carry none).
pub fn attestation(e: &AttestationError) -> ttrpc::Error {
    let code = match e {
        AttestationError::NoTee(_) | AttestationError::NoKbs => Code::FAILED_PRECONDITION,
        AttestationError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
        AttestationError::Audit(_) => Code::INTERNAL,
        AttestationError::Evidence(AttesterError::NotSupported { .. }) => Code::UNIMPLEMENTED,
        AttestationError::Evidence(AttesterError::InitDataMismatch { .. }) => {
            Code::FAILED_PRECONDITION
        }
        AttestationError::EventLog(ward_attester::eventlog::EventLogError::Invalid(_)) => {
            Code::INVALID_ARGUMENT
        }
        AttestationError::EventLog(_) => Code::INTERNAL,
        AttestationError::Evidence(_) => Code::INTERNAL,
        AttestationError::Kbs(k) => match k {
            KbsError::PolicyDenied { .. } => Code::PERMISSION_DENIED,
            KbsError::ResourceUnavailable { .. } => Code::NOT_FOUND,
            KbsError::Unreachable { .. } => Code::UNAVAILABLE,
            KbsError::Certificate { .. } => Code::FAILED_PRECONDITION,
            KbsError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
            KbsError::AttestationRejected { .. } | KbsError::Unauthorized { .. } => {
                Code::UNAUTHENTICATED
            }
            KbsError::Config(_) => Code::FAILED_PRECONDITION,
            KbsError::Status { .. }
            | KbsError::Protocol { .. }
            | KbsError::Jwe { .. }
            | KbsError::Evidence(_)
            | KbsError::Crypto(_) => Code::INTERNAL,
        },
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}
