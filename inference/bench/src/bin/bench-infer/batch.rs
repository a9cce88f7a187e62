//! Decode throughput of many sequences at once (`--batch`): the engine's batched decode step
//! (`Model::forward_batch`) against, in the same run, the same sequences stepped one after the
//! other on one thread, and each on its own thread (what the engine did before it batched: a
//! worker thread per sequence). Every variant decodes the same number of tokens per sequence
//! from the same prefilled prompts; figures are aggregate tokens per second, medians of the
//! rounds, the three variants in turn each round.
//!
//! On the CPU, with a GGUF file, each round then runs llama.cpp on the same file and the same
//! prompt ids (`llama_baseline.py --batch-seqs`, a child process, one call per round and
//! sequence count): its batch API decoding all the sequences in one `llama_decode` per step.
//! Its column is the median of its rounds, ward batched / llama.cpp the median of the rounds'
//! ratios, and llama.cpp n/1 its own gain over one sequence.

use std::path::Path;
use std::time::Instant;

use ward_inference::{DeviceKind, Model, Session};

use crate::{BoxError, argmax, baseline, load, load_average, median, prompt_ids};

/// `n` sessions, each prefilled with a prompt of `prompt_len` tokens (a different one each, so
/// that the sequences diverge), and each one's first decode token.
fn prefilled(
    model: &Model,
    n: usize,
    prompt_len: usize,
) -> Result<(Vec<Session>, Vec<u32>), BoxError> {
    let base = prompt_ids(model, prompt_len + n)?;
    let mut sessions = Vec::with_capacity(n);
    let mut next = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = model.new_session()?;
        let logits = s.forward(&base[i..i + prompt_len], 0)?;
        next.push(argmax(&logits));
        sessions.push(s);
    }
    Ok((sessions, next))
}

fn batched(model: &Model, n: usize, prompt_len: usize, steps: usize) -> Result<f64, BoxError> {
    let (mut sessions, mut next) = prefilled(model, n, prompt_len)?;
    let t = Instant::now();
    for step in 0..steps {
        let positions = vec![prompt_len + step; n];
        let mut refs: Vec<&mut Session> = sessions.iter_mut().collect();
        let logits = model.forward_batch(&mut refs, &next, &positions)?;
        next = logits.iter().map(|l| argmax(l)).collect();
    }
    Ok((n * steps) as f64 / t.elapsed().as_secs_f64())
}

fn one_after_the_other(
    model: &Model,
    n: usize,
    prompt_len: usize,
    steps: usize,
) -> Result<f64, BoxError> {
    let (mut sessions, mut next) = prefilled(model, n, prompt_len)?;
    let t = Instant::now();
    for step in 0..steps {
        for (s, tok) in sessions.iter_mut().zip(next.iter_mut()) {
            *tok = argmax(&s.forward(&[*tok], prompt_len + step)?);
        }
    }
    Ok((n * steps) as f64 / t.elapsed().as_secs_f64())
}

fn thread_each(model: &Model, n: usize, prompt_len: usize, steps: usize) -> Result<f64, BoxError> {
    let (sessions, next) = prefilled(model, n, prompt_len)?;
    let t = Instant::now();
    std::thread::scope(|scope| -> Result<(), BoxError> {
        let handles: Vec<_> = sessions
            .into_iter()
            .zip(next)
            .map(|(mut s, mut tok)| {
                scope.spawn(move || -> Result<(), ward_inference::InferenceError> {
                    for step in 0..steps {
                        tok = argmax(&s.forward(&[tok], prompt_len + step)?);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a decode thread panicked")??;
        }
        Ok(())
    })?;
    Ok((n * steps) as f64 / t.elapsed().as_secs_f64())
}

/// The llama.cpp baseline's Python, or why there is none for this run.
fn llama_python(path: &Path, device: DeviceKind, baseline: bool) -> Result<String, String> {
    if !baseline {
        return Err("--no-baseline".to_owned());
    }
    if !matches!(device, DeviceKind::Cpu) {
        return Err("ward runs on a GPU here; the llama.cpp baseline is a CPU build".to_owned());
    }
    if path.is_dir() {
        return Err("not a GGUF file".to_owned());
    }
    Ok(baseline::llama_python())
}

/// Prints the three variants for 1, 2, 4 and 8 sequences (up to 32 on a GPU), and llama.cpp's
/// batched decode next to them where it runs.
pub(crate) fn run(
    path: &Path,
    device: DeviceKind,
    prompt_len: usize,
    steps: usize,
    runs: usize,
    baseline: bool,
) -> Result<(), BoxError> {
    let (model, label, _) = load(path, device)?;
    println!(
        "{label}: decode tokens/s summed over the sequences, {prompt_len}-token prompts, {steps} steps, median of {runs}, load average {}{}",
        load_average(),
        if model.batches() {
            ""
        } else {
            " (this model does not batch: forward_batch runs them one after the other)"
        }
    );
    batched(&model, 1, 8, 2)?; // warm-up
    let counts: &[usize] = match device {
        DeviceKind::Cpu => &[1, 2, 4, 8],
        DeviceKind::Cuda(_) => &[1, 2, 4, 8, 16, 32],
    };
    let python = llama_python(path, device, baseline);
    let mut skipped = python.as_ref().err().cloned();
    let mut header = false;
    // Whether the table has llama.cpp's columns (it ran for the first count).
    let mut llama_columns = false;
    let (mut llama_one, mut checks) = (None, Vec::new());
    for &n in counts {
        let ids = prompt_ids(&model, prompt_len + n)?;
        let (mut b, mut o, mut t) = (Vec::new(), Vec::new(), Vec::new());
        let (mut l, mut ratios) = (Vec::new(), Vec::new());
        for round in 0..runs {
            let ours = batched(&model, n, prompt_len, steps)?;
            b.push(ours);
            o.push(one_after_the_other(&model, n, prompt_len, steps)?);
            t.push(thread_each(&model, n, prompt_len, steps)?);
            let (Ok(python), None) = (&python, &skipped) else {
                continue;
            };
            match baseline::run_batch(&baseline::BatchCall {
                python,
                model: path,
                ids: &ids,
                seqs: &[n],
                prompt_len,
                steps,
                runs: 1,
                check: round == 0,
            }) {
                baseline::BatchOutcome::Figures { tps, checks: c } => {
                    match tps.iter().find(|(k, _)| *k == n) {
                        Some(&(_, theirs)) => {
                            l.push(theirs);
                            ratios.push(ours / theirs);
                        }
                        None => skipped = Some(format!("no figure for {n} sequences")),
                    }
                    checks.extend(c);
                }
                baseline::BatchOutcome::Skip(why) => skipped = Some(why),
            }
        }
        if !header {
            header = true;
            match (&skipped, &python) {
                (Some(why), _) => println!("  llama.cpp: SKIP ({why})"),
                (None, Ok(python)) => println!(
                    "  llama.cpp: its batch API under {python}, the same prompt ids, one call a round"
                ),
                (None, Err(_)) => {}
            }
            print!(
                "  seqs   batched   one-by-one   thread each   batched/one-by-one   batched/threads"
            );
            llama_columns = skipped.is_none();
            if llama_columns {
                print!("   llama.cpp   llama.cpp n/1   ward/llama.cpp");
            }
            println!();
        }
        let (b, o, t) = (median(b), median(o), median(t));
        print!(
            "  {n:>4} {b:>9.1} {o:>12.1} {t:>13.1} {:>20.2}x {:>16.2}x",
            b / o,
            b / t
        );
        if llama_columns && l.len() == runs {
            let theirs = median(l);
            let one = *llama_one.get_or_insert(theirs);
            print!(
                " {theirs:>11.1} {:>14.2}x {:>15.2}x",
                theirs / one,
                median(ratios)
            );
        }
        println!();
    }
    if let (true, Some(why)) = (llama_columns, &skipped) {
        println!("  llama.cpp stopped part way: {why}");
    }
    if !checks.is_empty() {
        println!(
            "  llama.cpp greedy tokens, batched steps against each sequence decoded alone (first round):"
        );
        for c in &checks {
            println!("    {c}");
        }
    }
    println!("  load average after: {}", load_average());
    Ok(())
}
