//! Arbitrary bytes as a safetensors checkpoint into `ward_inference::Model::from_safetensors`
//! (on the CPU): the input is split at `#-#\n` into `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` (absent when empty) and the weight shards, which carry the
//! safetensors header (an 8-byte length and JSON) the loader parses first.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use ward_inference::{LoadOptions, Model, SafetensorsFiles};

const SEP: &[u8] = b"#-#\n";

fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(i) = data.windows(SEP.len()).position(|w| w == SEP) {
        out.push(&data[..i]);
        data = &data[i + SEP.len()..];
    }
    out.push(data);
    out
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let [config, tokenizer, tokenizer_config, weights @ ..] = parts.as_slice() else {
        return;
    };
    let files = SafetensorsFiles {
        config_json: config.to_vec(),
        tokenizer_json: tokenizer.to_vec(),
        tokenizer_config_json: (!tokenizer_config.is_empty()).then(|| tokenizer_config.to_vec()),
        weights: weights.iter().map(|w| Cow::Borrowed(*w)).collect(),
    };
    let _ = Model::from_safetensors(files, &LoadOptions::default());
});
