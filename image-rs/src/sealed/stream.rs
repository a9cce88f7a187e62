//! Opening a sealed file while it arrives: pieces are pulled in order (from a registry blob
//! stream), each chunk's ciphertext is copied straight into its place in the plaintext buffer,
//! and every completed chunk is queued at once to the decrypting workers while a hashing thread
//! follows them, so that receiving, decryption and the digest all overlap (see
//! [`super::parallel`]).
//!
//! Never returns plaintext before every chunk held and the whole-file digest matched. A bad
//! header (wrong KEK, policy digest) is refused before a byte of the body is pulled.

use super::SealedError;
use super::backend::plaintext_hasher;
use super::header::{PREFIX_LEN, SealedHeader, TAG_LEN};
use super::keys::Kek;
use super::open::{OpenOptions, OpenedFile, SealedOpener};
use super::parallel::Ciphertext;
use super::plaintext::PlaintextBuffer;

/// Opens a sealed file from the pieces of its bytes, as they arrive. See the module docs.
#[derive(Debug)]
pub struct StreamOpener {
    kek: Kek,
    options: OpenOptions,
}

/// The input, read a slice at a time across piece boundaries.
struct Input<I: Iterator> {
    iter: I,
    current: Option<I::Item>,
    at: usize,
    /// Bytes handed out so far.
    taken: u64,
}

impl<I> Input<I>
where
    I: Iterator,
    I::Item: AsRef<[u8]>,
{
    /// Up to `max` next bytes (fewer at a piece boundary); `None` at the end of the input.
    fn take(&mut self, max: usize) -> Option<&[u8]> {
        loop {
            let left = self
                .current
                .as_ref()
                .map_or(0, |c| c.as_ref().len() - self.at);
            if left > 0 {
                break;
            }
            self.current = Some(self.iter.next()?);
            self.at = 0;
        }
        let piece = self.current.as_ref()?.as_ref();
        let n = max.min(piece.len() - self.at);
        let bytes = piece.get(self.at..self.at + n)?;
        self.at += n;
        self.taken += n as u64;
        Some(bytes)
    }

    /// Fills `out` completely, or says how many bytes the input still had.
    fn fill(&mut self, out: &mut [u8]) -> Result<(), usize> {
        let mut filled = 0;
        while filled < out.len() {
            let Some(bytes) = self.take(out.len() - filled) else {
                return Err(filled);
            };
            if let Some(dst) = out.get_mut(filled..filled + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
            filled += bytes.len();
        }
        Ok(())
    }

    /// Counts (and drops) whatever input is left.
    fn rest_len(&mut self) -> u64 {
        let mut n = 0;
        while let Some(bytes) = self.take(usize::MAX) {
            n += bytes.len() as u64;
        }
        n
    }
}

impl StreamOpener {
    /// A stream opener with `kek` and `options` (policy digest, threads).
    pub fn new(kek: &Kek, options: OpenOptions) -> StreamOpener {
        StreamOpener {
            kek: kek.clone(),
            options,
        }
    }

    /// Opens the sealed file whose bytes `pieces` yields, in order and of any sizes. Verifies
    /// the header as soon as it is complete (wrong KEK or policy digest fail there, and no more
    /// pieces are pulled), then decrypts and hashes each chunk as soon as its last byte arrived.
    pub fn open<I>(&self, pieces: I) -> Result<OpenedFile, SealedError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut input = Input {
            iter: pieces.into_iter(),
            current: None,
            at: 0,
            taken: 0,
        };
        let mut head = vec![0u8; PREFIX_LEN];
        input
            .fill(&mut head)
            .map_err(|got| SealedError::HeaderTruncated {
                needed: PREFIX_LEN,
                got,
            })?;
        let needed = SealedHeader::declared_len(&head)?;
        head.resize(needed, 0);
        input
            .fill(head.get_mut(PREFIX_LEN..).unwrap_or_default())
            .map_err(|got| SealedError::HeaderTruncated {
                needed,
                got: PREFIX_LEN + got,
            })?;
        let opener = SealedOpener::new(&head, &self.kek, self.options.expected_digest.as_ref())?;
        let header = opener.header().clone();
        let mut out = PlaintextBuffer::allocate(header.layout().plaintext_len())?;
        let mut hasher = plaintext_hasher();
        let truncated = |actual: u64| SealedError::Truncated {
            expected: header.sealed_len(),
            actual,
        };
        opener.open_chunks(
            &mut out,
            self.options.thread_count(),
            &mut hasher,
            |_, slot| {
                // Ciphertext straight into its plaintext slot, then the tag.
                let mut tag = [0u8; TAG_LEN];
                input
                    .fill(slot)
                    .and_then(|()| input.fill(&mut tag))
                    .map_err(|_| truncated(input.taken))?;
                Ok((Ciphertext::InSlot, tag))
            },
        )?;
        // Refused before the digest is even looked at: the file is not what was sealed.
        match input.rest_len() {
            0 => {}
            extra => {
                return Err(SealedError::PushedPastEnd {
                    expected: header.sealed_len(),
                    extra,
                });
            }
        }
        let actual = hasher.finish()?;
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
