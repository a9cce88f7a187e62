//! The v2 shape against the real Azure fixtures (../shared/fixtures/evidence/az-*-vtpm) and a
//! test double of Trustee's parsing (78962cd4, `deps/verifier/src/az_snp_vtpm/compat.rs` and
//! `az_tdx_vtpm/compat.rs`: `VersionCheck<V>`, `EvidenceV2`/`V1`/`V0` tried in that order as an
//! untagged enum, `TpmQuote` in hex, the reports in padded base64url; and `get_user_data` /
//! `verify_user_data` / `verify_tpm_nonce` of `az_snp_vtpm/mod.rs`), followed line by line.

use base64::Engine;
use serde::{Deserialize, Deserializer};

use super::*;
use crate::explain::parse_azure_evidence;

fn fixture(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/../../shared/fixtures/evidence/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_slice(&bytes).unwrap()
}

fn unhex(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn unb64url(v: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// The parts of a fixture, as the TPM and IMDS calls would hand them to ward.
fn parts(v: &serde_json::Value) -> (TpmQuoteParts, Vec<u8>) {
    let q = &v["tpm_quote"];
    let quote = TpmQuoteParts {
        signature: unhex(&q["signature"]),
        message: unhex(&q["message"]),
        pcrs: q["pcrs"].as_array().unwrap().iter().map(unhex).collect(),
    };
    (quote, unb64url(&v["hcl_report"]))
}

// --- Trustee's structs, reproduced ---

struct VersionCheck<const V: u32>;

impl<'a, const V: u32> Deserialize<'a> for VersionCheck<V> {
    fn deserialize<D: Deserializer<'a>>(deserializer: D) -> Result<Self, D::Error> {
        let val = u32::deserialize(deserializer)?;
        if val != V {
            return Err(serde::de::Error::custom(format!("Expected version {V}")));
        }
        Ok(VersionCheck)
    }
}

fn hex_bytes<'a, D: Deserializer<'a>>(d: D) -> Result<Vec<u8>, D::Error> {
    hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn hex_list<'a, D: Deserializer<'a>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
        .collect()
}

fn b64url_bytes<'a, D: Deserializer<'a>>(d: D) -> Result<Vec<u8>, D::Error> {
    base64::engine::general_purpose::URL_SAFE
        .decode(String::deserialize(d)?)
        .map_err(serde::de::Error::custom)
}

#[derive(Deserialize)]
struct TpmQuote {
    #[serde(deserialize_with = "hex_bytes")]
    signature: Vec<u8>,
    #[serde(deserialize_with = "hex_bytes")]
    message: Vec<u8>,
    #[serde(deserialize_with = "hex_list")]
    pcrs: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct SnpEvidenceV<const V: u32> {
    #[serde(rename = "version")]
    _version: VersionCheck<V>,
    tpm_quote: TpmQuote,
    #[serde(deserialize_with = "b64url_bytes")]
    hcl_report: Vec<u8>,
    #[serde(deserialize_with = "b64url_bytes")]
    vcek: Vec<u8>,
}

#[derive(Deserialize)]
struct TdxEvidenceV<const V: u32> {
    #[serde(rename = "version")]
    _version: VersionCheck<V>,
    tpm_quote: TpmQuote,
    #[serde(deserialize_with = "b64url_bytes")]
    hcl_report: Vec<u8>,
    #[serde(deserialize_with = "b64url_bytes")]
    td_quote: Vec<u8>,
}

/// v0 (no version, bincode `Quote`): only its field names matter here, as the shape a v2
/// document must not fall through to.
#[derive(Deserialize)]
struct EvidenceV0 {
    #[serde(rename = "tpm_quote", alias = "quote")]
    _quote: serde_json::Value,
    #[serde(rename = "hcl_report", alias = "report")]
    _report: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SnpEvidence {
    V2(SnpEvidenceV<2>),
    #[allow(dead_code)]
    V1(SnpEvidenceV<1>),
    #[allow(dead_code)]
    V0(EvidenceV0),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TdxEvidence {
    V2(TdxEvidenceV<2>),
    #[allow(dead_code)]
    V1(TdxEvidenceV<1>),
    #[allow(dead_code)]
    V0(EvidenceV0),
}

/// Trustee's `verify_user_data` on the explainer's reading of the HCL runtime data.
fn verify_user_data(hcl_report: &[u8], report_data: &[u8]) -> Result<(), String> {
    let hcl = crate::explain::parse_hcl_report(hcl_report).map_err(|e| e.to_string())?;
    let user_data = hex::decode(hcl.user_data.ok_or("no user-data")?).map_err(|e| e.to_string())?;
    match user_data.get(..report_data.len()) {
        Some(u) if u == report_data => Ok(()),
        _ => Err("User-data in HCL variable data doesn't match report_data".into()),
    }
}

#[test]
fn snp_v2_rebuilt_from_the_fixture_parts_is_the_fixture() {
    let fx = fixture("az-snp-vtpm/evidence-v2.json");
    let (quote, hcl) = parts(&fx);
    let vcek = unb64url(&fx["vcek"]);
    let ours = snp_evidence(&quote, &hcl, &vcek);
    assert_eq!(ours, fx);
    let SnpEvidence::V2(t) = serde_json::from_value::<SnpEvidence>(ours).unwrap() else {
        panic!("Trustee would read ward's SNP evidence as an older version")
    };
    assert_eq!(t.tpm_quote.signature, quote.signature);
    assert_eq!(t.tpm_quote.message, quote.message);
    assert_eq!(t.tpm_quote.pcrs.len(), 24);
    assert_eq!(t.hcl_report, hcl);
    assert_eq!(t.vcek, vcek);
}

#[test]
fn tdx_v2_has_the_v1_fields_and_trustee_reads_it_as_v2() {
    let fx = fixture("az-tdx-vtpm/evidence-v1.json");
    let (quote, hcl) = parts(&fx);
    let td_quote = unb64url(&fx["td_quote"]);
    let ours = tdx_evidence(&quote, &hcl, &td_quote);
    let mut expected = fx.clone();
    expected["version"] = serde_json::json!(2);
    assert_eq!(ours, expected);
    let TdxEvidence::V2(t) = serde_json::from_value::<TdxEvidence>(ours).unwrap() else {
        panic!("Trustee would read ward's TDX evidence as an older version")
    };
    assert_eq!(t.td_quote, td_quote);
    assert_eq!(t.hcl_report, hcl);
    assert_eq!(t.tpm_quote.pcrs, quote.pcrs);
    assert!(matches!(
        serde_json::from_value::<TdxEvidence>(fx).unwrap(),
        TdxEvidence::V1(_)
    ));
}

/// What v2 adds: the report data in the HCL `user-data` as well as in the TPM quote's nonce,
/// which Trustee checks only for version >= 2. The v2 fixture passes both checks with the same
/// report data; the v1 fixture's `user-data` is zeros, which is why Trustee skips it there.
#[test]
fn v2_binds_the_report_data_in_the_hcl_user_data() {
    let snp = fixture("az-snp-vtpm/evidence-v2.json");
    let (quote, hcl) = parts(&snp);
    let explained = parse_azure_evidence(&snp).unwrap();
    let report_data = explained.tpm_quote.extra_data.clone();
    assert!(!report_data.is_empty());
    assert!(report_data.iter().any(|b| *b != 0));
    verify_user_data(&hcl, &report_data).unwrap();
    let mut other = report_data.clone();
    other[0] ^= 1;
    assert!(verify_user_data(&hcl, &other).is_err());
    assert_eq!(
        crate::explain::parse_tpm_quote(&quote.message, quote.signature, quote.pcrs)
            .unwrap()
            .extra_data,
        report_data
    );

    let tdx = fixture("az-tdx-vtpm/evidence-v1.json");
    let (_, hcl) = parts(&tdx);
    let rd = parse_azure_evidence(&tdx).unwrap().tpm_quote.extra_data;
    assert!(verify_user_data(&hcl, &rd).is_err());
}
