//! What goes into the engine and what comes out of it. The engine never sees wire (OpenAI)
//! types: the HTTP layer validates into an [`EngineRequest`] and renders [`Event`]s.

use super::sampler::{Logprobs, SamplingParams};

pub type RequestId = u64;

/// A validated request: prompt token ids and sampling parameters.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` generated.
    Length,
    /// The client went away or the engine shut down.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// What stopped a sequence with [`FinishReason::Stop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Eos(u32),
    TokenId(u32),
    String(String),
}

/// Token counts of one finished sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub num_cached_tokens: usize,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// Sent once, before any token, when `prompt_logprobs` was asked for: one entry per prompt
    /// token, `None` for the first (nothing predicts it).
    PromptLogprobs(Vec<Option<Logprobs>>),
    /// One generated token of choice `index`. `text` is the newly completed text (may be empty
    /// while a multi-byte character or a possible stop string is held back).
    Token { index: usize, token: u32, text: String, logprobs: Option<Logprobs> },
    /// A pooling request's result, before its `Finished`: at the prompt's last token, either
    /// the final hidden state (after the last norm) as the model computed it (not normalised),
    /// or, where the request names `score_tokens`, those tokens' raw logits in that order.
    Pooled { index: usize, values: Vec<f32> },
    /// Choice `index` ended; `text` is any held-back text released at the end.
    Finished { index: usize, reason: FinishReason, stop_reason: Option<StopReason>, text: String, usage: Usage },
}
