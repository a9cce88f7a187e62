//! The runtime measurement event log (CoCo's "AAEL"): each event is the text
//! `"<domain> <operation> <content>"`, recorded as a TCG2 crypto-agile `EV_EVENT_TAG` entry whose
//! digest is also extended into a measurement register, so a verifier can replay the log against
//! the register.
//!
//! Entry layout (little-endian): `u32` register index, `u32` event type (6, EV_EVENT_TAG),
//! `u32` digest count (1), `u16` TCG algorithm id, the digest, `u32` event size, then the event:
//! `u32` tag `0x4141454c` ("AAEL"), `u32` text length, the text. The digest is the hash of the
//! event bytes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256, Sha384};

/// Event type EV_EVENT_TAG in the TCG PC Client spec.
pub const EV_EVENT_TAG: u32 = 6;
/// The AAEL tag at the start of each event's data.
pub const AAEL_TAG: u32 = 0x4141_454c;
/// Longest event text accepted.
pub const MAX_EVENT_TEXT: usize = 64 * 1024;

/// The hash of the register the events go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventHash {
    /// TPM PCRs (vTPM platforms).
    Sha256,
    /// TDX RTMRs.
    Sha384,
}

impl EventHash {
    fn tcg_id(self) -> u16 {
        match self {
            EventHash::Sha256 => 0x000b,
            EventHash::Sha384 => 0x000c,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            EventHash::Sha256 => Sha256::digest(data).to_vec(),
            EventHash::Sha384 => Sha384::digest(data).to_vec(),
        }
    }
}

/// Why an event could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// Domain and operation are single words; content is one line.
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("event log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One event, ready to be extended and appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub register: u32,
    pub text: String,
    pub digest: Vec<u8>,
    pub entry: Vec<u8>,
}

/// Builds the TCG entry for an event; validates the parts.
pub fn build_event(
    hash: EventHash,
    register: u32,
    domain: &str,
    operation: &str,
    content: &str,
) -> Result<Event, EventLogError> {
    let word = |name: &str, v: &str| {
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(EventLogError::Invalid(format!(
                "{name} must be one non-empty word"
            )))
        } else {
            Ok(())
        }
    };
    word("domain", domain)?;
    word("operation", operation)?;
    if content.contains(['\n', '\r']) {
        return Err(EventLogError::Invalid(
            "content must be one line".to_string(),
        ));
    }
    let text = format!("{domain} {operation} {content}");
    if text.len() > MAX_EVENT_TEXT {
        return Err(EventLogError::Invalid(format!(
            "the event is {} bytes; at most {MAX_EVENT_TEXT}",
            text.len()
        )));
    }
    let text_len =
        u32::try_from(text.len()).map_err(|_| EventLogError::Invalid("too long".into()))?;
    let mut data = Vec::with_capacity(8 + text.len());
    data.extend_from_slice(&AAEL_TAG.to_le_bytes());
    data.extend_from_slice(&text_len.to_le_bytes());
    data.extend_from_slice(text.as_bytes());
    let digest = hash.digest(&data);
    let data_len =
        u32::try_from(data.len()).map_err(|_| EventLogError::Invalid("too long".into()))?;
    let mut entry = Vec::with_capacity(20 + digest.len() + data.len());
    entry.extend_from_slice(&register.to_le_bytes());
    entry.extend_from_slice(&EV_EVENT_TAG.to_le_bytes());
    entry.extend_from_slice(&1u32.to_le_bytes());
    entry.extend_from_slice(&hash.tcg_id().to_le_bytes());
    entry.extend_from_slice(&digest);
    entry.extend_from_slice(&data_len.to_le_bytes());
    entry.extend_from_slice(&data);
    Ok(Event {
        register,
        text,
        digest,
        entry,
    })
}

/// An append-only event log file.
pub struct EventLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl EventLog {
    /// Opens (creating) the log at `path`.
    pub fn open(path: &Path) -> Result<EventLog, EventLogError> {
        let io = |source| EventLogError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(EventLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends an event's entry and syncs it.
    pub fn append(&self, event: &Event) -> Result<(), EventLogError> {
        let io = |source| EventLogError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&event.entry).map_err(io)?;
        f.sync_data().map_err(io)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// CoCo's mapping from a PCR index to a TDX confidential-computing MR index (RTMR = index - 1):
/// PCR 1 and 7 -> 1, 2-6 -> 2, 8-15 -> 3, anything else -> 4.
pub fn pcr_to_ccmr(pcr: u64) -> u32 {
    match pcr {
        1 | 7 => 1,
        2..=6 => 2,
        8..=15 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_layout_matches_the_tcg_event_shape() {
        let e = build_event(
            EventHash::Sha384,
            4,
            "github.com/confidential-containers",
            "PullImage",
            "{\"image\":\"x\"}",
        )
        .unwrap();
        assert_eq!(
            e.text,
            "github.com/confidential-containers PullImage {\"image\":\"x\"}"
        );
        let b = &e.entry;
        assert_eq!(&b[0..4], &4u32.to_le_bytes());
        assert_eq!(&b[4..8], &6u32.to_le_bytes());
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..14], &[0x0c, 0x00]);
        assert_eq!(&b[14..62], e.digest.as_slice());
        let size = u32::from_le_bytes(b[62..66].try_into().unwrap()) as usize;
        let data = &b[66..];
        assert_eq!(data.len(), size);
        assert_eq!(&data[0..4], b"LEAA");
        assert_eq!(
            u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize,
            e.text.len()
        );
        assert_eq!(&data[8..], e.text.as_bytes());
        assert_eq!(e.digest, Sha384::digest(data).to_vec());
    }

    #[test]
    fn parts_are_validated() {
        for (d, o, c) in [
            ("", "op", "c"),
            ("a b", "op", "c"),
            ("d", "", "c"),
            ("d", "o\n", "c"),
            ("d", "o", "two\nlines"),
        ] {
            assert!(
                build_event(EventHash::Sha256, 17, d, o, c).is_err(),
                "{d:?} {o:?} {c:?}"
            );
        }
        assert!(build_event(EventHash::Sha256, 17, "d", "o", "").is_ok());
    }

    #[test]
    fn pcr_mapping() {
        assert_eq!(
            [1, 7, 2, 6, 8, 15, 16, 17].map(pcr_to_ccmr),
            [1, 1, 2, 2, 3, 3, 4, 4]
        );
    }

    #[test]
    fn appends_entries() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("sub/eventlog")).unwrap();
        let e = build_event(EventHash::Sha256, 17, "d", "o", "c").unwrap();
        log.append(&e).unwrap();
        log.append(&e).unwrap();
        let bytes = std::fs::read(log.path()).unwrap();
        assert_eq!(bytes.len(), 2 * e.entry.len());
    }
}
