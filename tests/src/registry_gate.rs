//! A loopback HTTP forwarder in front of a [`TestRegistry`](crate::registry::TestRegistry)
//! that holds every `GET` of one blob until the test opens it, and counts those `GET`s. Tests
//! use it to make an ordering deterministic (two pulls both past their manifest before the
//! layer's first byte arrives) instead of hoping the scheduler produces it.
//!
//! It reads the client's side one request head at a time (a pull sends only `GET`/`HEAD`, and
//! any body is forwarded by its `Content-Length`), so keep-alive connections are inspected per
//! request; the registry's answers are copied back untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Gate {
    open: bool,
    gets: usize,
}

/// The forwarder; it lives until the test process ends (its threads block on sockets).
pub struct BlobGate {
    port: u16,
    state: Arc<(Mutex<Gate>, Condvar)>,
}

impl BlobGate {
    /// Forwards to `upstream` (`host:port`), holding `GET`s of `digest` (`sha256:…`).
    pub fn start(upstream: &str, digest: &str) -> BlobGate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<Gate>, Condvar)> = Arc::default();
        let (upstream, needle) = (upstream.to_string(), format!("/blobs/{digest}"));
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, needle, st) = (upstream.clone(), needle.clone(), st.clone());
                std::thread::spawn(move || forward(client, &upstream, &needle, &st));
            }
        });
        BlobGate { port, state }
    }

    /// `127.0.0.1:PORT`, to use in image references instead of the registry's.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Lets held and later `GET`s of the blob through.
    pub fn open(&self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap().open = true;
        cv.notify_all();
    }

    /// How many `GET`s of the blob arrived so far.
    pub fn gets(&self) -> usize {
        self.state.0.lock().unwrap().gets
    }
}

fn forward(client: TcpStream, upstream: &str, needle: &str, state: &(Mutex<Gate>, Condvar)) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut back_to), Ok(mut from_server)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut back_to);
        let _ = back_to.shutdown(Shutdown::Write);
    });
    let mut requests = BufReader::new(client);
    loop {
        let mut head = String::new();
        let mut length = 0u64;
        loop {
            let mut line = String::new();
            match requests.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = server.shutdown(Shutdown::Write);
                    return;
                }
                Ok(_) => {}
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let request_line = head.lines().next().unwrap_or_default();
        if request_line.starts_with("GET ") && request_line.contains(needle) {
            let (m, cv) = state;
            let mut g = m.lock().unwrap();
            g.gets += 1;
            while !g.open {
                let (next, timeout) = cv.wait_timeout(g, Duration::from_secs(60)).unwrap();
                g = next;
                assert!(
                    !timeout.timed_out() || g.open,
                    "the blob gate was never opened"
                );
            }
        }
        if server.write_all(head.as_bytes()).is_err()
            || std::io::copy(&mut (&mut requests).take(length), &mut server).is_err()
        {
            return;
        }
    }
}
