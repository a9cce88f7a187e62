//! Opening a sealed file while it arrives: bytes are pushed in order (from a registry blob
//! stream), each chunk's ciphertext is copied straight into its place in the plaintext buffer,
//! and completed chunks are opened in parallel batches while the digest runs along, so that
//! decryption overlaps the download.
//!
//! Never returns plaintext before every chunk held and the whole-file digest matched; after any
//! error the opener refuses further use ([`SealedError::StreamFailed`]).

use std::num::NonZeroUsize;

use super::SealedError;
use super::backend::{PlaintextHasher, plaintext_hasher};
use super::header::{PREFIX_LEN, SealedHeader, TAG_LEN};
use super::keys::Kek;
use super::open::{OpenOptions, OpenedFile, SealedOpener, run_len};
use super::parallel::Source;
use super::plaintext::PlaintextBuffer;

/// Where the stream is.
enum State {
    /// Collecting the header bytes.
    Header(Vec<u8>),
    /// Header verified; chunks arriving.
    Body(Box<Body>),
    /// Done or failed.
    Failed,
}

struct Body {
    opener: SealedOpener,
    out: PlaintextBuffer,
    hasher: PlaintextHasher,
    /// Chunks fully received.
    received: u64,
    /// Chunks opened and hashed (always <= received).
    opened: u64,
    /// Bytes of chunk `received` seen so far (ciphertext then tag).
    partial: usize,
    /// The tag being received.
    tag: [u8; TAG_LEN],
    /// Tags of chunks `opened .. received`.
    tags: Vec<[u8; TAG_LEN]>,
    /// Sealed bytes pushed, header included.
    pushed: u64,
    /// Decryption threads.
    threads: NonZeroUsize,
}

/// An opener fed with the sealed bytes as they arrive. See the module docs.
pub struct StreamOpener {
    kek: Kek,
    options: OpenOptions,
    state: State,
}

impl std::fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Header(b) => format!("header ({} bytes)", b.len()),
            State::Body(b) => format!("{} of {} chunks", b.received, b.opener.chunk_count()),
            State::Failed => "failed".to_string(),
        };
        write!(f, "StreamOpener({state})")
    }
}

impl StreamOpener {
    /// A stream opener with `kek` and `options` (policy digest, threads).
    pub fn new(kek: &Kek, options: OpenOptions) -> StreamOpener {
        StreamOpener {
            kek: kek.clone(),
            options,
            state: State::Header(Vec::new()),
        }
    }

    /// The verified header, once enough bytes arrived.
    pub fn header(&self) -> Option<&SealedHeader> {
        match &self.state {
            State::Body(b) => Some(b.opener.header()),
            _ => None,
        }
    }

    /// Takes the next bytes of the sealed file. Verifies the header as soon as it is complete
    /// (wrong KEK or policy digest fail here, before any download of the body), and opens
    /// completed chunks in parallel batches.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), SealedError> {
        let result = self.push_inner(bytes);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn push_inner(&mut self, mut bytes: &[u8]) -> Result<(), SealedError> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Failed => return Err(SealedError::StreamFailed),
                State::Header(buf) => {
                    let needed = if buf.len() < PREFIX_LEN {
                        PREFIX_LEN
                    } else {
                        SealedHeader::declared_len(buf)?
                    };
                    let take = (needed - buf.len()).min(bytes.len());
                    let (now, rest) = bytes.split_at(take);
                    buf.extend_from_slice(now);
                    bytes = rest;
                    if buf.len() == needed && needed > PREFIX_LEN {
                        let opener = SealedOpener::new(
                            buf,
                            &self.kek,
                            self.options.expected_digest.as_ref(),
                        )?;
                        let out =
                            PlaintextBuffer::allocate(opener.header().layout().plaintext_len())?;
                        self.state = State::Body(Box::new(Body {
                            pushed: buf.len() as u64,
                            opener,
                            out,
                            hasher: plaintext_hasher(),
                            received: 0,
                            opened: 0,
                            partial: 0,
                            tag: [0; TAG_LEN],
                            tags: Vec::new(),
                            threads: self.options.thread_count(),
                        }));
                    }
                }
                State::Body(body) => {
                    let used = body.take(bytes)?;
                    bytes = bytes.get(used..).unwrap_or_default();
                }
            }
        }
        Ok(())
    }

    /// Ends the stream: opens the remaining chunks and checks the length and the digest.
    pub fn finish(mut self) -> Result<OpenedFile, SealedError> {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Failed => Err(SealedError::StreamFailed),
            State::Header(buf) => {
                let needed = if buf.len() < PREFIX_LEN {
                    PREFIX_LEN
                } else {
                    SealedHeader::declared_len(&buf)?
                };
                Err(SealedError::HeaderTruncated {
                    needed,
                    got: buf.len(),
                })
            }
            State::Body(mut body) => {
                let count = body.opener.chunk_count();
                if body.received < count {
                    return Err(SealedError::Truncated {
                        expected: body.opener.header().sealed_len(),
                        actual: body.pushed,
                    });
                }
                body.open_pending()?;
                let Body {
                    opener,
                    out,
                    hasher,
                    ..
                } = *body;
                let actual = hasher.finish()?;
                let header = opener.header().clone();
                if &actual != header.plaintext_sha256() {
                    return Err(SealedError::PlaintextDigestMismatch {
                        name: header.name().to_string(),
                        header: header.plaintext_sha256().clone(),
                        actual,
                    });
                }
                Ok(OpenedFile {
                    header,
                    plaintext: out,
                })
            }
        }
    }
}

impl Body {
    /// Consumes a prefix of `bytes` (at most the rest of the current chunk); returns its length.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, SealedError> {
        let layout = self.opener.header().layout();
        let count = layout.chunk_count();
        if self.received >= count {
            return Err(SealedError::PushedPastEnd {
                expected: self.opener.header().sealed_len(),
                extra: bytes.len() as u64,
            });
        }
        let index = self.received;
        let plain = layout.chunk_plaintext_len(index)?;
        let used = if self.partial < plain {
            // Ciphertext: straight into its plaintext slot.
            let n = (plain - self.partial).min(bytes.len());
            let at = layout.plaintext_offset(index) as usize + self.partial;
            let src = bytes.get(..n).unwrap_or_default();
            self.out
                .get_mut(at..at + n)
                .ok_or(SealedError::Crypto(
                    "plaintext buffer shorter than the file",
                ))?
                .copy_from_slice(src);
            n
        } else {
            let t = self.partial - plain;
            let n = (TAG_LEN - t).min(bytes.len());
            self.tag
                .get_mut(t..t + n)
                .ok_or(SealedError::Crypto("tag offset"))?
                .copy_from_slice(bytes.get(..n).unwrap_or_default());
            n
        };
        self.partial += used;
        self.pushed += used as u64;
        if self.partial == plain + TAG_LEN {
            self.tags.push(self.tag);
            self.received += 1;
            self.partial = 0;
            if self.received - self.opened >= run_len(layout.chunk_size(), self.threads) {
                self.open_pending()?;
            }
        }
        Ok(used)
    }

    /// Opens (and hashes) chunks `opened .. received` on all threads.
    fn open_pending(&mut self) -> Result<(), SealedError> {
        if self.received == self.opened {
            return Ok(());
        }
        let layout = self.opener.header().layout();
        let start = layout.plaintext_offset(self.opened) as usize;
        let end = (layout.plaintext_offset(self.received) as usize).min(self.out.len());
        let region = self.out.get_mut(start..end).ok_or(SealedError::Crypto(
            "plaintext buffer shorter than the file",
        ))?;
        self.opener.open_run(
            self.opened,
            region,
            Source::InPlace(&self.tags),
            self.threads,
            &mut self.hasher,
        )?;
        self.opened = self.received;
        self.tags.clear();
        Ok(())
    }
}
