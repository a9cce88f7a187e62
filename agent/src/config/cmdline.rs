//! `ward.*` overrides from the kernel command line (`/proc/cmdline`).
//!
//! The command line is untrusted until it is measured, so each value is validated exactly like a
//! file value. Unknown `ward.*` keys are returned for the caller to report; they do not stop boot,
//! so an older wardd can boot a newer command line.
//!
//! Keys: `ward.log_level`, `ward.log_format`, `ward.audit_log` (a path, or `off`),
//! `ward.shutdown_timeout`, `ward.request_timeout` and `ward.stream_timeout` (seconds),
//! `ward.oom_score_adj`, and
//! `ward.listen=ADDRESS#SERVICE[,SERVICE...]`, repeatable, which replaces the listener list,
//! `ward.tee` (`auto` or a TEE name), `ward.allow_sample` and `ward.kbs_url`. The sample TEE is
//! refused on real TEE hardware whatever the command line says, so these cannot downgrade a guest.
//!
//! For booted images: `ward.net=IFACE:ADDRESS/PREFIX[:GATEWAY]` (a static IPv4 address, PID-1
//! mode only), `ward.self_check=serve|poweroff` (once ready, call wardd's own health service on
//! each ttrpc listener, then keep serving or stop) and `ward.self_check_resource=kbs:///...` (also
//! fetch that resource through the KBS session; its value is never logged), and
//! `ward.self_check_image=REFERENCE` (also pull that image into a scratch bundle), and
//! `ward.self_check_volume=NAME[,KEY]`, repeatable (also ask wardd's SecureMount, as kata-agent
//! does, for the block device `/sys/block/NAME`: without KEY a blank device becomes an
//! integrity-protected ext4 volume with a key made in the guest, and the image is pulled onto
//! it; with a `kbs:///` KEY an existing LUKS2 volume is opened as a device).

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, Listener, LogFormat, Origin, expand_services, oom_score_adj, seconds};
use crate::listen::ListenAddr;

/// The keys (after `ward.`) this version understands.
const KEYS: [&str; 16] = [
    "tee",
    "allow_sample",
    "kbs_url",
    "log_level",
    "log_format",
    "audit_log",
    "shutdown_timeout",
    "request_timeout",
    "stream_timeout",
    "oom_score_adj",
    "listen",
    "net",
    "self_check",
    "self_check_resource",
    "self_check_image",
    "self_check_volume",
];

/// Validated values taken from the kernel command line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub log_filter: Option<String>,
    pub log_format: Option<LogFormat>,
    /// `Some(None)` turns the audit log off.
    pub audit_log: Option<Option<PathBuf>>,
    pub shutdown_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub stream_timeout: Option<Duration>,
    pub oom_score_adj: Option<i32>,
    pub listeners: Vec<Listener>,
    /// `Some(None)` means detect.
    pub tee: Option<Option<ward_attester::tee::Tee>>,
    pub allow_sample: Option<bool>,
    pub kbs_url: Option<String>,
    pub net: Option<crate::init::NetConfig>,
    pub self_check: Option<super::AfterSelfCheck>,
    pub self_check_resource: Option<String>,
    pub self_check_image: Option<String>,
    pub self_check_volumes: Vec<super::VolumeCheck>,
}

/// Splits a kernel command line into words the way the kernel does: on whitespace, with double
/// quotes grouping a value that holds spaces (`key="a b"`); the quotes are removed.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Parses the `ward.*` keys of a kernel command line.
///
/// Returns the overrides and the unknown `ward.*` keys. Words after `--` belong to init's argv
/// and are ignored, as are keys of other subsystems.
pub fn parse_cmdline(line: &str) -> Result<(Overrides, Vec<String>), ConfigError> {
    let mut o = Overrides::default();
    let mut unknown = Vec::new();
    for word in words(line) {
        if word == "--" {
            break;
        }
        let Some(rest) = word.strip_prefix("ward.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let full = format!("ward.{key}");
        if !KEYS.contains(&key) {
            unknown.push(full);
            continue;
        }
        let bad = |problem: String| ConfigError::invalid(full.clone(), problem);
        if value.is_empty() && key != "audit_log" {
            return Err(bad("needs a value (ward.KEY=VALUE)".to_string()));
        }
        match key {
            "log_level" => {
                super::validate_filter(&full, value)?;
                o.log_filter = Some(value.to_string());
            }
            "log_format" => {
                o.log_format = Some(match value {
                    "human" => LogFormat::Human,
                    "json" => LogFormat::Json,
                    v => return Err(bad(format!("`{v}` is not a log format (human or json)"))),
                });
            }
            "audit_log" => {
                o.audit_log = Some(match value {
                    "" | "off" => None,
                    v if v.starts_with('/') => Some(PathBuf::from(v)),
                    v => return Err(bad(format!("`{v}` is not an absolute path or `off`"))),
                });
            }
            "shutdown_timeout" => o.shutdown_timeout = Some(seconds(&full, number(&full, value)?)?),
            "request_timeout" => o.request_timeout = Some(seconds(&full, number(&full, value)?)?),
            "stream_timeout" => o.stream_timeout = Some(seconds(&full, number(&full, value)?)?),
            "oom_score_adj" => {
                let v = value
                    .parse::<i32>()
                    .map_err(|_| bad(format!("`{value}` is not an integer")))?;
                o.oom_score_adj = Some(oom_score_adj(&full, v)?);
            }
            "listen" => o.listeners.push(listener(value).map_err(bad)?),
            "tee" => o.tee = Some(super::parse_tee(&full, value)?),
            "allow_sample" => {
                o.allow_sample = Some(match value {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    v => return Err(bad(format!("`{v}` is not a boolean (true or false)"))),
                })
            }
            "kbs_url" => o.kbs_url = Some(super::validate_kbs_url(&full, value)?),
            "net" => {
                o.net = Some(
                    value
                        .parse::<crate::init::NetConfig>()
                        .map_err(|e| bad(e.to_string()))?,
                )
            }
            "self_check" => {
                o.self_check = Some(match value {
                    "serve" => super::AfterSelfCheck::Serve,
                    "poweroff" => super::AfterSelfCheck::PowerOff,
                    v => return Err(bad(format!("`{v}` is not serve or poweroff"))),
                })
            }
            "self_check_resource" => {
                ward_kbs_wire::ResourceUri::parse(value)
                    .map_err(|e| bad(format!("`{value}`: {e}")))?;
                o.self_check_resource = Some(value.to_string());
            }
            "self_check_image" => {
                // The reference itself is parsed by the puller, which names the problem.
                if value.len() > 512 || value.chars().any(|c| c.is_control()) {
                    return Err(bad(format!("`{value}` is not an image reference")));
                }
                o.self_check_image = Some(value.to_string());
            }
            "self_check_volume" => {
                let (device, key) = match value.split_once(',') {
                    Some((d, k)) => (d, Some(k)),
                    None => (value, None),
                };
                let name_ok = !device.is_empty()
                    && device.len() <= 32
                    && device
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !name_ok {
                    return Err(bad(format!("`{device}` is not a block device name")));
                }
                if let Some(k) = key
                    && !(k.starts_with("kbs:") && ward_kbs_wire::ResourceUri::parse(k).is_ok())
                {
                    return Err(bad(format!("`{k}` is not a kbs:/// resource URI")));
                }
                o.self_check_volumes.push(super::VolumeCheck {
                    device: device.to_string(),
                    key: key.map(str::to_string),
                });
            }
            _ => unknown.push(full.clone()),
        }
    }
    Ok((o, unknown))
}

fn number(key: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .parse::<u64>()
        .map_err(|_| ConfigError::invalid(key, format!("`{value}` is not a whole number")))
}

/// Parses `ADDRESS#SERVICE[,SERVICE...]`.
fn listener(value: &str) -> Result<Listener, String> {
    let (addr, services) = value
        .split_once('#')
        .ok_or_else(|| format!("`{value}` lacks `#services` (ADDRESS#SERVICE[,SERVICE...])"))?;
    let addr: ListenAddr = addr
        .parse()
        .map_err(|e: crate::listen::AddressError| e.to_string())?;
    let names: Vec<String> = services
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let protocol = match addr {
        ListenAddr::Tcp(_) => super::Protocol::Http,
        _ => super::Protocol::Ttrpc,
    };
    Ok(Listener {
        encrypted_only: super::default_encrypted_only(&addr),
        addr,
        protocol,
        services: expand_services(&names)?,
        mode: 0o600,
        origin: Origin::Cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_like_the_kernel() {
        assert_eq!(
            words(r#"console=ttyS0  ward.log_level="ward_agent=debug,info" quiet"#),
            vec![
                "console=ttyS0",
                "ward.log_level=ward_agent=debug,info",
                "quiet"
            ]
        );
        assert_eq!(words("a=\"x y\"\n"), vec!["a=x y"]);
        assert!(words("   ").is_empty());
    }

    #[test]
    fn ignores_other_keys_and_init_args() {
        let (o, unknown) =
            parse_cmdline("root=/dev/vda ward quiet -- ward.log_format=xml").unwrap();
        assert_eq!(o, Overrides::default());
        assert!(unknown.is_empty());
    }
}
