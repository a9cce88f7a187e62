//! ward's ttrpc APIs.
//!
//! The CoCo-compatible protos (`attestation_agent`, `api`, `keyprovider`) are
//! written by us but keep CoCo's package, service, method, message and field
//! names and numbers, so kata-agent and other existing clients talk to wardd
//! unchanged. `ward.health` and `ward.inference` (the inference API's bodies over
//! ttrpc, `agent/README.md`) are ward's own.
//!
//! Everything here is generated at build time by `ttrpc-codegen` (pure Rust);
//! this crate holds no hand-written logic.

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
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub use generated::*;
