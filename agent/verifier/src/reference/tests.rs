#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// The example in docs/reference-values.md, which must stay a valid file.
fn documented() -> String {
    let doc = include_str!("../../../../docs/reference-values.md");
    let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
    let len = doc[start..].find("```").unwrap();
    doc[start..start + len].to_string()
}

#[test]
fn the_documented_example_parses() {
    let r = ReferenceValues::parse(&documented()).unwrap();
    let tdx = r.tdx.unwrap();
    assert_eq!(tdx.mrtd.unwrap()[0].0[0], 0xa5);
    assert_eq!(tdx.rtmr3, None);
    assert!(tdx.unpinned.contains("rtmr3"));
    assert_eq!(tdx.tcb_status, ["UpToDate", "SWHardeningNeeded"]);
    let snp = r.snp.unwrap();
    assert_eq!(snp.min_tcb.unwrap().microcode, 115);
    assert!(snp.allow_smt && !snp.allow_migration_agent);
    assert_eq!(snp.host_data.unwrap()[0].0, [0; 32]);
    let gpu = r.gpu.unwrap();
    assert_eq!(gpu.count, Some(8));
    assert_eq!(gpu.driver_version.unwrap(), ["550.90.07"]);
    assert_eq!(gpu.measurements.unwrap()["2"][0].0[0], 0x80);
    let vtpm = r.vtpm.unwrap();
    assert_eq!(vtpm.pcrs.unwrap()["11"][0].0, [0; 32]);
}

#[test]
fn defaults_are_the_strict_ones() {
    let r = ReferenceValues::parse("version = 1\n[tdx]\n[snp]\n").unwrap();
    let tdx = r.tdx.unwrap();
    assert_eq!(tdx, TdxReference::default());
    assert_eq!(tdx.tcb_status, ["UpToDate"]);
    assert!(tdx.fields().iter().all(|(_, v)| v.is_none()));
    let snp = r.snp.unwrap();
    assert!(!snp.allow_smt && !snp.allow_migration_agent && snp.vmpl == 0);
    assert!(snp.measurement.is_none() && snp.min_tcb.is_none());
}

#[test]
fn mistakes_are_refused_by_name() {
    let cases = [
        ("version = 2", "version 2"),
        ("", "missing field `version`"),
        ("version = 1\n[tdx]\nmrtdd = []", "unknown field `mrtdd`"),
        ("version = 1\n[tdx]\nmrtd = []", "tdx.mrtd"),
        ("version = 1\n[tdx]\nmrtd = [\"00\"]", "1 bytes, not 48"),
        ("version = 1\n[tdx]\nmrtd = [\"zz\"]", "not hex"),
        (
            "version = 1\n[tdx]\ntcb_status = [\"Revoked\"]",
            "Revoked is never accepted",
        ),
        (
            "version = 1\n[tdx]\nunpinned = [\"mrsigner\"]",
            "tdx.unpinned",
        ),
        ("version = 1\n[snp]\nunpinned = [\"rtmr0\"]", "snp.unpinned"),
        ("version = 1\n[snp]\nmeasurement = []", "empty list"),
        (
            "version = 1\n[snp]\nmin_tcb = { bootloader = 1 }",
            "missing field `tee`",
        ),
        (
            "version = 1\n[snp]\nmin_tcb = { bootloader = 300, tee = 0, snp = 0, microcode = 0 }",
            "300",
        ),
        ("version = 1\n[gpu]\ncounts = 8", "unknown field `counts`"),
        ("version = 1\n[gpu]\nunpinned = [\"mrtd\"]", "gpu.unpinned"),
        ("version = 1\n[gpu]\ndriver_version = []", "empty list"),
        ("version = 1\n[gpu.measurements]\n0 = [\"00\"]", "48"),
        ("version = 1\n[gpu.measurements]\nx = []", "empty list"),
        ("version = 1\n[tpm]\n", "unknown field `tpm`"),
        (
            "version = 1\n[vtpm]\nunpinned = [\"pcr4\"]",
            "vtpm.unpinned",
        ),
        (
            "version = 1\n[vtpm]\npcrs = { 24 = [\"0000000000000000000000000000000000000000000000000000000000000000\"] }",
            "from 0 to 23",
        ),
        ("version = 1\n[vtpm]\npcrs = { 4 = [] }", "empty list"),
    ];
    for (text, want) in cases {
        let e = ReferenceValues::parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("values.toml");
    std::fs::write(&p, "version = 1\n[snp]\nhost_data = [\"00\"]\n").unwrap();
    let e = ReferenceValues::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("values.toml") && e.contains("1 bytes, not 32"),
        "{e}"
    );
    let e = ReferenceValues::load(Path::new("/nonexistent/ref.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/ref.toml"), "{e}");
}
