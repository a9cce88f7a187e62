//! One download of a blob, read by every pull that needs it while it arrives: the bytes go from
//! the socket to each reader (a pull's decrypt → decompress → unpack thread) through a bounded
//! window in memory, and nowhere else. Nothing is written to be read back.
//!
//! - **Backpressure.** The download stops reading the socket while it is [`READ_AHEAD`] bytes
//!   ahead of its slowest reader (TCP flow control then holds the registry), so memory stays a
//!   small constant whatever the layer's size.
//! - **Sharing.** A pull that wants a blob another pull is downloading joins it if it comes
//!   while the first [`JOIN_WINDOW`] bytes are still held (every byte so far is kept until
//!   then), and reads from the start; later, it downloads on its own: bytes already handed out
//!   are not kept, and keeping them is what this module is for not doing.
//! - **Verdict.** A reader reaches end of stream only after the download ended *and* its size
//!   and digest held; a download that fails makes every reader fail with its reason. So a
//!   pipeline built on a reader never takes a truncated or altered blob for a complete one.
//!
//! Holds ciphertext or compressed bytes only, never logs them.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

/// Bytes a download may run ahead of its slowest reader.
pub(super) const READ_AHEAD: u64 = 1 << 20;
/// Bytes from the start a download keeps so that another pull can still join it. Less than
/// [`READ_AHEAD`], so that a download the readers cannot trim yet still has room.
pub(super) const JOIN_WINDOW: u64 = 512 << 10;

/// How long a download waits for room before evicting readers that never read.
pub(super) const EVICT_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// A reader was evicted before it read anything: its pull must download the blob itself.
#[derive(Debug, thiserror::Error)]
#[error("evicted from a shared download before reading")]
pub(super) struct Evicted;

/// Whether `e` says the reader was evicted.
pub(super) fn evicted(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Evicted>())
}

/// The download was abandoned: every reader is gone and no one can join any more.
#[derive(Debug)]
pub(super) struct Abandoned;

struct State {
    /// Received bytes not yet passed by every reader (and, while joinable, all of them).
    chunks: VecDeque<Bytes>,
    /// Offset of the first byte of `chunks`.
    base: u64,
    /// Bytes received.
    end: u64,
    /// Each reader's position; `None` once it is dropped or evicted.
    cursors: Vec<Option<u64>>,
    /// Readers evicted before they read anything (see [`Download::push`]).
    evicted: Vec<bool>,
    /// Whether a new reader can still start from byte 0.
    joinable: bool,
    /// How the download ended: `Ok` once size and digest held.
    outcome: Option<Result<(), String>>,
}

impl State {
    fn readers(&self) -> impl Iterator<Item = u64> + '_ {
        self.cursors.iter().flatten().copied()
    }

    /// The first byte that must stay: 0 while joinable, else the slowest reader's position.
    fn keep_from(&self) -> u64 {
        if self.joinable {
            0
        } else {
            self.readers().min().unwrap_or(self.end)
        }
    }

    fn trim(&mut self) {
        let keep = self.keep_from();
        while let Some(front) = self.chunks.front() {
            let front_end = self.base.saturating_add(front.len() as u64);
            if front_end > keep {
                break;
            }
            self.base = front_end;
            self.chunks.pop_front();
        }
    }

    /// Copies bytes at `pos` into `buf`; how many.
    fn copy_at(&self, pos: u64, buf: &mut [u8]) -> usize {
        let mut skip = pos.saturating_sub(self.base);
        let mut n = 0;
        for chunk in &self.chunks {
            let len = chunk.len() as u64;
            if skip >= len {
                skip -= len;
                continue;
            }
            let from = usize::try_from(skip).unwrap_or(usize::MAX);
            let piece = chunk.get(from..).unwrap_or_default();
            let out = buf.get_mut(n..).unwrap_or_default();
            let take = piece.len().min(out.len());
            if let (Some(dst), Some(src)) = (out.get_mut(..take), piece.get(..take)) {
                dst.copy_from_slice(src);
            }
            n += take;
            skip = 0;
            if n == buf.len() {
                break;
            }
        }
        n
    }
}

/// The shared state of one download: the producer side is the async download task, readers
/// are blocking unpack threads.
pub(super) struct Download {
    state: Mutex<State>,
    /// Readers wait here for bytes or the verdict.
    arrived: Condvar,
    /// The producer waits here for room.
    room: tokio::sync::Notify,
}

impl Download {
    /// A new download with one reader (its starter's).
    pub(super) fn start() -> (Arc<Download>, DownloadReader) {
        let d = Arc::new(Download {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                base: 0,
                end: 0,
                cursors: vec![Some(0)],
                evicted: vec![false],
                joinable: true,
                outcome: None,
            }),
            arrived: Condvar::new(),
            room: tokio::sync::Notify::new(),
        });
        let reader = DownloadReader {
            download: d.clone(),
            id: 0,
        };
        (d, reader)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader from byte 0, if the download can still be joined.
    pub(super) fn join(self: &Arc<Self>) -> Option<DownloadReader> {
        let mut s = self.lock();
        if !s.joinable || matches!(s.outcome, Some(Err(_))) {
            return None;
        }
        s.cursors.push(Some(0));
        s.evicted.push(false);
        Some(DownloadReader {
            download: self.clone(),
            id: s.cursors.len() - 1,
        })
    }

    /// Bytes received so far.
    pub(super) fn received(&self) -> u64 {
        self.lock().end
    }

    /// Whether the download ended.
    pub(super) fn ended(&self) -> bool {
        self.lock().outcome.is_some()
    }

    /// Hands `chunk` to the readers, first waiting while the download is [`READ_AHEAD`] bytes
    /// ahead of the slowest one.
    ///
    /// A reader that has not read a byte yet may be waiting for another layer of its own pull,
    /// whose download may wait for a reader of ours: pulls of images that share blobs in another
    /// order would wait for each other for ever. So after [`EVICT_AFTER`] without room, readers
    /// still at byte 0 are evicted; each downloads the blob on its own when it gets to it. A
    /// reader that has started reading is on its pull's current layer, so it always moves.
    pub(super) async fn push(&self, chunk: Bytes) -> Result<(), Abandoned> {
        let mut waited = false;
        loop {
            {
                let mut s = self.lock();
                if waited {
                    let st = &mut *s;
                    let end = st.end;
                    for (c, e) in st.cursors.iter_mut().zip(st.evicted.iter_mut()) {
                        if *c == Some(0) && end > 0 {
                            *c = None;
                            *e = true;
                        }
                    }
                    s.trim();
                    self.arrived.notify_all();
                }
                if s.readers().next().is_none() && !s.joinable {
                    return Err(Abandoned);
                }
                if s.end.saturating_sub(s.keep_from()) < READ_AHEAD {
                    s.end = s.end.saturating_add(chunk.len() as u64);
                    if s.end >= JOIN_WINDOW {
                        s.joinable = false;
                    }
                    s.chunks.push_back(chunk);
                    s.trim();
                    self.arrived.notify_all();
                    return Ok(());
                }
            }
            // One producer: `notify_one` keeps a permit when it is not waiting yet, so a
            // reader's notice between the check above and this wait is not lost.
            waited = tokio::time::timeout(EVICT_AFTER, self.room.notified())
                .await
                .is_err();
        }
    }

    /// Whether any reader is left.
    pub(super) fn wanted(&self) -> bool {
        self.lock().readers().next().is_some()
    }

    /// Ends the download: `Ok` once its size and digest held, else why not.
    pub(super) fn finish(&self, result: Result<(), String>) {
        let mut s = self.lock();
        s.outcome = Some(result);
        s.joinable = false;
        s.trim();
        self.arrived.notify_all();
    }
}

/// One pull's view of a download, from byte 0.
pub(super) struct DownloadReader {
    download: Arc<Download>,
    id: usize,
}

impl Read for DownloadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let d = &self.download;
        let mut s = d.lock();
        loop {
            if s.evicted.get(self.id).copied().unwrap_or(false) {
                return Err(io::Error::other(Evicted));
            }
            let pos = s
                .cursors
                .get(self.id)
                .copied()
                .flatten()
                .ok_or_else(|| io::Error::other("download reader used after it was closed"))?;
            if pos < s.end {
                let n = s.copy_at(pos, buf);
                if let Some(c) = s.cursors.get_mut(self.id) {
                    *c = Some(pos.saturating_add(n as u64));
                }
                s.trim();
                drop(s);
                d.room.notify_one();
                return Ok(n);
            }
            match &s.outcome {
                Some(Ok(())) => return Ok(0),
                Some(Err(e)) => return Err(io::Error::other(e.clone())),
                None => s = d.arrived.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

impl Drop for DownloadReader {
    fn drop(&mut self) {
        let mut s = self.download.lock();
        if let Some(c) = s.cursors.get_mut(self.id) {
            *c = None;
        }
        s.trim();
        drop(s);
        self.download.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_see_every_byte_and_only_the_verdict_ends_the_stream() {
        let (d, a) = Download::start();
        let mut b = d.join().unwrap();
        let reader = |mut r: DownloadReader| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut buf = vec![0u8; 7777];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => return Ok(out),
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            })
        };
        // `a` first reads a little by hand, so the two readers run at different places.
        let mut first = [0u8; 10];
        let pushes = tokio::spawn({
            let d = d.clone();
            async move {
                for i in 0..40u8 {
                    d.push(piece(i, 300_000)).await.unwrap();
                }
                d.finish(Ok(()));
            }
        });
        let _ = std::io::Read::read(&mut b, &mut first);
        let (ta, tb) = (reader(a), reader(b));
        pushes.await.unwrap();
        let (oa, ob) = (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap());
        assert_eq!(oa.len(), 40 * 300_000);
        assert_eq!(oa[39 * 300_000], 39);
        assert_eq!(ob.len() + first.len(), 40 * 300_000);
        // Past the join window nobody can join: the first bytes are gone.
        assert!(d.join().is_none());

        let (d, a) = Download::start();
        d.push(piece(1, 100)).await.unwrap();
        d.finish(Err("digest mismatch".into()));
        let mut out = Vec::new();
        let e = { a }.read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"));
        assert!(d.join().is_none(), "a failed download is not joined");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_download_waits_for_its_slowest_reader_and_stops_when_all_left() {
        let (d, mut a) = Download::start();
        // Past the join window, nothing is kept for joiners: READ_AHEAD bounds what is held.
        let pushed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let producer = tokio::spawn({
            let (d, pushed) = (d.clone(), pushed.clone());
            async move {
                loop {
                    if d.push(piece(0, 1 << 20)).await.is_err() {
                        return;
                    }
                    pushed.fetch_add(1 << 20, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let held = pushed.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            held <= READ_AHEAD.max(JOIN_WINDOW) + (1 << 20),
            "{held} bytes pushed with no reads"
        );
        let mut buf = vec![0u8; 3 << 20];
        let mut read = 0;
        while read < 3 << 20 {
            read += a.read(&mut buf[read..]).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let later = pushed.load(std::sync::atomic::Ordering::SeqCst);
        assert!(later > held, "reading made room");
        assert!(later <= 3 * (1 << 20) + READ_AHEAD + (1 << 20), "{later}");
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(5), producer)
            .await
            .expect("the producer stops once its readers are gone")
            .unwrap();
        assert!(!d.wanted());
    }

    /// Two pulls sharing two blobs in opposite orders would wait for each other for ever: a
    /// reader that never read is evicted after [`EVICT_AFTER`], and the other one goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_never_reads_is_evicted_and_told_so() {
        let (d, mut a) = Download::start();
        let b = d.join().unwrap();
        let producer = tokio::spawn({
            let d = d.clone();
            async move {
                for _ in 0..16 {
                    d.push(piece(3, 1 << 20)).await.unwrap();
                }
                d.finish(Ok(()));
            }
        });
        let started = std::time::Instant::now();
        let all = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            a.read_to_end(&mut out).map(|_| out.len())
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(all, 16 << 20);
        assert!(started.elapsed() >= EVICT_AFTER);
        producer.await.unwrap();
        let e = { b }.read(&mut [0u8; 8]).unwrap_err();
        assert!(evicted(&e), "{e}");
    }
}
