//! Usage from a verified audit log (`ward audit usage`): per client and model, the requests
//! served and refused and the tokens they used, summed from the `inference.request` entries, so
//! a model owner can bill or reconcile from the same chain the TEE wrote. The chain is verified
//! first; a log that does not verify gives no report.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ChainHead, Entry, VerifyError, verify_each};

/// Which entries count.
#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    /// Entries at or after this time.
    pub since: Option<OffsetDateTime>,
    /// One client (`ed25519:…`, `uid:N`, or `-` for requests without one).
    pub client: Option<String>,
}

/// One client's use of one model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub client: String,
    /// The grants that let its requests through (a policy may have changed between them).
    pub grants: Vec<String>,
    pub model: String,
    /// Requests answered with 2xx.
    pub requests: u64,
    /// Requests refused or failed (any other status).
    pub refused: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A usage report and the chain it came from.
#[derive(Clone, Debug, Serialize)]
pub struct UsageReport {
    /// The verified head: quote it with the report.
    pub head: String,
    pub entries: u64,
    pub rows: Vec<UsageRow>,
}

/// Sums the inference requests of the log in `reader` that `filter` selects.
pub fn usage(reader: impl BufRead, filter: &UsageFilter) -> Result<UsageReport, VerifyError> {
    let mut rows: BTreeMap<(String, String), UsageRow> = BTreeMap::new();
    let ChainHead { hash, entries } = verify_each(reader, |e| add(&mut rows, e, filter))?;
    Ok(UsageReport {
        head: hash,
        entries,
        rows: rows.into_values().collect(),
    })
}

fn add(rows: &mut BTreeMap<(String, String), UsageRow>, e: &Entry, filter: &UsageFilter) {
    if e.event != "inference.request" {
        return;
    }
    let Some(d) = &e.detail else { return };
    if let Some(since) = filter.since {
        // wardd writes RFC 3339; an entry whose time does not parse is kept, not hidden.
        if OffsetDateTime::parse(&e.time, &Rfc3339).is_ok_and(|t| t < since) {
            return;
        }
    }
    let client = d
        .get("client")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("-")
        .to_string();
    if filter.client.as_ref().is_some_and(|c| *c != client) {
        return;
    }
    let model = d
        .get("model")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("-")
        .to_string();
    let row = rows
        .entry((client.clone(), model.clone()))
        .or_insert_with(|| UsageRow {
            client,
            model,
            ..UsageRow::default()
        });
    let status = d
        .get("status")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if (200..300).contains(&status) {
        row.requests = row.requests.saturating_add(1);
    } else {
        row.refused = row.refused.saturating_add(1);
    }
    let count = |k: &str| d.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    row.prompt_tokens = row.prompt_tokens.saturating_add(count("prompt_tokens"));
    row.completion_tokens = row
        .completion_tokens
        .saturating_add(count("completion_tokens"));
    if let Some(g) = d.get("grant").and_then(serde_json::Value::as_str)
        && !row.grants.iter().any(|x| x == g)
    {
        row.grants.push(g.to_string());
    }
}

/// The report as an aligned text table.
pub fn table(report: &UsageReport) -> String {
    let mut out = format!(
        "{:<52} {:<16} {:<12} {:>8} {:>8} {:>10} {:>10}\n",
        "CLIENT", "MODEL", "GRANT", "REQUESTS", "REFUSED", "PROMPT", "COMPLETION"
    );
    for r in &report.rows {
        out.push_str(&format!(
            "{:<52} {:<16} {:<12} {:>8} {:>8} {:>10} {:>10}\n",
            r.client,
            r.model,
            if r.grants.is_empty() {
                "-".to_string()
            } else {
                r.grants.join(",")
            },
            r.requests,
            r.refused,
            r.prompt_tokens,
            r.completion_tokens
        ));
    }
    out.push_str(&format!(
        "verified: {} entries, head {}\n",
        report.entries, report.head
    ));
    out
}
