//! The services wardd knows, their names in config and on the wire, and which of them are safe to
//! offer to an untrusted caller (the host, over vsock).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One ttrpc service wardd can serve. Config names are kebab-case (`attestation-agent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// `ward.health.HealthService`: liveness and version; carries no secret.
    Health,
    /// `attestation_agent.AttestationAgentService` (CoCo attestation-agent).
    AttestationAgent,
    /// `api.GetResourceService` (CoCo confidential-data-hub).
    GetResource,
    /// `api.SealedSecretService` (CoCo confidential-data-hub).
    SealedSecret,
    /// `api.SecureMountService` (CoCo confidential-data-hub).
    SecureMount,
    /// `api.ImagePullService` (CoCo confidential-data-hub).
    ImagePull,
    /// `keyprovider.KeyProviderService` (ocicrypt key provider).
    KeyProvider,
    /// `ward.inference.InferenceService` and the OpenAI-compatible HTTP API over the loaded
    /// models.
    Inference,
    /// `GET /metrics` (Prometheus text) on HTTP listeners: never part of `all`, never on vsock.
    Metrics,
}

impl ServiceKind {
    /// Every service, in the order they are listed to operators.
    pub const ALL: [ServiceKind; 8] = [
        ServiceKind::Health,
        ServiceKind::AttestationAgent,
        ServiceKind::GetResource,
        ServiceKind::SealedSecret,
        ServiceKind::SecureMount,
        ServiceKind::ImagePull,
        ServiceKind::KeyProvider,
        ServiceKind::Inference,
    ];

    /// Services with no ttrpc side, named one by one (not in `all`).
    pub const HTTP_ONLY: [ServiceKind; 1] = [ServiceKind::Metrics];

    /// The services CoCo's confidential-data-hub serves on its socket.
    pub const DATA_HUB: [ServiceKind; 4] = [
        ServiceKind::GetResource,
        ServiceKind::SealedSecret,
        ServiceKind::SecureMount,
        ServiceKind::ImagePull,
    ];

    /// The fully qualified ttrpc service name, as it appears in method paths.
    pub fn ttrpc_name(self) -> &'static str {
        match self {
            ServiceKind::Health => "ward.health.HealthService",
            ServiceKind::AttestationAgent => "attestation_agent.AttestationAgentService",
            ServiceKind::GetResource => "api.GetResourceService",
            ServiceKind::SealedSecret => "api.SealedSecretService",
            ServiceKind::SecureMount => "api.SecureMountService",
            ServiceKind::ImagePull => "api.ImagePullService",
            ServiceKind::KeyProvider => "keyprovider.KeyProviderService",
            ServiceKind::Inference => "ward.inference.InferenceService",
            // Never registered: served over HTTP only.
            ServiceKind::Metrics => "ward.metrics",
        }
    }

    /// The name used in config files and on the kernel command line.
    pub fn config_name(self) -> &'static str {
        match self {
            ServiceKind::Health => "health",
            ServiceKind::AttestationAgent => "attestation-agent",
            ServiceKind::GetResource => "get-resource",
            ServiceKind::SealedSecret => "sealed-secret",
            ServiceKind::SecureMount => "secure-mount",
            ServiceKind::ImagePull => "image-pull",
            ServiceKind::KeyProvider => "key-provider",
            ServiceKind::Inference => "inference",
            ServiceKind::Metrics => "metrics",
        }
    }

    /// Whether this service may be offered to a caller outside the guest (the host over vsock).
    ///
    /// Only services that release nothing secret and change nothing qualify: health, and
    /// inference, whose weights never leave the guest and whose prompts are end-to-end encrypted
    /// (listeners outside the guest are encrypted-only unless configured otherwise). Serving any
    /// other service on vsock is a configuration error.
    pub fn safe_for_untrusted_callers(self) -> bool {
        matches!(self, ServiceKind::Health | ServiceKind::Inference)
    }

    /// Whether its calls may rightly run long (an image pull, formatting and mounting a volume):
    /// they get the client's deadline up to `[daemon] stream_timeout_secs`, not the unary cap.
    pub fn is_long(self) -> bool {
        matches!(self, ServiceKind::ImagePull | ServiceKind::SecureMount)
    }

    /// Whether this service has HTTP paths (CoCo's api-server-rest) besides ttrpc.
    pub fn has_http_api(self) -> bool {
        matches!(
            self,
            ServiceKind::Health
                | ServiceKind::AttestationAgent
                | ServiceKind::GetResource
                | ServiceKind::Inference
                | ServiceKind::Metrics
        )
    }

    /// Parses a config name; `cdh` expands to the data-hub services and `all` to every service.
    pub fn parse_group(name: &str) -> Option<Vec<ServiceKind>> {
        match name {
            "all" => Some(Self::ALL.to_vec()),
            "cdh" => Some(Self::DATA_HUB.to_vec()),
            _ => Self::ALL
                .into_iter()
                .chain(Self::HTTP_ONLY)
                .find(|k| k.config_name() == name)
                .map(|k| vec![k]),
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_round_trip_through_serde() {
        for kind in ServiceKind::ALL.into_iter().chain(ServiceKind::HTTP_ONLY) {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.config_name()));
            assert_eq!(
                ServiceKind::parse_group(kind.config_name()),
                Some(vec![kind])
            );
        }
    }

    #[test]
    fn groups_expand() {
        assert_eq!(ServiceKind::parse_group("all").unwrap().len(), 8);
        assert_eq!(
            ServiceKind::parse_group("cdh").unwrap(),
            ServiceKind::DATA_HUB.to_vec()
        );
        assert_eq!(ServiceKind::parse_group("nope"), None);
    }

    #[test]
    fn only_health_and_inference_are_safe_for_the_host() {
        let safe: Vec<_> = ServiceKind::ALL
            .into_iter()
            .filter(|k| k.safe_for_untrusted_callers())
            .collect();
        assert_eq!(safe, vec![ServiceKind::Health, ServiceKind::Inference]);
    }
}
