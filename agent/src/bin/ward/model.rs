//! `ward model`: the owner side of sealed models. `seal` a model directory into an OCI layout
//! (a new random KEK when the KEK file does not exist yet), `push` it to a registry, `kbs-put`
//! the KEK into Trustee with the admin API, and `unseal` a layout offline to check it. Each
//! prints the policy entry that pins the model's digests.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Context, bail};
use ward_attester::kbs::admin::{AdminAuth, AdminClaims, AdminKey, put_resource};
use ward_image::model_artifact::{
    LAYOUT_TAG, layout_digests, policy_entry, seal_dir, unseal_layout,
};
use ward_image::registry::{Registry, RegistryConfig};
use ward_image::sealed::Kek;
use ward_kbs_wire::ResourceUri;
use zeroize::Zeroizing;

/// Reads a 32-byte KEK, or makes one (mode 0600) when `create` and the file does not exist.
fn kek_file(path: &Path, create: bool) -> anyhow::Result<Kek> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            if bytes.len() != 32 {
                bail!(
                    "{}: a KEK is 32 bytes, this file has {}",
                    path.display(),
                    bytes.len()
                );
            }
            Kek::from_slice(&bytes).context("KEK")
        }
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
            let key = Zeroizing::new(rand::random::<[u8; 32]>());
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&key[..])?;
            eprintln!("made a new random KEK in {} (mode 0600)", path.display());
            Ok(Kek::new(key))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn seal(
    dir: &Path,
    out: &Path,
    kid: &str,
    kek: &Path,
    chunk_size: u32,
) -> anyhow::Result<bool> {
    ResourceUri::parse(kid)?;
    let kek = kek_file(kek, true)?;
    let m = seal_dir(dir, out, &kek, kid, chunk_size)?;
    println!(
        "sealed {} files into {} (manifest {}, KEK {kid})\n",
        m.digests.len(),
        out.display(),
        m.manifest_digest
    );
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    print!(
        "{}",
        policy_entry(
            &name,
            "REGISTRY/REPOSITORY",
            &m.manifest_digest,
            kid,
            &m.digests
        )
    );
    Ok(true)
}

pub async fn push(layout: &Path, reference: &str, insecure: &[String]) -> anyhow::Result<bool> {
    let registry = Registry::new(RegistryConfig {
        insecure: insecure.to_vec(),
        ..Default::default()
    })?;
    let r = Registry::reference(reference)?;
    let (_, kid, digests) = layout_digests(layout)?;
    let digest = registry.push_layout(layout, LAYOUT_TAG, &r).await?;
    println!(
        "pushed {} as {reference} ({digest}); wardd's entry:\n",
        layout.display()
    );
    let repository = format!("{}/{}", r.registry(), r.repository());
    let name = r.repository().rsplit('/').next().unwrap_or("model");
    print!(
        "{}",
        policy_entry(name, &repository, &digest, &kid, &digests)
    );
    Ok(true)
}

/// Where `ward model kbs-put` gets its admin token.
pub struct AdminSource<'a> {
    /// The operator's Ed25519 key, to sign a token with `claims` here.
    pub key: Option<&'a Path>,
    /// A ready-made token file.
    pub token: Option<&'a Path>,
    pub claims: AdminClaims,
}

/// What `ward model kbs-put` uploads.
pub enum Upload<'a> {
    /// A 32-byte KEK.
    Kek(&'a Path),
    /// A model access policy, checked as wardd reads it.
    Policy(&'a Path),
}

pub async fn kbs_put(
    url: &str,
    admin: AdminSource<'_>,
    kid: &str,
    upload: Upload<'_>,
    cacert: Option<&Path>,
) -> anyhow::Result<bool> {
    let uri = ResourceUri::parse(kid)?;
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(Zeroizing::new)
            .with_context(|| format!("reading {}", p.display()))
    };
    let auth = match (admin.key, admin.token) {
        (_, Some(token)) => AdminAuth::Token(read(token)?),
        (Some(key), None) => AdminAuth::Key {
            key: Box::new(AdminKey::from_pem(&read(key)?)?),
            claims: admin.claims,
        },
        (None, None) => bail!("--admin-key or --admin-token is required"),
    };
    let (file, what) = match upload {
        Upload::Kek(p) => (p, "the KEK"),
        Upload::Policy(p) => (p, "the access policy"),
    };
    let kek =
        Zeroizing::new(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    match upload {
        Upload::Kek(_) if kek.len() != 32 => {
            bail!("a KEK is 32 bytes, this file has {}", kek.len())
        }
        Upload::Policy(p) => {
            let policy = ward_agent::access::AccessPolicy::from_bytes(&kek)
                .with_context(|| p.display().to_string())?;
            println!("policy sha256 {}", policy.digest());
        }
        Upload::Kek(_) => {}
    }
    let ca = match cacert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    put_resource(url, ca.as_deref(), &auth, &uri, &kek).await?;
    println!("uploaded {what} as {uri} to {url}");
    match upload {
        Upload::Kek(_) => println!(
            "the KBS releases it to guests its resource policy admits; pin the model's digests in wardd's [[model]] entry"
        ),
        Upload::Policy(_) => println!(
            "name it in wardd's [[model]] entry: policy = \"{uri}\" (the model is served only once it is released)"
        ),
    }
    Ok(true)
}

pub fn unseal(layout: &Path, out: &Path, kek: &Path) -> anyhow::Result<bool> {
    let kek = kek_file(kek, false)?;
    let digests = unseal_layout(layout, &kek, out)?;
    println!(
        "unsealed {} files into {}; every chunk and digest held:",
        digests.len(),
        out.display()
    );
    for (name, d) in &digests {
        println!("  {d}  {name}");
    }
    Ok(true)
}
