//! ward-attester: proving where wardd runs, and earning secrets with that proof.
//!
//! Will own (issue "Attestation and key release", then "Confidential GPU attestation"):
//! - evidence from TEE platforms behind one trait: `snp` (`/dev/sev-guest` or configfs-tsm),
//!   `tdx` (configfs-tsm quotes, CCEL event log, RTMR extension), `az-snp-vtpm`, `az-tdx-vtpm`,
//!   and `sample` (development only, never chosen when a real TEE is present);
//! - device evidence from NVIDIA confidential GPUs through NVML, composed with the CPU's;
//! - the KBS protocol 0.4.0 (RCAR) client: one session and token shared by all callers,
//!   JWE-wrapped resources kept in zeroizing memory, never logged, never on disk.
//!
//! Nothing is implemented yet; wardd answers the attestation-agent API with `UNIMPLEMENTED`.
