//! Generates a ttrpc client from CoCo's own .proto files (`coco-protos/`, copied verbatim from
//! confidential-containers/guest-components at 8246e5e0), kept apart from ward's protos: the
//! conformance suite calls wardd through CoCo's definitions, so a field ward renumbered or renamed
//! in its own protos would show up as a failure instead of agreeing with itself.

use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("coco-protos");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    inputs.sort();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-changed=coco-protos");

    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("coco");
    std::fs::create_dir_all(&out)?;
    Codegen::new()
        .out_dir(&out)
        .inputs(&inputs)
        .include(&dir)
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;

    // The generated files open with inner attributes, which `include!` cannot take; declare
    // each as a module by path instead (file stems have `-` where module names need `_`).
    let mut modules = String::new();
    for input in &inputs {
        let Some(stem) = input.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let stem = stem.replace('-', "_");
        for name in [stem.clone(), format!("{stem}_ttrpc")] {
            let file = out.join(format!("{name}.rs"));
            if file.exists() {
                modules.push_str(&format!(
                    "#[path = {:?}]\npub mod {name};\n",
                    file.display().to_string()
                ));
            }
        }
    }
    std::fs::write(out.with_file_name("coco_modules.rs"), modules)?;
    Ok(())
}
