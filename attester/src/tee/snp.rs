//! AMD SEV-SNP guests: reports through configfs-tsm (certificates from `auxblob`) or, without
//! it, the `/dev/sev-guest` SNP_GET_EXT_REPORT ioctl through the `sev` crate's `Firmware`; and
//! initdata bound through HOSTDATA.
//!
//! Evidence is `{"attestation_report": <sev AttestationReport serde form>, "cert_chain":
//! [CertTableEntry] | null}`, the `SnpEvidence` struct of both CoCo's attester
//! (guest-components `attestation-agent/attester/src/snp/mod.rs`) and Trustee's verifier
//! (trustee `deps/verifier/src/snp/mod.rs`). Trustee builds with sev 7; the serde forms of
//! `AttestationReport`, `TcbVersion`, `CertTableEntry` and `CertType` are the same in sev 7.1
//! and the sev 8 used here (compared field by field). A `CertTableEntry` serializes as
//! `{"cert_type": "VCEK", "data": [bytes as numbers]}`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Serialize;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertTableEntry;

use super::configfs_tsm::{ConfigfsTsm, Provider};
use super::{Attester, AttesterError, InitDataBinding, Tee};
use crate::explain::parse_snp_report;
use crate::explain::reader::Reader;
use crate::report_data::ReportData;

/// The SEV guest device, under the root.
pub const DEVICE: &str = "dev/sev-guest";
const HOST_DATA_LEN: usize = 32;
/// The most certificates accepted from a certificate table.
const MAX_CERTS: usize = 64;

/// The shape Trustee deserializes.
#[derive(Serialize)]
struct SnpEvidence {
    attestation_report: AttestationReport,
    cert_chain: Option<Vec<CertTableEntry>>,
}

/// The SEV-SNP platform.
#[derive(Debug)]
pub struct SnpAttester {
    root: PathBuf,
    tsm: ConfigfsTsm,
}

fn malformed(detail: impl Into<String>) -> AttesterError {
    AttesterError::Malformed {
        tee: Tee::Snp,
        detail: detail.into(),
    }
}

/// Parses the GHCB certificate table an extended report returns (configfs-tsm `auxblob`):
/// entries of `{guid[16], offset u32, length u32}` up to an all-zero entry, offsets counted
/// from the start of the table. An empty table is `None`, as CoCo sends it.
pub fn parse_cert_table(table: &[u8]) -> Result<Option<Vec<CertTableEntry>>, String> {
    let mut r = Reader::new(table, "SNP certificate table");
    let mut certs = Vec::new();
    loop {
        let guid: [u8; 16] = r.array().map_err(|e| e.to_string())?;
        let offset = r.u32().map_err(|e| e.to_string())? as usize;
        let len = r.u32().map_err(|e| e.to_string())? as usize;
        if guid == [0; 16] {
            break;
        }
        if certs.len() >= MAX_CERTS {
            return Err(format!("more than {MAX_CERTS} certificates"));
        }
        let data = offset
            .checked_add(len)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| format!("certificate at {offset}+{len} is outside the table"))?;
        let entry = CertTableEntry::from_guid(&uuid::Uuid::from_bytes(guid), data.to_vec())
            .map_err(|e| e.to_string())?;
        certs.push(entry);
    }
    Ok((!certs.is_empty()).then_some(certs))
}

impl SnpAttester {
    /// The SNP attester if this is an SEV-SNP guest: `<root>/dev/sev-guest` exists or
    /// configfs-tsm is served by `sev_guest` (`tsm_provider`, read once by the caller).
    pub fn probe(root: &Path, tsm_provider: Option<&str>) -> Option<SnpAttester> {
        let present = root.join(DEVICE).exists() || tsm_provider == Some(Provider::Sev.name());
        present.then(|| SnpAttester {
            root: root.to_path_buf(),
            tsm: ConfigfsTsm::new(root),
        })
    }

    /// A report for `inblob`, and the certificates the host provides.
    async fn report(
        &self,
        inblob: [u8; 64],
    ) -> Result<(AttestationReport, Option<Vec<CertTableEntry>>), AttesterError> {
        let (raw, certs) = if self.tsm.is_present() {
            let r = self
                .tsm
                .report(Provider::Sev, inblob, true)
                .await
                .map_err(|source| AttesterError::Tsm {
                    tee: Tee::Snp,
                    source,
                })?;
            let certs = match r.auxblob {
                Some(aux) => parse_cert_table(&aux).map_err(malformed)?,
                None => None,
            };
            (r.outblob, certs)
        } else {
            self.ext_report_ioctl(inblob).await?
        };
        let parsed = parse_snp_report(&raw).map_err(|e| malformed(e.to_string()))?;
        Ok((parsed.report, certs))
    }

    /// SNP_GET_EXT_REPORT on `/dev/sev-guest` (the `sev` crate opens that fixed path, so this
    /// only runs with the real root).
    async fn ext_report_ioctl(
        &self,
        inblob: [u8; 64],
    ) -> Result<(Vec<u8>, Option<Vec<CertTableEntry>>), AttesterError> {
        if self.root != Path::new("/") {
            return Err(AttesterError::NotSupported {
                tee: Tee::Snp,
                operation: "the /dev/sev-guest ioctl under a test root",
            });
        }
        let task = tokio::task::spawn_blocking(move || {
            let mut fw =
                sev::firmware::guest::Firmware::open().map_err(|source| AttesterError::Io {
                    tee: Tee::Snp,
                    what: "opening /dev/sev-guest".into(),
                    source,
                })?;
            // VMPL 0, as CoCo asks; message version: the crate's default.
            fw.get_ext_report(None, Some(inblob), Some(0))
                .map_err(|e| malformed(format!("SNP_GET_EXT_REPORT: {e}")))
        });
        task.await
            .map_err(|e| malformed(format!("report task: {e}")))?
    }
}

#[async_trait]
impl Attester for SnpAttester {
    fn tee(&self) -> Tee {
        Tee::Snp
    }

    async fn evidence(&self, report_data: &ReportData) -> Result<serde_json::Value, AttesterError> {
        let (attestation_report, cert_chain) = self.report(report_data.padded()).await?;
        serde_json::to_value(SnpEvidence {
            attestation_report,
            cert_chain,
        })
        .map_err(|e| malformed(format!("serializing evidence: {e}")))
    }

    /// Compares the digest, zero-padded to 32 bytes, with HOSTDATA of a fresh report.
    async fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        if digest.len() > HOST_DATA_LEN {
            return Err(malformed(format!(
                "an initdata digest for HOSTDATA is at most 32 bytes, not {}",
                digest.len()
            )));
        }
        let mut given = [0u8; HOST_DATA_LEN];
        given[..digest.len()].copy_from_slice(digest);
        let (report, _) = self.report([0; 64]).await?;
        if report.host_data == given {
            Ok(InitDataBinding::Verified { field: "hostdata" })
        } else {
            Err(AttesterError::InitDataMismatch {
                tee: Tee::Snp,
                given: hex::encode(given),
                measured: hex::encode(report.host_data),
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use serde::Deserialize;
    use sev::firmware::host::CertType;

    use super::*;
    use crate::tee::configfs_tsm::fake;

    /// Trustee's `SnpEvidence` (deps/verifier/src/snp/mod.rs), field for field.
    #[derive(Serialize, Deserialize)]
    struct TrusteeSnpEvidence {
        attestation_report: AttestationReport,
        cert_chain: Option<Vec<CertTableEntry>>,
    }

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../shared/fixtures/evidence/snp/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// A recorded-style certificate table: the VCEK, then the terminator.
    fn cert_table(vcek: &[u8]) -> Vec<u8> {
        let guid = uuid::Uuid::parse_str("63da758d-e664-4564-adc5-f4b93be8accd").unwrap();
        let mut t = Vec::new();
        t.extend_from_slice(guid.as_bytes());
        t.extend_from_slice(&48u32.to_le_bytes());
        t.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
        t.extend_from_slice(&[0; 24]);
        t.extend_from_slice(vcek);
        t
    }

    /// An SNP kernel answering with test-report.bin, REPORT_DATA (0x50) and optionally
    /// HOST_DATA (0xc0) patched in, and a certificate table with the fixture VCEK.
    pub(crate) fn snp_kernel(host_data: Option<[u8; 32]>) -> Arc<fake::Simple> {
        let report = fixture("test-report.bin");
        Arc::new(fake::Simple {
            provider: "sev_guest",
            outblob: Box::new(move |inblob| {
                let mut r = report.clone();
                r[0x50..0x90].copy_from_slice(inblob);
                if let Some(h) = host_data {
                    r[0xc0..0xe0].copy_from_slice(&h);
                }
                r
            }),
            auxblob: Some(cert_table(&fixture("test-vcek.der"))),
            racing_writes: 0,
        })
    }

    #[tokio::test]
    async fn evidence_is_what_trustee_deserializes() {
        let root = tempfile::tempdir().unwrap();
        let _k = fake::install(root.path(), snp_kernel(None));
        let snp = SnpAttester::probe(root.path(), Some("sev_guest")).unwrap();
        let rd = ReportData::new(vec![0xc3; 48]).unwrap();
        let ev = snp.evidence(&rd).await.unwrap();
        let text = serde_json::to_string(&ev).unwrap();

        let parsed: TrusteeSnpEvidence = serde_json::from_str(&text).unwrap();
        let again = serde_json::to_string(&serde_json::to_value(&parsed).unwrap()).unwrap();
        assert_eq!(again, text);
        let keys: Vec<&String> = ev.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["attestation_report", "cert_chain"]);
        assert_eq!(parsed.attestation_report.report_data, rd.padded());
        let chain = parsed.cert_chain.unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].cert_type, CertType::VCEK);
        assert_eq!(chain[0].data(), fixture("test-vcek.der"));
        assert!(text.contains(r#""cert_chain":[{"cert_type":"VCEK","data":[48,130,"#));
    }

    #[tokio::test]
    async fn initdata_is_checked_against_hostdata() {
        let root = tempfile::tempdir().unwrap();
        let _k = fake::install(root.path(), snp_kernel(Some([0x42; 32])));
        let snp = SnpAttester::probe(root.path(), Some("sev_guest")).unwrap();
        assert_eq!(
            snp.bind_init_data(&[0x42; 32]).await.unwrap(),
            InitDataBinding::Verified { field: "hostdata" }
        );
        assert!(matches!(
            snp.bind_init_data(&[0x43; 32]).await,
            Err(AttesterError::InitDataMismatch { .. })
        ));
        assert!(snp.bind_init_data(&[0; 33]).await.is_err());
        assert!(matches!(
            snp.extend_runtime_measurement(&[0; 48], 8).await,
            Err(AttesterError::NotSupported { .. })
        ));
    }

    #[test]
    fn cert_tables_are_bounds_checked() {
        let vcek = fixture("test-vcek.der");
        let table = cert_table(&vcek);
        let certs = parse_cert_table(&table).unwrap().unwrap();
        assert_eq!(certs, [CertTableEntry::new(CertType::VCEK, vcek)]);
        assert_eq!(parse_cert_table(&[0; 24]).unwrap(), None);
        for n in [0, 10, 23, 30, 47, 100, table.len() - 1] {
            assert!(parse_cert_table(&table[..n]).is_err(), "cut at {n}");
        }
        let mut bad = table.clone();
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_cert_table(&bad).is_err());
    }

    #[tokio::test]
    async fn the_ioctl_path_is_not_taken_under_a_test_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join(DEVICE), b"").unwrap();
        let snp = SnpAttester::probe(root.path(), None).unwrap();
        assert!(matches!(
            snp.evidence(&ReportData::new(vec![]).unwrap()).await,
            Err(AttesterError::NotSupported { .. })
        ));
    }
}
