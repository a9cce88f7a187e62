//! TEE platforms behind one trait, and choosing the one this guest runs on.
//!
//! Detection follows CoCo's order (tdx, az-tdx-vtpm, az-snp-vtpm, snp). The `sample` TEE is for
//! development and tests only: it is used only when the caller enables it, and refused when real
//! TEE hardware is present, so a misconfiguration can never downgrade a real guest to fake
//! evidence. This module never logs key material; evidence is public by design.

#[cfg(any(test, feature = "azure"))]
mod az_evidence;
#[cfg(feature = "azure")]
mod az_snp_vtpm;
#[cfg(feature = "azure")]
mod az_tdx_vtpm;
pub mod configfs_tsm;
mod device;
mod sample;
pub mod snp;
pub mod tdx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
pub use kbs_types::Tee;

#[cfg(feature = "azure")]
pub use az_snp_vtpm::AzSnpVtpmAttester;
#[cfg(feature = "azure")]
pub use az_tdx_vtpm::AzTdxVtpmAttester;
pub use configfs_tsm::{ConfigfsTsm, TsmError};
pub use device::{DeviceAttester, NvidiaAttester, SampleDeviceAttester};
pub use sample::SampleAttester;
pub use snp::SnpAttester;
pub use tdx::TdxAttester;

use crate::report_data::ReportData;

/// Why evidence could not be produced or a measurement not taken.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    /// No supported TEE was found and the sample TEE is not enabled.
    #[error(
        "no TEE found on this machine (looked for {looked_for}); enable the sample TEE for development"
    )]
    NoTee { looked_for: &'static str },
    /// The sample TEE was asked for on a machine that has a real one.
    #[error("refusing the sample TEE: this machine is a real {0} guest")]
    SampleOnRealTee(Tee),
    /// A TEE named in the config or on the command line is not present here.
    #[error("TEE {0} was asked for but is not present on this machine")]
    NotPresent(Tee),
    /// The platform cannot do this operation (for example, extend a measurement register).
    #[error("{tee} does not support {operation}")]
    NotSupported { tee: Tee, operation: &'static str },
    /// A device or file interface of the TEE failed.
    #[error("{tee}: {what}: {source}")]
    Io {
        tee: Tee,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The configfs-tsm report interface failed.
    #[error("{tee}: {source}")]
    Tsm {
        tee: Tee,
        #[source]
        source: TsmError,
    },
    /// The TEE answered with something ward cannot use.
    #[error("{tee}: {detail}")]
    Malformed { tee: Tee, detail: String },
    /// initdata's digest does not match what the TEE measured at launch.
    #[error("{tee}: initdata digest {given} does not match the launch measurement {measured}")]
    InitDataMismatch {
        tee: Tee,
        given: String,
        measured: String,
    },
}

/// How a platform binds an initdata digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitDataBinding {
    /// The digest equals a launch-time field (SNP HOSTDATA, TDX MRCONFIGID).
    Verified { field: &'static str },
    /// The digest was extended into a measurement register (vTPM PCR 8).
    Extended { register: u64 },
    /// The platform has nothing to bind it to (sample).
    Unbound,
}

/// One TEE platform.
#[async_trait]
pub trait Attester: Send + Sync {
    /// The TEE, as named in the KBS protocol.
    fn tee(&self) -> Tee;

    /// Evidence carrying `report_data`, shaped exactly as Trustee's verifier for [`Self::tee`]
    /// parses it.
    async fn evidence(&self, report_data: &ReportData) -> Result<serde_json::Value, AttesterError>;

    /// Extends runtime measurement register `register` with `digest` (the platform's hash).
    async fn extend_runtime_measurement(
        &self,
        _digest: &[u8],
        _register: u64,
    ) -> Result<(), AttesterError> {
        Err(AttesterError::NotSupported {
            tee: self.tee(),
            operation: "runtime measurement",
        })
    }

    /// Binds the digest of the initdata this guest was launched with.
    async fn bind_init_data(&self, _digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        Err(AttesterError::NotSupported {
            tee: self.tee(),
            operation: "initdata binding",
        })
    }
}

/// What detection may choose from.
#[derive(Clone, Debug)]
pub struct DetectOptions {
    /// Use the sample TEE when no real TEE is present.
    pub allow_sample: bool,
    /// A specific TEE to use (`None`: detect).
    pub want: Option<Tee>,
    /// Prefix for `/dev`, `/sys` and `/proc` paths; `/` except in tests.
    pub root: PathBuf,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            allow_sample: false,
            want: None,
            root: PathBuf::from("/"),
        }
    }
}

/// The real TEE platforms this build can attest, in CoCo's detection order, each with a probe
/// that looks only at device and file presence under `root`. The configfs-tsm provider (which
/// takes making and removing one report entry to read) is read once and shared by the probes.
fn hardware(root: &Path) -> Option<Arc<dyn Attester>> {
    let tsm = ConfigfsTsm::new(root);
    let provider = if tsm.is_present() {
        tsm.provider()
            .inspect_err(|e| tracing::debug!(error = %e, "no configfs-tsm provider"))
            .ok()
    } else {
        None
    };
    let provider = provider.as_deref();
    if let Some(tdx) = TdxAttester::probe(root, provider) {
        return Some(Arc::new(tdx));
    }
    #[cfg(feature = "azure")]
    if let Some(az) = az_tdx_vtpm::probe(root) {
        return Some(Arc::new(az));
    }
    #[cfg(feature = "azure")]
    if let Some(az) = az_snp_vtpm::probe(root) {
        return Some(Arc::new(az));
    }
    if let Some(snp) = SnpAttester::probe(root, provider) {
        return Some(Arc::new(snp));
    }
    None
}

const LOOKED_FOR: &str = "tdx, az-tdx-vtpm, az-snp-vtpm, snp";

/// Chooses the attester for this guest.
pub fn detect(opts: &DetectOptions) -> Result<Arc<dyn Attester>, AttesterError> {
    let real = hardware(&opts.root);
    match (opts.want, real) {
        (Some(Tee::Sample), Some(real)) => Err(AttesterError::SampleOnRealTee(real.tee())),
        (Some(Tee::Sample), None) => Ok(Arc::new(SampleAttester)),
        (Some(want), Some(real)) if real.tee() == want => Ok(real),
        (Some(want), _) => Err(AttesterError::NotPresent(want)),
        (None, Some(real)) => Ok(real),
        (None, None) if opts.allow_sample => Ok(Arc::new(SampleAttester)),
        (None, None) => Err(AttesterError::NoTee {
            looked_for: LOOKED_FOR,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_only_when_enabled_or_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DetectOptions {
            root: dir.path().to_path_buf(),
            ..Default::default()
        };
        assert!(matches!(detect(&opts), Err(AttesterError::NoTee { .. })));
        opts.allow_sample = true;
        assert_eq!(detect(&opts).unwrap().tee(), Tee::Sample);
        opts.allow_sample = false;
        opts.want = Some(Tee::Sample);
        assert_eq!(detect(&opts).unwrap().tee(), Tee::Sample);
        opts.want = Some(Tee::Snp);
        assert!(matches!(
            detect(&opts),
            Err(AttesterError::NotPresent(Tee::Snp))
        ));
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    fn opts(root: &Path, want: Option<Tee>) -> DetectOptions {
        DetectOptions {
            allow_sample: true,
            want,
            root: root.to_path_buf(),
        }
    }

    #[test]
    fn device_nodes_are_detected_in_cocos_order() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), snp::DEVICE);
        assert_eq!(detect(&opts(dir.path(), None)).unwrap().tee(), Tee::Snp);
        touch(dir.path(), tdx::DEVICE);
        // both present: tdx comes first
        assert_eq!(detect(&opts(dir.path(), None)).unwrap().tee(), Tee::Tdx);
        assert_eq!(
            detect(&opts(dir.path(), Some(Tee::Tdx))).unwrap().tee(),
            Tee::Tdx
        );
        assert!(matches!(
            detect(&opts(dir.path(), Some(Tee::Snp))),
            Err(AttesterError::NotPresent(Tee::Snp))
        ));
    }

    #[test]
    fn the_sample_tee_is_refused_on_real_hardware() {
        for device in [tdx::DEVICE, snp::DEVICE] {
            let dir = tempfile::tempdir().unwrap();
            touch(dir.path(), device);
            let mut o = opts(dir.path(), Some(Tee::Sample));
            assert!(
                matches!(detect(&o), Err(AttesterError::SampleOnRealTee(_))),
                "{device}"
            );
            // allowing the sample TEE does not make it win over real hardware either
            o.want = None;
            assert_ne!(detect(&o).unwrap().tee(), Tee::Sample);
        }
    }

    #[test]
    fn configfs_tsm_providers_are_detected() {
        for (kernel, tee) in [
            (
                tdx::tests::tdx_kernel(None) as Arc<dyn configfs_tsm::fake::Kernel>,
                Tee::Tdx,
            ),
            (snp::tests::snp_kernel(None), Tee::Snp),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let _k = configfs_tsm::fake::install(dir.path(), kernel);
            assert_eq!(detect(&opts(dir.path(), None)).unwrap().tee(), tee);
            assert!(matches!(
                detect(&opts(dir.path(), Some(Tee::Sample))),
                Err(AttesterError::SampleOnRealTee(t)) if t == tee
            ));
            // the probe's report entry is gone again
            let entries = std::fs::read_dir(dir.path().join(configfs_tsm::REPORT_DIR)).unwrap();
            assert_eq!(entries.count(), 0);
        }
        // configfs-tsm without a provider this build knows: no TEE
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(configfs_tsm::REPORT_DIR)).unwrap();
        assert_eq!(detect(&opts(dir.path(), None)).unwrap().tee(), Tee::Sample);
    }
}
