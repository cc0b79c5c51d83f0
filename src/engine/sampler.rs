//! Picks the next token from a row of logits.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to `top_p`.
    pub top_p: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: None }
    }
}

/// One per sequence: a seeded sequence draws the same tokens whatever else runs.
pub struct Sampler {
    rng: StdRng,
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { rng }
    }

    pub fn sample(&mut self, logits: &[f32], params: &SamplingParams) -> u32 {
        if params.temperature <= 0.0 {
            return argmax(logits);
        }
        // (token, probability), most likely first.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / params.temperature).exp())).collect();
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let total: f32 = probs.iter().map(|p| p.1).sum();
        // Smallest prefix whose mass reaches top_p (at least one token).
        let mut kept = 0;
        let mut mass = 0.0;
        for p in &probs {
            kept += 1;
            mass += p.1 / total;
            if mass >= params.top_p {
                break;
            }
        }
        let probs = &probs[..kept];
        let kept_total: f32 = probs.iter().map(|p| p.1).sum();
        let mut r = self.rng.random::<f32>() * kept_total;
        for &(id, p) in probs {
            if r < p {
                return id;
            }
            r -= p;
        }
        probs[kept - 1].0
    }
}

/// The highest logit; the lowest id among ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut s = Sampler::new(Some(0));
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0], &SamplingParams::default()), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams { temperature: 1.0, top_p: 1.0, seed: Some(7) };
        let draw = |seed| {
            let mut s = Sampler::new(Some(seed));
            (0..20).map(|_| s.sample(&logits, &params)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps the first two.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let params = SamplingParams { temperature: 1.0, top_p: 0.8, seed: None };
        let mut s = Sampler::new(Some(1));
        let draws: Vec<u32> = (0..500).map(|_| s.sample(&logits, &params)).collect();
        assert!(draws.iter().all(|&t| t < 2));
        assert!(draws.contains(&1), "the second token must still be drawn sometimes");
    }

    #[test]
    fn low_temperature_concentrates_high_temperature_spreads() {
        let logits = [1.0, 0.5, 0.0];
        let count_top = |temperature| {
            let params = SamplingParams { temperature, top_p: 1.0, seed: None };
            let mut s = Sampler::new(Some(3));
            (0..1000).filter(|_| s.sample(&logits, &params) == 0).count()
        };
        assert!(count_top(0.05) > 990);
        assert!(count_top(5.0) < 450);
    }
}
