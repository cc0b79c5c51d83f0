//! Picks the next token from a row of logits (vLLM / OpenAI semantics).
//!
//! Processing order, each step seeing the previous one's output:
//! 1. `logit_bias` is added to the raw logits.
//! 2. `suppressed` ids are set to -inf.
//! 3. Penalties. Repetition (HF/vLLM) over the distinct tokens of prompt and output: a positive
//!    logit is divided by the penalty, any other multiplied. Then presence and frequency (OpenAI)
//!    over the output only: `logit -= presence * [count > 0] + frequency * count`.
//!    The result is the *processed* logits.
//! 4. Greedy (`temperature == 0`): argmax of the processed logits, lowest id among ties.
//! 5. Otherwise temperature, top-k, top-p (over the top-k survivors, renormalised), min-p
//!    (relative to the most likely survivor), then one draw from what is left.
//!
//! Reported logprobs are the log-softmax of the processed logits (after step 3): before temperature
//! and before the top-k / top-p / min-p truncation, so a token's logprob does not depend on how it
//! was drawn. (vLLM's `processed_logprobs` mode would also apply temperature.)

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The most alternatives `logprobs` / `prompt_logprobs` may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Completions per request; the engine fans out, the sampler ignores it.
    pub n: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to `top_p`; (0, 1].
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep tokens with `p >= min_p * p_max`; [0, 1].
    pub min_p: f32,
    /// > 0; 1 is off. Over prompt and output tokens.
    pub repetition_penalty: f32,
    /// [-2, 2]; over output tokens.
    pub presence_penalty: f32,
    /// [-2, 2]; over output tokens, times the number of occurrences.
    pub frequency_penalty: f32,
    /// (token, bias) added to the raw logits; bias in [-100, 100].
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// EOS and stop token ids are suppressed until this many tokens were generated.
    pub min_tokens: usize,
    pub ignore_eos: bool,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// Some(k): the sampled token's logprob and the k most likely alternatives (k may be 0).
    pub logprobs: Option<usize>,
    pub prompt_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            n: 1,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            max_tokens: 256,
            min_tokens: 0,
            ignore_eos: false,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy with nothing that changes the logits first and no logprobs to report: the token
    /// is the raw logits' argmax, which the engine may take on the model's device (the caller
    /// still checks that nothing is suppressed, see `Sampler::sample`).
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0
            && self.logprobs.is_none()
            && self.logit_bias.is_empty()
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }

    /// The first invalid field, named with its allowed range. NaN fails every range check.
    pub fn validate(&self) -> Result<(), String> {
        let in_range = |x: f32, lo: f32, hi: f32| (lo..=hi).contains(&x);
        if self.n < 1 {
            return Err("`n` must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err("`temperature` must be a finite number >= 0".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("`top_p` must be in (0, 1]".into());
        }
        if !in_range(self.min_p, 0.0, 1.0) {
            return Err("`min_p` must be in [0, 1]".into());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err("`repetition_penalty` must be a finite number > 0".into());
        }
        if !in_range(self.presence_penalty, -2.0, 2.0) {
            return Err("`presence_penalty` must be in [-2, 2]".into());
        }
        if !in_range(self.frequency_penalty, -2.0, 2.0) {
            return Err("`frequency_penalty` must be in [-2, 2]".into());
        }
        if let Some((id, _)) = self.logit_bias.iter().find(|(_, b)| !in_range(*b, -100.0, 100.0)) {
            return Err(format!("`logit_bias` values must be in [-100, 100] (token {id})"));
        }
        if self.max_tokens < 1 {
            return Err("`max_tokens` must be at least 1".into());
        }
        if self.min_tokens > self.max_tokens {
            return Err(format!("`min_tokens` must be in [0, max_tokens = {}]", self.max_tokens));
        }
        if matches!(self.logprobs, Some(k) if k > MAX_LOGPROBS) {
            return Err(format!("`logprobs` must be in [0, {MAX_LOGPROBS}]"));
        }
        if matches!(self.prompt_logprobs, Some(k) if k > MAX_LOGPROBS) {
            return Err(format!("`prompt_logprobs` must be in [0, {MAX_LOGPROBS}]"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    pub token_logprob: f32,
    /// (token, logprob), most likely first, lower id first among ties.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprobs: Option<Logprobs>,
}

/// One per sequence: a seeded sequence draws the same tokens whatever else runs.
///
/// Scratch buffers are kept between calls: the processed logits (4 bytes × vocab), a bitset, and,
/// only once top-k or top-p is used, the candidates (8 bytes × vocab).
pub struct Sampler {
    rng: StdRng,
    /// The processed logits of the current call; (vocab,).
    logits: Vec<f32>,
    /// (token, logit, then weight) of the tokens still in the running.
    candidates: Vec<(u32, f32)>,
    /// One bit per vocab entry: already given the repetition penalty in this call.
    seen: Vec<u64>,
    /// The output ids, sorted, to count occurrences.
    sorted_output: Vec<u32>,
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { rng, logits: Vec::new(), candidates: Vec::new(), seen: Vec::new(), sorted_output: Vec::new() }
    }

    /// `logits`: one row (vocab). `prompt`/`output`: the sequence's tokens so far (for penalties).
    /// `suppressed`: token ids that must not be sampled now (the engine passes EOS + stop ids
    /// while fewer than `min_tokens` were generated). Ids outside the vocab are ignored. If every
    /// token is at -inf after processing there is nothing to draw from and the argmax (id 0) wins.
    pub fn sample(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
        prompt: &[u32],
        output: &[u32],
        suppressed: &[u32],
    ) -> Sampled {
        self.process(logits, params, prompt, output, suppressed);
        let token = if params.temperature <= 0.0 { argmax(&self.logits) } else { self.draw(params) };
        let logprobs = params.logprobs.map(|k| log_softmax_pick(&self.logits, token, k));
        Sampled { token, logprobs }
    }

    /// Steps 1-3: fills `self.logits` with the processed logits.
    fn process(&mut self, raw: &[f32], params: &SamplingParams, prompt: &[u32], output: &[u32], suppressed: &[u32]) {
        let vocab = raw.len();
        let logits = &mut self.logits;
        logits.clear();
        logits.extend_from_slice(raw);
        for &(id, bias) in &params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        for &id in suppressed {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        if params.repetition_penalty != 1.0 {
            let penalty = params.repetition_penalty;
            self.seen.clear();
            self.seen.resize(vocab.div_ceil(64), 0);
            for &id in prompt.iter().chain(output) {
                let i = id as usize;
                if i >= vocab || self.seen[i / 64] & (1 << (i % 64)) != 0 {
                    continue;
                }
                self.seen[i / 64] |= 1 << (i % 64);
                let l = &mut logits[i];
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
        if (params.presence_penalty != 0.0 || params.frequency_penalty != 0.0) && !output.is_empty() {
            self.sorted_output.clear();
            self.sorted_output.extend_from_slice(output);
            self.sorted_output.sort_unstable();
            for run in self.sorted_output.chunk_by(|a, b| a == b) {
                if let Some(l) = logits.get_mut(run[0] as usize) {
                    *l -= params.presence_penalty + params.frequency_penalty * run.len() as f32;
                }
            }
        }
    }

    /// Step 5 over `self.logits`.
    fn draw(&mut self, params: &SamplingParams) -> u32 {
        let logits = &self.logits;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        // Unnormalised probability; the most likely token weighs exactly 1, so min-p compares
        // weights with `min_p` directly. Underflow to 0 drops a token (its probability is < 1e-38).
        let t = params.temperature;
        let weight = |l: f32| ((l - max) / t).exp();
        let keep = |w: f32| w > 0.0 && w >= params.min_p;
        let u: f64 = self.rng.random();

        let vocab = logits.len();
        if (params.top_k == 0 || params.top_k >= vocab) && params.top_p >= 1.0 {
            // No truncation by rank: two passes over the vocab, no candidate list.
            let total: f64 = logits.iter().map(|&l| weight(l)).filter(|&w| keep(w)).map(f64::from).sum();
            let mut r = u * total;
            let mut last = None;
            for (i, &l) in logits.iter().enumerate() {
                let w = weight(l);
                if keep(w) {
                    if r < f64::from(w) {
                        return i as u32;
                    }
                    r -= f64::from(w);
                    last = Some(i as u32);
                }
            }
            return last.unwrap_or_else(|| argmax(logits));
        }

        let candidates = &mut self.candidates;
        candidates.clear();
        candidates
            .extend(logits.iter().enumerate().filter(|(_, &l)| l > f32::NEG_INFINITY).map(|(i, &l)| (i as u32, l)));
        if params.top_k > 0 && params.top_k < candidates.len() {
            candidates.select_nth_unstable_by(params.top_k - 1, by_value_desc);
            candidates.truncate(params.top_k);
        }
        for c in candidates.iter_mut() {
            c.1 = weight(c.1);
        }
        if params.top_p < 1.0 {
            let kept = nucleus_len(candidates, params.top_p);
            candidates.truncate(kept);
        }
        candidates.retain(|c| keep(c.1));
        let total: f64 = candidates.iter().map(|c| f64::from(c.1)).sum();
        let mut r = u * total;
        for &(id, w) in candidates.iter() {
            if r < f64::from(w) {
                return id;
            }
            r -= f64::from(w);
        }
        candidates.last().map_or_else(|| argmax(logits), |c| c.0)
    }
}

/// Descending by value, ascending by id among ties: a total order, so selections are unique.
fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Moves the most likely candidates (by weight) to the front, sorted, only as far as needed, and
/// returns how many to keep: the smallest prefix whose mass reaches `top_p` of the total (at
/// least one). Selects chunks of growing size instead of sorting the whole vocab.
fn nucleus_len(candidates: &mut [(u32, f32)], top_p: f32) -> usize {
    let total: f64 = candidates.iter().map(|c| f64::from(c.1)).sum();
    let target = f64::from(top_p) * total;
    let mut mass = 0.0;
    // Invariant: candidates[..sorted] are the `sorted` most likely, in order.
    let mut sorted = 0;
    let mut chunk = 64;
    while sorted < candidates.len() {
        let rest = &mut candidates[sorted..];
        let take = chunk.min(rest.len());
        if take < rest.len() {
            rest.select_nth_unstable_by(take - 1, by_value_desc);
        }
        rest[..take].sort_unstable_by(by_value_desc);
        for (i, c) in rest[..take].iter().enumerate() {
            mass += f64::from(c.1);
            if mass >= target {
                return sorted + i + 1;
            }
        }
        sorted += take;
        chunk *= 2;
    }
    candidates.len()
}

/// log-softmax of a raw logits row: the logprob of `token` and the top-k alternatives (prompt
/// logprobs / echo). A `token` outside the row gets -inf.
pub fn logprobs_of(logits: &[f32], token: u32, k: usize) -> Logprobs {
    log_softmax_pick(logits, token, k)
}

fn log_softmax_pick(logits: &[f32], token: u32, k: usize) -> Logprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    let log_z = f64::from(max) + sum.ln();
    let logprob = |l: f32| (f64::from(l) - log_z) as f32;
    Logprobs {
        token_logprob: logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| logprob(l)),
        top: top_k_desc(logits, k).into_iter().map(|(id, l)| (id, logprob(l))).collect(),
    }
}

/// The k largest (id, logit), sorted by `by_value_desc`. One pass with a sorted insertion list:
/// meant for small k (logprobs, at most `MAX_LOGPROBS`).
fn top_k_desc(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &l) in logits.iter().enumerate() {
        let c = (i as u32, l);
        if top.len() == k && by_value_desc(&c, &top[k - 1]) == Ordering::Greater {
            continue;
        }
        let at = top.partition_point(|t| by_value_desc(t, &c) == Ordering::Less);
        top.insert(at, c);
        top.truncate(k);
    }
    top
}

/// The highest logit; the lowest id among ties.
pub fn argmax(logits: &[f32]) -> u32 {
    // The first index of the largest value, as a scan keeping the first strictly larger value
    // from index 0 would find (NaN never wins; a NaN at index 0 gives 0, as that scan does), in
    // two passes the compiler vectorises: a whole vocabulary row per sequence and step.
    const LANES: usize = 16;
    let Some(&first) = logits.first() else { return 0 };
    if first.is_nan() {
        return 0;
    }
    let larger = |m: f32, x: f32| if x > m { x } else { m };
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| larger(m, x));
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = larger(*m, x);
        }
    }
    max = lanes.into_iter().fold(max, larger);
    let chunk = logits.chunks(LANES).position(|c| c.iter().fold(false, |hit, &x| hit | (x == max))).unwrap_or(0);
    let within = logits[chunk * LANES..].iter().position(|&x| x == max).unwrap_or(0);
    (chunk * LANES + within) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    fn greedy(logits: &[f32], p: &SamplingParams, prompt: &[u32], output: &[u32], suppressed: &[u32]) -> u32 {
        assert_eq!(p.temperature, 0.0);
        Sampler::new(Some(0)).sample(logits, p, prompt, output, suppressed).token
    }

    /// `n` draws from one seeded sampler, no penalties' history.
    fn draws(logits: &[f32], p: &SamplingParams, seed: u64, n: usize) -> Vec<u32> {
        let mut s = Sampler::new(Some(seed));
        (0..n).map(|_| s.sample(logits, p, &[], &[], &[]).token).collect()
    }

    /// Reproducible logits in [-4, 4).
    fn random_logits(vocab: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..vocab).map(|_| rng.random_range(-4.0..4.0)).collect()
    }

    /// Steps 1-3 only.
    fn processed(logits: &[f32], p: &SamplingParams, prompt: &[u32], output: &[u32], suppressed: &[u32]) -> Vec<f32> {
        let mut s = Sampler::new(Some(0));
        s.process(logits, p, prompt, output, suppressed);
        s.logits.clone()
    }

    /// Token ids by decreasing logit.
    fn ranked(logits: &[f32]) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        ids
    }

    #[test]
    fn greedy_picks_the_largest_logit_lowest_id_among_ties() {
        let p = SamplingParams::default();
        assert_eq!(greedy(&[0.1, 2.0, -1.0, 2.0], &p, &[], &[], &[]), 1);
        assert_eq!(greedy(&[0.1, -2.0, 3.0], &p, &[], &[], &[]), 2);
        assert_eq!(argmax(&[-1.0, -1.0]), 0);
    }

    #[test]
    fn argmax_is_the_first_strictly_larger_scan() {
        let naive = |l: &[f32]| {
            let mut best = 0;
            for (i, &x) in l.iter().enumerate() {
                if x > l[best] {
                    best = i;
                }
            }
            best as u32
        };
        let mut rng = StdRng::seed_from_u64(7);
        for len in [0, 1, 5, 16, 17, 33, 1000, 151_936] {
            for case in 0..6 {
                // Few distinct values, so ties land in different chunks; NaN and -inf mixed in.
                let mut l: Vec<f32> = (0..len).map(|_| (rng.random::<u32>() % 7) as f32).collect();
                if case >= 2 && len > 0 {
                    let i = rng.random::<u32>() as usize % len;
                    l[i] = if case % 2 == 0 { f32::NAN } else { f32::NEG_INFINITY };
                }
                if case == 5 && len > 0 {
                    l[0] = f32::NAN;
                }
                if case == 4 {
                    l.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                }
                assert_eq!(argmax(&l), naive(&l), "len {len}, case {case}");
            }
        }
    }

    #[test]
    fn low_temperature_concentrates_high_temperature_spreads() {
        let logits = [1.0, 0.5, 0.0];
        let count_top = |temperature| {
            draws(&logits, &params(|p| p.temperature = temperature), 3, 1000).iter().filter(|&&t| t == 0).count()
        };
        // p(token 0) is ~1.0, ~0.51 and ~0.37.
        let (cold, warm, hot) = (count_top(0.05), count_top(1.0), count_top(5.0));
        assert!(cold > 990, "{cold}");
        assert!((450..570).contains(&warm), "{warm}");
        assert!(hot < 430, "{hot}");
    }

    #[test]
    fn top_k_1_is_greedy() {
        for seed in 0..10 {
            let mut logits = random_logits(500, seed);
            // A tie for the top: the lower id wins, as in argmax.
            logits[300] = 5.0;
            logits[17 + seed as usize] = 5.0;
            let p = params(|p| {
                p.temperature = 1.5;
                p.top_k = 1;
            });
            assert!(draws(&logits, &p, seed, 50).iter().all(|&t| t == 17 + seed as u32));
            let unrestricted = params(|p| p.temperature = 1.5);
            assert!(draws(&logits, &unrestricted, seed, 50).iter().any(|&t| t != 17 + seed as u32));
        }
    }

    #[test]
    fn top_k_never_samples_outside_the_top_k() {
        let logits = random_logits(1000, 1);
        let top5 = &ranked(&logits)[..5];
        let p = params(|p| {
            p.temperature = 5.0;
            p.top_k = 5;
        });
        let d = draws(&logits, &p, 2, 2000);
        assert!(d.iter().all(|t| top5.contains(t)));
        assert!(top5.iter().all(|t| d.contains(t)), "each of the top 5 is drawn");
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps the first two.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let p = params(|p| {
            p.temperature = 1.0;
            p.top_p = 0.8;
        });
        let d = draws(&logits, &p, 1, 1000);
        assert!(d.iter().all(|&t| t < 2));
        assert!(d.contains(&1), "the second token is still drawn sometimes");
        assert!(draws(&logits, &params(|p| p.temperature = 1.0), 1, 1000).contains(&2));
    }

    #[test]
    fn nucleus_matches_a_full_sort() {
        // One chunk, several chunks, nearly everything.
        for (vocab, top_p, seed) in
            [(10, 0.5, 0), (1000, 0.9, 1), (20_000, 0.5, 2), (20_000, 0.999, 3), (5000, 0.05, 4)]
        {
            let weights: Vec<(u32, f32)> =
                random_logits(vocab, seed).iter().enumerate().map(|(i, l)| (i as u32, l.exp())).collect();
            let total: f64 = weights.iter().map(|c| f64::from(c.1)).sum();
            let mut naive = weights.clone();
            naive.sort_by(by_value_desc);
            let mut mass = 0.0;
            let expected = naive
                .iter()
                .position(|c| {
                    mass += f64::from(c.1);
                    mass >= f64::from(top_p) * total
                })
                .map_or(vocab, |i| i + 1);
            let mut candidates = weights.clone();
            let kept = nucleus_len(&mut candidates, top_p);
            assert_eq!(kept, expected, "vocab {vocab}, top_p {top_p}");
            assert_eq!(candidates[..kept], naive[..expected]);
        }
    }

    #[test]
    fn top_p_over_a_full_size_vocab_draws_from_the_nucleus() {
        let logits: Vec<f32> = random_logits(152_000, 10).iter().map(|l| l * 3.0).collect();
        let p = params(|p| {
            p.temperature = 1.0;
            p.top_p = 0.3;
        });
        let ids = ranked(&logits);
        let max = logits[ids[0] as usize];
        let total: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let mut mass = 0.0;
        let size = 1 + ids
            .iter()
            .position(|&i| {
                mass += f64::from(logits[i as usize] - max).exp();
                mass >= 0.3 * total
            })
            .unwrap();
        let nucleus = &ids[..size];
        assert!(size > 64 && size < 150_000, "{size}: the test should need several chunks");
        assert!(draws(&logits, &p, 10, 200).iter().all(|t| nucleus.contains(t)));
    }

    #[test]
    fn min_p_drops_tokens_below_the_fraction_of_the_top() {
        // Relative to the top: 1, e^-1 ~ 0.37, e^-3 ~ 0.05 (p ~ 0.04 of 2000 draws).
        let logits = [0.0, -1.0, -3.0];
        assert!(draws(&logits, &params(|p| p.temperature = 1.0), 4, 2000).contains(&2));
        // Both the whole-vocab path and the candidate path (top_p < 1) apply it.
        for top_p in [1.0, 0.999] {
            let p = params(|p| {
                p.temperature = 1.0;
                p.min_p = 0.1;
                p.top_p = top_p;
            });
            let d = draws(&logits, &p, 4, 2000);
            assert!(!d.contains(&2), "top_p {top_p}");
            assert!(d.contains(&1), "top_p {top_p}");
        }
    }

    #[test]
    fn repetition_penalty_flips_a_preference_for_positive_and_negative_logits() {
        let p = params(|p| p.repetition_penalty = 2.0);
        let off = SamplingParams::default();
        // Positive: 2.0 / 2 = 1.0 < 1.5.
        assert_eq!(greedy(&[2.0, 1.5], &off, &[], &[0], &[]), 0);
        assert_eq!(greedy(&[2.0, 1.5], &p, &[], &[0], &[]), 1);
        // Negative: -1.0 * 2 = -2.0 < -1.5.
        assert_eq!(greedy(&[-1.0, -1.5], &p, &[], &[], &[]), 0);
        assert_eq!(greedy(&[-1.0, -1.5], &p, &[], &[0], &[]), 1);
        // Prompt tokens count too.
        assert_eq!(greedy(&[2.0, 1.5], &p, &[0], &[], &[]), 1);
        // Once per distinct token, however often it occurs; below 1 it rewards.
        assert_eq!(processed(&[2.0, -1.0, 3.0], &p, &[0, 1, 0], &[0, 1], &[]), [1.0, -2.0, 3.0]);
        let reward = params(|p| p.repetition_penalty = 0.5);
        assert_eq!(processed(&[2.0, -1.0, 3.0], &reward, &[0, 1], &[], &[]), [4.0, -0.5, 3.0]);
    }

    #[test]
    fn presence_counts_once_frequency_counts_every_occurrence() {
        let logits = [1.0; 4];
        // Prompt tokens are not penalised by either.
        let (prompt, output) = ([2], [0, 0, 0, 1]);
        let presence = params(|p| p.presence_penalty = 0.5);
        let frequency = params(|p| p.frequency_penalty = 0.5);
        let both = params(|p| {
            p.presence_penalty = 0.5;
            p.frequency_penalty = 0.5;
        });
        assert_eq!(processed(&logits, &presence, &prompt, &output, &[]), [0.5, 0.5, 1.0, 1.0]);
        assert_eq!(processed(&logits, &frequency, &prompt, &output, &[]), [-0.5, 0.5, 1.0, 1.0]);
        assert_eq!(processed(&logits, &both, &prompt, &output, &[]), [-1.0, 0.0, 1.0, 1.0]);
        // Token 0, seen three times, keeps its lead under presence and loses it under frequency.
        assert_eq!(greedy(&[1.2, 1.0], &presence, &[], &output, &[]), 0);
        assert_eq!(greedy(&[1.2, 1.0], &frequency, &[], &output, &[]), 1);
    }

    #[test]
    fn logit_bias_forces_and_bans() {
        let logits = random_logits(100, 5);
        let top = argmax(&logits);
        let force = params(|p| p.logit_bias = vec![(7, 100.0), (1000, 100.0)]);
        assert_eq!(greedy(&logits, &force, &[], &[], &[]), 7);
        let force = SamplingParams { temperature: 1.0, ..force };
        assert!(draws(&logits, &force, 5, 500).iter().all(|&t| t == 7));

        let ban = params(|p| p.logit_bias = vec![(top, -100.0)]);
        assert_ne!(greedy(&logits, &ban, &[], &[], &[]), top);
        let ban = SamplingParams { temperature: 1.0, ..ban };
        assert!(!draws(&logits, &ban, 5, 2000).contains(&top));
        assert!(draws(&logits, &params(|p| p.temperature = 1.0), 5, 2000).contains(&top));
    }

    #[test]
    fn suppressed_ids_are_never_sampled_even_as_the_argmax() {
        let mut logits = random_logits(50, 6);
        logits[3] = 20.0;
        logits[9] = 19.0;
        let suppressed = [3, 9, 77];
        let off = SamplingParams::default();
        assert_eq!(greedy(&logits, &off, &[], &[], &[]), 3);
        assert_eq!(greedy(&logits, &off, &[], &[], &suppressed), ranked(&logits)[2]);
        // Bias comes first, so it cannot lift a suppressed token.
        let bias = params(|p| p.logit_bias = vec![(3, 100.0)]);
        assert_eq!(greedy(&logits, &bias, &[], &[], &suppressed), ranked(&logits)[2]);
        let variants = [
            params(|p| p.temperature = 1.0),
            params(|p| {
                p.temperature = 1.0;
                p.top_k = 2;
            }),
            params(|p| {
                p.temperature = 1.0;
                p.top_p = 0.9;
            }),
        ];
        for p in &variants {
            let mut s = Sampler::new(Some(6));
            assert_eq!(s.sample(&logits, p, &[], &[], &[]).token, 3);
            for _ in 0..500 {
                let token = s.sample(&logits, p, &[], &[], &suppressed).token;
                assert!(!suppressed.contains(&token), "{p:?}: {token}");
            }
        }
    }

    #[test]
    fn same_seed_same_tokens_whatever_else_runs() {
        let rows: Vec<Vec<f32>> = (0..30).map(|i| random_logits(200, i)).collect();
        let variants = [
            params(|p| p.temperature = 1.0),
            params(|p| {
                p.temperature = 0.7;
                p.top_k = 20;
            }),
            params(|p| {
                p.temperature = 1.0;
                p.top_p = 0.8;
                p.min_p = 0.05;
            }),
        ];
        for p in &variants {
            let run = |seed, interleave: bool| {
                let mut s = Sampler::new(Some(seed));
                let mut other = Sampler::new(None);
                let tokens: Vec<u32> = rows
                    .iter()
                    .map(|row| {
                        if interleave {
                            other.sample(row, p, &[], &[], &[]);
                        }
                        s.sample(row, p, &[], &[], &[]).token
                    })
                    .collect();
                tokens
            };
            assert_eq!(run(7, false), run(7, false));
            assert_eq!(run(7, false), run(7, true));
            assert_ne!(run(7, false), run(8, false));
        }
        // Seedless samplers draw from OS entropy: 20 draws from 1000 equal tokens differ.
        let flat = [0.0; 1000];
        let p = params(|p| p.temperature = 1.0);
        let mut a = Sampler::new(None);
        let mut b = Sampler::new(None);
        let da: Vec<u32> = (0..20).map(|_| a.sample(&flat, &p, &[], &[], &[]).token).collect();
        let db: Vec<u32> = (0..20).map(|_| b.sample(&flat, &p, &[], &[], &[]).token).collect();
        assert_ne!(da, db);
    }

    /// log-softmax in f64, the textbook way.
    fn naive_log_softmax(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().map(|&l| f64::from(l)).fold(f64::NEG_INFINITY, f64::max);
        let log_z = max + logits.iter().map(|&l| (f64::from(l) - max).exp()).sum::<f64>().ln();
        logits.iter().map(|&l| f64::from(l) - log_z).collect()
    }

    #[test]
    fn logprobs_of_matches_a_naive_log_softmax() {
        for offset in [0.0, 1000.0] {
            let logits: Vec<f32> = random_logits(1000, 8).iter().map(|l| l * 5.0 + offset).collect();
            let naive = naive_log_softmax(&logits);
            let tol = if offset == 0.0 { 1e-5 } else { 1e-3 };
            for token in [0u32, 17, 999] {
                let lp = logprobs_of(&logits, token, 5);
                assert!((f64::from(lp.token_logprob) - naive[token as usize]).abs() < tol, "{offset} {token}");
                let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
                assert_eq!(ids, ranked(&logits)[..5]);
                for (id, l) in lp.top {
                    assert!((f64::from(l) - naive[id as usize]).abs() < tol);
                }
            }
            // The whole vocab as alternatives: a distribution.
            let all = logprobs_of(&logits, 0, 1000);
            assert_eq!(all.top.len(), 1000);
            let sum: f64 = all.top.iter().map(|t| f64::from(t.1).exp()).sum();
            assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        }
        // Sorted by logprob, lower id first among ties; k = 0 gives no alternatives.
        let tied = logprobs_of(&[1.0, 3.0, 3.0, 2.0, 3.0], 0, 4);
        assert_eq!(tied.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 4, 3]);
        assert!(tied.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let none = logprobs_of(&[1.0, 3.0], 0, 0);
        assert!(none.top.is_empty());
        assert!((f64::from(none.token_logprob) - naive_log_softmax(&[1.0, 3.0])[0]).abs() < 1e-6);
    }

    #[test]
    fn sampled_logprobs_are_the_processed_logits_before_temperature() {
        let logits = random_logits(300, 9);
        let (prompt, output) = ([7], [5, 5, 6]);
        let suppressed = [argmax(&logits)];
        let base = params(|p| {
            p.repetition_penalty = 1.3;
            p.frequency_penalty = 0.4;
            p.logit_bias = vec![(11, 2.0)];
            p.logprobs = Some(5);
        });
        let row = processed(&logits, &base, &prompt, &output, &suppressed);

        let s = Sampler::new(Some(0)).sample(&logits, &base, &prompt, &output, &suppressed);
        let lp = s.logprobs.unwrap();
        // Greedy: the token is the first alternative.
        assert_eq!(lp.top[0], (s.token, lp.token_logprob));
        assert_eq!(lp, logprobs_of(&row, s.token, 5));
        assert_ne!(lp, logprobs_of(&logits, s.token, 5), "processing must show");

        for temperature in [0.3, 1.0, 3.0] {
            let p = SamplingParams { temperature, top_k: 50, ..base.clone() };
            let mut sampler = Sampler::new(Some(1));
            for _ in 0..20 {
                let s = sampler.sample(&logits, &p, &prompt, &output, &suppressed);
                assert_eq!(s.logprobs.unwrap(), logprobs_of(&row, s.token, 5));
            }
        }
        let plain = Sampler::new(Some(0)).sample(&logits, &SamplingParams::default(), &[], &[], &[]);
        assert_eq!(plain.logprobs, None);
    }

    #[test]
    fn validate_names_the_field_and_its_range() {
        assert_eq!(SamplingParams::default().validate(), Ok(()));
        let cases = [
            (params(|p| p.n = 0), "`n` must be at least 1"),
            (params(|p| p.temperature = -0.1), "`temperature` must be a finite number >= 0"),
            (params(|p| p.temperature = f32::INFINITY), "`temperature` must be a finite number >= 0"),
            (params(|p| p.temperature = f32::NAN), "`temperature` must be a finite number >= 0"),
            (params(|p| p.top_p = 0.0), "`top_p` must be in (0, 1]"),
            (params(|p| p.top_p = 1.01), "`top_p` must be in (0, 1]"),
            (params(|p| p.min_p = -0.01), "`min_p` must be in [0, 1]"),
            (params(|p| p.min_p = f32::NAN), "`min_p` must be in [0, 1]"),
            (params(|p| p.repetition_penalty = 0.0), "`repetition_penalty` must be a finite number > 0"),
            (params(|p| p.presence_penalty = 2.5), "`presence_penalty` must be in [-2, 2]"),
            (params(|p| p.frequency_penalty = -2.5), "`frequency_penalty` must be in [-2, 2]"),
            (
                params(|p| p.logit_bias = vec![(1, 0.0), (3, 101.0)]),
                "`logit_bias` values must be in [-100, 100] (token 3)",
            ),
            (params(|p| p.max_tokens = 0), "`max_tokens` must be at least 1"),
            (
                params(|p| {
                    p.max_tokens = 4;
                    p.min_tokens = 5;
                }),
                "`min_tokens` must be in [0, max_tokens = 4]",
            ),
            (params(|p| p.logprobs = Some(21)), "`logprobs` must be in [0, 20]"),
            (params(|p| p.prompt_logprobs = Some(21)), "`prompt_logprobs` must be in [0, 20]"),
        ];
        for (p, message) in cases {
            assert_eq!(p.validate().unwrap_err(), message, "{p:?}");
        }
        let edges = params(|p| {
            p.top_p = 1.0;
            p.min_p = 1.0;
            p.repetition_penalty = 0.01;
            p.presence_penalty = -2.0;
            p.frequency_penalty = 2.0;
            p.logit_bias = vec![(0, -100.0), (1, 100.0)];
            p.min_tokens = 256;
            p.logprobs = Some(20);
            p.prompt_logprobs = Some(0);
        });
        assert_eq!(edges.validate(), Ok(()));
    }
}
