//! Token sampling from logits: greedy, temperature, top-k, top-p, a seeded RNG, and a repetition
//! penalty over a window of recent tokens. Pure functions over `f32` slices; no tensors here.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::InferenceError;

/// How the next token is chosen. `temperature == 0` means greedy (argmax).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 for greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (`None`: 1.0).
    pub top_p: Option<f32>,
    /// Seed of the request's own RNG: the same seed gives the same output.
    pub seed: u64,
    /// > 1.0 discourages tokens seen in the last `repetition_window` tokens (1.0: off).
    pub repetition_penalty: f32,
    /// How many recent tokens (prompt included) the penalty looks at.
    pub repetition_window: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            repetition_penalty: 1.0,
            repetition_window: 64,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (the default).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Rejects parameters that have no meaning (negative temperature, `top_p` outside (0, 1]...).
    pub fn validate(&self) -> Result<(), InferenceError> {
        let bad = |m: &str| Err(InferenceError::InvalidRequest(m.to_owned()));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature must be a finite number >= 0");
        }
        if self.top_k == Some(0) {
            return bad("top_k must be >= 1");
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad("top_p must be in (0, 1]");
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty must be a finite number > 0");
        }
        Ok(())
    }
}

/// A per-request sampler: parameters plus the request's RNG state.
pub(crate) struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub(crate) fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Picks the next token from `logits` (modified in place) given the tokens so far.
    pub(crate) fn sample(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
    ) -> Result<u32, InferenceError> {
        for l in logits.iter_mut() {
            if l.is_nan() {
                *l = f32::NEG_INFINITY;
            }
        }
        apply_repetition_penalty(
            logits,
            history,
            self.params.repetition_penalty,
            self.params.repetition_window,
        );
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = candidate_probs(logits, &self.params);
        let total: f32 = probs.iter().map(|(_, p)| p).sum();
        if !(total > 0.0 && total.is_finite()) {
            return argmax(logits);
        }
        let mut target = self.rng.r#gen::<f32>() * total;
        for (id, p) in &probs {
            target -= p;
            if target <= 0.0 {
                return Ok(*id);
            }
        }
        // Rounding left a sliver: the least likely kept candidate.
        probs
            .last()
            .map(|(id, _)| *id)
            .ok_or_else(|| InferenceError::InvalidRequest("empty logits".into()))
    }
}

fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32, window: usize) {
    if penalty == 1.0 || window == 0 {
        return;
    }
    let start = history.len().saturating_sub(window);
    let mut seen = std::collections::HashSet::new();
    for &id in history.get(start..).unwrap_or_default() {
        if !seen.insert(id) {
            continue;
        }
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest logit; ties go to the lowest id.
pub(crate) fn argmax(logits: &[f32]) -> Result<u32, InferenceError> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.and_then(|(i, _)| u32::try_from(i).ok())
        .ok_or_else(|| InferenceError::InvalidRequest("empty logits".into()))
}

/// Softmax at the temperature, then top-k and top-p; candidates sorted by probability, descending.
fn candidate_probs(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter_map(|(i, &l)| {
            let p = ((l - max) / params.temperature).exp();
            (p > 0.0)
                .then(|| u32::try_from(i).ok().map(|i| (i, p)))
                .flatten()
        })
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = params.top_k {
        probs.truncate(k);
    }
    if let Some(top_p) = params.top_p {
        let total: f32 = probs.iter().map(|(_, p)| p).sum();
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (n, (_, p)) in probs.iter().enumerate() {
            cum += p / total;
            if cum >= top_p {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    probs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_ignores_nan() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&mut [0.1, 3.0, f32::NAN, 3.0], &[]).unwrap(), 1);
        assert!(s.sample(&mut [], &[]).is_err());
    }

    #[test]
    fn repetition_penalty_demotes_recent_tokens_within_the_window() {
        let mut p = params(0.0);
        p.repetition_penalty = 2.0;
        p.repetition_window = 1;
        let mut s = Sampler::new(p);
        // token 0 (3.0) is penalised to 1.5 < 2.0; token 1 is outside the window of 1.
        assert_eq!(s.sample(&mut [3.0, 2.0, -1.0], &[1, 0]).unwrap(), 1);
        let mut logits = [3.0, 2.0, -1.0];
        apply_repetition_penalty(&mut logits, &[2], 2.0, 8);
        assert_eq!(logits[2], -2.0);
    }

    #[test]
    fn same_seed_same_samples_and_top_k_limits_choices() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed: u64| {
            let mut p = params(1.0);
            p.seed = seed;
            p.top_k = Some(3);
            let mut s = Sampler::new(p);
            (0..40)
                .map(|_| s.sample(&mut logits.clone(), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        // the three largest logits (value 1.8) are at ids 6, 13, 20 (ties broken by id)
        assert!(a.iter().all(|id| [6, 13, 20].contains(id)), "{a:?}");
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut p = params(1.0);
        p.top_p = Some(0.5);
        let probs = candidate_probs(&[10.0, 0.0, 0.0, 0.0], &p);
        assert_eq!(probs.len(), 1);
        assert_eq!(probs[0].0, 0);
    }

    #[test]
    fn validation() {
        assert!(params(-1.0).validate().is_err());
        assert!(params(f32::NAN).validate().is_err());
        let mut p = params(1.0);
        p.top_p = Some(0.0);
        assert!(p.validate().is_err());
        p.top_p = Some(1.0);
        p.top_k = Some(0);
        assert!(p.validate().is_err());
        assert!(SamplingParams::greedy().validate().is_ok());
    }
}
