//! ward-attester: proving where wardd runs, and earning secrets with that proof.
//!
//! - [`tee`]: TEE platforms behind the [`tee::Attester`] trait, and detection (the `sample`
//!   development TEE only when enabled, never on real hardware);
//! - [`report_data`]: the at-most-64-byte report data a TEE signs;
//! - [`explain`]: evidence parsers behind `ward evidence --explain` (SNP reports, TDX quotes,
//!   CCEL event logs, Azure vTPM evidence) and the SNP report signature check.
//!
//! To come in this crate: NVIDIA GPU evidence and the KBS protocol 0.4.0 client.

pub mod explain;
pub mod report_data;
pub mod tee;
