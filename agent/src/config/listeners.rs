//! `[[listener]]` entries, validated: address, protocol, allow-list, socket mode and
//! `encrypted_only`, and the rules that keep secrets off vsock, where the caller may be the
//! untrusted host.
//!
//! vsock may carry `health` and `inference` only. `inference` there is encrypted-only unless
//! the operator says `encrypted_only = false` (plaintext prompts would then cross the host); HTTP
//! on vsock is allowed for listeners that serve inference, never CoCo's api-server-rest paths.

use std::collections::BTreeSet;

use super::file::RawListener;
use super::{ConfigError, Listener, Origin, Protocol};
use crate::listen::ListenAddr;
use crate::services::ServiceKind;

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
                    "`{s}` has no HTTP API (health, attestation-agent, get-resource, inference do)"
                ),
            ));
        }
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
