//! Generates the protobuf messages and async ttrpc bindings for every file in
//! `proto/`, in pure Rust (no `protoc` needed on the build machine).

use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("proto");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    inputs.sort();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-changed=proto");

    Codegen::new()
        .inputs(&inputs)
        .include(&dir)
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;

    // The generated files open with inner attributes, which `include!` cannot
    // take; declare each as a module by path instead.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut modules = String::new();
    for input in &inputs {
        let Some(stem) = input.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        for name in [stem.to_string(), format!("{stem}_ttrpc")] {
            let file = out.join(format!("{name}.rs"));
            if file.exists() {
                modules.push_str(&format!(
                    "#[path = {:?}]\npub mod {name};\n",
                    file.display().to_string()
                ));
            }
        }
    }
    std::fs::write(out.join("generated.rs"), modules)?;
    Ok(())
}
