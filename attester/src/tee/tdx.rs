//! Intel TDX guests: quotes through configfs-tsm, the CCEL event log from ACPI, RTMR extension
//! through the kernel's measurement sysfs (Linux >= 6.16), and initdata bound through
//! MRCONFIGID. Evidence is `{"cc_eventlog": base64 | null, "quote": base64}` with standard
//! base64 and padding, as CoCo's attester writes it (guest-components
//! `attestation-agent/attester/src/tdx/mod.rs`, `engine::general_purpose::STANDARD`) and
//! Trustee's verifier decodes it (trustee `deps/verifier/src/tdx/mod.rs`, `STANDARD.decode`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine;

use super::configfs_tsm::{ConfigfsTsm, Provider};
use super::{Attester, AttesterError, InitDataBinding, Tee};
use crate::explain::parse_tdx_quote;
use crate::report_data::ReportData;

/// The CCEL table data, under the root.
pub const CCEL_PATH: &str = "sys/firmware/acpi/tables/data/CCEL";
/// The TDX guest device, under the root.
pub const DEVICE: &str = "dev/tdx_guest";
const MEASUREMENTS_DIR: &str = "sys/class/misc/tdx_guest/measurements";
const MAX_CCEL: u64 = 16 << 20;
const SHA384_LEN: usize = 48;

/// The TDX platform.
#[derive(Debug)]
pub struct TdxAttester {
    root: PathBuf,
    tsm: ConfigfsTsm,
}

impl TdxAttester {
    /// The TDX attester if this is a TDX guest: `<root>/dev/tdx_guest` exists or configfs-tsm is
    /// served by `tdx_guest` (`tsm_provider`, read once by the caller).
    pub fn probe(root: &Path, tsm_provider: Option<&str>) -> Option<TdxAttester> {
        let present = root.join(DEVICE).exists() || tsm_provider == Some(Provider::Tdx.name());
        present.then(|| TdxAttester {
            root: root.to_path_buf(),
            tsm: ConfigfsTsm::new(root),
        })
    }

    async fn quote(&self, inblob: [u8; 64]) -> Result<Vec<u8>, AttesterError> {
        if !self.tsm.is_present() {
            return Err(AttesterError::NotSupported {
                tee: Tee::Tdx,
                operation: "quotes without configfs-tsm",
            });
        }
        let report = self
            .tsm
            .report(Provider::Tdx, inblob, false)
            .await
            .map_err(|source| AttesterError::Tsm {
                tee: Tee::Tdx,
                source,
            })?;
        Ok(report.outblob)
    }

    async fn event_log(&self) -> Result<Option<Vec<u8>>, AttesterError> {
        let path = self.root.join(CCEL_PATH);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            file.take(MAX_CCEL + 1).read_to_end(&mut out)?;
            if out.len() as u64 > MAX_CCEL {
                return Err(std::io::Error::other("CCEL larger than 16 MiB"));
            }
            Ok(Some(out))
        });
        read.await
            .map_err(|e| AttesterError::Malformed {
                tee: Tee::Tdx,
                detail: format!("CCEL read task: {e}"),
            })?
            .map_err(|source| AttesterError::Io {
                tee: Tee::Tdx,
                what: format!("reading {CCEL_PATH}"),
                source,
            })
    }
}

/// The RTMR a runtime event for `register` goes to. `register` is the PCR index CoCo's
/// `ExtendRuntimeMeasurement` carries: PCRs 8-15 map to RTMR2, everything else to RTMR3
/// (ward's PROTOCOLS.md §5).
pub fn rtmr_for_register(register: u64) -> u64 {
    match register {
        8..=15 => 2,
        _ => 3,
    }
}

#[async_trait]
impl Attester for TdxAttester {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    async fn evidence(&self, report_data: &ReportData) -> Result<serde_json::Value, AttesterError> {
        let quote = self.quote(report_data.padded()).await?;
        let engine = base64::engine::general_purpose::STANDARD;
        let cc_eventlog = self.event_log().await?.map(|log| engine.encode(log));
        Ok(serde_json::json!({
            "cc_eventlog": cc_eventlog,
            "quote": engine.encode(quote),
        }))
    }

    /// Extends the RTMR for `register` (see [`rtmr_for_register`]) with a SHA-384 `digest`.
    async fn extend_runtime_measurement(
        &self,
        digest: &[u8],
        register: u64,
    ) -> Result<(), AttesterError> {
        if digest.len() != SHA384_LEN {
            return Err(AttesterError::Malformed {
                tee: Tee::Tdx,
                detail: format!("an RTMR digest is 48 bytes (SHA-384), not {}", digest.len()),
            });
        }
        let rtmr = rtmr_for_register(register);
        let path = self
            .root
            .join(MEASUREMENTS_DIR)
            .join(format!("rtmr{rtmr}:sha384"));
        if !path.exists() {
            return Err(AttesterError::NotSupported {
                tee: Tee::Tdx,
                operation: "runtime measurement (no RTMR sysfs; Linux >= 6.16 has it)",
            });
        }
        let digest = digest.to_vec();
        let what = format!("extending {}", path.display());
        let write = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .write_all(&digest)
        });
        write
            .await
            .map_err(|e| AttesterError::Malformed {
                tee: Tee::Tdx,
                detail: format!("RTMR extend task: {e}"),
            })?
            .map_err(|source| AttesterError::Io {
                tee: Tee::Tdx,
                what,
                source,
            })
    }

    /// Compares the digest, zero-padded to 48 bytes, with MRCONFIGID of a fresh quote.
    async fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        if digest.len() > SHA384_LEN {
            return Err(AttesterError::Malformed {
                tee: Tee::Tdx,
                detail: format!(
                    "an initdata digest is at most 48 bytes, not {}",
                    digest.len()
                ),
            });
        }
        let mut given = [0u8; SHA384_LEN];
        given[..digest.len()].copy_from_slice(digest);
        let quote = self.quote([0; 64]).await?;
        let parsed = parse_tdx_quote(&quote).map_err(|e| AttesterError::Malformed {
            tee: Tee::Tdx,
            detail: format!("quote: {e}"),
        })?;
        if parsed.body.mr_config_id == given {
            Ok(InitDataBinding::Verified {
                field: "mrconfigid",
            })
        } else {
            Err(AttesterError::InitDataMismatch {
                tee: Tee::Tdx,
                given: hex::encode(given),
                measured: hex::encode(parsed.body.mr_config_id),
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::tee::configfs_tsm::fake;

    /// Trustee's `TdxEvidence` (deps/verifier/src/tdx/mod.rs), field for field.
    #[derive(Serialize, Deserialize)]
    struct TrusteeTdxEvidence {
        cc_eventlog: Option<String>,
        quote: String,
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../shared/fixtures/evidence/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// A TDX kernel answering with the v4 fixture quote, REPORTDATA (offset 568) patched in.
    pub(crate) fn tdx_kernel(mr_config_id: Option<[u8; 48]>) -> Arc<fake::Simple> {
        let quote = fixture("tdx/tdx_quote_4.dat");
        Arc::new(fake::Simple {
            provider: "tdx_guest",
            outblob: Box::new(move |inblob| {
                let mut q = quote.clone();
                q[568..632].copy_from_slice(inblob);
                if let Some(id) = mr_config_id {
                    q[232..280].copy_from_slice(&id);
                }
                q
            }),
            auxblob: None,
            racing_writes: 0,
        })
    }

    #[tokio::test]
    async fn evidence_is_the_quote_and_ccel_as_trustee_parses_them() {
        let root = tempfile::tempdir().unwrap();
        let _k = fake::install(root.path(), tdx_kernel(None));
        let ccel = fixture("ccel/CCEL_data");
        let ccel_path = root.path().join(CCEL_PATH);
        std::fs::create_dir_all(ccel_path.parent().unwrap()).unwrap();
        std::fs::write(&ccel_path, &ccel).unwrap();

        let tdx = TdxAttester::probe(root.path(), Some("tdx_guest")).unwrap();
        let rd = ReportData::new(vec![0x5a; 48]).unwrap();
        let ev = tdx.evidence(&rd).await.unwrap();
        let text = serde_json::to_string(&ev).unwrap();
        let parsed: TrusteeTdxEvidence = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text);
        assert!(text.starts_with(r#"{"cc_eventlog":""#), "{text}");

        let b64 = base64::engine::general_purpose::STANDARD;
        let quote = b64.decode(parsed.quote).unwrap();
        let q = parse_tdx_quote(&quote).unwrap();
        assert_eq!(q.body.report_data, rd.padded());
        assert_eq!(b64.decode(parsed.cc_eventlog.unwrap()).unwrap(), ccel);

        std::fs::remove_file(&ccel_path).unwrap();
        let ev = tdx.evidence(&rd).await.unwrap();
        assert_eq!(ev["cc_eventlog"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn initdata_is_checked_against_mrconfigid() {
        let root = tempfile::tempdir().unwrap();
        let digest = [0x11u8; 32];
        let mut id = [0u8; 48];
        id[..32].copy_from_slice(&digest);
        let _k = fake::install(root.path(), tdx_kernel(Some(id)));
        let tdx = TdxAttester::probe(root.path(), Some("tdx_guest")).unwrap();
        assert_eq!(
            tdx.bind_init_data(&digest).await.unwrap(),
            InitDataBinding::Verified {
                field: "mrconfigid"
            }
        );
        assert!(matches!(
            tdx.bind_init_data(&[0x22; 32]).await,
            Err(AttesterError::InitDataMismatch { .. })
        ));
        assert!(tdx.bind_init_data(&[0; 49]).await.is_err());
    }

    #[tokio::test]
    async fn rtmr_extension_writes_the_digest_where_the_kernel_offers_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(DEVICE).parent().unwrap()).unwrap();
        std::fs::write(root.path().join(DEVICE), b"").unwrap();
        let tdx = TdxAttester::probe(root.path(), None).unwrap();
        assert!(matches!(
            tdx.extend_runtime_measurement(&[1; 48], 8).await,
            Err(AttesterError::NotSupported { .. })
        ));
        // no configfs-tsm: no quotes either
        assert!(matches!(
            tdx.evidence(&ReportData::new(vec![]).unwrap()).await,
            Err(AttesterError::NotSupported { .. })
        ));

        let dir = root.path().join(MEASUREMENTS_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rtmr2:sha384"), b"").unwrap();
        std::fs::write(dir.join("rtmr3:sha384"), b"").unwrap();
        tdx.extend_runtime_measurement(&[1; 48], 8).await.unwrap();
        tdx.extend_runtime_measurement(&[3; 48], 17).await.unwrap();
        assert_eq!(std::fs::read(dir.join("rtmr2:sha384")).unwrap(), [1; 48]);
        assert_eq!(std::fs::read(dir.join("rtmr3:sha384")).unwrap(), [3; 48]);
        assert!(matches!(
            tdx.extend_runtime_measurement(&[1; 32], 8).await,
            Err(AttesterError::Malformed { .. })
        ));
    }
}
