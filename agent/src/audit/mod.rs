//! The append-only, hash-chained audit log.
//!
//! One JSON object per line: `seq` (from 0), `time` (RFC 3339, UTC), `event`, `subject`,
//! optional `detail`, `prev` (the previous entry's `hash`; 64 zeros for the first) and `hash`,
//! the SHA-256 of the entry's canonical JSON without `hash`. Editing, dropping or reordering any
//! line breaks the chain, and [`verify`] says where. Cutting lines off the end cannot be seen from
//! the file alone: compare the head hash with the one wardd reported (and, on TEEs with runtime
//! measurement registers, with what was extended there).
//!
//! This module never records secret values: callers pass resource URIs and digests, never bytes.

pub mod export;
pub mod usage;
mod verify;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use verify::{ChainHead, VerifyError, verify, verify_each, verify_reader};

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The directory or file could not be created, opened or written.
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The existing file does not verify, so wardd will not extend it.
    #[error("audit log {path} is broken; refusing to extend it")]
    Broken {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
}

/// One line of the log, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub event: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl Entry {
    /// SHA-256 (hex) of the entry's JSON with `hash` left out. Field order is fixed by the struct
    /// and `detail`'s object keys are sorted by `serde_json`, so the same values give the same hash.
    pub fn compute_hash(&self) -> String {
        let body = Entry {
            hash: String::new(),
            ..self.clone()
        };
        // Serialising a struct of strings, integers and a `Value` cannot fail.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }
}

struct Tail {
    file: File,
    next_seq: u64,
    head: String,
}

/// An open audit log. Cheap to share: writes take a short lock and one `write` + `fdatasync`.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
    export: Option<export::Exporter>,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, verifying any existing entries and continuing their
    /// chain. A log that does not verify is refused rather than extended.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let head = match File::open(path) {
            Ok(f) => {
                verify_reader(std::io::BufReader::new(f)).map_err(|source| AuditError::Broken {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ChainHead::empty(),
            Err(e) => return Err(io(e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                file,
                next_seq: head.entries,
                head: head.hash,
            }),
            export: None,
        })
    }

    /// Sends a copy of every line written from now on to `exporter`.
    pub fn with_export(mut self, exporter: export::Exporter) -> AuditLog {
        self.export = Some(exporter);
        self
    }

    /// The file this log writes to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hash of the newest entry (or [`GENESIS`]) and the number of entries.
    pub fn head(&self) -> (String, u64) {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        (tail.head.clone(), tail.next_seq)
    }

    /// Appends one entry and syncs it to the file; returns its hash.
    ///
    /// `subject` names what the event is about (a resource URI, an image digest), never a secret.
    pub fn record(
        &self,
        event: &str,
        subject: &str,
        detail: Option<serde_json::Value>,
    ) -> Result<String, AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let mut entry = Entry {
            seq: tail.next_seq,
            time: now_rfc3339(),
            event: event.to_string(),
            subject: subject.to_string(),
            detail,
            prev: tail.head.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        tail.file.write_all(&line).map_err(io)?;
        tail.file.sync_data().map_err(io)?;
        // Under the lock: the copy keeps the file's order.
        if let Some(x) = &self.export {
            x.send(&line);
        }
        tail.next_seq += 1;
        tail.head.clone_from(&entry.hash);
        Ok(entry.hash)
    }
}

/// The handle each writer holds: wardd's one log, or nothing when the log is off
/// (`[audit] path = ""`). Cloned into whoever records events (the KBS session, image pulls, model
/// loads, the inference front), so no module has to go through another to write.
#[derive(Clone, Default)]
pub struct Audit(Option<Arc<AuditLog>>);

impl Audit {
    /// Writes to `log`, or nowhere.
    pub fn new(log: Option<Arc<AuditLog>>) -> Audit {
        Audit(log)
    }

    /// The open log, when there is one.
    pub fn log(&self) -> Option<&Arc<AuditLog>> {
        self.0.as_ref()
    }

    /// Appends one entry (nothing when the log is off). For records whose failure must stop the
    /// work they record: a key release that cannot be audited is not made.
    pub fn record(
        &self,
        event: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<(), AuditError> {
        match &self.0 {
            Some(log) => log.record(event, subject, Some(detail)).map(drop),
            None => Ok(()),
        }
    }

    /// Appends one entry for work that is already done: a failure is logged, not returned.
    pub fn note(&self, event: &str, subject: &str, detail: serde_json::Value) {
        if let Err(e) = self.record(event, subject, detail) {
            tracing::error!(event, error = %e, "cannot write the audit log");
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests;
