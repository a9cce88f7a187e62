//! TCG2 crypto-agile event logs, as the CCEL ACPI table data carries them on TDX (and CoCo's
//! runtime events extend them): the Spec ID header, then events with one digest per algorithm.
//! Parsing follows the TCG PC Client Platform Firmware Profile and matches what Trustee's
//! `deps/eventlog` extracts (register index, type name, digests, data, a short description).
//! It never replays or judges the log.

use std::fmt;

use base64::Engine;
use sha2::Digest;

use super::reader::Reader;
use super::{ExplainError, field};

/// The most events accepted from one log (a real boot log has a few hundred).
pub const MAX_EVENTS: usize = 65_536;
const EV_NO_ACTION: u32 = 0x3;
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";

/// A TCG algorithm id and its digest size, from the Spec ID header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Algorithm {
    pub id: u16,
    pub digest_len: u16,
}

/// One event of a [`CcelLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcelEvent {
    /// The measurement register index as logged (CC logs: 1..=4 are RTMR0..3 on TDX).
    pub index: u32,
    pub event_type: u32,
    /// (algorithm id, digest).
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

/// A parsed CCEL: the TCG2 event log of TDX firmware and boot (not the AAEL runtime log that
/// wardd writes, which is [`crate::eventlog::EventLog`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcelLog {
    pub algorithms: Vec<Algorithm>,
    pub events: Vec<CcelEvent>,
}

/// The TCG name of an algorithm (as Trustee's claims spell it).
pub fn algorithm_name(id: u16) -> String {
    match id {
        0x0004 => "SHA-1".into(),
        0x000b => "SHA-256".into(),
        0x000c => "SHA-384".into(),
        0x000d => "SHA-512".into(),
        0x0012 => "SM3".into(),
        other => format!("alg {other:#06x}"),
    }
}

/// The TCG name of an event type.
pub fn event_type_name(t: u32) -> String {
    let name = match t {
        0x0 => "EV_PREBOOT_CERT",
        0x1 => "EV_POST_CODE",
        0x2 => "EV_UNUSED",
        0x3 => "EV_NO_ACTION",
        0x4 => "EV_SEPARATOR",
        0x5 => "EV_ACTION",
        0x6 => "EV_EVENT_TAG",
        0x7 => "EV_S_CRTM_CONTENTS",
        0x8 => "EV_S_CRTM_VERSION",
        0x9 => "EV_CPU_MICROCODE",
        0xa => "EV_PLATFORM_CONFIG_FLAGS",
        0xb => "EV_TABLE_OF_DEVICES",
        0xc => "EV_COMPACT_HASH",
        0xd => "EV_IPL",
        0xe => "EV_IPL_PARTITION_DATA",
        0xf => "EV_NONHOST_CODE",
        0x10 => "EV_NONHOST_CONFIG",
        0x11 => "EV_NONHOST_INFO",
        0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x13 => "EV_POST_CODE2",
        0x8000_0000 => "EV_EFI_EVENT_BASE",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000c => "EV_EFI_VARIABLE_BOOT2",
        0x8000_000d => "EV_EFI_GPT_EVENT2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00e1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00e2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        other => return format!("{other:#010x}"),
    };
    name.to_string()
}

impl CcelEvent {
    /// The type's TCG name.
    pub fn type_name(&self) -> String {
        event_type_name(self.event_type)
    }

    /// Whether every SHA-2 digest is the hash of the event data (true for events such as
    /// separators that measure their own data; false where the digest covers something else,
    /// or for algorithms this crate does not hash).
    pub fn digest_matches_event(&self) -> bool {
        !self.digests.is_empty()
            && self.digests.iter().all(|(alg, d)| {
                let computed = match alg {
                    0x000b => sha2::Sha256::digest(&self.data).to_vec(),
                    0x000c => sha2::Sha384::digest(&self.data).to_vec(),
                    0x000d => sha2::Sha512::digest(&self.data).to_vec(),
                    _ => return false,
                };
                &computed == d
            })
    }

    /// A short text description where the event type carries one.
    pub fn description(&self) -> Option<String> {
        match self.event_type {
            // UEFI_PLATFORM_FIRMWARE_BLOB2 / UEFI_HANDOFF_TABLE_POINTERS2: a sized description.
            0x8000_000a | 0x8000_000b => {
                let (len, rest) = self.data.split_first()?;
                let desc = rest.get(..usize::from(*len))?;
                let text = String::from_utf8(desc.to_vec()).ok()?;
                Some(text.trim_end_matches('\0').to_string())
            }
            0x5 | 0x6 | 0xa | 0xd | 0x8000_0007 => Some(printable(&self.data)),
            _ => None,
        }
    }
}

/// The text of free-form event data: empty unless UTF-8; DLE becomes a space; control
/// characters are dropped (as Trustee's parsers do).
fn printable(data: &[u8]) -> String {
    String::from_utf8(data.to_vec())
        .unwrap_or_default()
        .replace('\u{10}', " ")
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// Whether `bytes` starts with a crypto-agile log header (EV_NO_ACTION "Spec ID Event03").
pub fn looks_like_ccel_log(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(&EV_NO_ACTION.to_le_bytes()[..])
        && bytes.get(32..48) == Some(&SPEC_ID_SIGNATURE[..])
}

/// Parses a crypto-agile event log. The log ends at a terminator (8 bytes of 0x00 or 0xff,
/// what follows the last event in the CCEL table) or exactly at the end of the input; input
/// that stops inside an event is an error.
pub fn parse_ccel_log(bytes: &[u8]) -> Result<CcelLog, ExplainError> {
    let mut r = Reader::new(bytes, "event log");
    // TCG_PCR_EVENT header (SHA-1 format) carrying TCG_EfiSpecIDEvent.
    let _pcr = r.u32()?;
    let event_type = r.u32()?;
    r.skip(20)?;
    let size = r.u32()? as usize;
    let spec = r.take(size)?;
    let mut s = Reader::new(spec, "event log Spec ID event");
    if event_type != EV_NO_ACTION || s.array::<16>()? != *SPEC_ID_SIGNATURE {
        return Err(ExplainError::Invalid {
            what: "event log",
            detail: "the first event is not a TCG2 Spec ID event".into(),
        });
    }
    s.skip(8)?; // platform class, spec version minor/major, errata, uintn size
    let count = s.u32()? as usize;
    if count == 0 || count > 16 {
        return Err(ExplainError::Invalid {
            what: "event log Spec ID event",
            detail: format!("{count} algorithms"),
        });
    }
    let mut algorithms = Vec::with_capacity(count);
    for _ in 0..count {
        algorithms.push(Algorithm {
            id: s.u16()?,
            digest_len: s.u16()?,
        });
    }
    let vendor = s.u8()?;
    s.skip(usize::from(vendor))?;

    let mut events = Vec::new();
    while r.remaining() > 0 {
        if matches!(
            bytes.get(r.pos()..r.pos().saturating_add(8)),
            Some([0, 0, 0, 0, 0, 0, 0, 0] | [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        ) {
            break;
        }
        if events.len() >= MAX_EVENTS {
            return Err(ExplainError::Invalid {
                what: "event log",
                detail: format!("more than {MAX_EVENTS} events"),
            });
        }
        let index = r.u32()?;
        let event_type = r.u32()?;
        let n = r.u32()? as usize;
        if n > algorithms.len() {
            return Err(ExplainError::Invalid {
                what: "event log",
                detail: format!("event {} has {n} digests", events.len()),
            });
        }
        let mut digests = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.u16()?;
            let alg = algorithms
                .iter()
                .find(|a| a.id == id)
                .ok_or(ExplainError::Invalid {
                    what: "event log",
                    detail: format!("digest algorithm {id:#06x} is not in the Spec ID event"),
                })?;
            digests.push((id, r.take(usize::from(alg.digest_len))?.to_vec()));
        }
        let len = r.u32()? as usize;
        let data = r.take(len)?.to_vec();
        events.push(CcelEvent {
            index,
            event_type,
            digests,
            data,
        });
    }
    Ok(CcelLog { algorithms, events })
}

impl fmt::Display for CcelLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "TCG2 event log (CCEL), {} events", self.events.len())?;
        let algs: Vec<String> = self
            .algorithms
            .iter()
            .map(|a| algorithm_name(a.id))
            .collect();
        field(f, "digest algorithms", algs.join(", "))?;
        for (i, e) in self.events.iter().enumerate() {
            writeln!(
                f,
                "  #{i:<3} MR index {} {} ({} bytes{})",
                e.index,
                e.type_name(),
                e.data.len(),
                if e.digest_matches_event() {
                    ", digest is of the data"
                } else {
                    ""
                }
            )?;
            for (alg, d) in &e.digests {
                writeln!(f, "         {} {}", algorithm_name(*alg), hex::encode(d))?;
            }
            if let Some(desc) = e.description().filter(|d| !d.is_empty()) {
                writeln!(f, "         {desc}")?;
            }
        }
        Ok(())
    }
}

impl CcelEvent {
    /// The event data as standard base64 (the `event` field of Trustee's claims).
    pub fn data_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ccel_fixture() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/evidence/ccel/CCEL_data"
        ))
        .unwrap()
    }

    #[test]
    fn ccel_matches_trustees_parse() {
        let log = parse_ccel_log(&ccel_fixture()).unwrap();
        let expected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures/evidence/ccel/CCEL_data_out.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let want = expected["uefi_event_logs"].as_array().unwrap();
        assert_eq!(log.events.len(), want.len());
        for (e, w) in log.events.iter().zip(want) {
            assert_eq!(w["index"], e.index);
            assert_eq!(w["type_name"], e.type_name());
            assert_eq!(w["event"], e.data_base64());
            assert_eq!(w["digest_matches_event"], e.digest_matches_event());
            let digests: Vec<serde_json::Value> = e
                .digests
                .iter()
                .map(|(a, d)| serde_json::json!({"alg": algorithm_name(*a), "digest": hex::encode(d)}))
                .collect();
            assert_eq!(w["digests"], serde_json::Value::Array(digests));
            if let Some(s) = w["details"]["string"].as_str() {
                assert_eq!(e.description().as_deref(), Some(s));
            }
        }
        let text = log.to_string();
        assert!(text.contains("EV_EFI_PLATFORM_FIRMWARE_BLOB2"), "{text}");
        assert!(text.contains("td_payload_info root=/dev/vda1"), "{text}");
    }

    #[test]
    fn unknown_digest_algorithms_are_refused() {
        let mut log = ccel_fixture();
        // the first event's first digest algorithm id follows the header and 12 bytes
        let header_len = 32 + u32::from_le_bytes(log[28..32].try_into().unwrap()) as usize;
        log[header_len + 12] = 0x77;
        assert!(matches!(
            parse_ccel_log(&log),
            Err(ExplainError::Invalid { .. })
        ));
    }
}
