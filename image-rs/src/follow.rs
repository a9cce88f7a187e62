//! Following a blob while it downloads: the writer side appends to a file in the blob store and
//! announces progress; readers read what is there and wait for more until the download ends.
//! This lets a layer be decrypted, decompressed and unpacked while it is still arriving, and
//! lets a second pull of the same blob read along instead of downloading it again.
//!
//! A reader reaches end of stream only after the download finished *and verified*: a download
//! that fails (network, size or digest) makes every reader fail, so a pipeline built on it never
//! mistakes a truncated or altered blob for a complete one.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Progress {
    written: u64,
    done: Option<Result<(), String>>,
}

/// The shared state of one download.
#[derive(Default)]
pub struct Growing {
    state: Mutex<Progress>,
    cv: Condvar,
}

impl Growing {
    pub fn new() -> Arc<Growing> {
        Arc::new(Growing::default())
    }

    fn advance(&self, n: u64) {
        let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        p.written = p.written.saturating_add(n);
        self.cv.notify_all();
    }

    /// Marks the download finished: `Ok` once the blob is verified, `Err` with the reason.
    pub fn finish(&self, result: Result<(), String>) {
        let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        p.done = Some(result);
        self.cv.notify_all();
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).written
    }

    /// Waits until the download ended; how it ended.
    pub fn wait_outcome(&self) -> Result<(), String> {
        let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(done) = &p.done {
                return done.clone();
            }
            p = self.cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether the download ended, and how.
    pub fn outcome(&self) -> Option<Result<(), String>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .done
            .clone()
    }
}

/// The writer side: a file in the store that announces each write.
pub struct ProgressWriter {
    file: File,
    growing: Arc<Growing>,
}

impl ProgressWriter {
    pub fn new(file: File, growing: Arc<Growing>) -> ProgressWriter {
        ProgressWriter { file, growing }
    }
}

impl Write for ProgressWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.growing.advance(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A reader that follows a file being written.
pub struct FollowReader {
    file: File,
    pos: u64,
    growing: Arc<Growing>,
}

impl FollowReader {
    pub fn new(file: File, growing: Arc<Growing>) -> FollowReader {
        FollowReader {
            file,
            pos: 0,
            growing,
        }
    }
}

impl Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let available = {
                let mut p = self.growing.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if p.written > self.pos {
                        break p.written - self.pos;
                    }
                    match &p.done {
                        Some(Ok(())) => return Ok(0),
                        Some(Err(e)) => return Err(io::Error::other(e.clone())),
                        None => {
                            p = self
                                .growing
                                .cv
                                .wait_timeout(p, Duration::from_millis(500))
                                .map(|(g, _)| g)
                                .unwrap_or_else(|e| e.into_inner().0);
                        }
                    }
                }
            };
            let want = buf
                .len()
                .min(usize::try_from(available).unwrap_or(usize::MAX));
            let n = self.file.read(buf.get_mut(..want).unwrap_or_default())?;
            if n > 0 {
                self.pos += n as u64;
                return Ok(n);
            }
            // The writer's bytes are not visible yet: wait for the next announcement.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_follows_a_writer_and_sees_its_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let g = Growing::new();
        let mut w = ProgressWriter::new(File::create(&path).unwrap(), g.clone());
        let mut r = FollowReader::new(File::open(&path).unwrap(), g.clone());
        let writer = std::thread::spawn(move || {
            for i in 0..50u8 {
                w.write_all(&[i; 1000]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            g.finish(Ok(()));
        });
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        writer.join().unwrap();
        assert_eq!(out.len(), 50_000);
        assert_eq!(out[49_999], 49);

        let g = Growing::new();
        let path = dir.path().join("bad");
        let mut w = ProgressWriter::new(File::create(&path).unwrap(), g.clone());
        let mut r = FollowReader::new(File::open(&path).unwrap(), g.clone());
        w.write_all(b"partial").unwrap();
        g.finish(Err("digest mismatch".into()));
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"));
    }
}
