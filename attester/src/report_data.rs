//! Report data: the bytes a TEE signs into its report, binding the evidence to a verifier's
//! nonce and a key. At most 64 bytes on every platform ward supports.

use std::fmt;

/// The most report data any supported TEE carries (SNP REPORT_DATA, TDX REPORTDATA).
pub const MAX_REPORT_DATA: usize = 64;

/// Report data of at most [`MAX_REPORT_DATA`] bytes; only constructible through [`ReportData::new`].
#[derive(Clone, PartialEq, Eq)]
pub struct ReportData(Vec<u8>);

/// Report data longer than a TEE report can carry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("report data is {0} bytes; a TEE report carries at most 64")]
pub struct ReportDataTooLong(pub usize);

impl ReportData {
    /// Checks the length.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<ReportData, ReportDataTooLong> {
        let bytes = bytes.into();
        if bytes.len() > MAX_REPORT_DATA {
            return Err(ReportDataTooLong(bytes.len()));
        }
        Ok(ReportData(bytes))
    }

    /// The bytes as given (the `sample` TEE reports them unpadded).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes zero-padded to 64, as SNP and TDX reports carry them.
    pub fn padded(&self) -> [u8; MAX_REPORT_DATA] {
        let mut out = [0u8; MAX_REPORT_DATA];
        out[..self.0.len()].copy_from_slice(&self.0);
        out
    }
}

impl fmt::Debug for ReportData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReportData({})", hex::encode(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked_and_padding_is_zeros() {
        assert_eq!(ReportData::new(vec![1; 65]), Err(ReportDataTooLong(65)));
        let rd = ReportData::new(vec![7; 48]).unwrap();
        assert_eq!(rd.as_bytes().len(), 48);
        let p = rd.padded();
        assert_eq!(&p[..48], &[7; 48][..]);
        assert_eq!(&p[48..], &[0; 16][..]);
        assert_eq!(ReportData::new(Vec::new()).unwrap().padded(), [0; 64]);
    }
}
