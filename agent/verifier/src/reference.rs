//! Reference values: what the evidence must say to be accepted (`docs/reference-values.md`).
//!
//! One TOML file, a `[tdx]` and an `[snp]` section. Each measured field holds the list of
//! values accepted for it. A field that is absent is *not pinned*: the verifier refuses it
//! (`NotPinned`) unless the section names it in `unpinned`, which says "any value" out loud.
//! Unknown keys are refused, so a misspelt field cannot leave a value silently unchecked.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

/// Why a reference-values file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("reading the reference values {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the reference values are not valid: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("the reference values say version {0}; this verifier reads version 1")]
    Version(u32),
    #[error("reference value {field}: {detail}")]
    Value { field: String, detail: String },
    #[error("{path}: {source}")]
    InFile {
        path: String,
        #[source]
        source: Box<ReferenceError>,
    },
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    /// The format's version: 1.
    pub version: u32,
    #[serde(default)]
    pub tdx: Option<TdxReference>,
    #[serde(default)]
    pub snp: Option<SnpReference>,
    #[serde(default)]
    pub gpu: Option<GpuReference>,
    #[serde(default)]
    pub vtpm: Option<VtpmReference>,
}

/// TDX reference values. Measurement registers are hex (96 digits each).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TdxReference {
    pub mrtd: Option<Vec<Hex<48>>>,
    pub rtmr0: Option<Vec<Hex<48>>>,
    pub rtmr1: Option<Vec<Hex<48>>>,
    pub rtmr2: Option<Vec<Hex<48>>>,
    pub rtmr3: Option<Vec<Hex<48>>>,
    pub mrconfigid: Option<Vec<Hex<48>>>,
    /// TCB statuses (Intel's names: `UpToDate`, `SWHardeningNeeded`, `OutOfDate`, ...) that are
    /// accepted. Default: `UpToDate` only. `Revoked` is never accepted.
    #[serde(default = "up_to_date")]
    pub tcb_status: Vec<String>,
    /// Fields accepted with any value (named as in this section: `rtmr3`, `mrconfigid`, ...).
    #[serde(default)]
    pub unpinned: BTreeSet<String>,
}

impl Default for TdxReference {
    /// Nothing pinned; only an up-to-date TCB accepted.
    fn default() -> Self {
        TdxReference {
            mrtd: None,
            rtmr0: None,
            rtmr1: None,
            rtmr2: None,
            rtmr3: None,
            mrconfigid: None,
            tcb_status: up_to_date(),
            unpinned: BTreeSet::new(),
        }
    }
}

fn up_to_date() -> Vec<String> {
    vec!["UpToDate".to_string()]
}

/// An SNP TCB (the SPL of each firmware component).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnpTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    /// Turin and later only.
    #[serde(default)]
    pub fmc: Option<u8>,
}

/// SNP reference values.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnpReference {
    /// MEASUREMENT, hex (96 digits).
    pub measurement: Option<Vec<Hex<48>>>,
    /// HOST_DATA, hex (64 digits).
    pub host_data: Option<Vec<Hex<32>>>,
    /// The lowest REPORTED_TCB accepted, component by component.
    pub min_tcb: Option<SnpTcb>,
    /// Whether the guest policy may allow SMT (bit 16). Default false.
    #[serde(default)]
    pub allow_smt: bool,
    /// Whether the guest policy may allow a migration agent (bit 18). Default false.
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// The VMPL the report must come from. Default 0.
    #[serde(default)]
    pub vmpl: u32,
    /// Refuse a chain whose ARK's CRL was not given (KDS's `/vcek/v1/{product}/crl` or
    /// `/vlek/...`). Default false: a given CRL is always checked; without one the revocation
    /// is reported as not checked.
    #[serde(default)]
    pub require_crl: bool,
    /// Fields accepted with any value: `measurement`, `host_data`, `min_tcb`.
    #[serde(default)]
    pub unpinned: BTreeSet<String>,
}

/// NVIDIA GPU reference values (`nvidia.rs`): what every GPU's report must say. A `[gpu]`
/// section also says the server must offer GPU evidence.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GpuReference {
    /// How many GPUs the evidence must hold (NVSwitches not counted).
    pub count: Option<usize>,
    /// Driver versions accepted, as the report's opaque data spells them (`550.90.07`).
    pub driver_version: Option<Vec<String>>,
    /// VBIOS versions accepted, as NVIDIA writes them (`96.00.9f.00.01`).
    pub vbios_version: Option<Vec<String>>,
    /// Measurement index (`"1"`..`"255"`) to the SHA-384 values accepted for it. An index the
    /// table does not name must be unused (all zero) in the report.
    pub measurements: Option<std::collections::BTreeMap<String, Vec<Hex<48>>>>,
    /// Fields accepted with any value: `count`, `driver_version`, `vbios_version`,
    /// `measurements`.
    #[serde(default)]
    pub unpinned: BTreeSet<String>,
}

/// Azure vTPM reference values (`azure.rs`): the PCRs the quote must hold. Azure's SNP or TDX
/// report measures the paravisor; the guest's own boot chain is in the PCRs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VtpmReference {
    /// PCR index (`"0"`..`"23"`) to the SHA-256 values accepted for it. PCRs the table does
    /// not name are not compared.
    pub pcrs: Option<std::collections::BTreeMap<String, Vec<Hex<32>>>>,
    /// `pcrs` to accept any values.
    #[serde(default)]
    pub unpinned: BTreeSet<String>,
}

/// A fixed-size value written as hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex<const N: usize>(pub [u8; N]);

impl<const N: usize> std::str::FromStr for Hex<N> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s.trim()).map_err(|e| format!("{s:?} is not hex: {e}"))?;
        let arr: [u8; N] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} bytes, not {N}", b.len()))?;
        Ok(Hex(arr))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Hex<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<const N: usize> std::fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

const TDX_FIELDS: &[&str] = &["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid"];
const SNP_FIELDS: &[&str] = &["measurement", "host_data", "min_tcb"];
const GPU_FIELDS: &[&str] = &["count", "driver_version", "vbios_version", "measurements"];
/// The TCB statuses Intel's TCB info uses (dcap-qvl's names).
pub const TDX_TCB_STATUSES: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
];

impl ReferenceValues {
    /// Parses and checks a reference-values file's text.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let r: ReferenceValues = toml::from_str(text)?;
        r.check()?;
        Ok(r)
    }

    /// Reads and checks a reference-values file.
    pub fn load(path: &Path) -> Result<Self, ReferenceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReferenceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| ReferenceError::InFile {
            path: path.display().to_string(),
            source: Box::new(e),
        })
    }

    fn check(&self) -> Result<(), ReferenceError> {
        if self.version != 1 {
            return Err(ReferenceError::Version(self.version));
        }
        let bad = |field: String, detail: String| ReferenceError::Value { field, detail };
        if let Some(t) = &self.tdx {
            for u in &t.unpinned {
                if !TDX_FIELDS.contains(&u.as_str()) {
                    return Err(bad(
                        "tdx.unpinned".into(),
                        format!("{u:?} is not one of {TDX_FIELDS:?}"),
                    ));
                }
            }
            for s in &t.tcb_status {
                if !TDX_TCB_STATUSES.contains(&s.as_str()) {
                    return Err(bad(
                        "tdx.tcb_status".into(),
                        format!(
                            "{s:?} is not one of {TDX_TCB_STATUSES:?} (Revoked is never accepted)"
                        ),
                    ));
                }
            }
            for (name, list) in t.fields() {
                if list.is_some_and(|l| l.is_empty()) {
                    return Err(bad(
                        format!("tdx.{name}"),
                        "an empty list accepts nothing; name it in unpinned to accept any value"
                            .into(),
                    ));
                }
            }
        }
        if let Some(s) = &self.snp {
            for u in &s.unpinned {
                if !SNP_FIELDS.contains(&u.as_str()) {
                    return Err(bad(
                        "snp.unpinned".into(),
                        format!("{u:?} is not one of {SNP_FIELDS:?}"),
                    ));
                }
            }
            if s.measurement.as_ref().is_some_and(Vec::is_empty)
                || s.host_data.as_ref().is_some_and(Vec::is_empty)
            {
                return Err(bad(
                    "snp".into(),
                    "an empty list accepts nothing; name the field in unpinned to accept any value"
                        .into(),
                ));
            }
        }
        if let Some(v) = &self.vtpm {
            for u in &v.unpinned {
                if u != "pcrs" {
                    return Err(bad(
                        "vtpm.unpinned".into(),
                        format!("{u:?} is not one of [\"pcrs\"]"),
                    ));
                }
            }
            for (index, list) in v.pcrs.iter().flatten() {
                if !index.parse::<u8>().is_ok_and(|i| i < 24) {
                    return Err(bad(
                        format!("vtpm.pcrs.{index}"),
                        "a PCR index is a number from 0 to 23".into(),
                    ));
                }
                if list.is_empty() {
                    return Err(bad(
                        format!("vtpm.pcrs.{index}"),
                        "an empty list accepts nothing; name pcrs in unpinned to accept any value"
                            .into(),
                    ));
                }
            }
        }
        if let Some(g) = &self.gpu {
            for u in &g.unpinned {
                if !GPU_FIELDS.contains(&u.as_str()) {
                    return Err(bad(
                        "gpu.unpinned".into(),
                        format!("{u:?} is not one of {GPU_FIELDS:?}"),
                    ));
                }
            }
            if g.driver_version.as_ref().is_some_and(Vec::is_empty)
                || g.vbios_version.as_ref().is_some_and(Vec::is_empty)
                || g.measurements
                    .as_ref()
                    .is_some_and(|m| m.values().any(Vec::is_empty))
            {
                return Err(bad(
                    "gpu".into(),
                    "an empty list accepts nothing; name the field in unpinned to accept any value"
                        .into(),
                ));
            }
            for index in g.measurements.iter().flat_map(|m| m.keys()) {
                if !index.parse::<u8>().is_ok_and(|i| i >= 1) {
                    return Err(bad(
                        format!("gpu.measurements.{index}"),
                        "a measurement index is a number from 1 to 255".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl TdxReference {
    /// The measured fields, by their names in the file.
    pub fn fields(&self) -> [(&'static str, Option<&Vec<Hex<48>>>); 6] {
        [
            ("mrtd", self.mrtd.as_ref()),
            ("rtmr0", self.rtmr0.as_ref()),
            ("rtmr1", self.rtmr1.as_ref()),
            ("rtmr2", self.rtmr2.as_ref()),
            ("rtmr3", self.rtmr3.as_ref()),
            ("mrconfigid", self.mrconfigid.as_ref()),
        ]
    }
}

#[cfg(test)]
mod tests;
