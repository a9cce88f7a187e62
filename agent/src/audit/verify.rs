//! Checking an audit log's chain, line by line.

use std::io::BufRead;
use std::path::Path;

use super::{Entry, GENESIS};

/// Longest line accepted when verifying; wardd's own entries are far shorter.
const MAX_LINE: usize = 1 << 20;

/// Where the chain ends: the newest entry's hash and how many entries there are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub hash: String,
    pub entries: u64,
}

impl ChainHead {
    /// The head of a log with no entries.
    pub fn empty() -> ChainHead {
        ChainHead {
            hash: GENESIS.to_string(),
            entries: 0,
        }
    }
}

/// The first place a log fails to verify. Line numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("cannot read the log: {0}")]
    Read(#[from] std::io::Error),
    /// A line is not an audit entry.
    #[error("line {line}: not an audit entry: {reason}")]
    Malformed { line: u64, reason: String },
    /// A line's `seq` is not the one that should come next: a line was dropped, added or moved.
    #[error(
        "line {line}: sequence {found} where {expected} was expected (a line was dropped, added or moved)"
    )]
    Sequence {
        line: u64,
        expected: u64,
        found: u64,
    },
    /// A line's `prev` is not the previous line's hash.
    #[error("line {line}: `prev` does not match the hash of the line before it")]
    Chain { line: u64 },
    /// A line's content does not match its own `hash`: it was edited.
    #[error("line {line}: content does not match its hash (the line was edited)")]
    Hash { line: u64 },
}

/// Verifies the log at `path`.
pub fn verify(path: &Path) -> Result<ChainHead, VerifyError> {
    let file = std::fs::File::open(path)?;
    verify_reader(std::io::BufReader::new(file))
}

/// Verifies a log read from `reader`, returning its head.
pub fn verify_reader(reader: impl BufRead) -> Result<ChainHead, VerifyError> {
    verify_each(reader, |_| {})
}

/// Verifies a log read from `reader`, handing each entry to `visit` once it checked; the
/// caller must discard what it gathered when the result is an error.
pub fn verify_each(
    mut reader: impl BufRead,
    mut visit: impl FnMut(&Entry),
) -> Result<ChainHead, VerifyError> {
    let mut head = ChainHead::empty();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n =
            std::io::Read::take(&mut reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let malformed = |reason: String| VerifyError::Malformed {
            line: line_no,
            reason,
        };
        if buf.last() != Some(&b'\n') {
            return Err(malformed(if n > MAX_LINE {
                "the line is too long".to_string()
            } else {
                "the last line is incomplete (no newline)".to_string()
            }));
        }
        let entry: Entry = serde_json::from_slice(&buf).map_err(|e| malformed(e.to_string()))?;
        if entry.seq != head.entries {
            return Err(VerifyError::Sequence {
                line: line_no,
                expected: head.entries,
                found: entry.seq,
            });
        }
        if entry.prev != head.hash {
            return Err(VerifyError::Chain { line: line_no });
        }
        if entry.hash != entry.compute_hash() {
            return Err(VerifyError::Hash { line: line_no });
        }
        visit(&entry);
        head = ChainHead {
            hash: entry.hash,
            entries: head.entries + 1,
        };
    }
    Ok(head)
}
