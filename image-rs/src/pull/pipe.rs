//! One layer's decryption, decompression and diff_id hash on a thread of their own, feeding
//! the unpacker (the tar writer) through a bounded queue of large chunks: a pull's heaviest
//! stages then run on two cores instead of one after the other. Each byte is still read,
//! decrypted, decompressed, hashed and written once; nothing is read back.
//!
//! - **Bounded.** At most [`DEPTH`] chunks of [`CHUNK`] bytes wait between the two threads (and
//!   one more on each side: 768 KiB in all), and their buffers go back to the producer to be
//!   filled again (no allocation per chunk).
//! - **Errors pass through unchanged.** A read error of the producer (the download's verdict,
//!   an HMAC failure, a corrupt stream) reaches the unpacker as the same `io::Error`, so the
//!   caller's error categories (`layers.rs`) are those of a single thread.
//! - **The end is said.** The caller learns whether the producer read its source to the end
//!   (every chunk sent); an error or a consumer that stopped early means it did not.
//! - **Stopping.** When the unpacker stops early (it failed), the queue is dropped and the
//!   producer stops at its next chunk; the caller can then read the rest of the stream itself
//!   (for an encrypted layer, to reach the HMAC).
//!
//! Holds plaintext in its chunks: never logs them, and the chunks are plain buffers that are
//! overwritten by the next chunk and freed with the layer (like the decompressor's own window).

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes in one chunk handed from the producer to the unpacker.
const CHUNK: usize = 128 << 10;
/// Chunks that may wait between the two threads.
const DEPTH: usize = 4;

/// Runs `consume` over what `source` yields, `source` being read on another thread. Returns
/// what `consume` returned, and whether the source was read to its end.
pub(super) fn threaded<T>(
    source: impl Read + Send,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> (T, bool) {
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let producer = scope.spawn(move || {
            let mut source = source;
            produce(&mut source, &full_tx, &free_rx)
        });
        let out = {
            let mut reader = ChunkReader {
                full: full_rx,
                free: free_tx,
                current: Vec::new(),
                at: 0,
                ended: false,
            };
            consume(&mut reader)
            // The reader (and so the queue) goes here; a producer still sending sees it and
            // stops before the end.
        };
        // A panic on the producer is a bug; carry it here rather than take it for an end.
        let reached_end = match producer.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (out, reached_end)
    })
}

/// Fills chunks from `source` until its end, an error, or the reader leaving. True when the
/// end was reached and every chunk was sent.
fn produce(
    source: &mut impl Read,
    full: &SyncSender<io::Result<Vec<u8>>>,
    free: &Receiver<Vec<u8>>,
) -> bool {
    loop {
        let mut buf = free.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut len = 0;
        // A chunk is sent full (or at the end): decompressors return a few KiB per read.
        let outcome = loop {
            if len == CHUNK {
                break Ok(false);
            }
            match source.read(&mut buf[len..]) {
                Ok(0) => break Ok(true),
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(len);
        if len > 0 && full.send(Ok(buf)).is_err() {
            return false;
        }
        match outcome {
            Ok(false) => {}
            // Sent: every chunk is in the queue or taken. Dropping the sender is the reader's
            // end of stream.
            Ok(true) => return true,
            Err(e) => {
                let _ = full.send(Err(e));
                return false;
            }
        }
    }
}

/// The unpacker's side: a `Read` over the queue's chunks.
struct ChunkReader {
    full: Receiver<io::Result<Vec<u8>>>,
    free: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            if self.ended || out.is_empty() {
                return Ok(0);
            }
            match self.full.recv() {
                Ok(Ok(chunk)) => {
                    let used = std::mem::replace(&mut self.current, chunk);
                    self.at = 0;
                    // Back to the producer, if it still wants buffers.
                    let _ = self.free.try_send(used);
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                // The producer ended without an error: the end of the stream.
                Err(_) => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that yields its bytes in odd-sized reads, then an error if asked.
    struct Dribble {
        data: Vec<u8>,
        at: usize,
        fail_at_end: bool,
    }

    impl Read for Dribble {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                if self.fail_at_end {
                    return Err(io::Error::other("digest mismatch"));
                }
                return Ok(0);
            }
            let n = out.len().min(7919).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn every_byte_arrives_once_and_in_order() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12345] {
            let d = data(len);
            let source = Dribble {
                data: d.clone(),
                at: 0,
                fail_at_end: false,
            };
            let (got, reached_end) = threaded(source, |r| {
                let mut v = Vec::new();
                // Small reads, like a tar parser's headers.
                let mut buf = [0u8; 512];
                loop {
                    let n = r.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    v.extend_from_slice(&buf[..n]);
                }
                v
            });
            assert_eq!(got, d, "length {len}");
            assert!(reached_end, "the source was read to its end");
        }
    }

    #[test]
    fn the_producers_error_reaches_the_reader_after_its_bytes() {
        let d = data(3 * CHUNK + 5);
        let source = Dribble {
            data: d.clone(),
            at: 0,
            fail_at_end: true,
        };
        let ((got, err), reached_end) = threaded(source, |r| {
            let mut v = Vec::new();
            let e = r.read_to_end(&mut v).unwrap_err();
            (v, e)
        });
        assert_eq!(got, d);
        assert_eq!(err.to_string(), "digest mismatch");
        assert!(!reached_end, "an error is not the end");
    }

    #[test]
    fn a_reader_that_stops_early_stops_the_producer() {
        let d = data(64 * CHUNK);
        let source = Dribble {
            data: d,
            at: 0,
            fail_at_end: false,
        };
        // Returns after one small read: the scope must still end (the producer stops).
        let (first, reached_end) = threaded(source, |r| {
            let mut b = [0u8; 10];
            r.read_exact(&mut b).unwrap();
            b
        });
        assert_eq!(first[1], 31);
        assert!(!reached_end, "a source not read to its end");
    }
}
