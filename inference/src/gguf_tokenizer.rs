//! Builds a `tokenizers::Tokenizer` from the vocabulary a GGUF file carries in its metadata.
//!
//! Two GGUF tokenizer models are understood:
//! - `gpt2`: byte-level BPE (tokens + merges), as in SmolLM2, Llama 3 and Qwen2 GGUFs;
//! - `llama`: SentencePiece vocabularies with scores (Llama 2, Mistral), run as a unigram model
//!   with byte fallback. This matches SentencePiece BPE on ordinary text but is not bit-exact for
//!   every input (SentencePiece BPE merges by score, unigram maximises the total score).
//!
//! Control and user-defined tokens (`tokenizer.ggml.token_type` 3 and 4) become added tokens so
//! that chat markers such as `<|im_start|>` in a rendered template encode as one token.
//! Reads only the metadata map: nothing here touches the disk or the network.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, Tokenizer};

use crate::error::InferenceError;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A tokenizer rebuilt from GGUF metadata, with the special token ids the metadata names.
pub(crate) struct GgufVocab {
    pub tokenizer: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
    pub vocab_size: usize,
}

fn string_array<'a>(
    md: &'a HashMap<String, Value>,
    key: &str,
) -> Result<Vec<&'a String>, InferenceError> {
    let value = md
        .get(key)
        .ok_or_else(|| InferenceError::metadata(key, "missing"))?;
    let items = value
        .to_vec()
        .map_err(|_| InferenceError::metadata(key, "not an array"))?;
    items
        .iter()
        .map(|v| {
            v.to_string()
                .map_err(|_| InferenceError::metadata(key, "array element is not a string"))
        })
        .collect()
}

fn optional_array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Option<&'a Vec<Value>> {
    md.get(key).and_then(|v| v.to_vec().ok())
}

/// Reads an integer metadata value of any integer width.
pub(crate) fn metadata_u64(md: &HashMap<String, Value>, key: &str) -> Option<u64> {
    match md.get(key)? {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn token_id(md: &HashMap<String, Value>, key: &str, vocab_size: usize) -> Option<u32> {
    metadata_u64(md, key)
        .and_then(|id| u32::try_from(id).ok())
        .filter(|id| (*id as usize) < vocab_size)
}

fn int_of(v: &Value) -> Option<i32> {
    match v {
        Value::I32(t) => Some(*t),
        Value::U32(t) => i32::try_from(*t).ok(),
        Value::I8(t) => Some(i32::from(*t)),
        Value::U8(t) => Some(i32::from(*t)),
        _ => None,
    }
}

fn float_of(v: &Value) -> Option<f64> {
    match v {
        Value::F32(s) => Some(f64::from(*s)),
        Value::F64(s) => Some(*s),
        _ => None,
    }
}

/// Builds the tokenizer the GGUF metadata describes.
pub(crate) fn from_metadata(md: &HashMap<String, Value>) -> Result<GgufVocab, InferenceError> {
    const MODEL_KEY: &str = "tokenizer.ggml.model";
    let kind = md
        .get(MODEL_KEY)
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| InferenceError::metadata(MODEL_KEY, "missing"))?;
    let tokens = string_array(md, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(InferenceError::metadata(
            "tokenizer.ggml.tokens",
            "empty vocabulary",
        ));
    }
    let vocab_size = tokens.len();
    let token_types: Vec<i32> = optional_array(md, "tokenizer.ggml.token_type")
        .map(|types| types.iter().map(|t| int_of(t).unwrap_or(1)).collect())
        .unwrap_or_default();

    let mut tokenizer = match kind.as_str() {
        "gpt2" => gpt2_bpe(md, &tokens)?,
        "llama" => sentencepiece_unigram(md, &tokens)?,
        other => {
            return Err(InferenceError::metadata(
                MODEL_KEY,
                format!("tokenizer model `{other}` is not supported (gpt2, llama are)"),
            ));
        }
    };

    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types.iter())
        .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(tok, t)| AddedToken::from(tok.as_str(), *t == TOKEN_TYPE_CONTROL))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(InferenceError::tokenizer)?;

    let bos_id = token_id(md, "tokenizer.ggml.bos_token_id", vocab_size);
    let mut eos_ids: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| token_id(md, k, vocab_size))
        .collect();
    eos_ids.dedup();
    let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        // llama.cpp's default: SentencePiece vocabularies add BOS, BPE ones do not.
        _ => kind == "llama",
    };
    Ok(GgufVocab {
        tokenizer,
        bos_id,
        eos_ids,
        add_bos,
        vocab_size,
    })
}

/// The pre-tokenizer regex of Qwen2's `tokenizer.json` (llama.cpp's `qwen2` pre-tokenizer).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn gpt2_bpe(md: &HashMap<String, Value>, tokens: &[&String]) -> Result<Tokenizer, InferenceError> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| u32::try_from(i).ok().map(|id| ((*t).clone(), id)))
        .collect();
    let merges_key = "tokenizer.ggml.merges";
    let merges = match md.get(merges_key) {
        Some(_) => string_array(md, merges_key)?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| InferenceError::metadata(merges_key, format!("bad merge `{m}`")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(InferenceError::tokenizer)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    // llama.cpp pre-tokenizer names whose regex splits digits one by one.
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        Some("smollm" | "starcoder") => {
            PreTokenizerSequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        // Qwen2's own split (its tokenizer.json): then bytes to characters, no further regex.
        Some("qwen2") => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(InferenceError::tokenizer)?;
            let bytes = ByteLevel::new(false, true, false);
            PreTokenizerSequence::new(vec![split.into(), bytes.into()]).into()
        }
        _ => byte_level.into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

fn sentencepiece_unigram(
    md: &HashMap<String, Value>,
    tokens: &[&String],
) -> Result<Tokenizer, InferenceError> {
    let scores: Vec<f64> = optional_array(md, "tokenizer.ggml.scores")
        .map(|s| s.iter().map(|v| float_of(v).unwrap_or(0.0)).collect())
        .unwrap_or_default();
    let vocab: Vec<(String, f64)> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).clone(), scores.get(i).copied().unwrap_or(0.0)))
        .collect();
    let unk = metadata_u64(md, "tokenizer.ggml.unknown_token_id")
        .and_then(|u| usize::try_from(u).ok())
        .filter(|u| *u < tokens.len())
        .or(Some(0));
    let model = Unigram::from(vocab, unk, true).map_err(InferenceError::tokenizer)?;
    let mut tokenizer = Tokenizer::new(model);
    let replace = Replace::new(" ", "\u{2581}").map_err(InferenceError::tokenizer)?;
    let normalizer = tokenizers::normalizers::Sequence::new(vec![
        NormalizerWrapper::from(Prepend::new("\u{2581}".to_owned())),
        NormalizerWrapper::from(replace),
    ]);
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(InferenceError::tokenizer)?;
    let replace_back = Replace::new("\u{2581}", " ").map_err(InferenceError::tokenizer)?;
    let decoder = DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace_back),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ]);
    tokenizer.with_decoder(Some(decoder));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.to_owned())
    }

    /// A SentencePiece-style vocabulary: control tokens, byte-fallback tokens, pieces with scores.
    fn spm_metadata() -> HashMap<String, Value> {
        let mut tokens = vec![s("<unk>"), s("<s>"), s("</s>")];
        let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
        let mut scores = vec![Value::F32(0.0); 3];
        for b in 0..=255u8 {
            tokens.push(s(&format!("<0x{b:02X}>")));
            types.push(Value::I32(6));
            scores.push(Value::F32(0.0));
        }
        for (piece, score) in [
            ("\u{2581}hello", -1.0),
            ("\u{2581}world", -1.5),
            ("\u{2581}", -3.0),
            ("h", -5.0),
            ("e", -5.0),
            ("l", -5.0),
            ("o", -5.0),
        ] {
            tokens.push(s(piece));
            types.push(Value::I32(1));
            scores.push(Value::F32(score));
        }
        HashMap::from([
            ("tokenizer.ggml.model".to_owned(), s("llama")),
            ("tokenizer.ggml.tokens".to_owned(), Value::Array(tokens)),
            ("tokenizer.ggml.token_type".to_owned(), Value::Array(types)),
            ("tokenizer.ggml.scores".to_owned(), Value::Array(scores)),
            ("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(2)),
        ])
    }

    #[test]
    fn sentencepiece_vocab_encodes_pieces_and_falls_back_to_bytes() {
        let v = from_metadata(&spm_metadata()).unwrap();
        assert!(v.add_bos, "SentencePiece vocabularies add BOS by default");
        assert_eq!((v.bos_id, v.eos_ids.clone()), (Some(1), vec![2]));
        let t = &v.tokenizer;
        let ids = t.encode("hello world", false).unwrap().get_ids().to_vec();
        let pieces: Vec<String> = ids.iter().map(|i| t.id_to_token(*i).unwrap()).collect();
        assert_eq!(pieces, ["\u{2581}hello", "\u{2581}world"]);
        assert_eq!(t.decode(&ids, true).unwrap(), "hello world");
        // "é" is not a piece: it goes through its UTF-8 bytes and decodes back whole.
        let ids = t.encode("hello é", false).unwrap().get_ids().to_vec();
        let pieces: Vec<String> = ids.iter().map(|i| t.id_to_token(*i).unwrap()).collect();
        assert_eq!(pieces, ["\u{2581}hello", "\u{2581}", "<0xC3>", "<0xA9>"]);
        assert_eq!(t.decode(&ids, true).unwrap(), "hello é");
        // Control tokens in text are single special tokens.
        let ids = t.encode("<s>hello", false).unwrap().get_ids().to_vec();
        assert_eq!(ids.first(), Some(&1));
    }

    #[test]
    fn bad_tokenizer_metadata_is_a_typed_error() {
        let mut md = spm_metadata();
        md.insert("tokenizer.ggml.tokens".into(), Value::U32(3));
        assert!(matches!(
            from_metadata(&md),
            Err(InferenceError::GgufMetadata { .. })
        ));
        let mut md = spm_metadata();
        md.insert("tokenizer.ggml.model".into(), s("gpt2"));
        md.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![s("no-space")]),
        );
        assert!(matches!(
            from_metadata(&md),
            Err(InferenceError::GgufMetadata { .. })
        ));
    }
}
