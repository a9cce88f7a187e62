//! Comparing a verified report's values with the reference values, and its report data with
//! the expected one. Shared by the TEEs; the field names are the reference file's.

use std::collections::BTreeSet;

use crate::Log;
use crate::reference::Hex;

/// A value of the evidence that the reference values do not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("{field} is {got}, which the reference values do not list (they accept {allowed})")]
    Mismatch {
        field: String,
        got: String,
        allowed: String,
    },
    #[error(
        "{field} is not pinned by the reference values (give its value, or name it in unpinned to accept any)"
    )]
    NotPinned { field: String },
    #[error(
        "the report data is {got}, not the expected {want}: the evidence does not bind this nonce and key"
    )]
    ReportData { got: String, want: String },
}

/// Checks `got` (the evidence's `section.field`) against the accepted values.
pub(crate) fn pin<const N: usize>(
    log: &mut Log,
    section: &str,
    field: &str,
    got: &[u8; N],
    allowed: Option<&Vec<Hex<N>>>,
    unpinned: &BTreeSet<String>,
) -> Result<(), ValueError> {
    let name = format!("{section}.{field}");
    match allowed {
        Some(list) if list.iter().any(|h| &h.0 == got) => {
            log.ok(format!("{name} matches the reference values"));
            Ok(())
        }
        Some(list) => Err(ValueError::Mismatch {
            field: name,
            got: hex::encode(got),
            allowed: list
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        }),
        None if unpinned.contains(field) => {
            log.ok(format!(
                "{name} is {} (any value: the reference values leave it unpinned)",
                hex::encode(got)
            ));
            Ok(())
        }
        None => log.cannot(
            format!("{name} (not pinned by the reference values)"),
            ValueError::NotPinned { field: name },
        ),
    }
}

/// Checks the report data, which binds the caller's nonce and key: never skipped.
pub(crate) fn report_data(
    log: &mut Log,
    got: &[u8; 64],
    want: &[u8; 64],
) -> Result<(), ValueError> {
    if got != want {
        return Err(ValueError::ReportData {
            got: hex::encode(got),
            want: hex::encode(want),
        });
    }
    log.ok("the report data is the expected one (binds the nonce and key)");
    Ok(())
}
