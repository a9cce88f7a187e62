//! The harness for ward's integration tests: it finds the built binaries, starts wardd with a
//! config of the test's choosing in a private temporary directory, waits for the real readiness
//! signal (`READY=1` over a `NOTIFY_SOCKET` the harness owns), and stops it on drop.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which `just test` does);
//! `WARD_BIN_DIR` points elsewhere when needed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// A ttrpc client generated from CoCo's own protos (`tests/coco-protos/`, guest-components
/// 8246e5e0), apart from ward's: `coco::attestation_agent`, `coco::api`, `coco::keyprovider` and
/// their `*_ttrpc` clients. The conformance suite (`tests/coco_conformance.rs`) calls wardd
/// through these.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::undocumented_unsafe_blocks,
    missing_docs,
    unused_qualifications,
    unsafe_op_in_unsafe_fn,
    dead_code
)]
pub mod coco {
    include!(concat!(env!("OUT_DIR"), "/coco_modules.rs"));
}
pub mod kbs;
pub mod proxy;
pub mod python;
pub mod qemu;
pub mod registry;
pub mod registry_gate;
pub mod served;
pub mod sigstore;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Directory holding `wardd` and `ward`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test executables live in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable has no target directory")
        .to_path_buf()
}

/// The path of a built ward binary, with a clear message when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, or `just test`)",
        path.display()
    );
    path
}

/// Whether this process runs as root (PID-1 and mount tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A `NOTIFY_SOCKET` the test owns, to see wardd's `READY=1` and `STOPPING=1`.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket { path, sock }
    }

    /// Waits for a datagram holding `state` (e.g. `READY=1`); returns all it read.
    pub fn wait_for(&self, state: &str, timeout: Duration) -> Result<Vec<String>, String> {
        let until = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no `{state}` within {timeout:?}; got {seen:?}"));
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    let hit = msg.lines().any(|l| l == state);
                    seen.push(msg);
                    if hit {
                        return Ok(seen);
                    }
                }
                // Interrupted: a signal reached this thread (another test's child exiting, or a
                // test signalling its wardd); the wait goes on.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// A running wardd in its own temporary directory.
pub struct Wardd {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub notify: NotifySocket,
    /// `unix://` address of the listener the harness configured.
    pub addr: String,
    pub audit: PathBuf,
    pub stderr_path: PathBuf,
    /// How long from spawn to `READY=1`.
    pub ready_after: Duration,
}

/// A config for one listener serving `services` at `<dir>/ward.sock`, with an audit log, and
/// initdata and the event log in `dir` (never the machine's /run).
pub fn config_text(dir: &Path, services: &[&str]) -> String {
    let list: Vec<String> = services.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[log]\nlevel = \"debug\"\n\n[audit]\npath = {:?}\n\n[daemon]\nshutdown_timeout_secs = 5\n\n\
         [attestation]\ninitdata = {:?}\neventlog = {:?}\n\n\
         [images]\n\n\
         [inference]\nengine_dir = {:?}\n\n\
         [[listener]]\naddress = \"unix://{}\"\nservices = [{}]\n",
        dir.join("audit.jsonl").display().to_string(),
        dir.join("initdata.toml").display().to_string(),
        dir.join("eventlog").display().to_string(),
        dir.join("engines").display().to_string(),
        dir.join("ward.sock").display(),
        list.join(", ")
    )
}

impl Wardd {
    /// Starts wardd on a single unix listener serving `services`.
    pub fn start(services: &[&str]) -> Wardd {
        let dir = tempfile::tempdir().unwrap();
        let config = config_text(dir.path(), services);
        Wardd::start_with(dir, &config, "", &[])
    }

    /// Starts wardd with a config text, a kernel command line, and extra arguments placed
    /// before the wardd command (for example `unshare ...`); waits for `READY=1`.
    pub fn start_with(dir: tempfile::TempDir, config: &str, cmdline: &str, wrap: &[&str]) -> Wardd {
        let cfg = dir.path().join("ward.toml");
        std::fs::write(&cfg, config).unwrap();
        let cmdline_file = dir.path().join("cmdline");
        std::fs::write(&cmdline_file, cmdline).unwrap();
        let notify = NotifySocket::bind(dir.path());
        let stderr_path = dir.path().join("wardd.stderr");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let wardd = bin("wardd");
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&wardd);
                c
            }
            None => Command::new(&wardd),
        };
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--cmdline")
            .arg(&cmdline_file)
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let started = Instant::now();
        let child = cmd.spawn().unwrap();
        let addr = format!("unix://{}", dir.path().join("ward.sock").display());
        let audit = dir.path().join("audit.jsonl");
        let mut w = Wardd {
            dir,
            child,
            notify,
            addr,
            audit,
            stderr_path,
            ready_after: Duration::ZERO,
        };
        if let Err(e) = w.notify.wait_for("READY=1", Duration::from_secs(20)) {
            let _ = w.child.kill();
            panic!("wardd never became ready: {e}\nstderr:\n{}", w.stderr());
        }
        w.ready_after = started.elapsed();
        w
    }

    /// What wardd wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `signal` to the spawned process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the spawned process to end, killing it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!(
                    "wardd did not stop within {timeout:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Wardd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a ward binary to completion, returning (exit code, stdout, stderr).
pub fn run_ward(name: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A current-thread runtime for async client calls in sync tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What a client of encrypted inference does first: fetch `/v1/attestation` for a fresh nonce
/// from `base` (`http://HOST:PORT/v1`), check that the (sample) evidence's report data binds the
/// nonce and the key configuration, and return the key to encrypt to.
pub async fn attested_key(http: &reqwest::Client, base: &str) -> ward_e2e::KeyConfig {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let nonce: [u8; 32] = rand::random();
    let att: serde_json::Value = http
        .get(format!("{base}/attestation?nonce={}", b64.encode(nonce)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    checked_key(&att, &nonce)
}

/// The key configuration of an attestation answer (`GET /v1/attestation`, or the ttrpc
/// `Attestation` call) for `nonce`, once the (sample) evidence's report data is seen to bind
/// both.
pub fn checked_key(att: &serde_json::Value, nonce: &[u8]) -> ward_e2e::KeyConfig {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key_config = b64.decode(att["key_config"].as_str().unwrap()).unwrap();
    let rd = base64::engine::general_purpose::STANDARD
        .decode(att["evidence"]["report_data"].as_str().unwrap())
        .unwrap();
    ward_e2e::check_binding(&rd, nonce, &key_config, None).unwrap();
    let other: [u8; 32] = rand::random();
    assert!(
        ward_e2e::check_binding(&rd, &other, &key_config, None).is_err(),
        "bound to this nonce only"
    );
    ward_e2e::KeyConfig::decode(&key_config).unwrap()
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A bare HTTP/1.1 exchange over a unix socket: (status, content type, body), chunked bodies
/// decoded.
pub async fn http_unix(
    path: &str,
    method: &str,
    uri: &str,
    ct: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    let head = format!(
        "{method} {uri} HTTP/1.1\r\nHost: wardd\r\nConnection: close\r\nContent-Type: {ct}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut rest = &raw[split + 4..];
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    if header("transfer-encoding") != "chunked" {
        return (status, header("content-type"), rest.to_vec());
    }
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    (status, header("content-type"), body)
}
