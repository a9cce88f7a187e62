//! `[[model]]` tables: sources, digests, sizes, devices and engines.

use super::*;

#[test]
fn model_entries() {
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let c = from_text(
        &format!(
            "[[model]]\nname = \"m\"\nsource = \"r.io/models/m@{d}\"\nkek = \"kbs:///default/model-kek/1\"\n[model.digests]\n\"model.safetensors\" = \"{d}\"\n\
             [[model]]\nname = \"local\"\nsource = \"/run/ward/models/m\"\nmax_batch = 8\nqueue = 1\ndevice = \"cpu\"\n[model.digests]\n\"a\" = \"{d}\"\n"
        ),
        None,
    )
    .unwrap();
    assert_eq!(c.models.len(), 2);
    assert!(matches!(c.models[0].source, ModelSource::Registry(_)));
    assert!(matches!(c.models[1].source, ModelSource::Layout(_)));
    assert_eq!((c.models[0].max_batch, c.models[0].queue), (None, None));
    assert_eq!(c.models[0].device, ModelDevice::Cpu);
    assert_eq!(c.models[1].device, ModelDevice::Cpu);
    assert_eq!(
        (c.models[1].max_batch, c.models[1].queue),
        (Some(8), Some(1))
    );
    for (text, want) in [
        (
            "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\n[model.digests]\n".to_string(),
            "digests",
        ),
        (
            "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\n[model.digests]\n\"a\" = \"md5:x\"\n"
                .to_string(),
            "digest of a",
        ),
        (
            format!(
                "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\nkek = \"kbs:///x\"\n[model.digests]\n\"a\" = \"{d}\"\n"
            ),
            "model",
        ),
        (
            format!(
                "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\n[model.digests]\n\"a\" = \"{d}\"\n[[model]]\nname = \"m\"\nsource = \"r.io/m:v2\"\n[model.digests]\n\"a\" = \"{d}\"\n"
            ),
            "unique",
        ),
        (
            format!(
                "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\nmax_batch = 0\n[model.digests]\n\"a\" = \"{d}\"\n"
            ),
            "max_batch 0 is out of range",
        ),
        (
            format!(
                "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\nqueue = 0\n[model.digests]\n\"a\" = \"{d}\"\n"
            ),
            "queue 0 is out of range",
        ),
        (
            format!(
                "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\ndevice = \"tpu\"\n[model.digests]\n\"a\" = \"{d}\"\n"
            ),
            "expected cpu, cuda or cuda:N",
        ),
    ] {
        let e = from_text(&text, None).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn model_engines() {
    use crate::config::{EnginePreset, EngineSettings};
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let sealed = |extra: &str| {
        format!(
            "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\n{extra}\n[model.digests]\n\"m.gguf\" = \"{d}\"\n"
        )
    };
    let c = from_text(&sealed(""), None).unwrap();
    assert_eq!(c.models[0].engine, EngineSettings::Embedded);
    let c = from_text(&sealed("engine = \"llama-server\""), None).unwrap();
    let EngineSettings::Started(s) = &c.models[0].engine else {
        panic!("{:?}", c.models[0].engine)
    };
    assert_eq!(s.preset, EnginePreset::LlamaServer);
    assert_eq!(s.command[0], "llama-server");
    assert!(s.command.contains(&"{model}".to_string()) && s.restart);
    let c = from_text(
        &sealed("engine = \"vllm\"\ncommand = [\"/opt/vllm/bin/vllm\", \"serve\", \"{model_dir}\"]\nrestart = false\nready_timeout_secs = 1200"),
        None,
    )
    .unwrap();
    let EngineSettings::Started(s) = &c.models[0].engine else {
        panic!()
    };
    assert_eq!(
        (s.command.len(), s.restart, s.ready_timeout.as_secs()),
        (3, false, 1200)
    );
    let c = from_text(
        "[[model]]\nname = \"big\"\nengine = \"openai\"\nupstream = \"http://127.0.0.1:8000/\"\nupstream_model = \"meta/llama\"\n",
        None,
    )
    .unwrap();
    let EngineSettings::Connected(e) = &c.models[0].engine else {
        panic!()
    };
    assert_eq!(e.upstream, "http://127.0.0.1:8000");
    assert_eq!(c.models[0].source, ModelSource::Engine);
    let openai =
        |up: &str| format!("[[model]]\nname = \"big\"\nengine = \"openai\"\nupstream = \"{up}\"\n");
    for (text, want) in [
        (sealed("engine = \"tgi\""), "engine `tgi` is not"),
        (
            sealed("upstream = \"http://127.0.0.1:1\""),
            "is for external engines",
        ),
        (
            sealed("engine = \"llama-server\"\nupstream = \"http://127.0.0.1:1\""),
            "wardd picks the port",
        ),
        (
            sealed("engine = \"llama-server\"\ncommand = []"),
            "`command` is empty",
        ),
        (
            sealed("engine = \"openai\"\nupstream = \"http://127.0.0.1:1\""),
            "never sees",
        ),
        (openai("http://10.0.2.2:8000"), "not a loopback address"),
        (openai("https://127.0.0.1:8000"), "must be http://"),
        (openai("http://127.0.0.1"), "needs a port"),
        (openai("http://127.0.0.1:8000/v1"), "no path"),
        (openai("http://user@127.0.0.1:8000"), "no path"),
        (
            "[[model]]\nname = \"big\"\nengine = \"openai\"\n".to_string(),
            "needs `upstream`",
        ),
        (
            sealed("engine = \"llama-server\"\nready_timeout_secs = 0"),
            "out of range",
        ),
    ] {
        let e = from_text(&text, None).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    // [::1] and localhost are loopback too.
    assert!(from_text(&openai("http://[::1]:8000"), None).is_ok());
    assert!(from_text(&openai("http://localhost:8000"), None).is_ok());
}

/// `cuda` parses in every build; one without the `cuda` feature refuses it at load, by name.
#[test]
fn model_device() {
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let text = |device: &str| {
        format!(
            "[[model]]\nname = \"m\"\nsource = \"r.io/m:v1\"\ndevice = \"{device}\"\n[model.digests]\n\"a\" = \"{d}\"\n"
        )
    };
    let cuda_built = cfg!(feature = "cuda");
    for (device, want) in [
        ("cuda", ModelDevice::Cuda(0)),
        ("cuda:1", ModelDevice::Cuda(1)),
    ] {
        match from_text(&text(device), None) {
            Ok(c) if cuda_built => assert_eq!(c.models[0].device, want),
            Ok(_) => panic!("{device} accepted without the cuda feature"),
            Err(e) if cuda_built => panic!("{device}: {e}"),
            Err(e) => assert!(e.to_string().contains("`cuda` feature"), "{e}"),
        }
    }
    let e = from_text(&text("cuda:x"), None).unwrap_err().to_string();
    assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
}
