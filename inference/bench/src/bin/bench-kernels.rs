//! Time per quantised matmul at SmolLM2-135M's shapes (every projection of a layer, and the
//! tied Q8_0 output head), for decode (1 activation row) and prefill (128 rows): ward's kernels
//! on its persistent pool, the same kernels split by rayon, on one thread, and candle's
//! `QMatMul` on the same weights; plus what a decode step's matmuls add up to and the weight
//! bandwidth that makes (a prefill step: without the output head, which it runs for its last
//! token only). The medians of 7 timings, each as many calls as fill 20 ms.
//!
//! `--shapes tinyllama-q4_k_m`: TinyLlama-1.1B's shapes in the formats llama.cpp's Q4_K_M gives
//! them (Q4_K, with attn_v and ffn_down in Q6_K in 10 of its 22 layers, and the output head).
//!
//! `--only TEXT`: the shapes whose name contains TEXT (the step total then covers those only).
//!
//! Usage: bench-kernels [--rows M]... [--shapes smollm2-q4_1|tinyllama-q4_k_m] [--only TEXT]
//! (`RAYON_NUM_THREADS` sets every pool's threads)

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;
use ward_kernels::{Format, Kernel, Pool, QMatrix, Runner};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// rayon's global pool as a [`Runner`]: one task per chunk (rayon splits and steals them).
struct Rayon(usize);

impl Runner for Rayon {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..chunks).into_par_iter().for_each(f);
    }
}

/// Median seconds per call of `f`.
fn time(mut f: impl FnMut() -> Result<(), BoxError>) -> Result<f64, BoxError> {
    f()?;
    let mut per_call = Vec::new();
    for _ in 0..7 {
        let (start, mut n) = (Instant::now(), 0u32);
        while start.elapsed() < Duration::from_millis(20) {
            f()?;
            n += 1;
        }
        per_call.push(start.elapsed().as_secs_f64() / f64::from(n));
    }
    per_call.sort_by(f64::total_cmp);
    Ok(per_call[per_call.len() / 2])
}

struct Shape {
    name: &'static str,
    rows: usize,
    cols: usize,
    dtype: GgmlDType,
    format: Format,
    /// How many of these one decode step runs.
    per_step: usize,
}

fn main() -> Result<(), BoxError> {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut ms: Vec<usize> = Vec::new();
    let mut preset = "smollm2-q4_1".to_owned();
    let mut only: Option<String> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rows" => ms.push(it.next().ok_or("--rows needs a value")?.parse()?),
            "--shapes" => preset = it.next().ok_or("--shapes needs a value")?,
            "--only" => only = Some(it.next().ok_or("--only needs a value")?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let q41 = (GgmlDType::Q4_1, Format::Q4_1);
    let q8 = (GgmlDType::Q8_0, Format::Q8_0);
    let q4k = (GgmlDType::Q4K, Format::Q4K);
    let q6k = (GgmlDType::Q6K, Format::Q6K);
    let shape = |name, rows, cols, (dtype, format): (GgmlDType, Format), per_step| Shape {
        name,
        rows,
        cols,
        dtype,
        format,
        per_step,
    };
    let shapes: Vec<Shape> = match &*preset {
        "smollm2-q4_1" => vec![
            shape("attn_q/o 576x576", 576, 576, q41, 2 * 30),
            shape("attn_k/v 192x576", 192, 576, q41, 2 * 30),
            shape("ffn_gate/up 1536x576", 1536, 576, q41, 2 * 30),
            shape("ffn_down 576x1536", 576, 1536, q41, 30),
            shape("output 49152x576", 49152, 576, q8, 1),
        ],
        // 22 layers; llama.cpp's use_more_bits gives 10 of them Q6_K attn_v and ffn_down.
        "tinyllama-q4_k_m" => vec![
            shape("attn_q/o 2048x2048 Q4K", 2048, 2048, q4k, 2 * 22),
            shape("attn_k 256x2048 Q4K", 256, 2048, q4k, 22),
            shape("attn_v 256x2048 Q4K", 256, 2048, q4k, 12),
            shape("attn_v 256x2048 Q6K", 256, 2048, q6k, 10),
            shape("ffn_gate/up 5632x2048 Q4K", 5632, 2048, q4k, 2 * 22),
            shape("ffn_down 2048x5632 Q4K", 2048, 5632, q4k, 12),
            shape("ffn_down 2048x5632 Q6K", 2048, 5632, q6k, 10),
            shape("output 32000x2048 Q6K", 32000, 2048, q6k, 1),
        ],
        other => return Err(format!("unknown shapes {other}").into()),
    };
    let shapes: Vec<Shape> = shapes
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| s.name.contains(o.as_str())))
        .collect();

    if ms.is_empty() {
        ms = vec![1, 128];
    }
    let pool = Pool::new(threads);
    let single = Pool::new(1);
    let rayon = Rayon(threads);
    let kernel = Kernel::best();
    println!(
        "bench-kernels: {threads} threads, kernel {kernel:?}, load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for m in ms {
        println!(
            "\n{m} activation row(s); microseconds per matmul (ward pool / rayon / 1 thread / candle QMatMul)"
        );
        let mut step = [0f64; 4];
        let mut bytes = 0usize;
        for s in &shapes {
            let w = Tensor::randn(0f32, 1.0, (s.rows, s.cols), &Device::Cpu)?;
            let q = QTensor::quantize(&w, s.dtype)?;
            let own = QMatrix::new(s.format, s.rows, s.cols, q.data()?.into_owned())?;
            bytes += own.byte_len() * s.per_step;
            let candle = QMatMul::from_qtensor(q)?;
            let x = Tensor::randn(0f32, 1.0, (m, s.cols), &Device::Cpu)?;
            let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let mut out = vec![0f32; m * s.rows];
            let mut own_with =
                |r: &dyn Runner| time(|| Ok(own.matmul_with(&xv, m, &mut out, kernel, r)?));
            let t = [
                own_with(&pool)?,
                own_with(&rayon)?,
                own_with(&single)?,
                time(|| {
                    candle.forward(&x)?;
                    Ok(())
                })?,
            ];
            println!(
                "  {:<22} {:9.1} {:9.1} {:9.1} {:9.1}",
                s.name,
                t[0] * 1e6,
                t[1] * 1e6,
                t[2] * 1e6,
                t[3] * 1e6
            );
            // A prefill computes the output head for its last token only.
            let per_step = if m > 1 && s.name.starts_with("output") {
                0
            } else {
                s.per_step
            };
            for (acc, t) in step.iter_mut().zip(t) {
                *acc += t * per_step as f64;
            }
        }
        println!(
            "  one step's matmuls:    {:9.2} {:9.2} {:9.2} {:9.2} ms   ({:.0} MB of weights; ward pool {:.1} GB/s, {:.0} tokens/s at m = {m})",
            step[0] * 1e3,
            step[1] * 1e3,
            step[2] * 1e3,
            step[3] * 1e3,
            bytes as f64 / 1e6,
            bytes as f64 / step[0] / 1e9,
            m as f64 / step[0]
        );
    }
    Ok(())
}
