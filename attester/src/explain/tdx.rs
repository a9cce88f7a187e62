//! Intel TDX quotes (versions 4 and 5, TDX 1.0 and 1.5 bodies), parsed field by field with
//! bounds checks, in the layout of Intel's `sgx_quote_4.h` / `sgx_quote_5.h` that Trustee's
//! tdx verifier (`deps/verifier/src/tdx/quote.rs`) reads. Also used by the TDX attester to read
//! MRCONFIGID. Does not verify the quote's signature (that needs Intel's collateral).

use std::fmt;

use super::reader::Reader;
use super::{ExplainError, field};

/// TEE type of a TDX quote header.
pub const TEE_TYPE_TDX: u32 = 0x81;
const TDX10_BODY_LEN: usize = 584;
const TDX15_BODY_LEN: usize = 648;

/// A TD report body (TDX 1.0 fields, plus the TDX 1.5 ones where present).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReportBody {
    pub tcb_svn: [u8; 16],
    pub mr_seam: [u8; 48],
    pub mrsigner_seam: [u8; 48],
    pub seam_attributes: [u8; 8],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    /// TDX 1.5: TEE_TCB_SVN2.
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TDX 1.5: MRSERVICETD.
    pub mr_servicetd: Option<[u8; 48]>,
}

/// A parsed TDX quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxQuote {
    pub version: u16,
    pub att_key_type: u16,
    pub tee_type: u32,
    pub reserved: [u8; 4],
    pub qe_vendor_id: [u8; 16],
    pub user_data: [u8; 20],
    /// Version 5: the body type (2: TDX 1.0, 3: TDX 1.5).
    pub body_type: Option<u16>,
    pub body: TdReportBody,
    /// Size of the signature data (ECDSA signature, attestation key, certification data).
    pub signature_data_len: usize,
    /// Certification data type (5: PCK chain, 6: QE report with PCK chain), if present.
    pub certification_data_type: Option<u16>,
    /// Bytes after the signature data.
    pub trailing_len: usize,
}

/// Decoded TD attribute flags (the ones Trustee's claims name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdAttributes {
    pub debug: bool,
    pub septve_disable: bool,
    pub protection_keys: bool,
    pub key_locker: bool,
    pub perfmon: bool,
}

impl TdAttributes {
    /// Decodes the 8-byte little-endian TD attributes.
    pub fn from_bytes(raw: [u8; 8]) -> Self {
        let v = u64::from_le_bytes(raw);
        let bit = |n: u32| v >> n & 1 == 1;
        TdAttributes {
            debug: bit(0),
            septve_disable: bit(28),
            protection_keys: bit(30),
            key_locker: bit(31),
            perfmon: bit(63),
        }
    }
}

impl fmt::Display for TdAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            ("DEBUG", self.debug),
            ("SEPT_VE_DISABLE", self.septve_disable),
            ("PKS", self.protection_keys),
            ("KL", self.key_locker),
            ("PERFMON", self.perfmon),
        ];
        let on: Vec<&str> = names.iter().filter(|(_, v)| *v).map(|(n, _)| *n).collect();
        if on.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", on.join(", "))
        }
    }
}

fn parse_body(r: &mut Reader<'_>, tdx15: bool) -> Result<TdReportBody, ExplainError> {
    Ok(TdReportBody {
        tcb_svn: r.array()?,
        mr_seam: r.array()?,
        mrsigner_seam: r.array()?,
        seam_attributes: r.array()?,
        td_attributes: r.array()?,
        xfam: r.array()?,
        mr_td: r.array()?,
        mr_config_id: r.array()?,
        mr_owner: r.array()?,
        mr_owner_config: r.array()?,
        rtmr: [r.array()?, r.array()?, r.array()?, r.array()?],
        report_data: r.array()?,
        tee_tcb_svn2: if tdx15 { Some(r.array()?) } else { None },
        mr_servicetd: if tdx15 { Some(r.array()?) } else { None },
    })
}

/// Whether `bytes` starts like a TDX quote (version 4 or 5, TEE type TDX).
pub fn looks_like_tdx_quote(bytes: &[u8]) -> bool {
    matches!(bytes.get(0..2), Some([4, 0] | [5, 0]))
        && bytes.get(4..8) == Some(&TEE_TYPE_TDX.to_le_bytes()[..])
}

/// Parses a TDX quote, including the length of its signature data (so a cut-off quote is an
/// error even when its body is complete). Bytes after the signature data (Azure's IMDS pads
/// its quotes) are counted, not refused, as Trustee's verifier ignores them too.
pub fn parse_tdx_quote(bytes: &[u8]) -> Result<TdxQuote, ExplainError> {
    let mut r = Reader::new(bytes, "TDX quote");
    let version = r.u16()?;
    let att_key_type = r.u16()?;
    let tee_type = r.u32()?;
    let reserved = r.array()?;
    let qe_vendor_id = r.array()?;
    let user_data = r.array()?;
    if tee_type != TEE_TYPE_TDX {
        return Err(ExplainError::Invalid {
            what: "TDX quote",
            detail: format!("TEE type {tee_type:#x}, not TDX (0x81)"),
        });
    }
    let (body_type, body) = match version {
        4 => (None, parse_body(&mut r, false)?),
        5 => {
            let body_type = r.u16()?;
            let size = r.u32()? as usize;
            let tdx15 = match (body_type, size) {
                (2, TDX10_BODY_LEN) => false,
                (3, TDX15_BODY_LEN) => true,
                _ => {
                    return Err(ExplainError::Invalid {
                        what: "TDX quote v5",
                        detail: format!("body type {body_type} with size {size}"),
                    });
                }
            };
            (Some(body_type), parse_body(&mut r, tdx15)?)
        }
        other => {
            return Err(ExplainError::Invalid {
                what: "TDX quote",
                detail: format!("version {other}; only 4 and 5 are known"),
            });
        }
    };
    let signature_data_len = r.u32()? as usize;
    let sig = r.take(signature_data_len)?;
    let trailing_len = r.remaining();
    // ECDSA-256 signature data: signature (64), attestation key (64), certification data.
    let mut s = Reader::new(sig, "TDX quote signature data");
    let certification_data_type = s.skip(128).and_then(|()| s.u16()).ok();
    Ok(TdxQuote {
        version,
        att_key_type,
        tee_type,
        reserved,
        qe_vendor_id,
        user_data,
        body_type,
        body,
        signature_data_len,
        certification_data_type,
        trailing_len,
    })
}

impl fmt::Display for TdxQuote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.body;
        let kind = match self.body_type {
            None => "TDX 1.0 body",
            Some(2) => "TDX 1.0 body",
            Some(_) => "TDX 1.5 body",
        };
        writeln!(f, "Intel TDX quote, version {} ({kind})", self.version)?;
        let key = match self.att_key_type {
            2 => "ECDSA-256 with P-256".to_string(),
            3 => "ECDSA-384 with P-384".to_string(),
            other => format!("unknown ({other})"),
        };
        field(f, "attestation key type", key)?;
        field(f, "TEE type", format!("{:#x} (TDX)", self.tee_type))?;
        field(f, "QE vendor id", hex::encode(self.qe_vendor_id))?;
        field(f, "user data", hex::encode(self.user_data))?;
        field(f, "TEE TCB SVN", hex::encode(b.tcb_svn))?;
        field(f, "MRSEAM", hex::encode(b.mr_seam))?;
        field(f, "MRSIGNERSEAM", hex::encode(b.mrsigner_seam))?;
        field(f, "SEAM attributes", hex::encode(b.seam_attributes))?;
        let attrs = TdAttributes::from_bytes(b.td_attributes);
        field(
            f,
            "TD attributes",
            format!("{} ({attrs})", hex::encode(b.td_attributes)),
        )?;
        field(f, "XFAM", hex::encode(b.xfam))?;
        field(f, "MRTD", hex::encode(b.mr_td))?;
        field(f, "MRCONFIGID", hex::encode(b.mr_config_id))?;
        field(f, "MROWNER", hex::encode(b.mr_owner))?;
        field(f, "MROWNERCONFIG", hex::encode(b.mr_owner_config))?;
        for (i, rtmr) in b.rtmr.iter().enumerate() {
            field(f, &format!("RTMR{i}"), hex::encode(rtmr))?;
        }
        field(f, "REPORTDATA", hex::encode(b.report_data))?;
        if let Some(svn2) = b.tee_tcb_svn2 {
            field(f, "TEE TCB SVN2", hex::encode(svn2))?;
        }
        if let Some(servtd) = b.mr_servicetd {
            field(f, "MRSERVICETD", hex::encode(servtd))?;
        }
        let cert = match self.certification_data_type {
            Some(t) => format!(", certification data type {t}"),
            None => String::new(),
        };
        let trailing = match self.trailing_len {
            0 => String::new(),
            n => format!(", then {n} bytes of padding"),
        };
        field(
            f,
            "signature data",
            format!("{} bytes{cert}{trailing}", self.signature_data_len),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../shared/fixtures/evidence/tdx/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn v4_matches_the_claims_trustee_extracts() {
        let q = parse_tdx_quote(&fixture("tdx_quote_4.dat")).unwrap();
        let expected: serde_json::Value =
            serde_json::from_slice(&fixture("parse_tdx_claims_expected.json")).unwrap();
        let h = &expected["quote"]["header"];
        assert_eq!(h["version"], hex::encode(q.version.to_le_bytes()));
        assert_eq!(h["att_key_type"], hex::encode(q.att_key_type.to_le_bytes()));
        assert_eq!(h["tee_type"], hex::encode(q.tee_type.to_le_bytes()));
        assert_eq!(h["reserved"], hex::encode(q.reserved));
        assert_eq!(h["vendor_id"], hex::encode(q.qe_vendor_id));
        assert_eq!(h["user_data"], hex::encode(q.user_data));
        let b = &expected["quote"]["body"];
        let body = &q.body;
        for (name, value) in [
            ("tcb_svn", &body.tcb_svn[..]),
            ("mr_seam", &body.mr_seam[..]),
            ("mrsigner_seam", &body.mrsigner_seam[..]),
            ("seam_attributes", &body.seam_attributes[..]),
            ("td_attributes", &body.td_attributes[..]),
            ("xfam", &body.xfam[..]),
            ("mr_td", &body.mr_td[..]),
            ("mr_config_id", &body.mr_config_id[..]),
            ("mr_owner", &body.mr_owner[..]),
            ("mr_owner_config", &body.mr_owner_config[..]),
            ("rtmr_0", &body.rtmr[0][..]),
            ("rtmr_1", &body.rtmr[1][..]),
            ("rtmr_2", &body.rtmr[2][..]),
            ("rtmr_3", &body.rtmr[3][..]),
            ("report_data", &body.report_data[..]),
        ] {
            assert_eq!(b[name], hex::encode(value), "{name}");
        }
        assert_eq!(expected["report_data"], hex::encode(body.report_data));
        assert_eq!(expected["init_data"], hex::encode(body.mr_config_id));
        let a = TdAttributes::from_bytes(body.td_attributes);
        let ea = &expected["td_attributes"];
        assert_eq!(ea["debug"], a.debug);
        assert_eq!(ea["septve_disable"], a.septve_disable);
        assert_eq!(ea["protection_keys"], a.protection_keys);
        assert_eq!(ea["key_locker"], a.key_locker);
        assert_eq!(ea["perfmon"], a.perfmon);
        assert_eq!(q.body_type, None);
        assert!(q.body.tee_tcb_svn2.is_none());
    }

    #[test]
    fn v5_has_the_td15_fields() {
        let q = parse_tdx_quote(&fixture("tdx_quote_5.dat")).unwrap();
        assert_eq!(q.version, 5);
        assert_eq!(q.body_type, Some(3));
        assert!(q.body.tee_tcb_svn2.is_some() && q.body.mr_servicetd.is_some());
        let text = q.to_string();
        for label in [
            "TEE type",
            "TD attributes",
            "XFAM",
            "MRTD",
            "MRCONFIGID",
            "MROWNER",
            "MROWNERCONFIG",
            "RTMR0",
            "RTMR3",
            "REPORTDATA",
            "TEE TCB SVN",
            "TEE TCB SVN2",
            "MRSERVICETD",
        ] {
            assert!(text.contains(label), "{label} missing from\n{text}");
        }
    }

    #[test]
    fn trailing_bytes_are_counted_and_a_wrong_tee_is_refused() {
        let mut q = fixture("tdx_quote_4.dat");
        q.push(0);
        assert_eq!(parse_tdx_quote(&q).unwrap().trailing_len, 1);
        let mut q = fixture("tdx_quote_4.dat");
        q[4] = 0;
        assert!(parse_tdx_quote(&q).is_err());
        assert!(!looks_like_tdx_quote(&q));
    }
}
