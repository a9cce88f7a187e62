//! ward-attester: proving where wardd runs, and earning secrets with that proof.
//!
//! - [`tee`]: TEE platforms behind the [`tee::Attester`] trait, and detection (the `sample`
//!   development TEE only when enabled, never on real hardware);
//! - [`report_data`]: the at-most-64-byte report data a TEE signs;
//! - [`explain`]: evidence parsers behind `ward evidence --explain` (SNP reports, TDX quotes,
//!   CCEL event logs, Azure vTPM evidence, NVIDIA GPU evidence) and the SNP report signature check;
//! - [`kbs`]: the KBS protocol 0.4.0 (RCAR) client with one session shared by every caller;
//! - [`initdata`]: CoCo initdata documents and their digests;
//! - [`eventlog`]: the runtime measurement event log (AAEL, TCG2 `EV_EVENT_TAG` entries);
//! - [`nvidia`]: NVIDIA confidential GPUs: evidence through NVML, the GPUs-ready switch, and
//!   the attestation report format (SPDM GET_MEASUREMENTS) with its P-384 signature and chain.

pub mod eventlog;
pub mod explain;
pub mod initdata;
pub mod kbs;
pub mod nvidia;
pub mod report_data;
pub mod tee;
