//! The NVIDIA GPU attestation report as NVML returns it: the SPDM 1.1 GET_MEASUREMENTS request
//! the driver sent, followed by the GPU's MEASUREMENTS response, whose last 96 bytes are an
//! ECDSA P-384 signature (raw `r || s`) over SHA-384 of everything before them.
//!
//! Layout (DMTF DSP0274 1.1; little-endian sizes), as NVIDIA's nvtrust local verifier and
//! Trustee's nvidia verifier read it:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | request SPDMVersion (0x11) |
//! | 1 | 1 | request code GET_MEASUREMENTS (0xE0) |
//! | 2, 3 | 1, 1 | Param1 (bit 0: signature requested), Param2 (0xFF: all measurements) |
//! | 4 | 32 | requester nonce |
//! | 36 | 1 | SlotIDParam |
//! | 37 | 1 | response SPDMVersion (0x11) |
//! | 38 | 1 | response code MEASUREMENTS (0x60) |
//! | 39, 40 | 1, 1 | Param1, Param2 |
//! | 41 | 1 | NumberOfBlocks |
//! | 42 | 3 | MeasurementRecordLength L1 |
//! | 45 | L1 | measurement blocks: index (1), specification (1, DMTF = 1), size (2), then the DMTF measurement: value type (1), value size (2), value |
//! | 45+L1 | 32 | responder nonce |
//! | 77+L1 | 2 | OpaqueDataLength L2 |
//! | 79+L1 | L2 | opaque data: NVIDIA TLVs, type (2), length (2), value |
//! | 79+L1+L2 | 96 | signature |
//!
//! Anything after the signature is reported as trailing bytes (NVML buffers can be longer than
//! the report); it is not signed. Only SPDM 1.1 is parsed: later versions sign differently.

use std::fmt;

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};

use super::{ReportError, VerifyError, certs, invalid};
use crate::explain::field;
use crate::explain::reader::Reader;

/// Size of the GET_MEASUREMENTS request at the start of the report.
pub const REQUEST_LEN: usize = 37;
/// Size of the requester and responder nonces.
pub const NONCE_LEN: usize = 32;
/// Size of the raw ECDSA P-384 signature (`r || s`) at the end of the report.
pub const SIGNATURE_LEN: usize = 96;
/// The largest report accepted: NVML's report buffer (`NVML_CC_GPU_ATTESTATION_REPORT_SIZE`).
pub const MAX_REPORT_LEN: usize = 0x2000;

const SPDM_1_1: u8 = 0x11;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
const DMTF_SPECIFICATION: u8 = 1;
pub(crate) const FWID_LEN: usize = 48;

/// A parsed GPU attestation report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuReport {
    /// The SPDM version of request and response (0x11).
    pub spdm_version: u8,
    /// The nonce the requester (the guest, through NVML) sent: what binds the report to a
    /// session.
    pub request_nonce: [u8; NONCE_LEN],
    /// The request's SlotIDParam: which certificate slot's key signs.
    pub slot_id: u8,
    /// The request's Param2: which measurement (0xFF: all).
    pub measurement_operation: u8,
    /// The GPU's own nonce.
    pub response_nonce: [u8; NONCE_LEN],
    /// The measurement blocks, in report order (indices are unique).
    pub measurements: Vec<MeasurementBlock>,
    /// The NVIDIA opaque data.
    pub opaque: OpaqueData,
    /// The raw ECDSA P-384 signature, `r || s`.
    pub signature: [u8; SIGNATURE_LEN],
    /// Bytes after the signature (not signed).
    pub trailing: usize,
    signed: Vec<u8>,
}

/// One SPDM measurement block in the DMTF format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// The measurement index (1-based).
    pub index: u8,
    /// DMTFSpecMeasurementValueType: bits 0..6 the kind, bit 7 set for a raw bit stream
    /// (clear: a digest).
    pub value_type: u8,
    /// The value (for NVIDIA GPUs a SHA-384 digest, or zeroes for an unused index).
    pub value: Vec<u8>,
}

/// NVIDIA's opaque data: the fields ward names, then every other TLV as it came.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpaqueData {
    /// Type 3: the driver version, e.g. `550.90.07`.
    pub driver_version: Option<String>,
    /// Type 6: the VBIOS version, formatted as NVIDIA does, e.g. `96.00.9f.00.01`.
    pub vbios_version: Option<String>,
    /// Type 20: the firmware id (48 bytes), also in the leaf certificate's TCG DICE extension.
    pub fwid: Option<Vec<u8>>,
    /// Type 17: the project, e.g. `1010`.
    pub project: Option<String>,
    /// Type 18: the project SKU.
    pub project_sku: Option<String>,
    /// Type 15: the chip SKU, e.g. `882`.
    pub chip_sku: Option<String>,
    /// Type 16: the chip SKU modifier.
    pub chip_sku_mod: Option<String>,
    /// Type 12: per measurement index (from 1), how often it was extended.
    pub measurement_count: Option<Vec<u32>>,
    /// Every other TLV, known or not, in report order.
    pub other: Vec<OpaqueField>,
}

/// An opaque-data TLV ward does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaqueField {
    /// The TLV type.
    pub kind: u16,
    /// The value bytes.
    pub value: Vec<u8>,
}

impl OpaqueField {
    /// NVIDIA's name for this type (as nvtrust and Trustee spell it), if known.
    pub fn name(&self) -> Option<&'static str> {
        opaque_name(self.kind)
    }
}

/// NVIDIA's names for the opaque-data types (nvtrust `OpaqueData.OPAQUE_DATA_TYPES`, Trustee
/// `OpaqueDataType`).
fn opaque_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        1 => "cert_issuer_name",
        2 => "cert_authority_key_identifier",
        3 => "driver_version",
        4 => "gpu_info",
        5 => "id_sku",
        6 => "vbios_version",
        7 => "manufacturer_id",
        8 => "tamper_detection",
        9 => "smc",
        10 => "vpr",
        11 => "nvdec0_status",
        12 => "measurement_count",
        13 => "cpr_info",
        14 => "board_id",
        15 => "chip_sku",
        16 => "chip_sku_mod",
        17 => "project",
        18 => "project_sku",
        19 => "project_sku_mod",
        20 => "fwid",
        21 => "protected_pcie_status",
        22 => "switch_pdi",
        23 => "floorswept_ports",
        24 => "position_id",
        25 => "lock_switch_status",
        32 => "gpu_link_conn",
        33 => "sys_enable_status",
        34 => "opaque_data_version",
        35 => "chip_info",
        36 => "feature_flag",
        _ => return None,
    })
}

impl GpuReport {
    /// The bytes the signature covers: the request and the response up to the signature.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }

    /// The value of measurement block `index`, if the report has it.
    pub fn measurement(&self, index: u8) -> Option<&[u8]> {
        self.measurements
            .iter()
            .find(|b| b.index == index)
            .map(|b| b.value.as_slice())
    }

    /// Checks the report's signature (ECDSA P-384, SHA-384 over [`Self::signed_bytes`]) with
    /// the key of `leaf_cert_der`, the first certificate of the GPU's chain. Only the
    /// signature: whether that certificate chains to NVIDIA's root is the verifier's job.
    pub fn verify_signature(&self, leaf_cert_der: &[u8]) -> Result<(), VerifyError> {
        let key = certs::p384_key_of_der(leaf_cert_der)?;
        verify_raw(&key, &self.signed, &self.signature)
    }
}

pub(crate) fn verify_raw(
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), VerifyError> {
    let sig = Signature::from_slice(signature).map_err(|_| VerifyError::Mismatch)?;
    key.verify(message, &sig).map_err(|_| VerifyError::Mismatch)
}

/// Parses a GPU attestation report (raw bytes, as NVML returns it).
pub fn parse_report(bytes: &[u8]) -> Result<GpuReport, ReportError> {
    const WHAT: &str = "GPU attestation report";
    if bytes.len() > MAX_REPORT_LEN {
        return Err(invalid(
            WHAT,
            format!(
                "{} bytes; at most {MAX_REPORT_LEN} are accepted",
                bytes.len()
            ),
        ));
    }
    let mut r = Reader::new(bytes, WHAT);

    // the GET_MEASUREMENTS request
    let spdm_version = r.u8()?;
    version_ok(spdm_version, "request")?;
    code_ok(r.u8()?, GET_MEASUREMENTS, "request")?;
    let param1 = r.u8()?;
    let measurement_operation = r.u8()?;
    if param1 & 1 == 0 {
        return Err(invalid(
            WHAT,
            "the request did not ask for a signature (Param1 bit 0 clear)",
        ));
    }
    let request_nonce = r.array::<NONCE_LEN>()?;
    let slot_id = r.u8()?;

    // the MEASUREMENTS response
    let response_version = r.u8()?;
    version_ok(response_version, "response")?;
    if response_version != spdm_version {
        return Err(invalid(
            WHAT,
            format!(
                "request version {spdm_version:#04x}, response version {response_version:#04x}"
            ),
        ));
    }
    code_ok(r.u8()?, MEASUREMENTS, "response")?;
    r.skip(2)?; // Param1, Param2
    let blocks = r.u8()?;
    let record_len = u24(r.array()?);
    let record = r.take(record_len)?;
    let measurements = parse_record(record, blocks)?;
    let response_nonce = r.array::<NONCE_LEN>()?;
    let opaque_len = usize::from(r.u16()?);
    let opaque = parse_opaque(r.take(opaque_len)?)?;
    let signed_len = r.pos();
    let signature = r.array::<SIGNATURE_LEN>()?;
    let signed = bytes.get(..signed_len).unwrap_or_default().to_vec();
    Ok(GpuReport {
        spdm_version,
        request_nonce,
        slot_id,
        measurement_operation,
        response_nonce,
        measurements,
        opaque,
        signature,
        trailing: r.remaining(),
        signed,
    })
}

fn version_ok(v: u8, which: &str) -> Result<(), ReportError> {
    if v == SPDM_1_1 {
        Ok(())
    } else {
        Err(invalid(
            "GPU attestation report",
            format!("{which} SPDM version {v:#04x}; only 1.1 (0x11) is understood"),
        ))
    }
}

fn code_ok(code: u8, want: u8, which: &str) -> Result<(), ReportError> {
    if code == want {
        Ok(())
    } else {
        Err(invalid(
            "GPU attestation report",
            format!("{which} code {code:#04x}, expected {want:#04x}"),
        ))
    }
}

fn u24([lo, mid, hi]: [u8; 3]) -> usize {
    usize::from(lo) | usize::from(mid) << 8 | usize::from(hi) << 16
}

/// The measurement record: exactly `blocks` DMTF blocks that fill it.
fn parse_record(record: &[u8], blocks: u8) -> Result<Vec<MeasurementBlock>, ReportError> {
    const WHAT: &str = "measurement record";
    let mut r = Reader::new(record, WHAT);
    let mut out: Vec<MeasurementBlock> = Vec::with_capacity(usize::from(blocks));
    for _ in 0..blocks {
        let index = r.u8()?;
        let spec = r.u8()?;
        if spec != DMTF_SPECIFICATION {
            return Err(invalid(
                WHAT,
                format!("block {index} has measurement specification {spec:#04x}, not DMTF (1)"),
            ));
        }
        let size = usize::from(r.u16()?);
        let mut m = Reader::new(r.take(size)?, "DMTF measurement");
        let value_type = m.u8()?;
        let value_size = usize::from(m.u16()?);
        let value = m.take(value_size)?.to_vec();
        if m.remaining() != 0 {
            return Err(invalid(
                WHAT,
                format!(
                    "block {index} is {size} bytes but its value only {value_size} (+3 header)"
                ),
            ));
        }
        if out.iter().any(|b| b.index == index) {
            return Err(invalid(WHAT, format!("block index {index} appears twice")));
        }
        out.push(MeasurementBlock {
            index,
            value_type,
            value,
        });
    }
    if r.remaining() != 0 {
        return Err(invalid(
            WHAT,
            format!(
                "{} bytes left after the {blocks} declared blocks",
                r.remaining()
            ),
        ));
    }
    Ok(out)
}

fn parse_opaque(data: &[u8]) -> Result<OpaqueData, ReportError> {
    const WHAT: &str = "opaque data";
    let mut r = Reader::new(data, WHAT);
    let mut o = OpaqueData::default();
    let mut seen: Vec<u16> = Vec::new();
    while r.remaining() > 0 {
        let kind = r.u16()?;
        let len = usize::from(r.u16()?);
        let value = r.take(len)?;
        if seen.contains(&kind) {
            return Err(invalid(WHAT, format!("type {kind} appears twice")));
        }
        seen.push(kind);
        match kind {
            3 => o.driver_version = Some(text(value, "driver_version")?),
            6 => o.vbios_version = Some(vbios(value)?),
            12 => o.measurement_count = Some(counts(value)?),
            15 => o.chip_sku = Some(text(value, "chip_sku")?),
            16 => o.chip_sku_mod = Some(text(value, "chip_sku_mod")?),
            17 => o.project = Some(text(value, "project")?),
            18 => o.project_sku = Some(text(value, "project_sku")?),
            20 if value.len() == FWID_LEN => o.fwid = Some(value.to_vec()),
            20 => {
                return Err(invalid(
                    WHAT,
                    format!("fwid is {} bytes, not {FWID_LEN}", value.len()),
                ));
            }
            _ => o.other.push(OpaqueField {
                kind,
                value: value.to_vec(),
            }),
        }
    }
    Ok(o)
}

/// A NUL-padded ASCII string.
fn text(value: &[u8], name: &'static str) -> Result<String, ReportError> {
    let end = value.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let s = value.get(..end).unwrap_or_default();
    if s.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        Ok(String::from_utf8_lossy(s).into_owned())
    } else {
        Err(invalid(
            "opaque data",
            format!("{name} is not printable ASCII: {}", hex::encode(value)),
        ))
    }
}

/// NVIDIA's VBIOS version format: the first half of the bytes from last to first, then the
/// byte after them (`00 9f 00 96 01 00 00 00` is `96.00.9f.00.01`).
fn vbios(value: &[u8]) -> Result<String, ReportError> {
    let half = value.len() / 2;
    let (Some(head), Some(next)) = (value.get(..half), value.get(half)) else {
        return Err(invalid("opaque data", "vbios_version is empty"));
    };
    let mut parts: Vec<String> = head.iter().rev().map(|b| format!("{b:02x}")).collect();
    parts.push(format!("{next:02x}"));
    Ok(parts.join("."))
}

fn counts(value: &[u8]) -> Result<Vec<u32>, ReportError> {
    if !value.len().is_multiple_of(4) {
        return Err(invalid(
            "opaque data",
            format!(
                "measurement_count is {} bytes, not a multiple of 4",
                value.len()
            ),
        ));
    }
    Ok(value
        .chunks_exact(4)
        .filter_map(|c| <[u8; 4]>::try_from(c).ok())
        .map(u32::from_le_bytes)
        .collect())
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("absent")
}

impl fmt::Display for GpuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.opaque;
        writeln!(f, "NVIDIA GPU attestation report (SPDM GET_MEASUREMENTS)")?;
        field(
            f,
            "SPDM version",
            format!("{}.{}", self.spdm_version >> 4, self.spdm_version & 0xf),
        )?;
        field(f, "nonce (request)", hex::encode(self.request_nonce))?;
        field(f, "nonce (GPU)", hex::encode(self.response_nonce))?;
        field(f, "certificate slot", self.slot_id)?;
        field(f, "driver version", opt(&o.driver_version))?;
        field(f, "VBIOS version", opt(&o.vbios_version))?;
        field(
            f,
            "FWID",
            o.fwid.as_deref().map_or("absent".into(), hex::encode),
        )?;
        field(f, "project", opt(&o.project))?;
        field(f, "project SKU", opt(&o.project_sku))?;
        field(f, "chip SKU", opt(&o.chip_sku))?;
        field(f, "chip SKU mod", opt(&o.chip_sku_mod))?;
        for x in &o.other {
            let name = x.name().map_or(format!("type {}", x.kind), str::to_string);
            // NVDEC0 status as Trustee decodes it
            let meaning = match (x.kind, x.value.as_slice()) {
                (11, [0xaa]) => " (enabled)",
                (11, [0x55]) => " (disabled)",
                _ => "",
            };
            field(f, &name, format!("{}{meaning}", hex::encode(&x.value)))?;
        }
        let nonzero = self
            .measurements
            .iter()
            .filter(|b| b.value.iter().any(|&v| v != 0))
            .count();
        field(
            f,
            "measurement blocks",
            format!("{} ({nonzero} not all zero)", self.measurements.len()),
        )?;
        for b in &self.measurements {
            let count = o
                .measurement_count
                .as_ref()
                .and_then(|c| c.get(usize::from(b.index).wrapping_sub(1)))
                .map(|c| format!(" (extended {c}x)"))
                .unwrap_or_default();
            field(
                f,
                &format!("measurement {:>2}", b.index),
                format!("{}{count}", hex::encode(&b.value)),
            )?;
        }
        field(
            f,
            "signature",
            format!(
                "ECDSA P-384 over {} bytes: {}",
                self.signed.len(),
                hex::encode(self.signature)
            ),
        )?;
        if self.trailing > 0 {
            field(
                f,
                "trailing bytes",
                format!("{} (not signed)", self.trailing),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbios_and_text_fields_are_decoded_like_nvidia() {
        assert_eq!(
            vbios(&[0, 0x81, 2, 0x98, 1, 0, 0, 0]).unwrap(),
            "98.02.81.00.01"
        );
        assert!(vbios(&[]).is_err());
        assert_eq!(vbios(&[7]).unwrap(), "07");
        assert_eq!(text(b"550.90.07\0", "x").unwrap(), "550.90.07");
        assert!(text(b"\x01bad", "x").is_err());
        assert_eq!(counts(&[1, 0, 0, 0, 2, 0, 0, 0]).unwrap(), vec![1, 2]);
        assert!(counts(&[1, 0, 0]).is_err());
    }
}
