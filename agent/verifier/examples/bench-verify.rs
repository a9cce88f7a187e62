//! Verification time per attestation (issue #18, "Measure"): the real TDX quote with its DCAP
//! collateral and the real SNP reports with their VCEK and VLEK, each verified in full as
//! `ward chat` does (chain to the pinned root, signatures, collateral, TCB, policy, values),
//! as of a time inside the fixtures' windows; and the real H100 GPU report with its chain. Prints min and median of N runs (`--runs N`,
//! default 200), with and without parsing the collateral / certificates. Run it on a release
//! build: `just bench-verify`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use ward_verifier::snp::{self, AmdCerts};
use ward_verifier::tdx::{self, Collateral};
use ward_verifier::{GpuReference, Hex, Options, SnpReference, SnpTcb, TdxReference};
use ward_verifier::{azure, nvidia};

fn fixture(rel: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../../shared/fixtures/evidence/{rel}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f(); // warm
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    (t[0], t[t.len() / 2])
}

fn row(name: &str, (min, median): (Duration, Duration)) {
    println!(
        "{name:<52} min {:>9.3} ms   median {:>9.3} ms",
        min.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--runs N"))
        .unwrap_or(200);

    // TDX: as of 2025-06-20, inside the collateral's window.
    let quote = fixture("tdx-dcap/tdx_quote");
    let coll_json = fixture("tdx-dcap/tdx_quote_collateral.json");
    let collateral = Collateral::from_json(&coll_json).unwrap();
    let reg = |off: usize| {
        Some(vec![Hex(quote[48 + off..48 + off + 48]
            .try_into()
            .unwrap())])
    };
    let tdx_ref = TdxReference {
        mrtd: reg(136),
        mrconfigid: reg(184),
        rtmr0: reg(328),
        rtmr1: reg(376),
        rtmr2: reg(424),
        rtmr3: reg(472),
        ..TdxReference::default()
    };
    let tdx_rd: [u8; 64] = quote[48 + 520..48 + 584].try_into().unwrap();
    let tdx_opts = Options {
        at: 1_750_377_600,
        insecure: false,
    };
    tdx::verify(&quote, Some(&collateral), &tdx_ref, &tdx_rd, &tdx_opts).unwrap();
    println!("ward-verifier, {runs} runs each, one core");
    row(
        "TDX quote v4 (DCAP, collateral parsed once)",
        time(runs, || {
            tdx::verify(&quote, Some(&collateral), &tdx_ref, &tdx_rd, &tdx_opts).unwrap();
        }),
    );
    row(
        "TDX quote v4 + parsing the collateral JSON",
        time(runs, || {
            let c = Collateral::from_json(&coll_json).unwrap();
            tdx::verify(&quote, Some(&c), &tdx_ref, &tdx_rd, &tdx_opts).unwrap();
        }),
    );

    // SNP: as of 2024-12-24, inside the certificates' validity.
    for (name, report, cert) in [
        (
            "SNP report, VCEK (Milan)",
            "snp/test-report.bin",
            "snp/test-vcek.der",
        ),
        (
            "SNP report, VLEK (Milan)",
            "snp/test-vlek-report.bin",
            "snp/test-vlek.der",
        ),
    ] {
        let raw = fixture(report);
        let der = fixture(cert);
        let certs = AmdCerts::from_bytes(&der).unwrap();
        let r = SnpReference {
            measurement: Some(vec![Hex(raw[0x90..0xc0].try_into().unwrap())]),
            host_data: Some(vec![Hex(raw[0xc0..0xe0].try_into().unwrap())]),
            min_tcb: Some(SnpTcb::default()),
            allow_smt: true,
            vmpl: u32::from_le_bytes(raw[0x30..0x34].try_into().unwrap()),
            ..SnpReference::default()
        };
        let rd: [u8; 64] = raw[0x50..0x90].try_into().unwrap();
        let opts = Options {
            at: 1_735_000_000,
            insecure: false,
        };
        snp::verify(&raw, Some(&certs), &r, &rd, &opts).unwrap();
        row(
            &format!("{name} + parsing the certificate"),
            time(runs, || {
                let c = AmdCerts::from_bytes(&der).unwrap();
                snp::verify(&raw, Some(&c), &r, &rd, &opts).unwrap();
            }),
        );
    }

    // Azure SNP vTPM: the real evidence, everything checked (its VCEK, the vTPM key's RSA
    // signature, PCRs, the binding), as of 2025-06-20.
    let az: serde_json::Value =
        serde_json::from_slice(&fixture("az-snp-vtpm/evidence-v2.json")).unwrap();
    let az_nonce = ward_attester::explain::parse_azure_evidence(&az)
        .unwrap()
        .tpm_quote
        .extra_data;
    let az_ref = ward_verifier::ReferenceValues {
        version: 1,
        snp: Some(SnpReference {
            allow_smt: true,
            unpinned: ["measurement", "host_data", "min_tcb"]
                .map(String::from)
                .into(),
            ..SnpReference::default()
        }),
        vtpm: Some(ward_verifier::VtpmReference {
            pcrs: None,
            unpinned: ["pcrs".to_string()].into(),
        }),
        ..Default::default()
    };
    let az_opts = Options {
        at: 1_750_377_600,
        insecure: false,
    };
    let vouchers = azure::Vouchers::default();
    azure::verify(&az, &vouchers, &az_ref, &az_nonce, &az_opts).unwrap();
    row(
        "Azure SNP vTPM (VCEK from the evidence)",
        time(runs, || {
            azure::verify(&az, &vouchers, &az_ref, &az_nonce, &az_opts).unwrap();
        }),
    );

    // NVIDIA: the real H100 report and chain, every value pinned, as of 2025-06-20. A device's
    // cost does not depend on its neighbours, so eight GPUs are eight one-GPU documents (one
    // document cannot hold the same GPU twice, and the fixtures are two GPUs).
    let gpu = String::from_utf8(fixture("nvidia/hopperAttestationReport.txt")).unwrap();
    let gpu = hex::decode(gpu.trim()).unwrap();
    let chain = fixture("nvidia/hopper_cert_chain_case1.txt");
    let std = base64::engine::general_purpose::STANDARD;
    let doc = serde_json::to_vec(&serde_json::json!({"nvidia": {"device_evidence_list": [{
        "arch": "HOPPER", "evidence": std.encode(&gpu), "certificate": std.encode(&chain),
    }]}}))
    .unwrap();
    let nonce: [u8; 32] = gpu[4..36].try_into().unwrap();
    let gpu_ref = GpuReference {
        count: Some(1),
        driver_version: Some(vec!["550.90.07".into()]),
        vbios_version: Some(vec!["96.00.9f.00.01".into()]),
        unpinned: ["measurements".to_string()].into(),
        ..GpuReference::default()
    };
    let opts = Options {
        at: 1_750_377_600,
        insecure: false,
    };
    nvidia::verify(&doc, &gpu_ref, &nonce, &opts).unwrap();
    row(
        "NVIDIA H100 report + chain (one GPU)",
        time(runs, || {
            nvidia::verify(&doc, &gpu_ref, &nonce, &opts).unwrap();
        }),
    );
    row(
        "eight H100s (eight one-GPU documents)",
        time(runs, || {
            for _ in 0..8 {
                nvidia::verify(&doc, &gpu_ref, &nonce, &opts).unwrap();
            }
        }),
    );
}
