//! Arbitrary bytes as a GGUF model file into `ward_inference::Model::from_gguf` (on the CPU):
//! ward's alignment pre-check, candle's header and tensor-info parser, the metadata checks,
//! the tokenizer and chat template from metadata, and the tensors the header describes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_inference::{LoadOptions, Model};

fuzz_target!(|data: &[u8]| {
    let _ = Model::from_gguf(data, &LoadOptions::default());
});
