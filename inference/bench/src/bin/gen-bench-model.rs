//! Writes a llama-architecture checkpoint with random weights and the shapes of a real model, for
//! `bench-infer` to run in ward and in PyTorch `transformers` from the same files: `config.json`,
//! `model.safetensors` (f32 or bf16), `tokenizer.json` (the 256 byte-level tokens only: the
//! benchmark feeds token ids) and `tokenizer_config.json`. With `--gguf TYPE`, also
//! `model.TYPE.gguf`: the same weights (same seed), matrices quantised to TYPE (q8_0, q4_0, q4_1,
//! q4_k, q6_k; f16 for llama.cpp's own quantiser, `llama_quantize.py`), norms in f32, the byte-level vocabulary padded to the preset's in its metadata: a
//! quantised model for ward whose unquantised original the PyTorch baseline can run.
//!
//! Usage: gen-bench-model PRESET OUT_DIR [--dtype f32|bf16] [--seed N] [--gguf TYPE]
//! Presets: smollm2-135m (SmolLM2-135M's shapes), tinyllama-1.1b (TinyLlama-1.1B's shapes),
//! llama-k-test (small, widths of whole K-quant super-blocks: the K-quant logits test).
//! The files are large (0.5 GB and 4.4 GB in f32): keep them out of the repository
//! (`just bench-infer` uses `~/.cache/ward/bench/`). An existing, complete directory is kept.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use ward_inference::gguf_names::gguf_tensor_name;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The shapes of a llama model (Hugging Face `config.json` names).
struct Preset {
    name: &'static str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    context: usize,
    rope_theta: f64,
    tied: bool,
}

const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m",
        hidden: 576,
        intermediate: 1536,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        vocab: 49152,
        context: 8192,
        rope_theta: 100_000.0,
        tied: true,
    },
    Preset {
        name: "tinyllama-1.1b",
        hidden: 2048,
        intermediate: 5632,
        layers: 22,
        heads: 32,
        kv_heads: 4,
        vocab: 32000,
        context: 2048,
        rope_theta: 10_000.0,
        tied: false,
    },
    // Small and every width a whole number of 256-weight K-quant super-blocks, with 8 layers so
    // that llama.cpp's Q4_K_M puts Q6_K in some (its `use_more_bits`: layers 0, 3, 6, 7): the
    // K-quant logits test against llama.cpp (tests/llama_cpp_kquants.rs).
    Preset {
        name: "llama-k-test",
        hidden: 256,
        intermediate: 768,
        layers: 8,
        heads: 4,
        kv_heads: 2,
        vocab: 1024,
        context: 512,
        rope_theta: 10_000.0,
        tied: false,
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Bf16 => "BF16",
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

/// How a tensor is filled: ones (norm weights) or uniform in `±scale`.
#[derive(Clone, Copy)]
enum Fill {
    Ones,
    Uniform(f32),
}

struct TensorSpec {
    name: String,
    shape: Vec<usize>,
    fill: Fill,
}

fn tensors(p: &Preset) -> Vec<TensorSpec> {
    let (h, ff) = (p.hidden, p.intermediate);
    let kv = h / p.heads * p.kv_heads;
    // Scaled like a trained model's weights (about 1/sqrt(fan_in)) so activations stay finite.
    let w = |fan_in: usize| Fill::Uniform(1.0 / (fan_in as f32).sqrt());
    let spec = |name: String, shape: Vec<usize>, fill: Fill| TensorSpec { name, shape, fill };
    let mut out = vec![
        spec(
            "model.embed_tokens.weight".into(),
            vec![p.vocab, h],
            Fill::Uniform(0.05),
        ),
        spec("model.norm.weight".into(), vec![h], Fill::Ones),
    ];
    if !p.tied {
        out.push(spec("lm_head.weight".into(), vec![p.vocab, h], w(h)));
    }
    for i in 0..p.layers {
        let l = |n: &str| format!("model.layers.{i}.{n}");
        out.extend([
            spec(l("self_attn.q_proj.weight"), vec![h, h], w(h)),
            spec(l("self_attn.k_proj.weight"), vec![kv, h], w(h)),
            spec(l("self_attn.v_proj.weight"), vec![kv, h], w(h)),
            spec(l("self_attn.o_proj.weight"), vec![h, h], w(h)),
            spec(l("mlp.gate_proj.weight"), vec![ff, h], w(h)),
            spec(l("mlp.up_proj.weight"), vec![ff, h], w(h)),
            spec(l("mlp.down_proj.weight"), vec![h, ff], w(ff)),
            spec(l("input_layernorm.weight"), vec![h], Fill::Ones),
            spec(l("post_attention_layernorm.weight"), vec![h], Fill::Ones),
        ]);
    }
    out
}

impl Fill {
    fn draw(self, rng: &mut StdRng) -> f32 {
        match self {
            Fill::Ones => 1.0,
            Fill::Uniform(a) => rng.gen_range(-a..a),
        }
    }
}

/// f32 to bf16, rounding to nearest even.
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// Streams a safetensors file: header, then each tensor generated in pieces.
fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    dtype: Dtype,
    seed: u64,
) -> Result<u64, BoxError> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "generator": "ward gen-bench-model"}),
    );
    let mut offset = 0usize;
    for s in specs {
        let bytes = s.shape.iter().product::<usize>() * dtype.size();
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": s.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header)?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = BufWriter::with_capacity(1 << 22, File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = Vec::with_capacity(1 << 20);
    for s in specs {
        let mut left = s.shape.iter().product::<usize>();
        while left > 0 {
            let n = left.min(1 << 18);
            buf.clear();
            for _ in 0..n {
                let x = s.fill.draw(&mut rng);
                match dtype {
                    Dtype::F32 => buf.extend_from_slice(&x.to_le_bytes()),
                    Dtype::Bf16 => buf.extend_from_slice(&bf16_bits(x).to_le_bytes()),
                }
            }
            out.write_all(&buf)?;
            left -= n;
        }
    }
    out.flush()?;
    Ok(offset as u64)
}

fn config_json(p: &Preset, dtype: Dtype) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden,
        "intermediate_size": p.intermediate,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "vocab_size": p.vocab,
        "max_position_embeddings": p.context,
        "rms_norm_eps": 1e-5,
        "rope_theta": p.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": p.tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": if dtype == Dtype::F32 { "float32" } else { "bfloat16" },
        "_name_or_path": format!("ward-bench/{}-random", p.name),
    })
}

/// The 256 byte-level characters, in id order.
fn byte_tokens() -> Vec<String> {
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort_unstable();
    chars.into_iter().map(|c| c.to_string()).collect()
}

/// A byte-level BPE over the 256 byte characters, no merges: enough to encode any prompt.
fn tokenizer_json() -> Result<String, BoxError> {
    let vocab: tokenizers::models::bpe::Vocab = byte_tokens()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, Vec::new()).build()?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.to_string(false)
}

fn gguf_type(name: &str) -> Option<GgmlDType> {
    Some(match name {
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q4_k" => GgmlDType::Q4K,
        "q6_k" => GgmlDType::Q6K,
        // Unquantised matrices, for llama.cpp's own quantiser (`llama_quantize.py`: Q4_K_M).
        "f16" => GgmlDType::F16,
        _ => return None,
    })
}

/// llama metadata for the preset, and the byte-level tokens padded to its vocabulary (the first
/// padding slot holds the one merge's token).
fn gguf_metadata(p: &Preset) -> Vec<(&'static str, Value)> {
    let mut tokens = byte_tokens();
    let bytes = tokens.len();
    tokens.extend((bytes..p.vocab).map(|i| format!("<pad_{i}>")));
    if let Some(first_pad) = tokens.get_mut(bytes) {
        *first_pad = "ĠĠ".to_owned();
    }
    let u = |n: usize| Value::U32(u32::try_from(n).unwrap_or(u32::MAX));
    vec![
        ("general.architecture", Value::String("llama".into())),
        (
            "general.name",
            Value::String(format!("ward-bench/{}-random", p.name)),
        ),
        ("llama.context_length", u(p.context)),
        ("llama.embedding_length", u(p.hidden)),
        ("llama.feed_forward_length", u(p.intermediate)),
        ("llama.block_count", u(p.layers)),
        ("llama.attention.head_count", u(p.heads)),
        ("llama.attention.head_count_kv", u(p.kv_heads)),
        ("llama.rope.dimension_count", u(p.hidden / p.heads)),
        ("llama.rope.freq_base", Value::F32(p.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        // llama.cpp refuses a gpt2 tokenizer without merges ("cannot find tokenizer merges in
        // model file"), and an empty array (candle writes it as u32s: "invalid gguf type"):
        // one merge, of two spaces, whose token takes the first padding slot.
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("Ġ Ġ".into())]),
        ),
        ("tokenizer.ggml.bos_token_id", u(1)),
        ("tokenizer.ggml.eos_token_id", u(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ]
}

/// The safetensors file's weights (same seed, same draws in the same order), matrices quantised
/// to `quant`, written as a GGUF file through a temporary name.
fn write_gguf(
    path: &Path,
    p: &Preset,
    specs: &[TensorSpec],
    quant: GgmlDType,
    seed: u64,
) -> Result<u64, BoxError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = Vec::with_capacity(specs.len());
    for s in specs {
        let n = s.shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n).map(|_| s.fill.draw(&mut rng)).collect();
        let t = Tensor::from_vec(values, s.shape.as_slice(), &Device::Cpu)?;
        let dtype = if s.shape.len() == 2 {
            quant
        } else {
            GgmlDType::F32
        };
        let name = gguf_tensor_name(&s.name).ok_or(format!("no GGUF name for {}", s.name))?;
        tensors.push((name, QTensor::quantize(&t, dtype)?));
    }
    let metadata = gguf_metadata(p);
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let partial = path.with_extension("gguf.partial");
    let mut out = BufWriter::with_capacity(1 << 22, File::create(&partial)?);
    gguf_file::write(&mut out, &md, &ts)?;
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, path)?;
    Ok(std::fs::metadata(path)?.len())
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gen-bench-model smollm2-135m|tinyllama-1.1b|llama-k-test OUT_DIR [--dtype f32|bf16] \
                 [--seed N] [--gguf q8_0|q4_0|q4_1|q4_k|q6_k|f16]";
    let preset_name = args.next().ok_or(usage)?;
    let out = PathBuf::from(args.next().ok_or(usage)?);
    let (mut dtype, mut seed, mut gguf) = (Dtype::F32, 1u64, None);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--dtype", Some(d)) if d == "f32" => dtype = Dtype::F32,
            ("--dtype", Some(d)) if d == "bf16" => dtype = Dtype::Bf16,
            ("--seed", Some(s)) => seed = s.parse()?,
            ("--gguf", Some(q)) => gguf = Some((gguf_type(&q).ok_or(usage)?, q)),
            _ => return Err(usage.into()),
        }
    }
    let preset = PRESETS
        .iter()
        .find(|p| p.name == preset_name)
        .ok_or(usage)?;
    let specs = tensors(preset);
    if let Some((quant, name)) = gguf {
        let path = out.join(format!("model.{name}.gguf"));
        if path.exists() {
            println!("{}: already generated", path.display());
        } else {
            std::fs::create_dir_all(&out)?;
            let t = std::time::Instant::now();
            let bytes = write_gguf(&path, preset, &specs, quant, seed)?;
            println!(
                "{}: {} as {name}, {} MB, {:.1} s",
                path.display(),
                preset.name,
                bytes / 1_000_000,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let done = out.join(".complete");
    if done.exists() {
        println!("{}: already generated", out.display());
        return Ok(());
    }
    std::fs::create_dir_all(&out)?;
    let params: usize = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    let t = std::time::Instant::now();
    let bytes = write_safetensors(&out.join("model.safetensors"), &specs, dtype, seed)?;
    std::fs::write(
        out.join("config.json"),
        config_json(preset, dtype).to_string(),
    )?;
    std::fs::write(out.join("tokenizer.json"), tokenizer_json()?)?;
    std::fs::write(
        out.join("tokenizer_config.json"),
        serde_json::json!({"bos_token": null, "eos_token": null}).to_string(),
    )?;
    std::fs::write(&done, b"")?;
    println!(
        "{}: {} ({:.1} M parameters, {} MB {}), {:.1} s",
        out.display(),
        preset.name,
        params as f64 / 1e6,
        bytes / 1_000_000,
        dtype.name(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
