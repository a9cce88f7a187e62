//! The Linux configfs-tsm report interface (`/sys/kernel/config/tsm/report/`), through which
//! TDX and SEV-SNP guests get a quote or report for 64 bytes of report data.
//!
//! One request: make a report entry (mkdir), check its `provider`, read `generation`, write
//! `inblob`, read `outblob` (and `auxblob`, SNP's certificates, when asked), read `generation`
//! again, remove the entry. Every write to an attribute bumps `generation`, so a value other
//! than one more than before means someone else wrote to our entry between our write and our
//! read: the request is retried, then refused. This module owns that protocol and nothing
//! else; it never interprets the blobs. All file I/O is blocking and runs in
//! `tokio::task::spawn_blocking`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the interface lives, under the detection root.
pub const REPORT_DIR: &str = "sys/kernel/config/tsm/report";
/// The most bytes read from `outblob` or `auxblob` (a TDX quote is ~5 KiB, SNP certs ~10 KiB).
pub const MAX_BLOB: u64 = 1 << 20;
const ATTEMPTS: usize = 3;

/// The TSM provider a report entry is served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Intel TDX (`tdx_guest`).
    Tdx,
    /// AMD SEV-SNP (`sev_guest`).
    Sev,
}

impl Provider {
    /// The name in the `provider` attribute.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Tdx => "tdx_guest",
            Provider::Sev => "sev_guest",
        }
    }
}

/// What one request returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsmReport {
    /// The quote (TDX) or attestation report (SNP).
    pub outblob: Vec<u8>,
    /// SNP's certificate table, when asked for and present.
    pub auxblob: Option<Vec<u8>>,
}

/// Why a configfs-tsm request failed.
#[derive(Debug, thiserror::Error)]
pub enum TsmError {
    /// No configfs-tsm report directory.
    #[error("configfs-tsm is not available ({0} does not exist)")]
    Unavailable(PathBuf),
    /// A file operation on an entry failed.
    #[error("configfs-tsm: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The entry is served by another TEE.
    #[error("configfs-tsm provider is {found:?}, not {wanted}")]
    WrongProvider { wanted: &'static str, found: String },
    /// `generation` is not a number.
    #[error("configfs-tsm generation {0:?} is not a number")]
    BadGeneration(String),
    /// Someone else kept writing to our entry.
    #[error(
        "configfs-tsm entry written by another process (generation {before} -> {after}), {ATTEMPTS} times"
    )]
    Conflict { before: u64, after: u64 },
    /// The kernel returned nothing.
    #[error("configfs-tsm returned an empty outblob")]
    EmptyOutblob,
    /// A blob larger than [`MAX_BLOB`].
    #[error("configfs-tsm {0} is larger than {MAX_BLOB} bytes")]
    TooLarge(&'static str),
    /// The blocking task did not finish.
    #[error("configfs-tsm request task failed: {0}")]
    Task(String),
}

/// The configfs-tsm report interface under a root.
#[derive(Clone, Debug)]
pub struct ConfigfsTsm {
    dir: PathBuf,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TsmError {
    let path = path.to_path_buf();
    move |source| TsmError::Io { op, path, source }
}

/// A report entry, removed when dropped.
struct Entry {
    path: PathBuf,
}

impl Entry {
    fn create(dir: &Path) -> Result<Entry, TsmError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("ward-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    #[cfg(test)]
                    fake::on_mkdir(&path);
                    return Ok(Entry { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(io("mkdir", &path)(e)),
            }
        }
        let e = last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into());
        Err(io("mkdir", dir)(e))
    }

    fn read(&self, name: &'static str) -> Result<Vec<u8>, TsmError> {
        let path = self.path.join(name);
        let file = std::fs::File::open(&path).map_err(io("open", &path))?;
        let mut out = Vec::new();
        file.take(MAX_BLOB + 1)
            .read_to_end(&mut out)
            .map_err(io("read", &path))?;
        if out.len() as u64 > MAX_BLOB {
            return Err(TsmError::TooLarge(name));
        }
        Ok(out)
    }

    fn read_text(&self, name: &'static str) -> Result<String, TsmError> {
        Ok(String::from_utf8_lossy(&self.read(name)?)
            .trim()
            .to_string())
    }

    fn generation(&self) -> Result<u64, TsmError> {
        let g = self.read_text("generation")?;
        g.parse().map_err(|_| TsmError::BadGeneration(g))
    }

    fn write(&self, name: &'static str, data: &[u8]) -> Result<(), TsmError> {
        let path = self.path.join(name);
        std::fs::write(&path, data).map_err(io("write", &path))?;
        #[cfg(test)]
        fake::on_write(&self.path, name);
        Ok(())
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        #[cfg(test)]
        fake::on_rmdir(&self.path);
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "configfs-tsm entry not removed");
        }
    }
}

impl ConfigfsTsm {
    /// The interface under `root` (`/` outside tests).
    pub fn new(root: &Path) -> ConfigfsTsm {
        ConfigfsTsm {
            dir: root.join(REPORT_DIR),
        }
    }

    /// Whether the report directory exists.
    pub fn is_present(&self) -> bool {
        self.dir.is_dir()
    }

    /// The provider serving report entries (makes and removes one entry to read it).
    pub fn provider(&self) -> Result<String, TsmError> {
        if !self.is_present() {
            return Err(TsmError::Unavailable(self.dir.clone()));
        }
        Entry::create(&self.dir)?.read_text("provider")
    }

    /// One report for `inblob`, blocking; see the module docs for the protocol.
    pub fn report_blocking(
        &self,
        wanted: Provider,
        inblob: &[u8; 64],
        want_aux: bool,
    ) -> Result<TsmReport, TsmError> {
        if !self.is_present() {
            return Err(TsmError::Unavailable(self.dir.clone()));
        }
        let mut conflict = TsmError::Conflict {
            before: 0,
            after: 0,
        };
        for _ in 0..ATTEMPTS {
            let entry = Entry::create(&self.dir)?;
            let found = entry.read_text("provider")?;
            if found != wanted.name() {
                return Err(TsmError::WrongProvider {
                    wanted: wanted.name(),
                    found,
                });
            }
            let before = entry.generation()?;
            entry.write("inblob", inblob)?;
            let outblob = entry.read("outblob")?;
            let auxblob = if want_aux && entry.path.join("auxblob").exists() {
                Some(entry.read("auxblob")?).filter(|a| !a.is_empty())
            } else {
                None
            };
            let after = entry.generation()?;
            if after != before.wrapping_add(1) {
                tracing::warn!(before, after, "configfs-tsm entry raced, retrying");
                conflict = TsmError::Conflict { before, after };
                continue;
            }
            if outblob.is_empty() {
                return Err(TsmError::EmptyOutblob);
            }
            return Ok(TsmReport { outblob, auxblob });
        }
        Err(conflict)
    }

    /// [`Self::report_blocking`] on tokio's blocking pool.
    pub async fn report(
        &self,
        wanted: Provider,
        inblob: [u8; 64],
        want_aux: bool,
    ) -> Result<TsmReport, TsmError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.report_blocking(wanted, &inblob, want_aux))
            .await
            .map_err(|e| TsmError::Task(e.to_string()))?
    }
}

/// A fake kernel for tests: real configfs creates attributes on mkdir and computes `outblob`
/// when it is read; a plain directory does neither, so tests register a [`fake::Kernel`] for a
/// report directory and the entry code calls it at those points (compiled into tests only).
#[cfg(test)]
pub(crate) mod fake {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    /// Plays the kernel for one report directory.
    pub(crate) trait Kernel: Send + Sync {
        /// A new entry: write `provider` and `generation`.
        fn mkdir(&self, entry: &Path);
        /// An attribute was written (bump `generation`; on `inblob`, write `outblob`).
        fn write(&self, entry: &Path, name: &str);
    }

    type Registry = Mutex<Vec<(PathBuf, Arc<dyn Kernel>)>>;
    static KERNELS: Registry = Mutex::new(Vec::new());

    fn kernel_for(entry: &Path) -> Option<Arc<dyn Kernel>> {
        let dir = entry.parent()?;
        let kernels = KERNELS.lock().ok()?;
        kernels
            .iter()
            .find(|(d, _)| d == dir)
            .map(|(_, k)| Arc::clone(k))
    }

    /// Registers `kernel` for the report directory under `root` until the guard drops.
    pub(crate) fn install(root: &Path, kernel: Arc<dyn Kernel>) -> Installed {
        let dir = root.join(super::REPORT_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        KERNELS.lock().unwrap().push((dir.clone(), kernel));
        Installed(dir)
    }

    pub(crate) struct Installed(PathBuf);

    impl Drop for Installed {
        fn drop(&mut self) {
            if let Ok(mut k) = KERNELS.lock() {
                k.retain(|(d, _)| d != &self.0);
            }
        }
    }

    pub(super) fn on_mkdir(entry: &Path) {
        if let Some(k) = kernel_for(entry) {
            k.mkdir(entry);
        }
    }

    pub(super) fn on_write(entry: &Path, name: &str) {
        if let Some(k) = kernel_for(entry) {
            k.write(entry, name);
        }
    }

    /// configfs removes an entry's attributes with it; a plain directory needs them gone.
    pub(super) fn on_rmdir(entry: &Path) {
        if kernel_for(entry).is_none() {
            return;
        }
        if let Ok(files) = std::fs::read_dir(entry) {
            for f in files.flatten() {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }

    /// Builds `outblob` from `inblob`.
    pub(crate) type Answer = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

    /// A kernel answering with `outblob(inblob)`, and with `auxblob` when given.
    pub(crate) struct Simple {
        pub provider: &'static str,
        pub outblob: Answer,
        pub auxblob: Option<Vec<u8>>,
        /// Extra generation bumps after each inblob (another writer racing us).
        pub racing_writes: u64,
    }

    fn generation(entry: &Path) -> u64 {
        std::fs::read_to_string(entry.join("generation"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    impl Kernel for Simple {
        fn mkdir(&self, entry: &Path) {
            std::fs::write(entry.join("provider"), format!("{}\n", self.provider)).unwrap();
            std::fs::write(entry.join("generation"), "0\n").unwrap();
        }

        fn write(&self, entry: &Path, name: &str) {
            let g = generation(entry) + 1 + self.racing_writes;
            std::fs::write(entry.join("generation"), format!("{g}\n")).unwrap();
            if name == "inblob" {
                let inblob = std::fs::read(entry.join("inblob")).unwrap();
                std::fs::write(entry.join("outblob"), (self.outblob)(&inblob)).unwrap();
                if let Some(aux) = &self.auxblob {
                    std::fs::write(entry.join("auxblob"), aux).unwrap();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn echo_kernel(provider: &'static str, racing_writes: u64) -> Arc<fake::Simple> {
        Arc::new(fake::Simple {
            provider,
            outblob: Box::new(|inblob| [b"quote:", inblob].concat()),
            auxblob: Some(b"certs".to_vec()),
            racing_writes,
        })
    }

    #[tokio::test]
    async fn a_request_writes_inblob_reads_outblob_and_removes_its_entry() {
        let root = tempfile::tempdir().unwrap();
        let _k = fake::install(root.path(), echo_kernel("tdx_guest", 0));
        let tsm = ConfigfsTsm::new(root.path());
        assert_eq!(tsm.provider().unwrap(), "tdx_guest");
        let r = tsm.report(Provider::Tdx, [9; 64], true).await.unwrap();
        assert_eq!(r.outblob, [&b"quote:"[..], &[9; 64]].concat());
        assert_eq!(r.auxblob.as_deref(), Some(&b"certs"[..]));
        let left: Vec<_> = std::fs::read_dir(root.path().join(REPORT_DIR))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "entries left behind: {left:?}");
    }

    #[tokio::test]
    async fn the_wrong_provider_and_a_racing_writer_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let _k = fake::install(root.path(), echo_kernel("sev_guest", 0));
        let tsm = ConfigfsTsm::new(root.path());
        assert!(matches!(
            tsm.report(Provider::Tdx, [0; 64], false).await,
            Err(TsmError::WrongProvider { .. })
        ));
        drop(_k);

        let root = tempfile::tempdir().unwrap();
        let _k = fake::install(root.path(), echo_kernel("tdx_guest", 1));
        let tsm = ConfigfsTsm::new(root.path());
        assert!(matches!(
            tsm.report(Provider::Tdx, [0; 64], false).await,
            Err(TsmError::Conflict {
                before: 0,
                after: 2
            })
        ));
    }

    #[test]
    fn absent_interface_is_unavailable() {
        let root = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::new(root.path());
        assert!(!tsm.is_present());
        assert!(matches!(tsm.provider(), Err(TsmError::Unavailable(_))));
        assert!(matches!(
            tsm.report_blocking(Provider::Sev, &[0; 64], false),
            Err(TsmError::Unavailable(_))
        ));
    }
}
