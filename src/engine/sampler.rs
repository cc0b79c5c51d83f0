//! Picks the next token from a row of logits (vLLM / OpenAI semantics).
//!
//! Processing order, each step seeing the previous one's output:
//! 1. `logit_bias` is added to the raw logits.
//! 2. `suppressed` ids are set to -inf, and so is every token an output constraint
//!    ([`Allowed`], JSON mode) does not allow.
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

use qwen_serve_models::{draw_whole, lane_sum, max_value};
use rand::rngs::StdRng;

use super::constraint::OutputFormat;
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
    /// (token, bias) added to the raw logits; bias in [-100, 100], or -inf: never this token.
    pub logit_bias: Vec<(u32, f32)>,
    /// llama.cpp's `repeat_last_n`: all three penalties count the last n tokens of prompt and
    /// output together. `None`: vLLM's scopes (the repetition penalty over prompt and output,
    /// presence and frequency over the output).
    pub penalty_last_n: Option<usize>,
    /// llama.cpp's sampler order: top-k, top-p and min-p cut the distribution as it is at
    /// temperature 1, then the temperature shapes what is left. `false`: the temperature first,
    /// as vLLM (and so OpenAI's API) samples.
    pub truncate_first: bool,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// EOS and stop token ids are suppressed until this many tokens were generated.
    pub min_tokens: usize,
    pub ignore_eos: bool,
    pub stop: Vec<String>,
    /// vLLM's `include_stop_str_in_output`: the matched stop string ends the text, not cut off.
    pub include_stop_str: bool,
    /// Special tokens are left out of the text (vLLM's `skip_special_tokens`, default true).
    pub skip_special_tokens: bool,
    pub stop_token_ids: Vec<u32>,
    /// Some(k): the sampled token's logprob and the k most likely alternatives (k may be 0).
    pub logprobs: Option<usize>,
    pub prompt_logprobs: Option<usize>,
    /// `response_format`: plain text, or JSON held to an object or a schema (`super::constraint`).
    pub format: OutputFormat,
    /// Held output comes after the model's thinking (`super::thinking`).
    pub think_first: bool,
    /// An embedding request: nothing is generated (`max_tokens` 0); the sequence ends after its
    /// prompt with the final hidden state of its last token ([`Event::Pooled`](super::Event)).
    pub embed: bool,
    /// With `embed`: instead of the hidden state, the raw logits of these tokens at the last
    /// position (a reranker's "yes" / "no"), in this order.
    pub score_tokens: Vec<u32>,
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
            penalty_last_n: None,
            truncate_first: false,
            seed: None,
            max_tokens: 256,
            min_tokens: 0,
            ignore_eos: false,
            stop: Vec::new(),
            include_stop_str: false,
            skip_special_tokens: true,
            stop_token_ids: Vec::new(),
            logprobs: None,
            prompt_logprobs: None,
            format: OutputFormat::Text,
            think_first: false,
            embed: false,
            score_tokens: Vec::new(),
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
            && self.format == OutputFormat::Text
    }

    /// The temperature top-p and min-p judge the distribution at (see `truncate_first`).
    fn cut_temperature(&self) -> f32 {
        if self.truncate_first {
            1.0
        } else {
            self.temperature
        }
    }

    /// `min_p` as a bound on the weights of a draw at `temperature`, `e^((l - max) / t)`: with
    /// `truncate_first` the bound is on the weights at temperature 1, `w1 >= min_p`, which is
    /// `w1^(1/t) >= min_p^(1/t)`.
    pub fn draw_min_p(&self) -> f32 {
        if self.truncate_first && self.min_p > 0.0 && self.temperature > 0.0 {
            self.min_p.powf(1.0 / self.temperature)
        } else {
            self.min_p
        }
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
        if let Some((id, _)) = self.logit_bias.iter().find(|(_, b)| !in_range(*b, -100.0, 100.0) && *b != f32::NEG_INFINITY) {
            return Err(format!("`logit_bias` values must be in [-100, 100] or -inf (token {id})"));
        }
        if !self.score_tokens.is_empty() && !self.embed {
            return Err("`score_tokens` are read at the end of a prompt: a pooling (`embed`) request".into());
        }
        if self.embed {
            let plain = self.logprobs.is_none() && self.prompt_logprobs.is_none() && matches!(self.format, OutputFormat::Text) && !self.think_first;
            return if self.max_tokens == 0 && self.n == 1 && plain {
                Ok(())
            } else {
                Err("an embedding generates nothing: `max_tokens` 0, `n` 1, no logprobs, plain text".into())
            };
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

/// The tokens an output constraint allows at this step: one bit per id (`id / 64`, bit `id % 64`),
/// plus `also` (EOS once a JSON object is complete).
#[derive(Debug, Clone, Copy)]
pub struct Allowed<'a> {
    pub bits: &'a [u64],
    pub also: &'a [u32],
}

impl Allowed<'_> {
    fn contains(&self, id: usize) -> bool {
        self.bits.get(id / 64).is_some_and(|w| w >> (id % 64) & 1 == 1) || self.also.contains(&(id as u32))
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
    /// The processed candidates of a [`Self::sample_candidates`] call, by id.
    entries: Vec<(u32, f32)>,
    /// One bit per logit held: already given the repetition penalty in this call.
    seen: Vec<u64>,
    /// The ids presence and frequency count (the output, or the penalty window), sorted, to
    /// count occurrences.
    sorted_output: Vec<u32>,
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { rng, logits: Vec::new(), candidates: Vec::new(), entries: Vec::new(), seen: Vec::new(), sorted_output: Vec::new() }
    }

    /// The next uniform draw in [0, 1) of this sequence's RNG: the one its next draw would take
    /// (every draw takes one, first), for a draw made elsewhere (`runner::Want::Draw`).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random()
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
        self.sample_allowed(logits, params, prompt, output, suppressed, None)
    }

    /// [`Self::sample`] under an output constraint: only `allowed` tokens can be drawn.
    pub fn sample_allowed(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
        prompt: &[u32],
        output: &[u32],
        suppressed: &[u32],
        allowed: Option<Allowed>,
    ) -> Sampled {
        self.process(logits, params, prompt, output, suppressed, allowed);
        let token = if params.temperature <= 0.0 { argmax(&self.logits) } else { self.draw(params) };
        let logprobs = params.logprobs.map(|k| log_softmax_pick(&self.logits, token, k));
        Sampled { token, logprobs }
    }

    /// [`Self::sample`] from a row's best candidates only, sorted by id: `(id, raw logit)` for
    /// at least the `k + t` largest logits of the row (all ties at the last), where `k` is
    /// `top_k` (1 when greedy) and `t` the number of ids `params`, `prompt`, `output` and
    /// `suppressed` touch, plus those touched ids themselves. Every other logit then ranks below
    /// the top k after processing, so the token is the one the whole row gives (for the same
    /// RNG state). Only for greedy or `top_k` in 1..vocab, without logprobs or an output
    /// constraint (the runner checks, see `runner::Want`).
    pub fn sample_candidates(
        &mut self,
        candidates: &[(u32, f32)],
        params: &SamplingParams,
        prompt: &[u32],
        output: &[u32],
        suppressed: &[u32],
    ) -> Sampled {
        debug_assert!(params.logprobs.is_none() && (params.temperature <= 0.0 || params.top_k > 0));
        self.entries.clear();
        self.entries.extend_from_slice(candidates);
        adjust(&mut Sparse(&mut self.entries), params, prompt, output, suppressed, &mut self.seen, &mut self.sorted_output);
        let token = if params.temperature <= 0.0 { sparse_argmax(&self.entries) } else { self.draw_sparse(params) };
        Sampled { token, logprobs: None }
    }

    /// Steps 1-3: fills `self.logits` with the processed logits.
    fn process(&mut self, raw: &[f32], params: &SamplingParams, prompt: &[u32], output: &[u32], suppressed: &[u32], allowed: Option<Allowed>) {
        let logits = &mut self.logits;
        logits.clear();
        logits.extend_from_slice(raw);
        adjust(&mut Dense(&mut logits[..]), params, prompt, output, suppressed, &mut self.seen, &mut self.sorted_output);
        // (After the penalties, which leave -inf at -inf.)
        if let Some(allowed) = allowed {
            for (id, l) in logits.iter_mut().enumerate() {
                if !allowed.contains(id) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Step 5 over `self.logits`.
    fn draw(&mut self, params: &SamplingParams) -> u32 {
        let logits = &self.logits;
        // One uniform draw per sampled token, taken first whatever the row holds, so a draw
        // made elsewhere with it (`Self::uniform`) leaves the RNG where this one does.
        let u: f64 = self.rng.random();
        let max = max_value(logits);
        if !max.is_finite() {
            return argmax(logits);
        }
        // Weights are unnormalised probabilities, e^((l - max) / temperature): the most likely
        // token weighs exactly 1, so min-p compares weights with `min_p` directly. Underflow to
        // 0 drops a token (its probability is < 1e-38).
        let vocab = logits.len();
        if (params.top_k == 0 || params.top_k >= vocab) && params.top_p >= 1.0 {
            // No truncation by rank: no candidate list (the draw a GPU also makes where the
            // logits are, `runner::Want::Draw`).
            return draw_whole(logits, max, params.temperature, params.draw_min_p(), u).unwrap_or_else(|| argmax(logits));
        }

        let candidates = &mut self.candidates;
        let indexed = || logits.iter().enumerate().map(|(i, &l)| (i as u32, l));
        if params.top_k > 0 && params.top_k < vocab {
            top_k_sorted(indexed(), params.top_k, candidates);
            return pick(candidates, params, max, u, None).unwrap_or_else(|| argmax(logits));
        }
        // Top-p over the whole vocabulary: the row's whole mass once, then the most likely
        // tokens in growing rounds (one pass each) until their mass reaches top-p of it; the
        // nucleus is then among them. Only a nearly flat row takes the whole sorted list.
        let t = params.cut_temperature();
        let mass = whole_mass(logits, max, t);
        let target = f64::from(params.top_p) * mass;
        let mut k = 64;
        while k < vocab {
            top_k_sorted(indexed(), k, candidates);
            let mut prefix = 0.0;
            if candidates.iter().any(|c| {
                prefix += f64::from(((c.1 - max) / t).exp());
                prefix >= target
            }) {
                return pick(candidates, params, max, u, Some(mass)).unwrap_or_else(|| argmax(logits));
            }
            k *= 8;
        }
        candidates.clear();
        candidates.extend(indexed().filter(|&(_, l)| l > f32::NEG_INFINITY));
        pick(candidates, params, max, u, Some(mass)).unwrap_or_else(|| argmax(logits))
    }

    /// Step 5 over `self.entries` (top-k only): what [`Self::draw`] does on the whole row.
    fn draw_sparse(&mut self, params: &SamplingParams) -> u32 {
        let u: f64 = self.rng.random();
        let entries = &self.entries;
        let max = entries.iter().map(|e| e.1).fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return sparse_argmax(entries);
        }
        top_k_sorted(entries.iter().copied(), params.top_k, &mut self.candidates);
        pick(&mut self.candidates, params, max, u, None).unwrap_or_else(|| sparse_argmax(entries))
    }
}

/// Logits that processing adjusts by token id: a whole row, or a row's candidates.
trait Slots {
    /// Where `id`'s logit is, if the row has it.
    fn slot(&self, id: u32) -> Option<usize>;
    fn at(&mut self, slot: usize) -> &mut f32;
    fn len(&self) -> usize;
}

struct Dense<'a>(&'a mut [f32]);

impl Slots for Dense<'_> {
    fn slot(&self, id: u32) -> Option<usize> {
        ((id as usize) < self.0.len()).then_some(id as usize)
    }
    fn at(&mut self, slot: usize) -> &mut f32 {
        &mut self.0[slot]
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Candidates sorted by id.
struct Sparse<'a>(&'a mut [(u32, f32)]);

impl Slots for Sparse<'_> {
    fn slot(&self, id: u32) -> Option<usize> {
        self.0.binary_search_by_key(&id, |c| c.0).ok()
    }
    fn at(&mut self, slot: usize) -> &mut f32 {
        &mut self.0[slot].1
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Steps 1-3 but the output constraint, on whichever logits `row` holds. `seen` and
/// `sorted_output` are scratch.
fn adjust(row: &mut impl Slots, params: &SamplingParams, prompt: &[u32], output: &[u32], suppressed: &[u32], seen: &mut Vec<u64>, sorted_output: &mut Vec<u32>) {
    for &(id, bias) in &params.logit_bias {
        if let Some(i) = row.slot(id) {
            *row.at(i) += bias;
        }
    }
    for &id in suppressed {
        if let Some(i) = row.slot(id) {
            *row.at(i) = f32::NEG_INFINITY;
        }
    }
    // The tokens each penalty counts: (from the prompt, from the output).
    let (repeated, counted) = match params.penalty_last_n {
        None => ((prompt, output), (&[][..], output)),
        Some(n) => {
            let window = last_n(prompt, output, n);
            (window, window)
        }
    };
    if params.repetition_penalty != 1.0 {
        let penalty = params.repetition_penalty;
        seen.clear();
        seen.resize(row.len().div_ceil(64), 0);
        for &id in repeated.0.iter().chain(repeated.1) {
            let Some(i) = row.slot(id) else { continue };
            if seen[i / 64] & (1 << (i % 64)) != 0 {
                continue;
            }
            seen[i / 64] |= 1 << (i % 64);
            let l = row.at(i);
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
    if (params.presence_penalty != 0.0 || params.frequency_penalty != 0.0) && counted.0.len() + counted.1.len() > 0 {
        sorted_output.clear();
        sorted_output.extend_from_slice(counted.0);
        sorted_output.extend_from_slice(counted.1);
        sorted_output.sort_unstable();
        for run in sorted_output.chunk_by(|a, b| a == b) {
            if let Some(i) = row.slot(run[0]) {
                *row.at(i) -= params.presence_penalty + params.frequency_penalty * run.len() as f32;
            }
        }
    }
}

/// The last `n` tokens of `prompt` followed by `output`, as (from the prompt, from the output).
fn last_n<'a>(prompt: &'a [u32], output: &'a [u32], n: usize) -> (&'a [u32], &'a [u32]) {
    let from_output = n.min(output.len());
    let from_prompt = (n - from_output).min(prompt.len());
    (&prompt[prompt.len() - from_prompt..], &output[output.len() - from_output..])
}

/// The rest of step 5 over the surviving candidates, `u` in [0, 1) the draw: weights, top-p,
/// min-p, then the token at `u` of the remaining mass (`None` if nothing is left). Top-p keeps
/// `top_p` of `mass` (the whole row's at the cut temperature, when the candidates are only its
/// most likely), else of the candidates' own. With `truncate_first` the cuts are made on the
/// weights at temperature 1, which the temperature then raises to `1 / t`.
fn pick(candidates: &mut Vec<(u32, f32)>, params: &SamplingParams, max: f32, u: f64, mass: Option<f64>) -> Option<u32> {
    let t = params.cut_temperature();
    for c in candidates.iter_mut() {
        c.1 = ((c.1 - max) / t).exp();
    }
    if params.top_p < 1.0 {
        let kept = nucleus_len(candidates, params.top_p, mass);
        candidates.truncate(kept);
    }
    candidates.retain(|c| c.1 > 0.0 && c.1 >= params.min_p);
    if t != params.temperature {
        let power = t / params.temperature;
        for c in candidates.iter_mut() {
            c.1 = c.1.powf(power);
        }
    }
    let total: f64 = candidates.iter().map(|c| f64::from(c.1)).sum();
    let mut r = u * total;
    for &(id, w) in candidates.iter() {
        if r < f64::from(w) {
            return Some(id);
        }
        r -= f64::from(w);
    }
    candidates.last().map(|c| c.0)
}

/// [`argmax`] over candidates sorted by id: the largest value, the lowest id among ties, NaN
/// never (the first candidate's id, or 0, if none is a number).
fn sparse_argmax(entries: &[(u32, f32)]) -> u32 {
    let mut best: Option<(u32, f32)> = None;
    for &(id, v) in entries {
        if best.is_none_or(|b| v > b.1) && !v.is_nan() {
            best = Some((id, v));
        }
    }
    best.or(entries.first().copied()).map_or(0, |b| b.0)
}

/// The sum of a row's weights `e^((l - max) / t)` (NaN counting 0) over 8 independent f64 lanes.
fn whole_mass(logits: &[f32], max: f32, t: f32) -> f64 {
    lane_sum(logits, |l| {
        let w = ((l - max) / t).exp();
        f64::from(if w > 0.0 { w } else { 0.0 })
    })
}

/// Descending by value, ascending by id among ties: a total order, so selections are unique.
fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` largest finite logits of `row` ((id, logit) by increasing id) as (id, logit), sorted
/// by [`by_value_desc`] (all of them, sorted, if fewer are finite). In one pass over the row: a value joins a buffer only if it beats the
/// k-th best found so far, and the buffer is cut back to the best k whenever it holds 2k, so
/// a 150k-entry row costs a comparison per entry. The result depends only on the row's values,
/// not on where the losers sit: a row holding only these k values (the rest -inf) gives the
/// same list, and so the same draw.
fn top_k_sorted(row: impl Iterator<Item = (u32, f32)>, k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    // A value must be above this to join; ids come in increasing order, so an equal value
    // would rank after the k-th (ties go to the lower id) and can never make the cut.
    let mut floor = f32::NEG_INFINITY;
    let cut = |out: &mut Vec<(u32, f32)>| {
        out.select_nth_unstable_by(k - 1, by_value_desc);
        out.truncate(k);
        out.iter().map(|c| c.1).min_by(f32::total_cmp).unwrap_or(f32::NEG_INFINITY)
    };
    for (i, l) in row {
        if !l.is_nan() && l.total_cmp(&floor).is_gt() {
            out.push((i, l));
            if out.len() == 2 * k.max(32) {
                floor = cut(out);
            }
        }
    }
    if out.len() > k {
        cut(out);
    }
    out.sort_unstable_by(by_value_desc);
}

/// Moves the most likely candidates (by weight) to the front, sorted, only as far as needed, and
/// returns how many to keep: the smallest prefix whose mass reaches `top_p` of the total (at
/// least one). Selects chunks of growing size instead of sorting the whole vocab.
fn nucleus_len(candidates: &mut [(u32, f32)], top_p: f32, mass: Option<f64>) -> usize {
    let total = mass.unwrap_or_else(|| candidates.iter().map(|c| f64::from(c.1)).sum());
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
    let max = max_value(logits);
    let sum = lane_sum(logits, |l| f64::from((l - max).exp()));
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
mod tests;
