//! Listeners: parsing addresses and binding them as ttrpc or HTTP listeners.
//!
//! Unix sockets get their parent directory created, a stale socket file from an earlier run
//! removed (only when nothing answers on it), and the configured permission bits. vsock listeners
//! bind on the given CID and port; there is no vsock loopback on a development machine, so a
//! bound vsock listener can only be reached from the host or, in a guest, through
//! `vsock_loopback`.

mod address;

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use address::{AddressError, ListenAddr, VSOCK_CID_ANY};

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The socket's directory could not be created.
    #[error("{addr}: cannot create the socket directory {dir}: {source}")]
    Directory {
        addr: ListenAddr,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something other than a socket is at the path; wardd will not remove it.
    #[error("{addr}: {path} exists and is not a socket")]
    NotASocket { addr: ListenAddr, path: PathBuf },
    /// Another process is serving on the socket.
    #[error("{addr}: another process is already serving on it")]
    InUse { addr: ListenAddr },
    /// The address cannot carry this protocol.
    #[error("{addr}: {detail}")]
    Protocol {
        addr: ListenAddr,
        detail: &'static str,
    },
    /// bind(2), listen(2) or chmod(2) failed.
    #[error("{addr}: cannot bind: {source}")]
    Bind {
        addr: ListenAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Who is at the other end of a unix-socket connection, as the kernel says (`SO_PEERCRED`):
/// the identity of plaintext requests on in-guest sockets.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnixPeer {
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for UnixPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        UnixPeer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// A listener for the HTTP API (api-server-rest paths in the guest, inference anywhere).
pub enum HttpListener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
    /// Inference only: the configuration refuses any other service on vsock.
    Vsock(VsockHttp),
}

/// A vsock listener for axum.
pub struct VsockHttp(tokio_vsock::VsockListener);

impl axum::serve::Listener for VsockHttp {
    type Io = tokio_vsock::VsockStream;
    type Addr = tokio_vsock::VsockAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(conn) => return conn,
                // As axum does for TCP: a failed accept (no file descriptors left, a peer that
                // reset) must not end the listener; wait a little and go on.
                Err(e) => {
                    tracing::warn!(error = %e, "vsock accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Binds `addr` for HTTP. The configuration allows vsock only for listeners whose HTTP routes
/// are the inference API (`config::listeners`); the router mounts nothing else there.
pub async fn bind_http(addr: &ListenAddr, mode: u32) -> Result<HttpListener, ListenError> {
    let bind_err = |source| ListenError::Bind {
        addr: addr.clone(),
        source,
    };
    match addr {
        ListenAddr::Unix(path) => {
            prepare_unix_path(addr, path)?;
            let l = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(bind_err)?;
            Ok(HttpListener::Unix(l))
        }
        ListenAddr::Tcp(a) => Ok(HttpListener::Tcp(
            tokio::net::TcpListener::bind(a).await.map_err(bind_err)?,
        )),
        ListenAddr::Vsock { cid, port } => Ok(HttpListener::Vsock(VsockHttp(
            tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(*cid, *port))
                .map_err(bind_err)?,
        ))),
    }
}

/// A bound listener, ready to hand to a ttrpc server.
pub struct Bound {
    pub addr: ListenAddr,
    pub listener: ttrpc::asynchronous::transport::Listener,
}

/// Binds `addr`; `mode` applies to unix sockets. Must run inside a tokio runtime.
pub fn bind(addr: &ListenAddr, mode: u32) -> Result<Bound, ListenError> {
    let bind_err = |source| ListenError::Bind {
        addr: addr.clone(),
        source,
    };
    let listener = match addr {
        ListenAddr::Unix(path) => {
            prepare_unix_path(addr, path)?;
            let l = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(bind_err)?;
            ttrpc::asynchronous::transport::Listener::from(l)
        }
        ListenAddr::Vsock { cid, port } => {
            let l = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(*cid, *port))
                .map_err(bind_err)?;
            ttrpc::asynchronous::transport::Listener::from(l)
        }
        ListenAddr::Tcp(_) => {
            return Err(ListenError::Protocol {
                addr: addr.clone(),
                detail: "ttrpc is served on unix and vsock only; use protocol = \"http\" for tcp",
            });
        }
    };
    Ok(Bound {
        addr: addr.clone(),
        listener,
    })
}

/// Creates the socket's directory and clears a stale socket file left by an earlier run.
fn prepare_unix_path(addr: &ListenAddr, path: &Path) -> Result<(), ListenError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ListenError::Directory {
            addr: addr.clone(),
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ListenError::Bind {
            addr: addr.clone(),
            source,
        }),
        Ok(meta) if !meta.file_type().is_socket() => Err(ListenError::NotASocket {
            addr: addr.clone(),
            path: path.to_path_buf(),
        }),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(ListenError::InUse { addr: addr.clone() }),
            Err(_) => std::fs::remove_file(path).map_err(|source| ListenError::Bind {
                addr: addr.clone(),
                source,
            }),
        },
    }
}

/// Removes a unix socket file on shutdown; vsock needs nothing.
pub fn cleanup(addr: &ListenAddr) {
    if let Some(path) = addr.unix_path()
        && let Err(e) = std::fs::remove_file(path)
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(%addr, error = %e, "could not remove the socket file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_socket_gets_its_directory_mode_and_replaces_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/w.sock");
        let addr = ListenAddr::Unix(path.clone());
        let bound = bind(&addr, 0o640).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);

        // While it is served, a second bind is refused and the file is left alone.
        assert!(matches!(bind(&addr, 0o600), Err(ListenError::InUse { .. })));
        drop(bound);
        // Now stale: a new bind replaces it.
        let _again = bind(&addr, 0o600).unwrap();
    }

    #[tokio::test]
    async fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, "data").unwrap();
        let err = bind(&ListenAddr::Unix(path.clone()), 0o600).err().unwrap();
        assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[tokio::test]
    async fn vsock_binds_where_the_kernel_has_vsock() {
        if !Path::new("/dev/vsock").exists() {
            eprintln!("skipped: /dev/vsock is absent, so this kernel cannot bind vsock listeners");
            return;
        }
        let addr: ListenAddr = "vsock://-1:0".parse().unwrap();
        // Port 0 is not special for vsock; use a high, likely free port instead.
        let addr = match addr {
            ListenAddr::Vsock { cid, .. } => ListenAddr::Vsock {
                cid,
                port: 40_000 + (std::process::id() % 20_000),
            },
            a => a,
        };
        match bind(&addr, 0o600) {
            Ok(bound) => drop(bound),
            Err(ListenError::Bind { source, .. })
                if source.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                    || source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                eprintln!("skipped: this kernel has /dev/vsock but no vsock transport: {source}");
                return;
            }
            Err(e) => panic!("vsock bind failed: {e}"),
        }
        // HTTP (the inference API) binds the same port once the ttrpc listener is gone.
        match bind_http(&addr, 0o600).await {
            Ok(HttpListener::Vsock(_)) => {}
            Ok(_) => panic!("a vsock address bound as something else"),
            Err(e) => panic!("vsock HTTP bind failed: {e}"),
        }
    }
}
