//! Every failure path of GPU evidence collection, through the scripted backend with a real H100
//! report and certificate chain from ../shared/fixtures.

use std::sync::Arc;
use std::time::Duration;

use super::scripted::Script;
use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../shared/fixtures/evidence/nvidia/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn report_template() -> Vec<u8> {
    hex::decode(
        String::from_utf8(fixture("hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

fn backend(script: Script) -> (Arc<ScriptedGpus>, Arc<dyn GpuBackend>) {
    let s = Arc::new(ScriptedGpus::new(
        script,
        report_template(),
        fixture("hopper_cert_chain_case1.txt"),
    ));
    (s.clone(), s as Arc<dyn GpuBackend>)
}

fn script() -> Script {
    Script {
        gpus: 1,
        arch_code: 9,
        ..Default::default()
    }
}

const NONCE: [u8; 32] = [0x42; 32];

type Expect = fn(&GpuError) -> bool;

#[tokio::test]
async fn a_cc_on_hopper_gives_evidence_echoing_the_nonce() {
    let (_, b) = backend(Script {
        gpus: 2,
        ..script()
    });
    let ev = collect(&b, NONCE, CollectOptions::default()).await.unwrap();
    assert_eq!(ev.device_evidence_list.len(), 2);
    let d = &ev.device_evidence_list[0];
    assert_eq!(d.arch, Arch::Hopper);
    let report = STANDARD.decode(&d.evidence).unwrap();
    assert_eq!(&report[REQUEST_NONCE], &NONCE);
    let chain = STANDARD.decode(&d.certificate).unwrap();
    assert!(check_chain(&chain).unwrap() >= 2);
    let json = serde_json::to_value(&ev).unwrap();
    assert_eq!(json["device_evidence_list"][1]["arch"], "HOPPER");
    assert_eq!(json["device_evidence_list"][1]["uuid"], UNKNOWN_UUID);
}

#[tokio::test]
async fn every_refusal_says_why() {
    let off = SystemCc {
        enabled: false,
        ..ScriptedGpus::cc_on()
    };
    let cases: Vec<(&str, Script, Expect)> = vec![
        (
            "library missing",
            Script {
                init_error: Some(GpuError::LibraryMissing("libnvidia-ml.so.1".into())),
                ..script()
            },
            |e| matches!(e, GpuError::LibraryMissing(_)),
        ),
        (
            "symbol missing",
            Script {
                init_error: Some(GpuError::SymbolMissing(
                    "nvmlSystemGetConfComputeState".into(),
                )),
                ..script()
            },
            |e| matches!(e, GpuError::SymbolMissing(_)),
        ),
        (
            "driver not loaded",
            Script {
                init_error: Some(GpuError::DriverNotLoaded),
                ..script()
            },
            |e| *e == GpuError::DriverNotLoaded,
        ),
        (
            "cc off",
            Script {
                system: Some(off),
                ..script()
            },
            |e| matches!(e, GpuError::CcOff { index: 0, .. }),
        ),
        (
            "devtools",
            Script {
                system: Some(SystemCc {
                    devtools: true,
                    ..ScriptedGpus::cc_on()
                }),
                ..script()
            },
            |e| *e == GpuError::DevTools,
        ),
        (
            "ppcie",
            Script {
                system: Some(SystemCc {
                    protected_pcie: true,
                    ..ScriptedGpus::cc_on()
                }),
                ..script()
            },
            |e| matches!(e, GpuError::NoSwitches(_)),
        ),
        (
            "no gpus",
            Script {
                gpus: 0,
                ..script()
            },
            |e| *e == GpuError::NoGpus,
        ),
        (
            "unknown arch",
            Script {
                arch_code: 8,
                ..script()
            },
            |e| matches!(e, GpuError::UnknownArch { code: 8, .. }),
        ),
        (
            "error 999",
            Script {
                report_error: Some(999),
                ..script()
            },
            |e| {
                matches!(
                    e,
                    GpuError::Nvml {
                        code: 999,
                        index: Some(0),
                        ..
                    }
                )
            },
        ),
        (
            "empty report",
            Script {
                report_len: Some(0),
                ..script()
            },
            |e| matches!(e, GpuError::ReportSize { size: 0, .. }),
        ),
        (
            "oversized report",
            Script {
                report_len: Some(MAX_REPORT + 1),
                ..script()
            },
            |e| matches!(e, GpuError::ReportSize { .. }),
        ),
        (
            "nonce not echoed",
            Script {
                ignore_nonce: true,
                ..script()
            },
            |e| matches!(e, GpuError::NonceNotEchoed { .. }),
        ),
        (
            "malformed pem",
            Script {
                chain_override: Some(
                    b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_vec(),
                ),
                ..script()
            },
            |e| matches!(e, GpuError::BadChain { .. }),
        ),
        (
            "no certificate",
            Script {
                chain_override: Some(b"garbage".to_vec()),
                ..script()
            },
            |e| matches!(e, GpuError::BadChain { .. }),
        ),
        (
            "unclosed pem",
            Script {
                chain_override: Some(b"-----BEGIN CERTIFICATE-----\nMIIB".to_vec()),
                ..script()
            },
            |e| matches!(e, GpuError::BadChain { .. }),
        ),
    ];
    for (name, s, check) in cases {
        let (_, b) = backend(s);
        let e = collect(&b, NONCE, CollectOptions::default())
            .await
            .unwrap_err();
        assert!(check(&e), "{name}: {e}");
    }
    let (_, b) = backend(Script {
        system: Some(SystemCc {
            enabled: false,
            ..ScriptedGpus::cc_on()
        }),
        ..script()
    });
    let e = collect(&b, NONCE, CollectOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "confidential computing is off on GPU 0 (NVIDIA H100 80GB HBM3, UUID GPU-00000000-0000-0000-0000-000000000000)"
    );
}

#[tokio::test]
async fn devtools_can_be_allowed_and_calls_time_out() {
    let (_, b) = backend(Script {
        system: Some(SystemCc {
            devtools: true,
            ..ScriptedGpus::cc_on()
        }),
        ..script()
    });
    let opts = CollectOptions {
        allow_devtools: true,
        ..Default::default()
    };
    assert!(collect(&b, NONCE, opts).await.is_ok());

    let (_, b) = backend(Script {
        report_delay: Some(Duration::from_millis(500)),
        ..script()
    });
    let opts = CollectOptions {
        call_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let e = collect(&b, NONCE, opts).await.unwrap_err();
    assert!(
        matches!(
            e,
            GpuError::Timeout {
                call: "nvmlDeviceGetConfComputeGpuAttestationReport",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn ready_state_only_after_every_gpu_was_appraised() {
    let t = Duration::from_secs(5);
    let (s, b) = backend(Script {
        gpus: 2,
        ..script()
    });
    collect(&b, NONCE, CollectOptions::default()).await.unwrap();
    assert_eq!(
        s.set_ready_calls(),
        0,
        "collection never touches the ready state"
    );

    let e = set_ready_after_attestation(
        &b,
        &expected_submods(2, 0),
        &["cpu0".into(), "gpu0".into()],
        t,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("does not appraise gpu1"), "{e}");
    assert_eq!(s.set_ready_calls(), 0);
    assert!(!b.ready_state().unwrap());

    set_ready_after_attestation(
        &b,
        &expected_submods(2, 0),
        &["cpu0".into(), "gpu0".into(), "gpu1".into()],
        t,
    )
    .await
    .unwrap();
    assert!(b.ready_state().unwrap());

    let (_, b) = backend(Script {
        set_ready_error: true,
        ..script()
    });
    let e = set_ready_after_attestation(&b, &expected_submods(1, 0), &["gpu0".into()], t)
        .await
        .unwrap_err();
    assert!(matches!(e, GpuError::Nvml { code: 4, .. }), "{e}");
    let (_, b) = backend(Script {
        ready_stuck: true,
        ..script()
    });
    let e = set_ready_after_attestation(&b, &expected_submods(1, 0), &["gpu0".into()], t)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reads back as not ready"), "{e}");
}

#[test]
fn nvml_and_nscq_are_absent_on_this_machine_and_say_so() {
    match super::nscq::NscqSwitches::open() {
        Err(GpuError::LibraryMissing(m)) => assert!(m.contains("libnvidia-nscq.so.2"), "{m}"),
        Err(e) => panic!("NSCQ unavailable, but not said plainly: {e}"),
        Ok(_) => eprintln!("skipped: NSCQ is present here"),
    }
    match NvmlBackend::init() {
        Err(GpuError::LibraryMissing(_) | GpuError::DriverNotLoaded) => {}
        Err(e) => panic!("NVML unavailable, but not said plainly: {e}"),
        Ok(_) => {
            eprintln!("skipped: NVML is present here; real-GPU checks run on the device machine")
        }
    }
}

mod nvat;
