//! The bundle a pull produces for a container runtime: `rootfs/` and a `config.json` (OCI
//! runtime spec) derived from the image config, the way CoCo's image-rs writes it: the process
//! (entrypoint + cmd, env, working dir, user) from the image, everything else left to the
//! runtime that owns the container.

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

/// Writes `bundle/config.json` from an (already verified) image config.
pub fn write_runtime_config(bundle: &Path, image_config: &[u8]) -> Result<(), PullError> {
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
    let (uid, gid) = numeric_user(c.user.as_deref());
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

/// `uid[:gid]` when numeric; names need the image's /etc/passwd and are left to the runtime.
fn numeric_user(user: Option<&str>) -> (u32, u32) {
    let Some(u) = user.filter(|u| !u.is_empty()) else {
        return (0, 0);
    };
    let (uid, gid) = u.split_once(':').unwrap_or((u, ""));
    let uid = uid.parse().unwrap_or(0);
    let gid = gid.parse().unwrap_or(uid);
    (uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_comes_from_the_image_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = br#"{"config":{"Entrypoint":["/app"],"Cmd":["--serve"],"Env":["A=1"],"WorkingDir":"/srv","User":"1000:1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        write_runtime_config(dir.path(), cfg).unwrap();
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
        assert_eq!(numeric_user(Some("nobody")), (0, 0));
        assert_eq!(numeric_user(Some("7")), (7, 7));
    }
}
