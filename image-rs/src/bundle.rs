//! The bundle a pull produces for a container runtime: `rootfs/` and a `config.json` (OCI
//! runtime spec) derived from the image config, the way CoCo's image-rs writes it: the process
//! (entrypoint + cmd, env, working dir, user) from the image, everything else left to the
//! runtime that owns the container.
//!
//! The image's `User` (`user`, `uid`, `user:group`, `uid:gid`, ...) is resolved the way runc and
//! Docker resolve it: names through the image's own `/etc/passwd` and `/etc/group` (read inside
//! the rootfs, symlinks resolved there), a user's primary group when no group is named, and
//! numeric ids taken as they are. A name the image does not define is refused: it never
//! becomes uid 0.

use std::path::Path;

use serde::Deserialize;

use crate::pull::PullError;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ContainerConfig>,
}

/// The `config.json` (OCI runtime spec) for an (already verified) image config, with names in
/// `User` resolved in `rootfs` (the unpacked image). Nothing is written.
pub fn runtime_config(rootfs: &Path, image_config: &[u8]) -> Result<Vec<u8>, PullError> {
    let parsed: ImageConfig = serde_json::from_slice(image_config).map_err(|e| PullError::Io {
        what: "image config".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let c = parsed.config.unwrap_or_default();
    let mut args = c.entrypoint.unwrap_or_default();
    args.extend(c.cmd.unwrap_or_default());
    if args.is_empty() {
        args.push("/bin/sh".to_string());
    }
    let (uid, gid) = match c.user.as_deref().filter(|u| !u.is_empty()) {
        None => (0, 0),
        Some(user) => resolve_user(rootfs, user).map_err(|detail| PullError::User {
            user: user.to_string(),
            detail,
        })?,
    };
    let spec = serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": c.env.unwrap_or_else(|| vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()]),
            "cwd": c.working_dir.filter(|w| w.starts_with('/')).unwrap_or_else(|| "/".to_string()),
        },
        "root": {"path": "rootfs", "readonly": false},
        "annotations": {"io.github.ward.image.user": c.user.unwrap_or_default()},
    });
    let text = serde_json::to_vec_pretty(&spec).map_err(|e| PullError::Io {
        what: "config.json".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(text)
}

/// Writes `bundle/config.json` (through a temporary file and a rename, so it appears whole):
/// the last step of publishing a bundle, its "ready" mark.
pub fn write_runtime_config(bundle: &Path, text: &[u8]) -> Result<(), PullError> {
    let tmp = bundle.join(".config.json.tmp");
    std::fs::write(&tmp, text).map_err(|source| PullError::Io {
        what: "config.json".into(),
        source,
    })?;
    std::fs::rename(&tmp, bundle.join("config.json")).map_err(|source| PullError::Io {
        what: "config.json".into(),
        source,
    })
}

/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// One `name:x:id:...` file of the image, as (name, id, primary gid) rows; missing is empty.
fn account_rows(rootfs: &Path, file: &str) -> Result<Vec<(String, u32, Option<u32>)>, String> {
    let text = match crate::unpack::read_in_root(rootfs, file, MAX_ACCOUNT_FILE) {
        Ok(t) => t,
        Err(nix::errno::Errno::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(format!("the image's {file}: {e}")),
    };
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            let id = f.next()?.trim().parse().ok()?;
            let gid = f.next().and_then(|g| g.trim().parse().ok());
            (!name.is_empty() && !name.starts_with('#')).then(|| (name.to_string(), id, gid))
        })
        .collect())
}

/// `user[:group]` as runc resolves it (see the module docs).
fn resolve_user(rootfs: &Path, spec: &str) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let numeric = |s: &str| s.parse::<u32>().ok();
    let passwd = account_rows(rootfs, "/etc/passwd")?;
    let (uid, primary) = match passwd
        .iter()
        .find(|(name, id, _)| name == user || numeric(user) == Some(*id))
    {
        Some((_, id, gid)) => (*id, gid.unwrap_or(0)),
        None => match numeric(user) {
            Some(id) => (id, 0),
            None => return Err(format!("no user `{user}` in the image's /etc/passwd")),
        },
    };
    let gid = match group.filter(|g| !g.is_empty()) {
        None => primary,
        Some(g) => {
            let groups = account_rows(rootfs, "/etc/group")?;
            match groups
                .iter()
                .find(|(name, id, _)| name == g || numeric(g) == Some(*id))
            {
                Some((_, id, _)) => *id,
                None => {
                    numeric(g).ok_or_else(|| format!("no group `{g}` in the image's /etc/group"))?
                }
            }
        }
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_comes_from_the_image_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = br#"{"config":{"Entrypoint":["/app"],"Cmd":["--serve"],"Env":["A=1"],"WorkingDir":"/srv","User":"1000:1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        write_runtime_config(dir.path(), &runtime_config(dir.path(), cfg).unwrap()).unwrap();
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            spec["process"]["args"],
            serde_json::json!(["/app", "--serve"])
        );
        assert_eq!(spec["process"]["cwd"], "/srv");
        assert_eq!(spec["process"]["user"]["uid"], 1000);
        assert_eq!(spec["root"]["path"], "rootfs");
    }

    fn rootfs_with_accounts() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:\napps:x:1001:\n",
        )
        .unwrap();
        dir
    }

    /// The review's finding: `User: nobody` became uid 0. Names resolve in the image; a name it
    /// does not define is refused.
    #[test]
    fn user_names_resolve_in_the_image_and_never_become_root() {
        let root = rootfs_with_accounts();
        let r = |spec: &str| resolve_user(root.path(), spec);
        assert_eq!(r("nobody"), Ok((65534, 65534)));
        assert_eq!(r("app"), Ok((1000, 1001)));
        assert_eq!(r("app:staff"), Ok((1000, 50)));
        assert_eq!(
            r("1000"),
            Ok((1000, 1001)),
            "a uid in passwd takes its primary group"
        );
        assert_eq!(
            r("7"),
            Ok((7, 0)),
            "a uid not in passwd runs with gid 0, as runc does"
        );
        assert_eq!(r("7:8"), Ok((7, 8)));
        assert_eq!(r("nobody:apps"), Ok((65534, 1001)));
        assert!(r("ghost").unwrap_err().contains("no user `ghost`"));
        assert!(r("app:ghosts").unwrap_err().contains("no group `ghosts`"));
        let empty = tempfile::tempdir().unwrap();
        assert!(resolve_user(empty.path(), "nobody").is_err());

        let cfg = br#"{"config":{"User":"ghost"}}"#;
        let e = runtime_config(root.path(), cfg).unwrap_err();
        assert!(e.to_string().contains("ghost"), "{e}");
        assert!(!root.path().join("config.json").exists());
    }

    /// `/etc/passwd` is read inside the rootfs: a symlink out of it resolves within it.
    #[test]
    fn account_files_are_read_inside_the_rootfs() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        assert!(resolve_user(root.path(), "evil").is_err());
    }
}
