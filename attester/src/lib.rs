//! ward-attester: proving where wardd runs, and earning secrets with that proof.
//!
//! - [`tee`]: TEE platforms behind the [`tee::Attester`] trait, and detection (the `sample`
//!   development TEE only when enabled, never on real hardware);
//! - [`report_data`]: the at-most-64-byte report data a TEE signs.
//!
//! To come in this crate: evidence parsers for `ward evidence --explain`, NVIDIA GPU evidence,
//! and the KBS protocol 0.4.0 client.

pub mod eventlog;
pub mod initdata;
pub mod kbs;
pub mod report_data;
pub mod tee;
