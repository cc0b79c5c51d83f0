//! Reading an engine stream for the handlers: whole results for non-streaming responses, and
//! the timing every response records in the metrics.

use std::time::{Duration, Instant};

use crate::engine::sampler::Logprobs;
use crate::engine::{Event, FinishReason, RequestStream, StopReason, Usage};
use crate::error::ApiError;

use super::metrics::Metrics;
use super::types;

/// Per-request latency bookkeeping: arrival, first token, last token.
pub struct Timing {
    pub started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    num_tokens: usize,
}

impl Timing {
    pub fn new(started: Instant) -> Self {
        Self { started, first: None, last: None, num_tokens: 0 }
    }

    pub fn token(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.num_tokens += 1;
    }

    /// Adds this request's latencies to the metrics' histograms.
    pub fn record(&self, metrics: &Metrics) {
        let (ttft, tpot, e2e) = self.summary();
        metrics.observe_generation(ttft, tpot, e2e);
    }

    /// (TTFT, TPOT, end-to-end).
    pub fn summary(&self) -> (Option<Duration>, Option<Duration>, Duration) {
        let ttft = self.first.map(|f| f - self.started);
        let tpot = match (self.first, self.last) {
            (Some(f), Some(l)) if self.num_tokens > 1 => Some((l - f) / (self.num_tokens - 1) as u32),
            _ => None,
        };
        (ttft, tpot, self.started.elapsed())
    }
}

#[derive(Debug, Default, Clone)]
pub struct ChoiceResult {
    pub tokens: Vec<u32>,
    pub text: String,
    /// Where each token's released text ends in `text` (the rest came with `Finished`).
    pub token_ends: Vec<usize>,
    pub logprobs: Vec<Logprobs>,
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
    pub usage: Usage,
}

pub struct Collected {
    pub choices: Vec<ChoiceResult>,
    pub prompt_logprobs: Option<Vec<Option<Logprobs>>>,
}

/// Reads a request's events to the end.
pub async fn collect(mut stream: RequestStream, n: usize, timing: &mut Timing) -> Result<Collected, ApiError> {
    let mut choices = vec![ChoiceResult::default(); n];
    let mut prompt_logprobs = None;
    let mut num_finished = 0;
    while num_finished < n {
        let Some(event) = stream.recv().await else {
            return Err(ApiError::internal("the engine stopped before the request finished"));
        };
        match event {
            Event::PromptLogprobs(p) => prompt_logprobs = Some(p),
            Event::Pooled { .. } => {}
            Event::Token { index, token, text, logprobs } => {
                timing.token();
                let c = &mut choices[index];
                c.tokens.push(token);
                c.text.push_str(&text);
                c.token_ends.push(c.text.len());
                c.logprobs.extend(logprobs);
            }
            Event::Finished { index, reason, stop_reason, text, usage } => {
                let c = &mut choices[index];
                c.text.push_str(&text);
                c.finish_reason = Some(reason);
                c.stop_reason = stop_reason;
                c.usage = usage;
                num_finished += 1;
                if reason == FinishReason::Abort {
                    return Err(ApiError::internal("generation was aborted by the engine (see the server log)"));
                }
            }
        }
    }
    Ok(Collected { choices, prompt_logprobs })
}

/// OpenAI usage over all choices of a request.
pub fn usage(num_prompt_tokens: usize, per_choice: impl IntoIterator<Item = Usage>) -> types::Usage {
    let (mut completion, mut cached) = (0, 0);
    for u in per_choice {
        completion += u.num_output_tokens;
        cached = cached.max(u.num_cached_tokens);
    }
    types::Usage {
        prompt_tokens: num_prompt_tokens,
        completion_tokens: completion,
        total_tokens: num_prompt_tokens + completion,
        prompt_tokens_details: types::PromptTokensDetails { cached_tokens: cached },
    }
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An id as OpenAI's newer APIs (and Anthropic's) write them: `prefix_<24 random alphanumerics>`.
pub fn item_id(prefix: &str) -> String {
    random_id(prefix).replacen('-', "_", 1)
}

/// `prefix-<24 random alphanumerics>`.
pub fn random_id(prefix: &str) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("{prefix}-{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}
