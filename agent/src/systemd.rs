//! The systemd notification protocol (`sd_notify`): `READY=1`, `STOPPING=1`, `WATCHDOG=1`.
//!
//! A datagram to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Without `NOTIFY_SOCKET` every call does nothing, so wardd behaves the same outside
//! systemd. The watchdog interval comes from `WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, must
//! be ours); wardd pings at half of it.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A handle on the notification socket, or nothing when not under systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("sd_notify `{state}`: {source}")]
pub struct NotifyError {
    state: String,
    #[source]
    source: std::io::Error,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` from the environment.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec();
            match bytes.first() {
                Some(b'@') => Some(Target::Abstract(bytes[1..].to_vec())),
                Some(b'/') => Some(Target::Path(v.into())),
                _ => None,
            }
        });
        Notifier { target }
    }

    /// Whether systemd asked for notifications.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (e.g. `READY=1`); does nothing without `NOTIFY_SOCKET`.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let err = |source| NotifyError {
            state: state.to_string(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p).map(|_| ()).map_err(err),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(err)?;
                sock.send_to_addr(state.as_bytes(), &addr)
                    .map(|_| ())
                    .map_err(err)
            }
        }
    }

    /// The watchdog ping interval (half of `WATCHDOG_USEC`), when systemd enabled the watchdog
    /// for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }
}

fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_and_only_for_us() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn notifies_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(Target::Path(path)),
        };
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn without_systemd_nothing_is_sent() {
        let n = Notifier { target: None };
        assert!(!n.is_active());
        n.notify("READY=1").unwrap();
        assert_eq!(n.watchdog_interval(), None);
    }
}
