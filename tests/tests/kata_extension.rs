//! ward's Kata 4 guest extension (`rootfs/kata-extension/`, `rootfs/build-kata-extension.sh`):
//! the manifest read with kata-agent's own schema and launch-plan logic, checked against
//! wardd's defaults; the image the script builds checked with dm-verity and erofs's own tools;
//! and wardd started the way kata-agent starts it, its sockets up when kata-agent looks.
//!
//! kata-agent source followed: kata-containers/kata-containers at
//! 7c6ba40c54ea29b459b4997cff948caaba4e658b, `src/agent/src/guest_extension_image.rs` (schema,
//! `${var}` substitution, variants, level gating, path resolution) and `src/agent/src/main.rs`
//! (the substitution context, `launch_process`, the one-time CDH socket check).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_tests::bin;

/// kata-agent's model of the manifest, as in `guest_extension_image.rs` at 7c6ba40c (kata parses
/// with `toml` 1.1, ward's workspace has 0.9: the same TOML for everything used here).
mod kata {
    use super::*;
    use serde::Deserialize;

    pub const EXTENSIONS_ROOT: &str = "/run/kata-extensions";
    pub const COCO_EXTENSION_NAME: &str = "coco";
    pub const COMPONENTS_MANIFEST_REL_PATH: &str = "etc/kata-extensions/components.toml";
    // main.rs and initdata.rs.
    pub const AA_ATTESTATION_SOCKET: &str =
        "/run/confidential-containers/attestation-agent/attestation-agent.sock";
    pub const CDH_SOCKET: &str = "/run/confidential-containers/cdh.sock";
    pub const AA_CONFIG_PATH: &str = "/run/confidential-containers/initdata/aa.toml";
    pub const CDH_CONFIG_PATH: &str = "/run/confidential-containers/initdata/cdh.toml";
    /// initdata.rs: where kata-agent writes the pod's initdata before it launches the plan.
    pub const INITDATA_TOML_PATH: &str = "/run/confidential-containers/initdata/initdata.toml";
    /// config.rs: `DEFAULT_LAUNCH_PROCESS_TIMEOUT`.
    pub const DEFAULT_LAUNCH_PROCESS_TIMEOUT: u64 = 6;

    #[derive(Debug, Deserialize)]
    pub struct ExtensionManifest {
        pub schema_version: u32,
        #[serde(default)]
        pub paths: HashMap<String, String>,
        #[serde(default)]
        pub process: Vec<RawProcessSpec>,
    }

    #[derive(Debug, Deserialize, Clone)]
    pub struct RawProcessSpec {
        pub id: String,
        #[serde(default)]
        pub level: u32,
        #[serde(default)]
        pub path: Option<String>,
        #[serde(default)]
        pub select: Option<String>,
        #[serde(default)]
        pub variants: HashMap<String, Variant>,
        #[serde(default)]
        pub args: Vec<String>,
        #[serde(default)]
        pub optional_args: Vec<OptionalArgs>,
        #[serde(default)]
        pub config: Option<String>,
        #[serde(default)]
        pub env: HashMap<String, String>,
        #[serde(default)]
        pub wait_socket: Option<String>,
        #[serde(default)]
        pub timeout_secs: Option<String>,
    }

    #[derive(Debug, Deserialize, Clone)]
    pub struct OptionalArgs {
        pub when: String,
        pub args: Vec<String>,
    }

    #[derive(Debug, Deserialize, Clone, Default)]
    pub struct Variant {
        #[serde(default)]
        pub path: Option<String>,
        #[serde(default)]
        pub args: Vec<String>,
        #[serde(default)]
        pub env: HashMap<String, String>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LaunchSpec {
        pub id: String,
        pub path: PathBuf,
        pub args: Vec<String>,
        pub config: Option<String>,
        pub env: Vec<(String, String)>,
        pub wait_socket: Option<String>,
        pub timeout_secs: u64,
    }

    /// `load_manifest`: parse, then refuse any schema_version but 1.
    pub fn load(text: &str) -> Result<ExtensionManifest, String> {
        let m: ExtensionManifest = toml::from_str(text).map_err(|e| e.to_string())?;
        if m.schema_version != 1 {
            return Err(format!(
                "unsupported extension manifest schema_version {}",
                m.schema_version
            ));
        }
        Ok(m)
    }

    pub fn resolve_rel_path(root: &Path, rel_path: &str) -> Result<PathBuf, String> {
        let rel_path = rel_path.trim();
        if rel_path.is_empty() {
            return Err("empty path".into());
        }
        if Path::new(rel_path)
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        {
            return Err(format!("invalid path '{rel_path}'"));
        }
        Ok(root.join(rel_path.trim_start_matches('/')))
    }

    pub fn substitute(template: &str, ctx: &HashMap<String, String>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated '${{' in '{template}'"))?;
            let name = &after[..end];
            out.push_str(
                ctx.get(name)
                    .ok_or_else(|| format!("unknown substitution variable '{name}'"))?,
            );
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn select_variant<'a>(
        raw: &'a RawProcessSpec,
        ctx: &HashMap<String, String>,
    ) -> Result<Option<&'a Variant>, String> {
        if raw.variants.is_empty() {
            return Ok(None);
        }
        let mut selector = match &raw.select {
            Some(s) => substitute(s, ctx)?,
            None => String::new(),
        };
        if selector.is_empty() {
            selector = "default".to_string();
        }
        raw.variants
            .get(&selector)
            .map(Some)
            .ok_or_else(|| format!("process '{}' has no variant '{selector}'", raw.id))
    }

    fn non_empty(
        v: &Option<String>,
        ctx: &HashMap<String, String>,
    ) -> Result<Option<String>, String> {
        match v {
            Some(s) => {
                let s = substitute(s, ctx)?;
                Ok((!s.is_empty()).then_some(s))
            }
            None => Ok(None),
        }
    }

    pub fn build_launch_spec(
        root: &Path,
        raw: &RawProcessSpec,
        ctx: &HashMap<String, String>,
    ) -> Result<LaunchSpec, String> {
        let variant = select_variant(raw, ctx)?;
        let path_template = variant
            .and_then(|v| v.path.as_deref())
            .or(raw.path.as_deref())
            .ok_or_else(|| {
                format!(
                    "process '{}' declares neither 'path' nor a variant path",
                    raw.id
                )
            })?;
        let path = resolve_rel_path(root, &substitute(path_template, ctx)?)?;
        let mut args = Vec::new();
        for a in &raw.args {
            args.push(substitute(a, ctx)?);
        }
        for group in &raw.optional_args {
            if ctx.get(&group.when).is_some_and(|v| !v.is_empty()) {
                for a in &group.args {
                    args.push(substitute(a, ctx)?);
                }
            }
        }
        if let Some(v) = variant {
            for a in &v.args {
                args.push(substitute(a, ctx)?);
            }
        }
        let mut env_map = HashMap::new();
        for (k, v) in &raw.env {
            env_map.insert(k.clone(), substitute(v, ctx)?);
        }
        if let Some(var) = variant {
            for (k, v) in &var.env {
                env_map.insert(k.clone(), substitute(v, ctx)?);
            }
        }
        let mut env: Vec<(String, String)> = env_map.into_iter().collect();
        env.sort();
        let timeout_secs = match non_empty(&raw.timeout_secs, ctx)? {
            Some(t) => t
                .parse::<u64>()
                .map_err(|_| format!("invalid timeout_secs '{t}'"))?,
            None => 0,
        };
        Ok(LaunchSpec {
            id: raw.id.clone(),
            path,
            args,
            config: non_empty(&raw.config, ctx)?,
            env,
            wait_socket: non_empty(&raw.wait_socket, ctx)?,
            timeout_secs,
        })
    }

    /// `launch_plan_in_root` for a mounted extension: processes with 1 <= level <= max_level.
    pub fn launch_plan(
        manifest: &ExtensionManifest,
        max_level: u32,
        ctx: &HashMap<String, String>,
    ) -> Result<Vec<LaunchSpec>, String> {
        let root = Path::new(EXTENSIONS_ROOT).join(COCO_EXTENSION_NAME);
        let mut specs = Vec::new();
        for raw in &manifest.process {
            if raw.level == 0 || raw.level > max_level {
                continue;
            }
            specs.push(build_launch_spec(&root, raw, ctx)?);
        }
        Ok(specs)
    }

    /// `build_substitution_ctx` with the agent's defaults: no initdata, no GPU
    /// (`KATA_ATTESTER_VARIANT` unset), `agent.guest_components_rest_api` = resource.
    pub fn ctx(manifest: &ExtensionManifest) -> Result<HashMap<String, String>, String> {
        let root = Path::new(EXTENSIONS_ROOT).join(COCO_EXTENSION_NAME);
        // resolve_component_path: a mounted extension must name its ocicrypt config.
        let ocicrypt = manifest
            .paths
            .get("ocicrypt-config")
            .ok_or("component 'ocicrypt-config' not found in extension 'coco' manifest")?;
        let ocicrypt = resolve_rel_path(&root, ocicrypt)?;
        let mut c = HashMap::new();
        c.insert(
            "aa_attestation_uri".to_string(),
            format!("unix://{AA_ATTESTATION_SOCKET}"),
        );
        c.insert(
            "aa_attestation_socket".to_string(),
            AA_ATTESTATION_SOCKET.to_string(),
        );
        c.insert("aa_config_path".to_string(), AA_CONFIG_PATH.to_string());
        c.insert("cdh_config_path".to_string(), CDH_CONFIG_PATH.to_string());
        c.insert("cdh_socket".to_string(), CDH_SOCKET.to_string());
        c.insert(
            "ocicrypt_config_path".to_string(),
            ocicrypt.display().to_string(),
        );
        c.insert("rest_api_features".to_string(), "resource".to_string());
        c.insert(
            "launch_process_timeout".to_string(),
            DEFAULT_LAUNCH_PROCESS_TIMEOUT.to_string(),
        );
        c.insert("initdata_toml_path".to_string(), String::new());
        c.insert("extension_root".to_string(), root.display().to_string());
        c.insert("attester_variant".to_string(), "default".to_string());
        Ok(c)
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest_text() -> String {
    std::fs::read_to_string(repo().join("rootfs/kata-extension/components.toml")).unwrap()
}

/// wardd's built-in defaults, as `--print-default-config` prints them (what the build script
/// ships as etc/ward/ward.toml when not given a config).
fn ward_defaults() -> toml::Table {
    let out = Command::new(bin("wardd"))
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

/// The `[[listener]]` entries of a config: (address, services).
fn listeners(config: &toml::Table) -> Vec<(String, Vec<String>)> {
    config["listener"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["address"].as_str().unwrap().to_string(),
                l["services"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn kata_agent_reads_the_manifest_as_one_wardd_at_every_level() {
    let manifest = kata::load(&manifest_text()).unwrap();
    let ctx = kata::ctx(&manifest).unwrap();
    let wardd = kata::LaunchSpec {
        id: "wardd".into(),
        path: "/run/kata-extensions/coco/usr/bin/wardd".into(),
        args: vec![
            "--config".into(),
            "/run/kata-extensions/coco/etc/ward/ward.toml".into(),
        ],
        // No `-c <AA config>` appended by kata-agent: that is CoCo's format, not ward's.
        config: None,
        env: vec![],
        wait_socket: Some(kata::CDH_SOCKET.into()),
        timeout_secs: kata::DEFAULT_LAUNCH_PROCESS_TIMEOUT,
    };
    // guest_components_procs: none 0, attestation-agent 1, confidential-data-hub 2,
    // api-server-rest 3 (the default).
    assert_eq!(kata::launch_plan(&manifest, 0, &ctx).unwrap(), vec![]);
    for level in 1..=3 {
        assert_eq!(
            kata::launch_plan(&manifest, level, &ctx).unwrap(),
            vec![wardd.clone()],
            "level {level}"
        );
    }
    // The pause bundle kata-agent runs guest-pulled pods' pause container from.
    assert_eq!(
        kata::resolve_rel_path(
            Path::new("/run/kata-extensions/coco"),
            &manifest.paths["pause-bundle"]
        )
        .unwrap(),
        Path::new("/run/kata-extensions/coco/pause_bundle")
    );
    // kata-agent's schema refuses what it should: the check is not vacuous.
    assert!(kata::load("schema_version = 2\n").is_err());
    assert!(
        kata::load("[[process]]\nid = \"x\"\n").is_err(),
        "schema_version is required"
    );
    let no_ocicrypt = kata::load("schema_version = 1\n").unwrap();
    assert!(kata::ctx(&no_ocicrypt).is_err());
}

#[test]
fn the_manifest_names_the_sockets_wardd_binds_in_the_order_kata_agent_needs() {
    let defaults = ward_defaults();
    let listeners = listeners(&defaults);
    let position = |addr: &str| {
        listeners
            .iter()
            .position(|(a, _)| a == addr)
            .unwrap_or_else(|| panic!("wardd's defaults have no listener {addr}: {listeners:?}"))
    };
    let aa = position(&format!("unix://{}", kata::AA_ATTESTATION_SOCKET));
    let cdh = position(&format!("unix://{}", kata::CDH_SOCKET));
    let rest = position("tcp://127.0.0.1:8006");
    // wardd binds in list order; kata-agent waits for the CDH socket only, so the AA socket must
    // come first to be up by then.
    assert!(aa < cdh, "{listeners:?}");
    assert!(listeners[aa].1.contains(&"attestation-agent".to_string()));
    // What kata-agent's CDH client calls on the CDH socket (UnsealSecret, SecureMount,
    // GetResource, PullImage: src/agent/src/confidential_data_hub/mod.rs), and what ocicrypt
    // clients call there (UnWrapKey, through the manifest's ocicrypt config).
    for service in [
        "sealed-secret",
        "secure-mount",
        "image-pull",
        "get-resource",
        "key-provider",
    ] {
        assert!(
            listeners[cdh].1.contains(&service.to_string()),
            "{service}: {listeners:?}"
        );
    }
    assert!(listeners[rest].1.contains(&"get-resource".to_string()));
    // kata-agent writes the pod's initdata before it launches wardd; wardd reads it from there
    // at start (checks it against the TEE, sends it with the evidence).
    assert_eq!(
        defaults["attestation"]["initdata"].as_str(),
        Some(kata::INITDATA_TOML_PATH)
    );
    // The ocicrypt config the manifest names sends key-provider calls to the CDH socket.
    let ocicrypt: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("rootfs/kata-extension/ocicrypt_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        ocicrypt["key-providers"]["attestation-agent"]["ttrpc"],
        format!("unix://{}", kata::CDH_SOCKET)
    );
    // And the manifest's wait_socket is that socket, through kata-agent's own substitution.
    let manifest = kata::load(&manifest_text()).unwrap();
    let plan = kata::launch_plan(&manifest, 3, &kata::ctx(&manifest).unwrap()).unwrap();
    assert_eq!(plan[0].wait_socket.as_deref(), Some(kata::CDH_SOCKET));
}

/// The build script's tree and, with erofs-utils, cryptsetup and fdisk, its disk: partition 1 an
/// erofs holding the tree, partition 2 a hash tree that `veritysetup verify` accepts with the
/// printed verity_params, as Kata's mount script passes them.
#[test]
fn the_build_script_makes_the_tree_and_a_verity_protected_disk() {
    let out = tempfile::tempdir().unwrap();
    let tools = ["mkfs.erofs", "veritysetup", "sfdisk", "fsck.erofs"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success()
        });
    let mut cmd = Command::new(repo().join("rootfs/build-kata-extension.sh"));
    cmd.arg("--wardd")
        .arg(bin("wardd"))
        .arg("--out")
        .arg(out.path());
    if tools {
        cmd.arg("--image");
    } else {
        eprintln!("mkfs.erofs, veritysetup, sfdisk or fsck.erofs missing: checking the tree only");
    }
    let run = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let tree = out.path().join("tree");
    let manifest = kata::load(
        &std::fs::read_to_string(tree.join(kata::COMPONENTS_MANIFEST_REL_PATH)).unwrap(),
    )
    .unwrap();
    let plan = kata::launch_plan(&manifest, 3, &kata::ctx(&manifest).unwrap()).unwrap();
    // Every path kata-agent will use exists in the tree (the mount root mapped to it).
    let in_tree = |p: &Path| tree.join(p.strip_prefix("/run/kata-extensions/coco").unwrap());
    assert!(in_tree(&plan[0].path).is_file());
    assert!(in_tree(Path::new(&plan[0].args[1])).is_file());
    assert!(tree.join(&manifest.paths["ocicrypt-config"]).is_file());
    assert!(stderr.contains("no --pause-bundle"), "{stderr}");
    // The shipped config is wardd's defaults.
    let shipped: toml::Table =
        toml::from_str(&std::fs::read_to_string(in_tree(Path::new(&plan[0].args[1]))).unwrap())
            .unwrap();
    assert_eq!(shipped, ward_defaults());
    if !tools {
        return;
    }

    let params = std::fs::read_to_string(out.path().join("verity_params.txt")).unwrap();
    let params: HashMap<&str, &str> = params
        .trim()
        .split(',')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = params.keys().copied().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys,
        [
            "data_block_size",
            "data_blocks",
            "hash_block_size",
            "root_hash",
            "salt"
        ]
    );
    // The two partitions, cut out of the disk where its GPT says they are.
    let img = out.path().join("ward-kata-extension.img");
    let table = Command::new("sfdisk").arg("-J").arg(&img).output().unwrap();
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "p1 data, p2 hash: {table}");
    let disk = std::fs::read(&img).unwrap();
    let cut = |i: usize, name: &str| {
        let start = parts[i]["start"].as_u64().unwrap() as usize * 512;
        let size = parts[i]["size"].as_u64().unwrap() as usize * 512;
        let p = out.path().join(name);
        std::fs::write(&p, &disk[start..start + size]).unwrap();
        p
    };
    let (p1, p2) = (cut(0, "p1"), cut(1, "p2"));
    let verify = |root_hash: &str| {
        Command::new("veritysetup")
            .arg("verify")
            .arg(&p1)
            .arg(&p2)
            .arg(root_hash)
            .arg("--no-superblock")
            .arg(format!("--hash-block-size={}", params["hash_block_size"]))
            .arg(format!("--data-block-size={}", params["data_block_size"]))
            .arg(format!("--data-blocks={}", params["data_blocks"]))
            .arg(format!("--salt={}", params["salt"]))
            .output()
            .unwrap()
    };
    let ok = verify(params["root_hash"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = verify(&"0".repeat(64));
    assert!(!wrong.status.success(), "another root hash is refused");
    // Partition 1 is an erofs holding the tree.
    let extracted = out.path().join("extracted");
    let fsck = Command::new("fsck.erofs")
        .arg(format!("--extract={}", extracted.display()))
        .arg(&p1)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    for file in [
        kata::COMPONENTS_MANIFEST_REL_PATH,
        "usr/bin/wardd",
        "etc/ward/ward.toml",
        "etc/ocicrypt_config.json",
    ] {
        assert_eq!(
            std::fs::read(extracted.join(file)).unwrap(),
            std::fs::read(tree.join(file)).unwrap(),
            "{file}"
        );
    }
}

/// wardd started as kata-agent's `launch_process` starts it (the plan's path and args, no
/// NOTIFY_SOCKET, the wait_socket removed first, then polled), with the default config moved
/// under a temporary /run: when the CDH socket appears, within kata-agent's default timeout, the
/// attestation-agent socket is a socket too and both answer at once, as kata-agent's single
/// CDH check and its CDH client need.
#[test]
fn wardd_has_its_sockets_up_before_kata_agent_looks() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(bin("wardd"))
        .arg("--print-default-config")
        .output()
        .unwrap();
    let mut config: toml::Table = toml::from_str(
        &String::from_utf8(out.stdout)
            .unwrap()
            .replace("/run/", &format!("{}/", run.display())),
    )
    .unwrap();
    // No vsock on a test machine; the loopback port made free.
    let list = config["listener"].as_array().unwrap().clone();
    let list: Vec<toml::Value> = list
        .into_iter()
        .filter(|l| !l["address"].as_str().unwrap().starts_with("vsock://"))
        .map(|mut l| {
            if l["address"].as_str() == Some("tcp://127.0.0.1:8006") {
                l["address"] = format!("tcp://127.0.0.1:{port}").into();
            }
            l
        })
        .collect();
    config.insert("listener".into(), list.into());
    let config_path = dir.path().join("ward.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "ward.tee=sample ward.allow_sample=true").unwrap();
    let moved = |p: &str| run.join(p.strip_prefix("/run/").unwrap());
    let cdh_socket = moved(kata::CDH_SOCKET);
    let aa_socket = moved(kata::AA_ATTESTATION_SOCKET);

    let started = Instant::now();
    let mut child = Command::new(bin("wardd"))
        .arg("--config")
        .arg(&config_path)
        .arg("--cmdline")
        .arg(&cmdline)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // kata-agent sleeps 1 s, then looks once a second, `timeout_secs` more times.
    let deadline = Duration::from_secs(1 + kata::DEFAULT_LAUNCH_PROCESS_TIMEOUT);
    while !cdh_socket.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("wardd exited with {status}: {err}");
        }
        assert!(
            started.elapsed() < deadline,
            "no CDH socket within kata-agent's {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let up_after = started.elapsed();
    let _child = Kill(child);
    // kata-agent's check: `metadata(CDH_SOCKET)` and `file_type().is_socket()`.
    use std::os::unix::fs::FileTypeExt;
    for socket in [&cdh_socket, &aa_socket] {
        let kind = std::fs::metadata(socket).unwrap().file_type();
        assert!(kind.is_socket(), "{} at {up_after:?}", socket.display());
    }
    // Its CDH client connects at once and calls; so do the AA's clients.
    let rt = ward_tests::rt();
    rt.block_on(async {
        use ward_tests::coco::api::GetResourceRequest;
        use ward_tests::coco::api_ttrpc::GetResourceServiceClient;
        use ward_tests::coco::attestation_agent::GetTeeTypeRequest;
        use ward_tests::coco::attestation_agent_ttrpc::AttestationAgentServiceClient;
        let ctx = || ttrpc::context::with_timeout(5_000_000_000);
        let aa = AttestationAgentServiceClient::new(
            ttrpc::asynchronous::Client::connect(&format!("unix://{}", aa_socket.display()))
                .await
                .unwrap(),
        );
        assert_eq!(
            aa.get_tee_type(ctx(), &GetTeeTypeRequest::new())
                .await
                .unwrap()
                .tee,
            "sample"
        );
        let cdh = GetResourceServiceClient::new(
            ttrpc::asynchronous::Client::connect(&format!("unix://{}", cdh_socket.display()))
                .await
                .unwrap(),
        );
        let mut req = GetResourceRequest::new();
        req.ResourcePath = "kbs:///default/key/1".into();
        // No KBS in the defaults: a served, reasoned answer, not a refused connection.
        let e = cdh.get_resource(ctx(), &req).await.unwrap_err();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION, "{s:?}")
            }
            other => panic!("{other:?}"),
        }
    });
    eprintln!("CDH socket up {up_after:?} after spawn (kata-agent waits up to {deadline:?})");
}
