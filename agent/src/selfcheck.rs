//! The start-up self-check (`ward.self_check=`, `ward.self_check_resource=`): once wardd is
//! ready it calls its own health service on every ttrpc listener that serves it, vsock ones
//! through the local CID (1, which needs the `vsock_loopback` module in a guest); on every ttrpc
//! listener that serves inference it fetches an attestation for a fresh nonce, sends an
//! encrypted request (for a model that does not exist: the sealed answer must be OpenAI's 404)
//! and, where the listener is encrypted-only, checks that plaintext is refused (415); and, when
//! asked, it fetches one KBS resource through the shared session and pulls one image into a
//! scratch bundle (`/run/ward/self-check`), as clients in the guest would.
//! A booted image proves its whole path this way with no second program in it.
//!
//! Never logs a resource's value: only its URI and size (the release is audited as any other).

use std::time::Duration;

use crate::attestation::{Attestation, AttestationError};
use crate::client::{ClientError, HealthClient};
use crate::config::ServiceKind;
use crate::config::{Listener, Protocol, SelfCheckSettings};
use crate::images::{Images, ImagesError};
use crate::listen::{ListenAddr, VSOCK_CID_ANY};

mod inference;
pub mod volume;

/// `VMADDR_CID_LOCAL`: this guest, through the vsock loopback transport.
const VSOCK_CID_LOCAL: u32 = 1;

/// What failed in the self-check.
#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    /// A listener did not answer its health check.
    #[error("health check on {addr}: {source}")]
    Health {
        addr: String,
        #[source]
        source: ClientError,
    },
    /// A listener answered but does not say it is serving.
    #[error("health check on {addr}: status {status}, not SERVING")]
    NotServing { addr: String, status: String },
    /// The health check did not finish in time.
    #[error("health check on {addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The KBS resource could not be fetched.
    #[error("resource {uri}: {source}")]
    Resource {
        uri: String,
        #[source]
        source: AttestationError,
    },
    /// The image could not be pulled.
    #[error("image {image}: {source}")]
    Image {
        image: String,
        #[source]
        source: ImagesError,
    },
    /// A SecureMount volume could not be mounted or used.
    #[error("volume {device}: {detail}")]
    Volume { device: String, detail: String },
    /// Volumes were asked for but no unix ttrpc listener serves SecureMount.
    #[error("volume {0}: no ttrpc listener serves secure-mount")]
    NoSecureMount(String),
    /// An inference listener did not answer as it should.
    #[error("inference on {addr}: {detail}")]
    Inference { addr: String, detail: String },
    /// The self-check task itself panicked or was cancelled.
    #[error("the self-check task ended abnormally: {0}")]
    Aborted(String),
    /// No ttrpc listener serves health or inference, and no resource or image was named:
    /// nothing was checked.
    #[error(
        "nothing to check: no ttrpc listener serves health or inference and no resource or \
         image was named"
    )]
    Nothing,
}

/// What the self-check saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SelfCheckReport {
    /// The addresses whose health service answered SERVING.
    pub healthy: Vec<String>,
    /// The addresses whose inference service answered an encrypted request.
    pub inference: Vec<String>,
    /// The resource fetched, with its size in bytes.
    pub resource: Option<(String, usize)>,
    /// The image pulled, with its manifest digest.
    pub image: Option<(String, String)>,
    /// The volumes SecureMount made and the self-check used.
    pub volumes: Vec<volume::VolumeReport>,
}

/// Where the self-check's image pull unpacks (under wardd's own runtime directory).
pub const BUNDLE: &str = "/run/ward/self-check";

/// The address a client inside the guest dials to reach `l`, when it speaks ttrpc and serves
/// `service`.
fn dial_address(l: &Listener, service: ServiceKind) -> Option<String> {
    if l.protocol != Protocol::Ttrpc || !l.services.contains(&service) {
        return None;
    }
    match &l.addr {
        ListenAddr::Unix(p) => Some(format!("unix://{}", p.display())),
        ListenAddr::Vsock { cid, port } => {
            let cid = if *cid == VSOCK_CID_ANY {
                VSOCK_CID_LOCAL
            } else {
                *cid
            };
            Some(format!("vsock://{cid}:{port}"))
        }
        ListenAddr::Tcp(_) => None,
    }
}

/// Runs the self-check against `listeners`, each call bounded by `timeout`.
pub async fn run(
    listeners: &[Listener],
    settings: &SelfCheckSettings,
    attestation: &Attestation,
    images: &Images,
    timeout: Duration,
) -> Result<SelfCheckReport, SelfCheckError> {
    let mut report = SelfCheckReport::default();
    for addr in listeners
        .iter()
        .filter_map(|l| dial_address(l, ServiceKind::Health))
    {
        let check = async {
            let client = HealthClient::connect(&addr, timeout).await?;
            client.check().await
        };
        let answer = tokio::time::timeout(timeout, check)
            .await
            .map_err(|_| SelfCheckError::Timeout {
                addr: addr.clone(),
                timeout,
            })?
            .map_err(|source| SelfCheckError::Health {
                addr: addr.clone(),
                source,
            })?;
        let status = answer.status.enum_value_or_default();
        if status != ward_protos::ward_health::ServingStatus::SERVING_STATUS_SERVING {
            return Err(SelfCheckError::NotServing {
                addr,
                status: format!("{status:?}"),
            });
        }
        tracing::info!(%addr, mode = %answer.mode, "self-check: health answered SERVING");
        report.healthy.push(addr);
    }
    for l in listeners {
        let Some(addr) = dial_address(l, ServiceKind::Inference) else {
            continue;
        };
        tokio::time::timeout(timeout, inference::check(&addr, l.encrypted_only, timeout))
            .await
            .map_err(|_| SelfCheckError::Timeout {
                addr: addr.clone(),
                timeout,
            })?
            .map_err(|detail| SelfCheckError::Inference {
                addr: addr.clone(),
                detail,
            })?;
        tracing::info!(%addr, encrypted_only = l.encrypted_only,
            "self-check: encrypted inference answered");
        report.inference.push(addr);
    }
    if let Some(uri) = &settings.resource {
        let value = attestation
            .resource(uri)
            .await
            .map_err(|source| SelfCheckError::Resource {
                uri: uri.clone(),
                source,
            })?;
        tracing::info!(%uri, bytes = value.len(), "self-check: resource released by the KBS");
        report.resource = Some((uri.clone(), value.len()));
    }
    for v in &settings.volumes {
        let addr = listeners
            .iter()
            .filter(|l| matches!(l.addr, ListenAddr::Unix(_)))
            .find_map(|l| dial_address(l, ServiceKind::SecureMount))
            .ok_or_else(|| SelfCheckError::NoSecureMount(v.device.clone()))?;
        let done =
            volume::check(&addr, v, timeout)
                .await
                .map_err(|detail| SelfCheckError::Volume {
                    device: v.device.clone(),
                    detail,
                })?;
        tracing::info!(device = %done.device, mount_point = %done.mount_point.display(),
            filesystem = done.filesystem, bytes = done.bytes, "self-check: volume mounted");
        report.volumes.push(done);
    }
    // Onto the first filesystem volume, as kata-agent keeps pulled images on its secure mount.
    let bundle = report
        .volumes
        .iter()
        .find(|v| v.filesystem)
        .map(|v| v.mount_point.join("bundle"))
        .unwrap_or_else(|| std::path::PathBuf::from(BUNDLE));
    if let Some(image) = &settings.image {
        let pulled = images
            .pull(image, &bundle.to_string_lossy())
            .await
            .map_err(|source| SelfCheckError::Image {
                image: image.clone(),
                source,
            })?;
        let digest = pulled.manifest_digest.to_string();
        tracing::info!(
            %image,
            %digest,
            layers = pulled.layers,
            encrypted_layers = pulled.encrypted_layers,
            bundle = %bundle.display(),
            "self-check: image pulled"
        );
        report.image = Some((image.clone(), digest));
    }
    if report.healthy.is_empty()
        && report.inference.is_empty()
        && report.resource.is_none()
        && report.image.is_none()
        && report.volumes.is_empty()
    {
        return Err(SelfCheckError::Nothing);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn listener(addr: &str, protocol: Protocol, services: &[ServiceKind]) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            protocol,
            services: services.iter().copied().collect(),
            mode: 0o600,
            encrypted_only: false,
            origin: Origin::Cmdline,
        }
    }

    #[test]
    fn dials_vsock_any_through_the_local_cid() {
        let h = [ServiceKind::Health];
        let cases = [
            (
                listener("vsock://-1:1030", Protocol::Ttrpc, &h),
                Some("vsock://1:1030"),
            ),
            (
                listener("vsock://3:1030", Protocol::Ttrpc, &h),
                Some("vsock://3:1030"),
            ),
            (
                listener("unix:///run/ward/ward.sock", Protocol::Ttrpc, &h),
                Some("unix:///run/ward/ward.sock"),
            ),
            (listener("tcp://127.0.0.1:8006", Protocol::Http, &h), None),
            (
                listener(
                    "unix:///run/x.sock",
                    Protocol::Ttrpc,
                    &[ServiceKind::GetResource],
                ),
                None,
            ),
        ];
        for (l, want) in cases {
            assert_eq!(
                dial_address(&l, ServiceKind::Health).as_deref(),
                want,
                "{}",
                l.addr
            );
        }
        let inference = listener(
            "vsock://-1:1031",
            Protocol::Ttrpc,
            &[ServiceKind::Inference],
        );
        assert_eq!(
            dial_address(&inference, ServiceKind::Inference).as_deref(),
            Some("vsock://1:1031")
        );
        assert_eq!(dial_address(&inference, ServiceKind::Health), None);
    }
}
