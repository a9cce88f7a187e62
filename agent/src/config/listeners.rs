//! `[[listener]]` entries, validated: address, protocol, allow-list, socket mode and
//! `encrypted_only`, and the rules that keep secrets off vsock, where the caller may be the
//! untrusted host.
//!
//! vsock may carry `health` and `inference` only. `inference` there is encrypted-only unless
//! the operator says `encrypted_only = false` (plaintext prompts would then cross the host); HTTP
//! on vsock is allowed for listeners that serve inference, never CoCo's api-server-rest paths.

use std::collections::BTreeSet;

use super::ServiceKind;
use super::file::RawListener;
use super::{ConfigError, Listener, Origin, Protocol};
use crate::listen::ListenAddr;

/// Whether a listener at `addr` refuses plaintext inference when its file entry does not say:
/// yes on vsock, no in the guest.
pub fn default_encrypted_only(addr: &ListenAddr) -> bool {
    !addr.is_in_guest()
}

/// Validates `[[listener]]` number `i` of the file.
pub(super) fn from_raw(i: usize, l: RawListener) -> Result<Listener, ConfigError> {
    let origin = Origin::File(i);
    let addr: ListenAddr = l
        .address
        .parse()
        .map_err(|e: crate::listen::AddressError| {
            ConfigError::invalid(origin.key("address"), e.to_string())
        })?;
    let services = expand_services(&l.services)
        .map_err(|p| ConfigError::invalid(origin.key("services"), p))?;
    let protocol = match (l.protocol.as_deref(), &addr) {
        (None, ListenAddr::Tcp(_)) | (Some("http"), _) => Protocol::Http,
        (Some("ttrpc"), ListenAddr::Tcp(_)) => {
            return Err(ConfigError::invalid(
                origin.key("protocol"),
                "tcp listeners speak http only",
            ));
        }
        (None | Some("ttrpc"), _) => Protocol::Ttrpc,
        (Some(p), _) => {
            return Err(ConfigError::invalid(
                origin.key("protocol"),
                format!("`{p}` is not a protocol (ttrpc or http)"),
            ));
        }
    };
    if l.mode & !0o777 != 0 {
        return Err(ConfigError::invalid(
            origin.key("mode"),
            format!("{:#o} is not a permission mode (at most 0o777)", l.mode),
        ));
    }
    if l.encrypted_only.is_some() && !services.contains(&ServiceKind::Inference) {
        return Err(ConfigError::invalid(
            origin.key("encrypted_only"),
            "applies to the inference service, which this listener does not serve",
        ));
    }
    Ok(Listener {
        encrypted_only: l
            .encrypted_only
            .unwrap_or_else(|| default_encrypted_only(&addr)),
        addr,
        protocol,
        services,
        mode: l.mode,
        origin,
    })
}

/// The rules one listener must follow whatever set it (file or command line).
pub(super) fn check(l: &Listener) -> Result<(), ConfigError> {
    if l.protocol == Protocol::Http {
        if !l.addr.is_in_guest() && !l.services.contains(&ServiceKind::Inference) {
            return Err(ConfigError::invalid(
                l.origin.key("protocol"),
                format!(
                    "{}: HTTP on vsock serves the inference API only (the api-server-rest \
                     paths are in-guest only)",
                    l.addr
                ),
            ));
        }
        if let Some(s) = l.services.iter().find(|s| !s.has_http_api()) {
            return Err(ConfigError::invalid(
                l.origin.key("services"),
                format!(
                    "`{s}` has no HTTP API (health, attestation-agent, get-resource, inference, metrics do)"
                ),
            ));
        }
    } else if let Some(s) = l
        .services
        .iter()
        .find(|s| ServiceKind::HTTP_ONLY.contains(s))
    {
        return Err(ConfigError::invalid(
            l.origin.key("services"),
            format!("`{s}` is served over HTTP only (protocol = \"http\")"),
        ));
    }
    if !l.addr.is_in_guest()
        && let Some(s) = l.services.iter().find(|s| !s.safe_for_untrusted_callers())
    {
        return Err(ConfigError::invalid(
            l.origin.key("services"),
            format!(
                "`{s}` may not be served on {}: vsock callers include the untrusted host; \
                 serve it on an in-guest unix socket",
                l.addr
            ),
        ));
    }
    Ok(())
}

/// Expands service names and groups (`cdh`, `all`) into a set; an empty list is refused.
pub(super) fn expand_services(names: &[String]) -> Result<BTreeSet<ServiceKind>, String> {
    if names.is_empty() {
        return Err("the list is empty: name the services this listener serves".to_string());
    }
    let mut set = BTreeSet::new();
    for name in names {
        let kinds = ServiceKind::parse_group(name).ok_or_else(|| {
            let known: Vec<_> = ServiceKind::ALL.iter().map(|k| k.config_name()).collect();
            format!(
                "unknown service `{name}` (known: {}, or the groups cdh, all)",
                known.join(", ")
            )
        })?;
        set.extend(kinds);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::super::tests::from_text;
    use super::*;

    #[test]
    fn http_listeners() {
        let ok = "[[listener]]\naddress = \"tcp://127.0.0.1:8006\"\nservices = [\"get-resource\", \"attestation-agent\"]\n\
                  [[listener]]\naddress = \"unix:///run/w-http.sock\"\nprotocol = \"http\"\nservices = [\"health\"]\n";
        let c = from_text(ok, None).unwrap();
        assert_eq!(c.listeners[0].protocol, Protocol::Http);
        assert_eq!(c.listeners[1].protocol, Protocol::Http);
        let bad: &[(&str, &str)] = &[
            (
                "[[listener]]\naddress = \"tcp://0.0.0.0:8006\"\nservices = [\"health\"]\n",
                "only loopback",
            ),
            (
                "[[listener]]\naddress = \"tcp://127.0.0.1:1\"\nprotocol = \"ttrpc\"\nservices = [\"health\"]\n",
                "tcp listeners speak http only",
            ),
            (
                "[[listener]]\naddress = \"vsock://-1:9\"\nprotocol = \"http\"\nservices = [\"health\"]\n",
                "HTTP on vsock serves the inference API only",
            ),
            (
                "[[listener]]\naddress = \"unix:///a\"\nprotocol = \"http\"\nservices = [\"image-pull\"]\n",
                "`image-pull` has no HTTP API",
            ),
            (
                "[[listener]]\naddress = \"unix:///a\"\nprotocol = \"grpc\"\nservices = [\"health\"]\n",
                "`grpc` is not a protocol",
            ),
            (
                "[[listener]]\naddress = \"unix:///a\"\nservices = [\"metrics\"]\n",
                "`metrics` is served over HTTP only",
            ),
            (
                "[[listener]]\naddress = \"vsock://-1:9\"\nprotocol = \"http\"\nservices = [\"inference\", \"metrics\"]\n",
                "`metrics` may not be served on",
            ),
        ];
        for (text, want) in bad {
            let e = from_text(text, None).unwrap_err().to_string();
            assert!(e.contains(want), "`{e}` lacks `{want}`");
        }
    }

    #[test]
    fn inference_on_vsock_is_encrypted_only_by_default() {
        let text = "[[listener]]\naddress = \"vsock://-1:1031\"\nservices = [\"inference\", \"health\"]\n\
                    [[listener]]\naddress = \"vsock://-1:1032\"\nprotocol = \"http\"\nservices = [\"inference\"]\n\
                    [[listener]]\naddress = \"vsock://-1:1033\"\nservices = [\"inference\"]\nencrypted_only = false\n\
                    [[listener]]\naddress = \"unix:///run/w.sock\"\nservices = [\"inference\"]\n\
                    [[listener]]\naddress = \"tcp://127.0.0.1:8080\"\nservices = [\"inference\"]\nencrypted_only = true\n";
        let c = from_text(text, None).unwrap();
        let only: Vec<_> = c.listeners.iter().map(|l| l.encrypted_only).collect();
        assert_eq!(only, [true, true, false, false, true]);
        assert_eq!(c.listeners[1].protocol, Protocol::Http);
        // The command line takes the default of the address.
        let c = from_text(
            "",
            Some("ward.listen=vsock://-1:1031#inference ward.listen=unix:///run/w.sock#inference"),
        )
        .unwrap();
        assert!(c.listeners[0].encrypted_only);
        assert!(!c.listeners[1].encrypted_only);
        // The defaults keep vsock to health.
        let c = from_text("", None).unwrap();
        assert!(
            c.listeners
                .iter()
                .all(|l| l.addr.is_in_guest() || l.services.iter().eq([ServiceKind::Health].iter()))
        );

        let bad: &[(&str, &str)] = &[
            (
                "[[listener]]\naddress = \"unix:///a\"\nservices = [\"health\"]\nencrypted_only = true\n",
                "listener[0].encrypted_only: applies to the inference service",
            ),
            (
                "[[listener]]\naddress = \"vsock://-1:9\"\nprotocol = \"http\"\nservices = [\"inference\", \"get-resource\"]\n",
                "`get-resource` may not be served on vsock://-1:9",
            ),
            (
                "[[listener]]\naddress = \"vsock://-1:9\"\nservices = [\"all\"]\n",
                "may not be served on vsock",
            ),
            (
                "[[listener]]\naddress = \"unix:///a\"\nservices = [\"inference\"]\nencrypted_only = \"yes\"\n",
                "ward.toml:",
            ),
        ];
        for (text, want) in bad {
            let e = from_text(text, None).unwrap_err().to_string();
            assert!(e.contains(want), "`{e}` lacks `{want}`");
        }
        let e = from_text(
            "",
            Some("ward.listen=vsock://-1:9#inference,attestation-agent"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`attestation-agent` may not be served"), "{e}");
    }
}
