//! The PyTorch baseline: `inference/bench/torch_baseline.py` in a child process, on the same model
//! files and the same prompt token ids, its figures read back from one `RESULT` line.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Figures;

pub(crate) enum Outcome {
    Figures(Figures),
    Skip(String),
}

/// `$WARD_BENCH_TORCH_SCRIPT`, else the script under the working directory (a copied tree, as
/// on a GPU machine), else the one in the source tree this binary was built from.
fn script() -> PathBuf {
    if let Some(p) = std::env::var_os("WARD_BENCH_TORCH_SCRIPT") {
        return PathBuf::from(p);
    }
    let relative = Path::new("inference/bench/torch_baseline.py");
    if relative.exists() {
        return relative.to_path_buf();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("torch_baseline.py")
}

pub(crate) fn run(
    python: &str,
    model: &Path,
    device: &str,
    prompt: &[u32],
    gen_tokens: usize,
    runs: usize,
) -> Outcome {
    let script = script();
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let out = Command::new(python)
        .arg(&script)
        .arg(model)
        .args(["--ids", &ids.join(",")])
        .args(["--device", device])
        .args(["--gen-tokens", &gen_tokens.to_string()])
        .args(["--runs", &runs.to_string()])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Outcome::Skip(format!("cannot run {python}: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = stdout.lines().find_map(|l| {
        let mut it = l.strip_prefix("RESULT ")?.split_whitespace();
        Some(Figures {
            prefill_tps: it.next()?.parse().ok()?,
            decode_tps: it.next()?.parse().ok()?,
            first_token: it.next()?.parse().ok()?,
        })
    });
    if let Some(f) = parsed {
        return Outcome::Figures(f);
    }
    if let Some(why) = stdout.lines().find_map(|l| l.strip_prefix("SKIP: ")) {
        return Outcome::Skip(why.to_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Outcome::Skip(format!(
        "{python} {} failed: {}",
        script.display(),
        stderr.lines().last().unwrap_or("no output")
    ))
}
