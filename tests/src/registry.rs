//! A real OCI registry (Debian's `docker-registry`) on a free 127.0.0.1 port with its storage in
//! a temporary directory, and real images built with `umoci` and pushed with `skopeo`.
//! Tests that need these tools skip with a message when they are missing (`just deps` installs
//! them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The tools the image tests need, or the message to skip with.
pub fn image_tools() -> Result<(), String> {
    let missing: Vec<_> = ["docker-registry", "skopeo", "umoci"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "skipped: {} not installed (run `just deps` as root)",
            missing.join(", ")
        ))
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A running registry.
pub struct TestRegistry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl TestRegistry {
    /// Starts `docker-registry` on a free loopback port and waits until it answers.
    pub fn start() -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = TestRegistry { dir, port, child };
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// ward's registry client, allowed plain HTTP to this registry.
    pub fn client(&self) -> ward_image::registry::Registry {
        ward_image::registry::Registry::new(ward_image::registry::RegistryConfig {
            insecure: vec![self.host()],
            ..Default::default()
        })
        .unwrap()
    }

    /// Pushes an OCI layout image (`dir:tag`) as `name:tag`, returning the reference.
    pub fn push(&self, layout: &Path, tag: &str, name: &str) -> String {
        let reference = format!("{}/{name}:{tag}", self.host());
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{reference}"),
        ]));
        reference
    }

    /// Pushes `layout:tag` as `name:tag` with every layer JWE-encrypted by skopeo for the public
    /// key `public` (PEM), returning the reference.
    pub fn push_encrypted(&self, layout: &Path, tag: &str, name: &str, public: &Path) -> String {
        let reference = format!("{}/{name}:{tag}", self.host());
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--encryption-key",
            &format!("jwe:{}", public.display()),
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{reference}"),
        ]));
        reference
    }

    /// The file holding blob `digest` (`sha256:...`) in the registry's storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `len` random bytes at `path`: an image file that does not compress (its blob is about as
/// large as the file).
pub fn random_file(path: &Path, len: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

/// An OCI image layout built with umoci, one layer per `layer` call.
pub struct ImageBuilder {
    pub dir: tempfile::TempDir,
    pub layout: PathBuf,
    pub bundle: PathBuf,
    pub tag: String,
}

impl ImageBuilder {
    /// An empty image `layout:tag`, unpacked into a bundle whose rootfs the caller edits.
    pub fn new(tag: &str) -> ImageBuilder {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let bundle = dir.path().join("bundle");
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(format!("{}:{tag}", layout.display())));
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle));
        ImageBuilder {
            dir,
            layout,
            bundle,
            tag: tag.to_string(),
        }
    }

    /// The rootfs to edit before the next [`Self::layer`].
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Commits the rootfs changes since the last layer as a new layer.
    pub fn layer(&self) {
        run(Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image"])
            .arg(format!("{}:{}", self.layout.display(), self.tag))
            .arg(&self.bundle));
    }

    /// Encrypts the image in place with `ward image encrypt` for CoCo's key provider, under
    /// the KEK `kek` that the KBS holds as `kid`.
    pub fn encrypt_for_key_provider(&self, kid: &str, kek: &[u8]) {
        let kek_file = self.dir.path().join("kek");
        std::fs::write(&kek_file, kek).unwrap();
        let image = format!("{}:{}", self.layout.display(), self.tag);
        let (code, out, err) = crate::run_ward(
            "ward",
            &[
                "image",
                "encrypt",
                &image,
                "--kid",
                kid,
                "--kek-file",
                kek_file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
    }
}

/// An RSA-2048 key pair made by openssl: (private PEM path, public PEM path) in `dir`.
pub fn rsa_keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("key.pem");
    let public = dir.join("pub.pem");
    run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048"));
    run(Command::new("openssl")
        .args(["rsa", "-in"])
        .arg(&key)
        .args(["-pubout", "-out"])
        .arg(&public));
    (key, public)
}
