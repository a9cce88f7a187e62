//! A copy of every audit line for a log shipper (`[audit] export`): JSON lines on wardd's
//! standard output, or to every client of a unix socket, byte for byte as written to the file,
//! so the shipped copy verifies with the same chain (`seq`, `prev`, `hash`) and nothing is
//! re-encoded on the way. Never slows or fails the audited work: lines go through a bounded
//! queue, and a reader that falls behind loses lines (it sees the gap in `seq`) rather than
//! holding wardd up.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::broadcast;

/// Lines queued for a slow reader before it starts losing them.
const QUEUE: usize = 4096;

/// Where the copy goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTarget {
    Stdout,
    /// A unix socket wardd listens on; each client gets the lines written after it connected.
    Unix(PathBuf),
}

impl ExportTarget {
    /// `stdout` or `unix:///path`.
    pub fn parse(s: &str) -> Result<ExportTarget, String> {
        match s {
            "stdout" => Ok(ExportTarget::Stdout),
            _ => match s.strip_prefix("unix://") {
                Some(p) if p.starts_with('/') => Ok(ExportTarget::Unix(PathBuf::from(p))),
                _ => Err(format!(
                    "`{s}`: export to `stdout` or `unix:///absolute/path`"
                )),
            },
        }
    }
}

/// The sending side, held by the log.
#[derive(Clone, Debug)]
pub struct Exporter {
    tx: broadcast::Sender<Arc<[u8]>>,
}

impl Exporter {
    /// Starts exporting to `target`; for a socket, from within a tokio runtime.
    pub fn start(target: &ExportTarget) -> std::io::Result<Exporter> {
        let (tx, _) = broadcast::channel::<Arc<[u8]>>(QUEUE);
        match target {
            ExportTarget::Stdout => {
                let mut rx = tx.subscribe();
                std::thread::Builder::new()
                    .name("audit-export".into())
                    .spawn(move || {
                        let mut out = std::io::stdout();
                        loop {
                            match rx.blocking_recv() {
                                Ok(line) => {
                                    if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                                        return;
                                    }
                                }
                                Err(broadcast::error::RecvError::Lagged(n)) => {
                                    tracing::warn!(lost = n, "audit export: stdout fell behind");
                                }
                                Err(broadcast::error::RecvError::Closed) => return,
                            }
                        }
                    })?;
            }
            ExportTarget::Unix(path) => serve(path, tx.clone())?,
        }
        Ok(Exporter { tx })
    }

    /// Queues one line (with its newline); never blocks.
    pub(super) fn send(&self, line: &[u8]) {
        // No receiver (no socket client yet) is not an error.
        let _ = self.tx.send(Arc::from(line));
    }
}

fn serve(path: &Path, tx: broadcast::Sender<Arc<[u8]>>) -> std::io::Result<()> {
    if path.exists() {
        // Only a stale socket is replaced, never a regular file.
        use std::os::unix::fs::FileTypeExt as _;
        if std::fs::symlink_metadata(path)?.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    // The log names resources and clients: owner-only, as the log file.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(line) => {
                            if stream.write_all(&line).await.is_err() {
                                return;
                            }
                        }
                        // Fell behind: the reader sees the gap in `seq`; go on.
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(lost = n, "audit export: a reader fell behind");
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
    });
    Ok(())
}
