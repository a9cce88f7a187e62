//! Prefill and decode throughput of the runtime on the CPU, for a GGUF model (SmolLM2-135M Q4_1
//! by default, fetched by `scripts/fetch-model.sh`), with a baseline in the same run where one is
//! installed: PyTorch `transformers` on the same GGUF (`inference/bench/torch_baseline.py`).
//!
//! Usage: bench-infer [GGUF] [--prompt-tokens N] [--gen-tokens N] [--runs N] [--no-baseline]
//! Build with `cargo build --release -p ward-inference --bin bench-infer`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ward_inference::{LoadOptions, Model};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    gguf: PathBuf,
    prompt_tokens: usize,
    gen_tokens: usize,
    runs: usize,
    baseline: bool,
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
        gguf: default_gguf(),
        prompt_tokens: 128,
        gen_tokens: 128,
        runs: 3,
        baseline: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, BoxError> {
            Ok(it.next().ok_or(format!("{name} needs a value"))?.parse()?)
        };
        match a.as_str() {
            "--prompt-tokens" => args.prompt_tokens = num("--prompt-tokens")?,
            "--gen-tokens" => args.gen_tokens = num("--gen-tokens")?,
            "--runs" => args.runs = num("--runs")?.max(1),
            "--no-baseline" => args.baseline = false,
            other if !other.starts_with("--") => args.gguf = PathBuf::from(other),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// A prompt of exactly `n` tokens: ordinary English, repeated and cut.
fn prompt_ids(model: &Model, n: usize) -> Result<Vec<u32>, BoxError> {
    let text = "The quick brown fox jumps over the lazy dog while the sun sets behind the hills. ";
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(model.encode(text, true)?);
    }
    ids.truncate(n);
    Ok(ids)
}

struct Figures {
    prefill_tps: f64,
    decode_tps: f64,
}

/// One run: prefill the prompt in one pass, then decode greedily token by token.
fn run_once(model: &Model, prompt: &[u32], gen_tokens: usize) -> Result<Figures, BoxError> {
    let mut session = model.new_session()?;
    let t = Instant::now();
    let mut logits = session.forward(prompt, 0)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..gen_tokens {
        let next = argmax(&logits);
        logits = session.forward(&[next], prompt.len() + i)?;
    }
    let decode = t.elapsed().as_secs_f64();
    Ok(Figures {
        prefill_tps: prompt.len() as f64 / prefill,
        decode_tps: gen_tokens as f64 / decode,
    })
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    u32::try_from(best.0).unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    if !args.gguf.exists() {
        eprintln!(
            "bench-infer: {} not found; run scripts/fetch-model.sh first",
            args.gguf.display()
        );
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bytes = std::fs::read(&args.gguf)?;
    let t = Instant::now();
    let model = Model::from_gguf(&bytes, &LoadOptions::default())?;
    let load_s = t.elapsed().as_secs_f64();
    drop(bytes);
    let prompt = prompt_ids(&model, args.prompt_tokens)?;
    println!(
        "model {} ({}), load {:.2} s, {} threads, prompt {} tokens, decode {} tokens, {} runs (median)",
        model.info().name,
        args.gguf.display(),
        load_s,
        threads,
        prompt.len(),
        args.gen_tokens,
        args.runs
    );
    run_once(&model, &prompt[..prompt.len().min(8)], 2)?; // warm-up
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.runs {
        let f = run_once(&model, &prompt, args.gen_tokens)?;
        prefill.push(f.prefill_tps);
        decode.push(f.decode_tps);
    }
    let (ours_prefill, ours_decode) = (median(prefill), median(decode));
    println!(
        "ward (candle, Q4_1):    prefill {ours_prefill:8.1} tok/s   decode {ours_decode:7.1} tok/s"
    );

    if !args.baseline {
        return Ok(());
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/torch_baseline.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&args.gguf)
        .args(["--prompt-tokens", &prompt.len().to_string()])
        .args(["--gen-tokens", &args.gen_tokens.to_string()])
        .args(["--runs", &args.runs.to_string()])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!("baseline skipped: cannot run python3: {e}");
            return Ok(());
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let figures: Option<(f64, f64)> = stdout.lines().find_map(|l| {
        let rest = l.strip_prefix("RESULT ")?;
        let mut it = rest.split_whitespace().map(str::parse::<f64>);
        Some((it.next()?.ok()?, it.next()?.ok()?))
    });
    match figures {
        Some((p, d)) => {
            println!("torch (transformers, f32): prefill {p:8.1} tok/s   decode {d:7.1} tok/s");
            println!(
                "ratio ward/torch:       prefill {:8.2}x        decode {:7.2}x",
                ours_prefill / p,
                ours_decode / d
            );
        }
        None => {
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why.lines().last().unwrap_or("no output");
            println!("baseline skipped: {}", stdout.lines().last().unwrap_or(why));
        }
    }
    Ok(())
}
