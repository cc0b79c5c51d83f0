//! Reading an engine stream for the handlers: whole results for non-streaming responses, and
//! the timing every response records in the metrics.

use std::time::{Duration, Instant};

use crate::engine::sampler::Logprobs;
use crate::engine::{Event, FinishReason, RequestStream, StopReason, Usage};
use crate::error::ApiError;

use super::metrics::Metrics;
use super::types::{self, SamplingFields};

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
                    return Err(ApiError::internal(ABORTED));
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

/// The usage a stream carries, from `stream_options`: a last chunk with the request's usage
/// (`include_usage`), and vLLM's `continuous_usage_stats`, the usage so far on every chunk
/// besides. vLLM takes `include_usage` as true when left out, so `continuous_usage_stats`
/// alone turns both on; `include_usage: false` turns both off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamUsage {
    pub last_chunk: bool,
    pub every_chunk: bool,
}

impl StreamUsage {
    /// `stream_options` is only taken with `stream: true` (OpenAI and vLLM refuse it otherwise).
    pub fn requested(f: &SamplingFields) -> Result<Self, ApiError> {
        let Some(options) = &f.stream_options else {
            return Ok(Self::default());
        };
        if !f.stream {
            return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed with `stream: true`"));
        }
        let every_chunk = options.continuous_usage_stats == Some(true) && options.include_usage != Some(false);
        Ok(Self { last_chunk: options.include_usage == Some(true) || every_chunk, every_chunk })
    }

    /// A chunk's usage under `continuous_usage_stats`: the prompt and its choice's
    /// `num_output_tokens` so far (as vLLM counts it, per choice).
    pub fn so_far(self, num_prompt_tokens: usize, num_output_tokens: usize) -> Option<types::Usage> {
        self.every_chunk.then(|| usage(num_prompt_tokens, [Usage { num_prompt_tokens, num_output_tokens, num_cached_tokens: 0 }]))
    }
}

/// Why a request's output ended without a finish of its own (`FinishReason::Abort`).
pub const ABORTED: &str = "generation was aborted by the engine: the server is stopping, or see its log";

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn requested(body: serde_json::Value) -> Result<StreamUsage, ApiError> {
        StreamUsage::requested(&serde_json::from_value(body).unwrap())
    }

    #[test]
    fn stream_options_follow_openai_and_vllm() {
        let usage = |last_chunk, every_chunk| StreamUsage { last_chunk, every_chunk };
        assert_eq!(requested(json!({"stream": true})).unwrap(), usage(false, false));
        assert_eq!(requested(json!({"stream": true, "stream_options": {}})).unwrap(), usage(false, false));
        assert_eq!(requested(json!({"stream": true, "stream_options": {"include_usage": true}})).unwrap(), usage(true, false));
        assert_eq!(requested(json!({"stream": true, "stream_options": {"continuous_usage_stats": true}})).unwrap(), usage(true, true));
        assert_eq!(requested(json!({"stream": true, "stream_options": {"include_usage": true, "continuous_usage_stats": true}})).unwrap(), usage(true, true));
        assert_eq!(requested(json!({"stream": true, "stream_options": {"include_usage": false, "continuous_usage_stats": true}})).unwrap(), usage(false, false));
        assert_eq!(requested(json!({"stream": true, "stream_options": {"include_usage": null}})).unwrap(), usage(false, false));
        // Without a stream: refused, unless null.
        assert_eq!(requested(json!({"stream_options": null})).unwrap(), usage(false, false));
        for options in [json!({"include_usage": true}), json!({}), json!({"continuous_usage_stats": true})] {
            let e = requested(json!({"stream": false, "stream_options": options})).unwrap_err();
            assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("stream_options")), "{options}");
        }
    }

    #[test]
    fn usage_so_far_counts_one_choice() {
        let on = StreamUsage { last_chunk: true, every_chunk: true };
        let u = on.so_far(10, 3).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (10, 3, 13));
        assert!(StreamUsage { last_chunk: true, every_chunk: false }.so_far(10, 3).is_none());
    }
}
