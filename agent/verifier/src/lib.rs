//! ward-verifier: verifies SNP and TDX evidence offline, failing closed, against reference
//! values (`docs/reference-values.md`). What it guarantees and what it does not: README.md.
//!
//! Each TEE has one entry point ([`tdx::verify`], [`snp::verify`]) that takes the evidence as
//! the TEE produced it, what vouches for it (Intel's collateral, AMD's certificates: given by
//! the caller, never fetched), the reference values, the report data the caller expects (the
//! binding of its nonce and the offered key), and [`Options`]: the time to judge expiry at and
//! whether `--insecure` was given. The answer is a [`Verified`] or a refusal naming what failed.

pub mod azure;
pub mod nvidia;
pub mod reference;
pub mod snp;
pub mod tdx;
mod values;

pub use reference::{
    GpuReference, Hex, ReferenceError, ReferenceValues, SnpReference, SnpTcb, TdxReference,
    VtpmReference,
};
pub use values::ValueError;

/// How to verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The time to judge certificates, CRLs and collateral at (seconds since the Unix epoch).
    /// The wall clock for a live peer; a time inside the collateral's window for old evidence.
    pub at: u64,
    /// Skip what cannot be checked (no collateral, no certificate, a value the reference does
    /// not pin) instead of refusing; every skip is listed in [`Verified::skipped`]. A check
    /// that runs and fails is refused even so.
    pub insecure: bool,
}

impl Options {
    /// Judged at the wall clock, nothing skipped.
    pub fn now() -> Self {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Options {
            at,
            insecure: false,
        }
    }
}

/// Evidence that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// `"tdx"` or `"snp"`.
    pub tee: &'static str,
    /// The report data the evidence carries (equal to the one expected).
    pub report_data: [u8; 64],
    /// What was checked and passed, one line each.
    pub checked: Vec<String>,
    /// What was NOT checked because `insecure` was set, one line each. Empty unless insecure.
    pub skipped: Vec<String>,
}

/// Records what passed and what was skipped while a verification runs.
#[derive(Debug)]
pub(crate) struct Log {
    insecure: bool,
    checked: Vec<String>,
    skipped: Vec<String>,
}

impl Log {
    pub(crate) fn new(o: &Options) -> Self {
        Log {
            insecure: o.insecure,
            checked: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// A log whose contents are thrown away (for trying a candidate).
    pub(crate) fn scratch() -> Self {
        Log {
            insecure: false,
            checked: Vec::new(),
            skipped: Vec::new(),
        }
    }

    pub(crate) fn ok(&mut self, what: impl Into<String>) {
        self.checked.push(what.into());
    }

    /// Something could not be checked: skipped when insecure, else the refusal `e`.
    pub(crate) fn cannot<E>(&mut self, what: impl Into<String>, e: E) -> Result<(), E> {
        if self.insecure {
            self.skipped.push(what.into());
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Takes in what a nested verification passed and skipped, each line under `prefix`.
    pub(crate) fn absorb(&mut self, prefix: &str, v: Verified) {
        self.checked
            .extend(v.checked.into_iter().map(|l| format!("{prefix}: {l}")));
        self.skipped
            .extend(v.skipped.into_iter().map(|l| format!("{prefix}: {l}")));
    }

    /// What passed and what was skipped, for verifications whose answer is not a [`Verified`].
    pub(crate) fn into_lines(self) -> (Vec<String>, Vec<String>) {
        (self.checked, self.skipped)
    }

    pub(crate) fn finish(self, tee: &'static str, report_data: [u8; 64]) -> Verified {
        Verified {
            tee,
            report_data,
            checked: self.checked,
            skipped: self.skipped,
        }
    }
}
