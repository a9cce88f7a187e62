//! Prefill and decode throughput of the runtime on the CPU, next to llama.cpp (GGUF files) or
//! PyTorch `transformers` (safetensors) on the same model in the same run, and the cost of
//! end-to-end encryption per request and per token.
//!
//! Usage:
//!   bench-infer [MODEL...] [--prompt-tokens N] [--gen-tokens N] [--runs N] [--device D]
//!               [--baseline torch|llama] [--python PATH] [--no-baseline] [--baseline-model PATH]
//!   bench-infer --e2e [GGUF] [--gen-tokens N] [--runs N]
//!   bench-infer --batch [MODEL] [--prompt-tokens N] [--gen-tokens N] [--runs N] [--device D]
//!               [--no-baseline]
//!
//! A MODEL is a GGUF file or a safetensors directory (`config.json`, `tokenizer.json`,
//! `*.safetensors`; `gen-bench-model` writes llama checkpoints with real shapes and random
//! weights). Without one: SmolLM2-135M Q4_1, fetched by `scripts/fetch-model.sh`. Each of the
//! `--runs` rounds runs ward once, then the baseline once on the same files with the same
//! prompt ids, in a child process: both see the same machine load, and the ratio is the median
//! of the rounds' ratios. The baseline of a GGUF file is llama.cpp,
//! `inference/bench/llama_baseline.py` under `$WARD_LLAMA_PYTHON`, else
//! `target/llama-venv/bin/python` (`scripts/llama-venv.sh`); of a directory, PyTorch,
//! `inference/bench/torch_baseline.py` under `--python` or `$WARD_BENCH_PYTHON` (default
//! `python3`); `--baseline` picks one. A baseline prints `SKIP` when its engine is missing.
//! A GGUF is read into memory and loaded the way wardd loads a decrypted one
//! (`Model::from_gguf_buffer`: the matrices stay in that buffer); `--copy-weights` copies them
//! out of a buffer dropped after the load (`Model::from_gguf`), the baseline of that.
//! Peak RSS: ward's is this process's high-water mark so far (every model it loaded), the
//! baseline's its own process's, Python included. Build with
//! `cargo build --release -p ward-inference-bench --bin bench-infer` (and
//! `RUSTFLAGS="-C target-cpu=x86-64-v3"`: see inference/README.md).
//! `RAYON_NUM_THREADS=N` sets the threads of both (default: every core).
//!
//! `--device cuda[:N]` (a build with the `cuda` feature) runs ward on that GPU and the torch
//! baseline there too, in bf16 (what ward runs safetensors models in on a GPU). Each decode step
//! hands the token to the host in both, as a server must to stream it. `--baseline-model` gives
//! the baseline other files than ward's: the safetensors a quantised GGUF was made from, say
//! (`gen-bench-model --gguf`), since transformers can only dequantise a GGUF to full width.
//! The scripts are `$WARD_BENCH_TORCH_SCRIPT` / `$WARD_BENCH_LLAMA_SCRIPT`, else found under
//! the working directory or the source tree.

mod baseline;
mod batch;
mod e2e;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ward_inference::{DeviceKind, LoadOptions, Model, SafetensorsFiles};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `--copy-weights`: a GGUF loaded by `Model::from_gguf` from a buffer this program keeps and
/// drops after the load (the matrices copied out of it), as every load was before
/// `Model::from_gguf_buffer`: the memory baseline of the shared buffer.
static COPY_WEIGHTS: AtomicBool = AtomicBool::new(false);

/// `--no-reserve`: each sequence's KV cache grows by 256 tokens as it fills, as before
/// `Session::reserve` (the engine reserves prompt plus completion up front).
static NO_RESERVE: AtomicBool = AtomicBool::new(false);

struct Args {
    models: Vec<PathBuf>,
    prompt_tokens: usize,
    gen_tokens: usize,
    runs: usize,
    baseline: bool,
    /// The baseline engine; by default llama.cpp for a GGUF file, torch for a directory.
    baseline_kind: Option<baseline::Kind>,
    python: String,
    e2e: bool,
    batch: bool,
    device: DeviceKind,
    baseline_model: Option<PathBuf>,
}

fn default_gguf() -> PathBuf {
    if let Some(p) = std::env::var_os("WARD_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    cache.join("ward/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        models: Vec::new(),
        prompt_tokens: 128,
        gen_tokens: 128,
        runs: 3,
        baseline: true,
        baseline_kind: None,
        python: std::env::var("WARD_BENCH_PYTHON").unwrap_or_else(|_| "python3".to_owned()),
        e2e: false,
        batch: false,
        device: DeviceKind::Cpu,
        baseline_model: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String, BoxError> {
            Ok(it.next().ok_or(format!("{name} needs a value"))?)
        };
        match a.as_str() {
            "--prompt-tokens" => args.prompt_tokens = value(&a)?.parse()?,
            "--gen-tokens" => args.gen_tokens = value(&a)?.parse()?,
            "--runs" => args.runs = value(&a)?.parse::<usize>()?.max(1),
            "--python" => args.python = value(&a)?,
            "--no-baseline" => args.baseline = false,
            "--baseline" => {
                args.baseline_kind = Some(match value(&a)?.as_str() {
                    "torch" => baseline::Kind::Torch,
                    "llama" | "llama.cpp" => baseline::Kind::Llama,
                    other => return Err(format!("--baseline torch|llama, not {other}").into()),
                })
            }
            "--e2e" => args.e2e = true,
            "--batch" => args.batch = true,
            "--device" => args.device = value(&a)?.parse()?,
            "--baseline-model" => args.baseline_model = Some(PathBuf::from(value(&a)?)),
            "--copy-weights" => COPY_WEIGHTS.store(true, Ordering::Relaxed),
            "--no-reserve" => NO_RESERVE.store(true, Ordering::Relaxed),
            other if !other.starts_with("--") => args.models.push(PathBuf::from(other)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if args.models.is_empty() {
        args.models.push(default_gguf());
    }
    Ok(args)
}

/// Reads a safetensors checkpoint directory into memory (the runtime takes buffers only).
fn read_safetensors_dir(dir: &Path) -> Result<SafetensorsFiles<'static>, BoxError> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(format!("no *.safetensors in {}", dir.display()).into());
    }
    let tokenizer_config = dir.join("tokenizer_config.json");
    Ok(SafetensorsFiles {
        config_json: std::fs::read(dir.join("config.json"))?,
        tokenizer_json: std::fs::read(dir.join("tokenizer.json"))?,
        tokenizer_config_json: std::fs::read(tokenizer_config).ok(),
        weights: shards
            .iter()
            .map(|s| std::fs::read(s).map(Into::into))
            .collect::<Result<_, _>>()?,
    })
}

/// Loads a GGUF file or a safetensors directory; returns the model, a label and the load time.
pub(crate) fn load(path: &Path, device: DeviceKind) -> Result<(Model, String, f64), BoxError> {
    let t = Instant::now();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let options = LoadOptions {
        name: Some(name.clone()),
        device,
    };
    let model = if path.is_dir() {
        Model::from_safetensors(read_safetensors_dir(path)?, &options)?
    } else if COPY_WEIGHTS.load(Ordering::Relaxed) {
        Model::from_gguf(&std::fs::read(path)?, &options)?
    } else {
        // As wardd loads it: the model keeps the file's buffer and runs its matrices from it.
        Model::from_gguf_file(path, &options)?
    };
    let label = format!("{name} ({})", model.info().format);
    Ok((model, label, t.elapsed().as_secs_f64()))
}

/// A prompt of exactly `n` tokens: ordinary English, repeated and cut.
pub(crate) fn prompt_ids(model: &Model, n: usize) -> Result<Vec<u32>, BoxError> {
    let text = "The quick brown fox jumps over the lazy dog while the sun sets behind the hills. ";
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(model.encode(text, true)?);
    }
    ids.truncate(n);
    Ok(ids)
}

pub(crate) struct Figures {
    pub prefill_tps: f64,
    pub decode_tps: f64,
    /// The greedy token after the prompt (to check that both frameworks run the same model).
    pub first_token: u32,
}

/// One run: prefill the prompt in one pass, then decode greedily token by token.
pub(crate) fn run_once(
    model: &Model,
    prompt: &[u32],
    gen_tokens: usize,
) -> Result<Figures, BoxError> {
    let mut session = model.new_session()?;
    // As the engine does: the KV cache sized by the request once (`--no-reserve`: grown).
    if !NO_RESERVE.load(Ordering::Relaxed) {
        session.reserve(prompt.len() + gen_tokens);
    }
    let t = Instant::now();
    let mut logits = session.forward(prompt, 0)?;
    let prefill = t.elapsed().as_secs_f64();
    let first_token = argmax(&logits);
    let t = Instant::now();
    for i in 0..gen_tokens {
        let next = argmax(&logits);
        logits = session.forward(&[next], prompt.len() + i)?;
    }
    let decode = t.elapsed().as_secs_f64();
    Ok(Figures {
        prefill_tps: prompt.len() as f64 / prefill,
        decode_tps: gen_tokens as f64 / decode,
        first_token,
    })
}

pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    u32::try_from(best.0).unwrap_or(0)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Warm-up, then the median of `runs` runs (the first token is the last run's).
pub(crate) fn measure(
    model: &Model,
    prompt: &[u32],
    gen_tokens: usize,
    runs: usize,
) -> Result<Figures, BoxError> {
    run_once(model, &prompt[..prompt.len().min(8)], 2)?;
    let (mut prefill, mut decode, mut first) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let f = run_once(model, prompt, gen_tokens)?;
        prefill.push(f.prefill_tps);
        decode.push(f.decode_tps);
        first = f.first_token;
    }
    Ok(Figures {
        prefill_tps: median(prefill),
        decode_tps: median(decode),
        first_token: first,
    })
}

/// This process's peak resident set (`VmHWM`), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The 1-minute load average, to print next to the figures (the machine may be shared).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Rounds of one ward run then one torch run (a child process, loading the same files), so that
/// both see the same machine load; medians of each and the median of the per-round ratios.
fn bench_model(path: &Path, args: &Args) -> Result<(), BoxError> {
    if !path.exists() {
        println!(
            "{}: not found (scripts/fetch-model.sh, or gen-bench-model for a safetensors dir)",
            path.display()
        );
        return Ok(());
    }
    let (model, label, load_s) = load(path, args.device)?;
    let baseline_path = args.baseline_model.as_deref().unwrap_or(path);
    let prompt = prompt_ids(&model, args.prompt_tokens)?;
    println!(
        "\n{label}: load {load_s:.2} s, prompt {} tokens, decode {} tokens, {} rounds (medians), load average {}",
        prompt.len(),
        args.gen_tokens,
        args.runs,
        load_average()
    );
    run_once(&model, &prompt[..prompt.len().min(8)], 2)?; // warm-up
    let kind = args.baseline_kind.unwrap_or(if path.is_dir() {
        baseline::Kind::Torch
    } else {
        baseline::Kind::Llama
    });
    let python = match kind {
        baseline::Kind::Torch => args.python.clone(),
        baseline::Kind::Llama => baseline::llama_python(),
    };
    let (mut ours, mut theirs, mut their_rss) = (Vec::new(), Vec::new(), None);
    let mut skipped = (!args.baseline).then(|| "--no-baseline".to_owned());
    for _ in 0..args.runs {
        ours.push(run_once(&model, &prompt, args.gen_tokens)?);
        if skipped.is_none() {
            match baseline::run(&baseline::Call {
                kind,
                python: &python,
                model: baseline_path,
                device: &args.device.to_string(),
                prompt: &prompt,
                gen_tokens: args.gen_tokens,
                runs: 1,
            }) {
                baseline::Outcome::Figures(f, rss) => {
                    theirs.push(f);
                    their_rss = match (their_rss, rss) {
                        (Some(a), Some(b)) => Some(f64::max(a, b)),
                        (a, b) => a.or(b),
                    };
                }
                baseline::Outcome::Skip(why) => skipped = Some(why),
            }
        }
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
    let label = kind.label();
    println!(
        "  ward:                 prefill {:8.1} tok/s   decode {:7.2} tok/s   peak RSS {}",
        med(&ours, |f| f.prefill_tps),
        med(&ours, |f| f.decode_tps),
        peak_rss_mb().map_or("?".to_owned(), |r| format!(
            "{r:.0} MB (this process so far)"
        ))
    );
    match skipped {
        Some(why) => println!("  {label}: SKIP ({why})"),
        None => {
            println!(
                "  {label:<21} prefill {:8.1} tok/s   decode {:7.2} tok/s{}{}",
                med(&theirs, |f| f.prefill_tps),
                med(&theirs, |f| f.decode_tps),
                their_rss.map_or(String::new(), |r| format!(
                    "   peak RSS {r:.0} MB (with Python)"
                )),
                match (path.is_dir(), args.baseline_model.is_some(), kind) {
                    (_, true, _) => format!("   (on {})", baseline_path.display()),
                    (false, false, baseline::Kind::Torch) =>
                        "   (GGUF dequantised to full width: not the same arithmetic)".to_owned(),
                    _ => String::new(),
                }
            );
            let ratio = |f: fn(&Figures) -> f64| {
                median(ours.iter().zip(&theirs).map(|(a, b)| f(a) / f(b)).collect())
            };
            let first = |v: &[Figures]| v.first().map(|f| f.first_token);
            let short = kind.short();
            println!(
                "  ward / {short:<14} prefill {:8.2}x        decode {:7.2}x   (first greedy token: {})",
                ratio(|f| f.prefill_tps),
                ratio(|f| f.decode_tps),
                match (first(&ours), first(&theirs)) {
                    (a, b) if a == b => "same".to_owned(),
                    (a, b) => format!("ward {a:?}, {short} {b:?}"),
                }
            );
        }
    }
    println!("  load average after: {}", load_average());
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    // candle and ward's matmul pool size themselves from RAYON_NUM_THREADS; the baselines
    // follow it too.
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "bench-infer: {threads} CPU threads, built for {}, device {}",
        if cfg!(target_feature = "avx2") {
            "AVX2 (x86-64-v3 or better)"
        } else {
            "the portable target (no AVX2)"
        },
        args.device
    );
    if args.batch {
        let model = args.models.first().cloned().unwrap_or_else(default_gguf);
        return batch::run(
            &model,
            args.device,
            args.prompt_tokens,
            args.gen_tokens,
            args.runs,
            args.baseline,
        );
    }
    if args.e2e {
        let gguf = args.models.first().cloned().unwrap_or_else(default_gguf);
        return e2e::run(&gguf, args.gen_tokens, args.runs);
    }
    for path in &args.models {
        bench_model(path, &args)?;
    }
    Ok(())
}
