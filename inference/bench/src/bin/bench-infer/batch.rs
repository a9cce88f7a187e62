//! Decode throughput of many sequences at once (`--batch`): the engine's batched decode step
//! (`Model::forward_batch`) against, in the same run, the same sequences stepped one after the
//! other on one thread, and each on its own thread (what the engine did before it batched: a
//! worker thread per sequence). Every variant decodes the same number of tokens per sequence
//! from the same prefilled prompts; figures are aggregate tokens per second, medians of the
//! rounds, the three variants in turn each round.

use std::path::Path;
use std::time::Instant;

use ward_inference::{DeviceKind, Model, Session};

use crate::{BoxError, argmax, load, median, prompt_ids};

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

/// Prints the three variants for 1, 2, 4 and 8 sequences (up to 32 on a GPU).
pub(crate) fn run(
    path: &Path,
    device: DeviceKind,
    prompt_len: usize,
    steps: usize,
    runs: usize,
) -> Result<(), BoxError> {
    let (model, label, _) = load(path, device)?;
    println!(
        "{label}: decode tokens/s summed over the sequences, {prompt_len}-token prompts, {steps} steps, median of {runs}{}",
        if model.batches() {
            ""
        } else {
            " (this model does not batch: forward_batch runs them one after the other)"
        }
    );
    println!("  seqs   batched   one-by-one   thread each   batched/one-by-one   batched/threads");
    batched(&model, 1, 8, 2)?; // warm-up
    let counts: &[usize] = match device {
        DeviceKind::Cpu => &[1, 2, 4, 8],
        DeviceKind::Cuda(_) => &[1, 2, 4, 8, 16, 32],
    };
    for &n in counts {
        let (mut b, mut o, mut t) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            b.push(batched(&model, n, prompt_len, steps)?);
            o.push(one_after_the_other(&model, n, prompt_len, steps)?);
            t.push(thread_each(&model, n, prompt_len, steps)?);
        }
        let (b, o, t) = (median(b), median(o), median(t));
        println!(
            "  {n:>4} {b:>9.1} {o:>12.1} {t:>13.1} {:>20.2}x {:>16.2}x",
            b / o,
            b / t
        );
    }
    Ok(())
}
