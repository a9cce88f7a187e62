//! The guest's network as PID 1: bring up `lo` (the api-server-rest listener is on 127.0.0.1),
//! and, only when `ward.net=IFACE:ADDRESS/PREFIX[:GATEWAY]` is on the kernel command line, give
//! one interface a static IPv4 address and a default route. There is no DHCP: an initrd guest
//! under qemu's user network knows its address (10.0.2.15/24, gateway 10.0.2.2).
//!
//! Configured with the classic `SIOCSIF*` and `SIOCADDRT` ioctls on an `AF_INET` socket, which
//! every kernel has. Nothing here runs unless wardd is PID 1.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// How long [`configure`] waits for the interface to appear (its driver may still be probing).
const LINK_WAIT: Duration = Duration::from_secs(5);

/// A network interface name: 1 to 15 bytes, none of `/`, `:`, whitespace or NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as `ifr_name`: NUL-padded to `IFNAMSIZ`.
    fn to_ifr_name(&self) -> [libc::c_char; libc::IFNAMSIZ] {
        let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
        for (dst, src) in out.iter_mut().zip(self.0.bytes()) {
            *dst = src as libc::c_char;
        }
        out
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A static IPv4 setup for one interface, from `ward.net=IFACE:ADDRESS/PREFIX[:GATEWAY]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub iface: IfName,
    pub address: Ipv4Addr,
    /// Prefix length, 1 to 32.
    pub prefix: u8,
    /// The default route's gateway, inside the interface's subnet.
    pub gateway: Option<Ipv4Addr>,
}

/// Why a `ward.net=` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetParseError {
    /// Not `IFACE:ADDRESS/PREFIX[:GATEWAY]`.
    #[error("`{0}` is not IFACE:ADDRESS/PREFIX[:GATEWAY] (e.g. eth0:10.0.2.15/24:10.0.2.2)")]
    Shape(String),
    /// The interface name is empty, longer than 15 bytes, or holds a character Linux refuses.
    #[error("`{0}` is not an interface name (1 to 15 characters, no `/`, `:` or spaces)")]
    IfName(String),
    /// Not a dotted IPv4 address.
    #[error("`{0}` is not an IPv4 address")]
    Address(String),
    /// The prefix is not a number from 1 to 32.
    #[error("`{0}` is not a prefix length (1 to 32)")]
    Prefix(String),
    /// The address is unusable for a host (unspecified, broadcast, multicast, loopback).
    #[error("{0} cannot be a host address")]
    HostAddress(Ipv4Addr),
    /// The gateway is the address itself or lies outside the subnet.
    #[error("gateway {gateway} is not another address in {address}/{prefix}")]
    Gateway {
        gateway: Ipv4Addr,
        address: Ipv4Addr,
        prefix: u8,
    },
}

impl NetConfig {
    /// The netmask of the prefix (e.g. /24 -> 255.255.255.0).
    pub fn netmask(&self) -> Ipv4Addr {
        mask(self.prefix)
    }
}

fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

impl FromStr for NetConfig {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape = || NetParseError::Shape(s.to_string());
        let mut parts = s.split(':');
        let (Some(iface), Some(cidr)) = (parts.next(), parts.next()) else {
            return Err(shape());
        };
        let gateway = parts.next();
        if parts.next().is_some() {
            return Err(shape());
        }
        if iface.is_empty()
            || iface.len() >= libc::IFNAMSIZ
            || iface == "."
            || iface == ".."
            || iface
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(NetParseError::IfName(iface.to_string()));
        }
        let (addr, prefix) = cidr.split_once('/').ok_or_else(shape)?;
        let address: Ipv4Addr = addr
            .parse()
            .map_err(|_| NetParseError::Address(addr.to_string()))?;
        let prefix: u8 = match prefix.parse() {
            Ok(p @ 1..=32) => p,
            _ => return Err(NetParseError::Prefix(prefix.to_string())),
        };
        if address.is_unspecified()
            || address.is_broadcast()
            || address.is_multicast()
            || address.is_loopback()
        {
            return Err(NetParseError::HostAddress(address));
        }
        let gateway = match gateway {
            None => None,
            Some(g) => {
                let gw: Ipv4Addr = g
                    .parse()
                    .map_err(|_| NetParseError::Address(g.to_string()))?;
                let m = u32::from(mask(prefix));
                if gw == address || (u32::from(gw) & m) != (u32::from(address) & m) {
                    return Err(NetParseError::Gateway {
                        gateway: gw,
                        address,
                        prefix,
                    });
                }
                Some(gw)
            }
        };
        Ok(NetConfig {
            iface: IfName(iface.to_string()),
            address,
            prefix,
            gateway,
        })
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.iface, self.address, self.prefix)?;
        if let Some(g) = self.gateway {
            write!(f, ":{g}")?;
        }
        Ok(())
    }
}

/// A network setup step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No socket to issue the ioctls on.
    #[error("cannot open a socket for interface setup: {0}")]
    Socket(#[source] Errno),
    /// The interface did not appear in time (its driver is missing or did not bind).
    #[error("interface {iface} did not appear within {waited:?} (is its driver in the initrd?)")]
    NoInterface { iface: String, waited: Duration },
    /// An ioctl failed.
    #[error("{step} on {iface}: {source}")]
    Ioctl {
        step: &'static str,
        iface: String,
        #[source]
        source: Errno,
    },
}

/// The kernel's `struct rtentry` (include/uapi/linux/route.h); the libc crate has it for musl
/// only. Layout checked by a test against the kernel's size on 64-bit.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain integers (checked by a test);
    // reinterpreting one as the other is how the sockets API passes IPv4 addresses.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &IfName) -> libc::ifreq {
    // SAFETY: ifreq is a C struct of integers, arrays and a union of the same; all-zero bytes
    // are a valid value of it (an empty name, a zero address).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = name.to_ifr_name();
    req
}

fn inet_socket() -> Result<OwnedFd, NetError> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(NetError::Socket)
}

/// Issues `request` with `arg` on `sock`.
///
/// # Safety
/// `request` must be an ioctl whose argument is a `T` (read and possibly written by the kernel).
unsafe fn ioctl<T>(sock: &OwnedFd, request: libc::Ioctl, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: the caller guarantees `request` takes a `*mut T`; `arg` is a live, exclusive
    // reference for the duration of the call, and `sock` an open socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    Errno::result(rc).map(|_| ())
}

fn set_up(sock: &OwnedFd, name: &IfName) -> Result<(), NetError> {
    let err = |step| {
        move |source| NetError::Ioctl {
            step,
            iface: name.to_string(),
            source,
        }
    };
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS reads the flags into the ifreq it is given.
    unsafe { ioctl(sock, libc::SIOCGIFFLAGS, &mut req) }.map_err(err("SIOCGIFFLAGS"))?;
    // SAFETY: SIOCGIFFLAGS filled ifru_flags, the union member read here.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and ifru_flags of the ifreq it is given.
    unsafe { ioctl(sock, libc::SIOCSIFFLAGS, &mut req) }.map_err(err("SIOCSIFFLAGS"))
}

/// Brings the loopback interface up (127.0.0.1 is assigned by the kernel when it is up).
pub fn loopback_up() -> Result<(), NetError> {
    set_up(&inet_socket()?, &IfName("lo".to_string()))
}

/// Waits for the interface, sets its address and netmask, brings it up, and adds the default
/// route through the gateway when there is one.
pub fn configure(net: &NetConfig) -> Result<(), NetError> {
    let started = Instant::now();
    let sys = Path::new("/sys/class/net").join(net.iface.as_str());
    while !sys.exists() {
        if started.elapsed() > LINK_WAIT {
            return Err(NetError::NoInterface {
                iface: net.iface.to_string(),
                waited: LINK_WAIT,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = inet_socket()?;
    let err = |step| {
        move |source| NetError::Ioctl {
            step,
            iface: net.iface.to_string(),
            source,
        }
    };
    let mut req = ifreq(&net.iface);
    req.ifr_ifru.ifru_addr = sockaddr_in(net.address);
    // SAFETY: SIOCSIFADDR reads the name and ifru_addr (an AF_INET sockaddr) of the ifreq.
    unsafe { ioctl(&sock, libc::SIOCSIFADDR, &mut req) }.map_err(err("SIOCSIFADDR"))?;
    let mut req = ifreq(&net.iface);
    req.ifr_ifru.ifru_netmask = sockaddr_in(net.netmask());
    // SAFETY: SIOCSIFNETMASK reads the name and ifru_netmask (an AF_INET sockaddr).
    unsafe { ioctl(&sock, libc::SIOCSIFNETMASK, &mut req) }.map_err(err("SIOCSIFNETMASK"))?;
    set_up(&sock, &net.iface)?;
    if let Some(gw) = net.gateway {
        let mut dev = net.iface.to_ifr_name();
        let mut route = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_in(gw),
            rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT reads a struct rtentry, laid out as RtEntry is; rt_dev points at
        // `dev`, a NUL-terminated name that outlives the call.
        unsafe { ioctl(&sock, libc::SIOCADDRT, &mut route) }
            .map_err(err("SIOCADDRT (default route)"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_values() {
        let n: NetConfig = "eth0:10.0.2.15/24:10.0.2.2".parse().unwrap();
        assert_eq!(n.iface.as_str(), "eth0");
        assert_eq!(n.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(n.prefix, 24);
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.to_string(), "eth0:10.0.2.15/24:10.0.2.2");

        let n: NetConfig = "enp0s3:192.168.1.7/32".parse().unwrap();
        assert_eq!(n.gateway, None);
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 255));
        let n: NetConfig = "e:10.1.2.3/1".parse().unwrap();
        assert_eq!(n.netmask(), Ipv4Addr::new(128, 0, 0, 0));
        assert!("abcdefghijklmno:10.0.0.1/8".parse::<NetConfig>().is_ok());
    }

    #[test]
    fn invalid_values_say_what_is_wrong() {
        use NetParseError as E;
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Shape(_))),
            ("eth0", |e| matches!(e, E::Shape(_))),
            ("eth0:10.0.2.15", |e| matches!(e, E::Shape(_))),
            ("eth0:10.0.2.15/24:10.0.2.2:x", |e| matches!(e, E::Shape(_))),
            (":10.0.2.15/24", |e| matches!(e, E::IfName(_))),
            ("abcdefghijklmnop:10.0.0.1/8", |e| matches!(e, E::IfName(_))),
            ("a/b:10.0.0.1/8", |e| {
                matches!(e, E::Shape(_) | E::IfName(_))
            }),
            ("..:10.0.0.1/8", |e| matches!(e, E::IfName(_))),
            ("eth0:10.0.2/24", |e| matches!(e, E::Address(_))),
            ("eth0:fe80::1/64", |e| matches!(e, E::Shape(_))),
            ("eth0:10.0.2.15/0", |e| matches!(e, E::Prefix(_))),
            ("eth0:10.0.2.15/33", |e| matches!(e, E::Prefix(_))),
            ("eth0:10.0.2.15/x", |e| matches!(e, E::Prefix(_))),
            ("eth0:0.0.0.0/24", |e| matches!(e, E::HostAddress(_))),
            ("eth0:127.0.0.2/8", |e| matches!(e, E::HostAddress(_))),
            ("eth0:224.0.0.1/24", |e| matches!(e, E::HostAddress(_))),
            ("eth0:10.0.2.15/24:10.0.3.2", |e| {
                matches!(e, E::Gateway { .. })
            }),
            ("eth0:10.0.2.15/24:10.0.2.15", |e| {
                matches!(e, E::Gateway { .. })
            }),
            ("eth0:10.0.2.15/24:gw", |e| matches!(e, E::Address(_))),
        ];
        for (value, check) in cases {
            let e = value.parse::<NetConfig>().unwrap_err();
            assert!(check(&e), "{value:?} gave {e:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn c_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<libc::sockaddr_in>(), 16);
        assert_eq!(std::mem::size_of::<libc::sockaddr>(), 16);
        // struct rtentry is 120 bytes on x86_64 and aarch64.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        let sa = sockaddr_in(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(
            &sa.sa_data[2..6],
            &[10, 0, 2, 15].map(|b| b as libc::c_char)
        );
    }

    #[test]
    fn interface_names_are_nul_padded() {
        let n = IfName("eth0".to_string()).to_ifr_name();
        assert_eq!(
            n[..5],
            [b'e', b't', b'h', b'0', 0].map(|b| b as libc::c_char)
        );
        assert!(n[4..].iter().all(|&c| c == 0));
    }
}
