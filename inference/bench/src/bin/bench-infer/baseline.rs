//! The baselines, each a Python script in a child process on the same model files and the same
//! prompt token ids, its figures read back from one `RESULT` line: PyTorch `transformers`
//! (`inference/bench/torch_baseline.py`) or llama.cpp through llama-cpp-python
//! (`inference/bench/llama_baseline.py`, in the environment `scripts/llama-venv.sh` builds).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::Figures;

/// Which engine a baseline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Torch,
    Llama,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Torch => "torch (transformers)",
            Kind::Llama => "llama.cpp",
        }
    }

    pub(crate) fn short(self) -> &'static str {
        match self {
            Kind::Torch => "torch",
            Kind::Llama => "llama.cpp",
        }
    }

    /// `$WARD_BENCH_TORCH_SCRIPT` / `$WARD_BENCH_LLAMA_SCRIPT`, else the script under the
    /// working directory (a copied tree, as on a GPU machine), else the one in the source tree
    /// this binary was built from.
    fn script(self) -> PathBuf {
        let (var, name) = match self {
            Kind::Torch => ("WARD_BENCH_TORCH_SCRIPT", "torch_baseline.py"),
            Kind::Llama => ("WARD_BENCH_LLAMA_SCRIPT", "llama_baseline.py"),
        };
        if let Some(p) = std::env::var_os(var) {
            return PathBuf::from(p);
        }
        let relative = Path::new("inference/bench").join(name);
        if relative.exists() {
            return relative;
        }
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
    }
}

/// The Python with llama_cpp: `$WARD_LLAMA_PYTHON`, else `target/llama-venv` under the working
/// directory, else under the source tree this binary was built from.
pub(crate) fn llama_python() -> String {
    if let Ok(p) = std::env::var("WARD_LLAMA_PYTHON") {
        return p;
    }
    let relative = Path::new("target/llama-venv/bin/python");
    if relative.exists() {
        return relative.display().to_string();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/llama-venv/bin/python")
        .display()
        .to_string()
}

pub(crate) enum Outcome {
    /// The figures, and the baseline's peak RSS in MB where it reports one.
    Figures(Figures, Option<f64>),
    Skip(String),
}

pub(crate) struct Call<'a> {
    pub kind: Kind,
    pub python: &'a str,
    pub model: &'a Path,
    pub device: &'a str,
    pub prompt: &'a [u32],
    pub gen_tokens: usize,
    pub runs: usize,
}

/// Why a baseline run gave no figures: its `SKIP` line, else the last line it wrote to stderr.
fn why_not(python: &str, script: &Path, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(why) = stdout.lines().find_map(|l| l.strip_prefix("SKIP: ")) {
        return why.to_owned();
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    format!(
        "{python} {} failed: {}",
        script.display(),
        stderr.lines().last().unwrap_or("no output")
    )
}

pub(crate) fn run(c: &Call<'_>) -> Outcome {
    let script = c.kind.script();
    let ids: Vec<String> = c.prompt.iter().map(u32::to_string).collect();
    let mut cmd = Command::new(c.python);
    cmd.arg(&script)
        .arg(c.model)
        .args(["--ids", &ids.join(",")])
        .args(["--gen-tokens", &c.gen_tokens.to_string()])
        .args(["--runs", &c.runs.to_string()]);
    if c.kind == Kind::Torch {
        cmd.args(["--device", c.device]);
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => return Outcome::Skip(format!("cannot run {}: {e}", c.python)),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = stdout.lines().find_map(|l| {
        let mut it = l.strip_prefix("RESULT ")?.split_whitespace();
        let f = Figures {
            prefill_tps: it.next()?.parse().ok()?,
            decode_tps: it.next()?.parse().ok()?,
            first_token: it.next()?.parse().ok()?,
        };
        Some((f, it.next().and_then(|r| r.parse().ok())))
    });
    match parsed {
        Some((f, rss)) => Outcome::Figures(f, rss),
        None => Outcome::Skip(why_not(c.python, &script, &out)),
    }
}

/// What llama.cpp's multi-sequence decode (`llama_baseline.py --batch-seqs`) reported.
pub(crate) enum BatchOutcome {
    Figures {
        /// Decode tokens/s summed over the sequences, per sequence count.
        tps: Vec<(usize, f64)>,
        /// Its `CHECK` lines: the batched steps' greedy tokens against each sequence alone.
        checks: Vec<String>,
    },
    Skip(String),
}

pub(crate) struct BatchCall<'a> {
    pub python: &'a str,
    pub model: &'a Path,
    /// Sequence i's prompt is `ids[i..i + prompt_len]`.
    pub ids: &'a [u32],
    pub seqs: &'a [usize],
    pub prompt_len: usize,
    pub steps: usize,
    pub runs: usize,
    /// Decode every sequence alone too and compare the greedy tokens (`CHECK` lines).
    pub check: bool,
}

/// llama.cpp through its batch API: for each count n, n sequences prefilled one by one, then
/// `steps` decode steps of one `llama_decode` each, one token per sequence in it.
pub(crate) fn run_batch(c: &BatchCall<'_>) -> BatchOutcome {
    let script = Kind::Llama.script();
    let ids: Vec<String> = c.ids.iter().map(u32::to_string).collect();
    let seqs: Vec<String> = c.seqs.iter().map(usize::to_string).collect();
    let mut cmd = Command::new(c.python);
    cmd.arg(&script)
        .arg(c.model)
        .args(["--ids", &ids.join(",")])
        .args(["--batch-seqs", &seqs.join(",")])
        .args(["--prompt-len", &c.prompt_len.to_string()])
        .args(["--gen-tokens", &c.steps.to_string()])
        .args(["--runs", &c.runs.to_string()]);
    if !c.check {
        cmd.arg("--no-check");
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => return BatchOutcome::Skip(format!("cannot run {}: {e}", c.python)),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tps: Vec<(usize, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("BATCH ")?.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    if tps.is_empty() || !out.status.success() {
        return BatchOutcome::Skip(why_not(c.python, &script, &out));
    }
    let checks = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CHECK ").map(str::to_owned))
        .collect();
    BatchOutcome::Figures { tps, checks }
}
