//! A CycloneDX 1.5 SBOM (JSON) of the crates a workspace package is built from: the package's
//! normal and build dependencies, transitively, from `cargo metadata`'s resolve graph (for the
//! build's target platform), each with its version, source and, for registry crates, the
//! SHA-256 Cargo.lock pins.
//!
//! Owns the SBOM's shape. Never writes machine-specific data: no absolute paths (workspace
//! crates are named, not located), no timestamps, no random serial number, so that the same
//! Cargo.lock gives the same file.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// Why an SBOM could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    /// `cargo metadata`'s output lacks a field this code reads.
    #[error("cargo metadata has no {0}")]
    Metadata(&'static str),
    /// The root package is not a workspace member.
    #[error("no workspace package named {0}")]
    NoPackage(String),
    /// Cargo.lock is not TOML.
    #[error("Cargo.lock: {0}")]
    Lock(#[from] toml::de::Error),
}

struct Pkg<'a> {
    name: &'a str,
    version: &'a str,
    source: Option<&'a str>,
    license: Option<&'a str>,
}

fn pkg(p: &Value) -> Option<(&str, Pkg<'_>)> {
    Some((
        p.get("id")?.as_str()?,
        Pkg {
            name: p.get("name")?.as_str()?,
            version: p.get("version")?.as_str()?,
            source: p.get("source").and_then(Value::as_str),
            license: p.get("license").and_then(Value::as_str),
        },
    ))
}

/// The SBOM of `root` (a workspace package name) from `cargo metadata --format-version 1`'s
/// JSON and the text of Cargo.lock.
pub fn cyclonedx(metadata: &Value, lock: &str, root: &str) -> Result<Value, SbomError> {
    let packages: BTreeMap<&str, Pkg<'_>> = metadata
        .get("packages")
        .and_then(Value::as_array)
        .ok_or(SbomError::Metadata("packages"))?
        .iter()
        .filter_map(pkg)
        .collect();
    let nodes = metadata
        .pointer("/resolve/nodes")
        .and_then(Value::as_array)
        .ok_or(SbomError::Metadata("resolve.nodes"))?;
    let deps: BTreeMap<&str, Vec<&str>> = nodes
        .iter()
        .filter_map(|n| {
            let id = n.get("id")?.as_str()?;
            let ds = n
                .get("deps")?
                .as_array()?
                .iter()
                .filter(|d| {
                    // Normal (null) and build dependencies; dev-dependencies are not in the binary.
                    d.get("dep_kinds")
                        .and_then(Value::as_array)
                        .is_some_and(|ks| {
                            ks.iter()
                                .any(|k| k.get("kind").and_then(Value::as_str) != Some("dev"))
                        })
                })
                .filter_map(|d| d.get("pkg")?.as_str())
                .collect();
            Some((id, ds))
        })
        .collect();
    let root_id = packages
        .iter()
        .find(|(_, p)| p.name == root && p.source.is_none())
        .map(|(id, _)| *id)
        .ok_or_else(|| SbomError::NoPackage(root.to_string()))?;

    let mut seen = BTreeSet::new();
    let mut todo = vec![root_id];
    while let Some(id) = todo.pop() {
        if seen.insert(id) {
            todo.extend(deps.get(id).into_iter().flatten().copied());
        }
    }

    let lock: toml::Value = toml::from_str(lock)?;
    let checksums: BTreeMap<(String, String), String> = lock
        .get("package")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                (
                    p.get("name")?.as_str()?.to_string(),
                    p.get("version")?.as_str()?.to_string(),
                ),
                p.get("checksum")?.as_str()?.to_string(),
            ))
        })
        .collect();

    let component = |p: &Pkg<'_>| {
        let mut c = json!({
            "type": "library",
            "bom-ref": format!("{}@{}", p.name, p.version),
            "name": p.name,
            "version": p.version,
            "purl": format!("pkg:cargo/{}@{}", p.name, p.version),
        });
        match p.source {
            Some(src) => c["externalReferences"] = json!([{"type": "distribution", "url": src}]),
            None => c["description"] = json!("workspace crate (built from the source commit)"),
        }
        if let Some(l) = p.license {
            c["licenses"] = json!([{"expression": l}]);
        }
        if let Some(sum) = checksums.get(&(p.name.to_string(), p.version.to_string())) {
            c["hashes"] = json!([{"alg": "SHA-256", "content": sum}]);
        }
        c
    };
    let root_pkg = packages
        .get(root_id)
        .ok_or(SbomError::Metadata("root package"))?;
    let mut components: Vec<Value> = seen
        .iter()
        .filter(|id| **id != root_id)
        .filter_map(|id| packages.get(id))
        .map(component)
        .collect();
    components.sort_by(|a, b| a["bom-ref"].as_str().cmp(&b["bom-ref"].as_str()));
    let dependencies: Vec<Value> = seen
        .iter()
        .filter_map(|id| {
            let p = packages.get(id)?;
            let mut on: Vec<String> = deps
                .get(id)
                .into_iter()
                .flatten()
                .filter_map(|d| packages.get(d).map(|q| format!("{}@{}", q.name, q.version)))
                .collect();
            on.sort();
            on.dedup();
            Some(json!({"ref": format!("{}@{}", p.name, p.version), "dependsOn": on}))
        })
        .collect();
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": component(root_pkg),
            "tools": {"components": [{"type": "application", "name": "ward-measure", "version": env!("CARGO_PKG_VERSION")}]},
        },
        "components": components,
        "dependencies": dependencies,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closure_skips_dev_dependencies_and_carries_lock_checksums() {
        let reg = "registry+https://github.com/rust-lang/crates.io-index";
        let meta = json!({
            "packages": [
                {"id": "path+file:///x/agent#a@0.1.0", "name": "a", "version": "0.1.0", "source": null, "license": "Apache-2.0"},
                {"id": format!("{reg}#b@1.0.0"), "name": "b", "version": "1.0.0", "source": reg, "license": "MIT"},
                {"id": format!("{reg}#c@2.0.0"), "name": "c", "version": "2.0.0", "source": reg},
                {"id": format!("{reg}#t@3.0.0"), "name": "t", "version": "3.0.0", "source": reg},
            ],
            "resolve": {"nodes": [
                {"id": "path+file:///x/agent#a@0.1.0", "deps": [
                    {"pkg": format!("{reg}#b@1.0.0"), "dep_kinds": [{"kind": null}]},
                    {"pkg": format!("{reg}#t@3.0.0"), "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": format!("{reg}#b@1.0.0"), "deps": [
                    {"pkg": format!("{reg}#c@2.0.0"), "dep_kinds": [{"kind": "build"}]},
                ]},
                {"id": format!("{reg}#c@2.0.0"), "deps": []},
                {"id": format!("{reg}#t@3.0.0"), "deps": []},
            ]},
        });
        let lock =
            "version = 4\n[[package]]\nname = \"b\"\nversion = \"1.0.0\"\nchecksum = \"abcd\"\n";
        let bom = cyclonedx(&meta, lock, "a").unwrap();
        let names: Vec<&str> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "c"], "t is a dev-dependency");
        assert_eq!(bom["components"][0]["hashes"][0]["content"], "abcd");
        assert_eq!(bom["metadata"]["component"]["name"], "a");
        assert!(!bom.to_string().contains("/x/agent"), "no local paths");
        assert!(matches!(
            cyclonedx(&meta, lock, "zz"),
            Err(SbomError::NoPackage(_))
        ));
    }
}
