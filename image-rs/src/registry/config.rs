//! How ward reaches registries: the platform to pick from indexes, plain-HTTP and CA settings,
//! credentials from a containers `auth.json` (which may come from the KBS), and mirrors.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::RegistryError;

/// The platform to pick from an image index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's platform in OCI names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "s390x" => "s390x",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How to reach registries.
#[derive(Clone, Default)]
pub struct RegistryConfig {
    /// `host[:port]` served over plain HTTP (development registries).
    pub insecure: Vec<String>,
    /// PEM CA certificates to trust in addition to the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials per registry host, from a containers `auth.json`.
    pub auths: HashMap<String, (String, Zeroizing<String>)>,
    pub platform: Option<Platform>,
    pub timeout: Option<Duration>,
    /// Mirrors tried before the registry they stand in for.
    pub mirrors: Vec<Mirror>,
}

/// Names the registries that have credentials, never the credentials.
impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("auths", &self.auths.keys().collect::<Vec<_>>())
            .field("platform", &self.platform)
            .field("timeout", &self.timeout)
            .field("mirrors", &self.mirrors)
            .finish()
    }
}

/// Registries that serve the same repositories as `registry` (containers' registries.conf
/// `[[registry.mirror]]`). Everything fetched from a mirror is checked against the same digests,
/// so a mirror can withhold content but never change it; when pulling by tag, a mirror decides
/// which manifest the tag names, so `digest_only` keeps mirrors to references by digest (and the
/// signature policy still applies to whatever a tag resolved to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    /// The registry host mirrored (`docker.io`, `registry.example.com:5000`).
    pub registry: String,
    /// Mirror hosts, tried in order; the registry itself is tried last.
    pub mirrors: Vec<String>,
    pub digest_only: bool,
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl RegistryConfig {
    /// Reads credentials from a containers `auth.json` (`{"auths": {"host": {"auth":
    /// base64("user:pass")}}}`), which may itself have come from the KBS.
    pub fn with_auth_json(mut self, json: &[u8]) -> Result<RegistryConfig, RegistryError> {
        let file: AuthFile = serde_json::from_slice(json)
            // Never serde's own message: it quotes values, here `user:password`.
            .map_err(|e| {
                RegistryError::Config(format!(
                    "auth.json: {}",
                    ward_kbs_wire::redacted_json_error(&e)
                ))
            })?;
        for (host, entry) in file.auths {
            let (user, pass) = match (entry.auth, entry.username, entry.password) {
                (Some(a), _, _) => {
                    let decoded = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(a.trim())
                            .map_err(|_| {
                                RegistryError::Config(format!(
                                    "auth.json: `auth` of {host} is not base64"
                                ))
                            })?,
                    );
                    let text = std::str::from_utf8(&decoded).map_err(|_| {
                        RegistryError::Config(format!("auth.json: `auth` of {host} is not text"))
                    })?;
                    let (u, p) = text.split_once(':').ok_or_else(|| {
                        RegistryError::Config(format!(
                            "auth.json: `auth` of {host} is not user:password"
                        ))
                    })?;
                    (u.to_string(), Zeroizing::new(p.to_string()))
                }
                (None, Some(u), Some(p)) => (u, Zeroizing::new(p)),
                _ => continue,
            };
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            self.auths.insert(host, (user, pass));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An auth.json of the wrong shape (it comes from the KBS) is refused without its values:
    /// serde's own message quoted the base64 `user:password` into PullImage's status and the log.
    #[test]
    fn a_misshapen_auth_json_is_refused_without_its_secrets() {
        for doc in [
            &br#"{"auths": "dXNlcjpwYXNzd29yZA=="}"#[..],
            br#"{"auths": {"r.io": "dXNlcjpwYXNzd29yZA=="}}"#,
            br#"{"auths": {"r.io": {"auth": ["dXNlcjpwYXNzd29yZA=="]}}}"#,
            br#"dXNlcjpwYXNzd29yZA=="#,
        ] {
            let e = RegistryConfig::default().with_auth_json(doc).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(
                shown.contains("auth.json") && shown.contains("line 1"),
                "{shown}"
            );
            assert!(!shown.contains("dXNl"), "{shown}");
        }
    }
}
