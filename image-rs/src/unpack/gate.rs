//! The header budget: the `tar` crate buffers PAX records and GNU long names in memory before it
//! yields the entry they describe, with no limit of its own. The [`Gate`] counts what is read
//! from the stream between two entries and fails the read past the limit, so a gzip bomb
//! disguised as one huge extension header costs at most the limit in memory. Entry data is not
//! counted here (the caller streams it to disk and counts it against its own limits). This module
//! never buffers anything itself.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// Extra bytes allowed between entries beyond the policy's metadata limit: the headers
/// themselves (entry, PAX, GNU long name and link) and block padding.
const HEADER_SLACK: u64 = 8 * 512;

/// Counts bytes read outside entry data.
#[derive(Debug)]
pub(crate) struct Gate {
    in_data: Cell<bool>,
    since: Cell<u64>,
    limit: u64,
    tripped: Cell<bool>,
}

/// A reader whose reads are counted by a [`Gate`].
#[derive(Debug)]
pub(crate) struct Guarded<R> {
    inner: R,
    gate: Rc<Gate>,
}

impl Gate {
    /// A gate allowing `metadata_limit` bytes of extension headers before each entry.
    pub(crate) fn new(metadata_limit: u64) -> Rc<Gate> {
        Rc::new(Gate {
            in_data: Cell::new(false),
            since: Cell::new(0),
            limit: metadata_limit.saturating_add(HEADER_SLACK),
            tripped: Cell::new(false),
        })
    }

    /// Wraps the stream the tar reader will read.
    pub(crate) fn guard<R: Read>(self: &Rc<Self>, inner: R) -> Guarded<R> {
        Guarded {
            inner,
            gate: Rc::clone(self),
        }
    }

    /// An entry was yielded: what follows is its data.
    pub(crate) fn enter_data(&self) {
        self.in_data.set(true);
    }

    /// The entry's data is consumed: count again from zero.
    pub(crate) fn leave_data(&self) {
        self.since.set(0);
        self.in_data.set(false);
    }

    /// Whether a read failed because of the limit.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.get()
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let gate = &self.gate;
        if !gate.in_data.get() {
            let since = gate.since.get().saturating_add(n as u64);
            gate.since.set(since);
            if since > gate.limit {
                gate.tripped.set(true);
                return Err(io::Error::other("tar extension headers exceed the limit"));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_outside_data_and_resets_per_entry() {
        let gate = Gate::new(0);
        let mut r = gate.guard(io::repeat(0));
        let mut buf = vec![0; HEADER_SLACK as usize];
        r.read_exact(&mut buf).unwrap();
        gate.enter_data();
        for _ in 0..4 {
            r.read_exact(&mut buf).unwrap();
        }
        gate.leave_data();
        r.read_exact(&mut buf).unwrap();
        assert!(!gate.tripped());
        let err = r.read_exact(&mut [0; 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert!(gate.tripped());
    }
}
