//! Listener addresses: `unix:///absolute/path`, `vsock://CID:PORT` (`-1` = any CID), and
//! `tcp://127.0.0.1:PORT` (loopback only: CoCo's api-server-rest address).
//!
//! Parsing is the only way to make a [`ListenAddr`], so a value of the type is always valid.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `VMADDR_CID_ANY`: listen on every CID of this guest.
pub const VSOCK_CID_ANY: u32 = u32::MAX;

/// Longest path a `sockaddr_un` can hold (108 bytes including the terminating NUL).
const UNIX_PATH_MAX: usize = 107;

/// Where a listener accepts connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A unix socket at an absolute path inside the guest.
    Unix(PathBuf),
    /// A vsock port; `cid` is [`VSOCK_CID_ANY`] for `-1`.
    Vsock { cid: u32, port: u32 },
    /// A TCP port on a loopback address.
    Tcp(SocketAddr),
}

/// Why an address string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    /// The address starts with neither `unix://`, `vsock://` nor `tcp://`.
    #[error(
        "`{0}` has no known scheme (expected unix:///path, vsock://CID:PORT or tcp://127.0.0.1:PORT)"
    )]
    UnknownScheme(String),
    /// A TCP address that is not `IP:PORT` on loopback.
    #[error("`{addr}` is not a valid tcp address: {reason}")]
    BadTcp { addr: String, reason: &'static str },
    /// A unix path that is relative, empty, too long or holds a character we refuse.
    #[error("`{addr}` is not a valid unix socket address: {reason}")]
    BadUnixPath { addr: String, reason: &'static str },
    /// A vsock address that is not `CID:PORT` with numbers in range.
    #[error("`{addr}` is not a valid vsock address: {reason}")]
    BadVsock { addr: String, reason: &'static str },
}

impl ListenAddr {
    /// Whether a connection on this address comes from inside the guest.
    ///
    /// vsock callers may be the host (CID 2), which the trust model treats as untrusted.
    pub fn is_in_guest(&self) -> bool {
        // TCP is loopback only (checked at parse time): the host cannot reach a guest's loopback.
        matches!(self, ListenAddr::Unix(_) | ListenAddr::Tcp(_))
    }

    /// The unix socket path, when this is a unix address.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            ListenAddr::Unix(p) => Some(p),
            ListenAddr::Vsock { .. } | ListenAddr::Tcp(_) => None,
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            parse_unix(s, path)
        } else if let Some(rest) = s.strip_prefix("vsock://") {
            parse_vsock(s, rest)
        } else if let Some(rest) = s.strip_prefix("tcp://") {
            let addr: SocketAddr = rest.parse().map_err(|_| AddressError::BadTcp {
                addr: s.to_string(),
                reason: "expected IP:PORT",
            })?;
            if !addr.ip().is_loopback() {
                return Err(AddressError::BadTcp {
                    addr: s.to_string(),
                    reason: "only loopback addresses are allowed (the network is untrusted)",
                });
            }
            Ok(ListenAddr::Tcp(addr))
        } else {
            Err(AddressError::UnknownScheme(s.to_string()))
        }
    }
}

fn parse_unix(addr: &str, path: &str) -> Result<ListenAddr, AddressError> {
    let bad = |reason| AddressError::BadUnixPath {
        addr: addr.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute (unix:///run/...)"));
    }
    if path.len() > UNIX_PATH_MAX {
        return Err(bad(
            "the path is longer than a unix socket address can hold",
        ));
    }
    if path.ends_with('/') {
        return Err(bad("the path names a directory"));
    }
    if path
        .bytes()
        .any(|b| b == 0 || b == b'#' || b.is_ascii_whitespace())
    {
        return Err(bad("the path holds a NUL, '#' or whitespace"));
    }
    if path.split('/').any(|seg| seg == "..") {
        return Err(bad("the path holds a `..` segment"));
    }
    Ok(ListenAddr::Unix(PathBuf::from(path)))
}

fn parse_vsock(addr: &str, rest: &str) -> Result<ListenAddr, AddressError> {
    let bad = |reason| AddressError::BadVsock {
        addr: addr.to_string(),
        reason,
    };
    let (cid, port) = rest
        .split_once(':')
        .ok_or_else(|| bad("expected CID:PORT"))?;
    let cid = match cid {
        "-1" => VSOCK_CID_ANY,
        c if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => c
            .parse::<u32>()
            .ok()
            .filter(|&c| c != VSOCK_CID_ANY)
            .ok_or_else(|| bad("the CID is out of range"))?,
        _ => return Err(bad("the CID must be a number or -1")),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the port must be a number"));
    }
    let port = port
        .parse::<u32>()
        .ok()
        .filter(|&p| p != u32::MAX)
        .ok_or_else(|| bad("the port is out of range"))?;
    Ok(ListenAddr::Vsock { cid, port })
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenAddr::Vsock { cid, port } if *cid == VSOCK_CID_ANY => {
                write!(f, "vsock://-1:{port}")
            }
            ListenAddr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> String {
        a.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_addresses() {
        let cases = [
            (
                "unix:///run/ward.sock",
                ListenAddr::Unix("/run/ward.sock".into()),
            ),
            (
                "vsock://-1:1024",
                ListenAddr::Vsock {
                    cid: VSOCK_CID_ANY,
                    port: 1024,
                },
            ),
            ("vsock://3:1", ListenAddr::Vsock { cid: 3, port: 1 }),
            ("vsock://0:0", ListenAddr::Vsock { cid: 0, port: 0 }),
            (
                "tcp://127.0.0.1:8006",
                ListenAddr::Tcp("127.0.0.1:8006".parse().unwrap()),
            ),
            (
                "tcp://[::1]:80",
                ListenAddr::Tcp("[::1]:80".parse().unwrap()),
            ),
        ];
        for (input, want) in cases {
            let got: ListenAddr = input.parse().unwrap();
            assert_eq!(got, want, "{input}");
            assert_eq!(got.to_string(), input, "round trip of {input}");
        }
    }

    #[test]
    fn refuses_invalid_addresses() {
        let cases = [
            "",
            "udp://127.0.0.1:80",
            "unix://",
            "unix://relative.sock",
            "unix:///run/",
            "unix:///run/../etc/x.sock",
            "unix:///run/a#b",
            "vsock://",
            "vsock://3",
            "vsock://:1024",
            "vsock://3:",
            "vsock://-2:1024",
            "vsock://x:1024",
            "vsock://3:port",
            "vsock://3:-1",
            "vsock://4294967295:1",
            "vsock://4294967296:1",
            "vsock://3:4294967296",
            "vsock://+3:1",
            "tcp://0.0.0.0:8006",
            "tcp://10.0.0.1:80",
            "tcp://127.0.0.1",
            "tcp://localhost:80",
        ];
        for input in cases {
            assert!(input.parse::<ListenAddr>().is_err(), "{input} was accepted");
        }
        let long = format!("unix:///{}", "a".repeat(200));
        assert!(long.parse::<ListenAddr>().is_err());
    }

    #[test]
    fn only_unix_is_in_guest() {
        assert!("unix:///a".parse::<ListenAddr>().unwrap().is_in_guest());
        assert!(!"vsock://-1:1".parse::<ListenAddr>().unwrap().is_in_guest());
    }
}
