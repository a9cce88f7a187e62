//! `ward proxy` as a process for the tests (`proxy.rs`, `external_engine.rs`): started on a
//! free loopback port, waited for, killed on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bin;
use crate::python::free_port;

/// A running `ward proxy`.
pub struct ProxyProcess {
    child: Child,
    stderr: std::path::PathBuf,
    port: u16,
}

impl ProxyProcess {
    pub fn start(dir: &Path, name: &str, url: &str, extra: &[&str]) -> ProxyProcess {
        let port = free_port();
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(bin("ward"))
            .args([
                "proxy",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--url",
                url,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let p = ProxyProcess {
            child,
            stderr,
            port,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while !p.log().contains("ward proxy: serving") {
            assert!(
                Instant::now() < until,
                "the proxy never served:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
