//! OpenAI wire types: plain serde structs, nothing else. Unknown fields are accepted (as the
//! OpenAI API and vLLM accept them); validation lives in `validate.rs`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `"stop": "x"` or `"stop": ["x", "y"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }

    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// Sampling fields shared by chat and completions (OpenAI's plus vLLM's extensions).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// OpenAI's newer name for `max_tokens`; where both are given it wins, as in vLLM.
    pub max_completion_tokens: Option<i64>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<StringOrList>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<i64>,
    /// vLLM's: the matched stop string stays at the end of the text.
    pub include_stop_str_in_output: Option<bool>,
    /// vLLM's: special tokens (`<|fim_pad|>`, `<think>` where it is one, ...) are left out of
    /// the text unless this is false.
    pub skip_special_tokens: Option<bool>,
    /// vLLM's: only the prompt's last k tokens are read (-1: as many as the context holds).
    pub truncate_prompt_tokens: Option<i64>,
    /// vLLM's prompt logprobs, not served (refused when set; /v1/completions' `echo` with
    /// `logprobs` gives them).
    pub prompt_logprobs: Option<serde_json::Value>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
}

impl SamplingFields {
    /// The output limit asked for, and the field that asked for it.
    pub fn output_limit(&self) -> (&'static str, Option<i64>) {
        match self.max_completion_tokens {
            Some(m) => ("max_completion_tokens", Some(m)),
            None => ("max_tokens", self.max_tokens),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// A last chunk with the request's usage. Left out it is off (OpenAI), unless
    /// `continuous_usage_stats` is on (vLLM defaults it to true).
    pub include_usage: Option<bool>,
    /// vLLM's: every chunk also carries the usage so far (its choice's completion tokens).
    pub continuous_usage_stats: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    /// vLLM's extension: logprob tokens as `token_id:{id}`, so that every token (also one
    /// that is not whole UTF-8 text) can be told apart.
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    /// Under `tool_choice: "required"`, false allows one call only.
    pub parallel_tool_calls: Option<bool>,
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    pub response_format: Option<Value>,
    #[serde(flatten)]
    pub structured: StructuredOutputFields,
    /// vLLM's extension: the output goes on from the last (assistant) message instead of
    /// starting a new turn (a prefill).
    #[serde(default)]
    pub continue_final_message: bool,
    /// vLLM's per-request template: refused, as vLLM refuses it by default (a template is code
    /// the server runs); `--chat-template` sets one.
    pub chat_template: Option<Value>,
    /// vLLM's extension; only `false` goes with `continue_final_message` (and is implied by it).
    pub add_generation_prompt: Option<bool>,
    /// OpenAI's deprecated function calling, before `tools`: refused with a pointer to `tools`
    /// rather than ignored (its replies would need `message.function_call`).
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
}

/// vLLM's structured outputs: `structured_outputs` (`choice`, `regex`, `json`, `json_object`,
/// `grammar`) and the `guided_*` fields it took before v0.12 (`guided_decoding_backend` is
/// ignored); llama.cpp's `grammar` (GBNF) and `json_schema`; SGLang's `ebnf` and `regex`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StructuredOutputFields {
    pub structured_outputs: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_grammar: Option<Value>,
    pub guided_whitespace_pattern: Option<Value>,
    pub grammar: Option<Value>,
    pub json_schema: Option<Value>,
    pub ebnf: Option<Value>,
    pub regex: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// A string, or an array of content parts (`{"type": "text", "text": ...}`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// `prompt`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub echo: bool,
    pub logprobs: Option<i64>,
    /// As in chat: logprob tokens as `token_id:{id}`.
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    /// As in chat (a vLLM extension here): JSON output held to an object or a schema.
    pub response_format: Option<Value>,
    #[serde(flatten)]
    pub structured: StructuredOutputFields,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

// ---- chat responses ----

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
    pub stop_reason: Option<MatchedStop>,
}

/// vLLM's `stop_reason` beside `finish_reason`: the stop string or the `stop_token_ids` id
/// that ended the choice; null for EOS, a length cut, and every chunk but the last.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MatchedStop {
    Token(u32),
    Text(String),
}

impl MatchedStop {
    pub fn of(reason: Option<&crate::engine::StopReason>) -> Option<Self> {
        use crate::engine::StopReason;
        match reason? {
            StopReason::Eos(_) => None,
            StopReason::TokenId(id) => Some(Self::Token(*id)),
            StopReason::String(s) => Some(Self::Text(s.clone())),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionCallOut {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    #[serde(serialize_with = "shortest_f32")]
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    #[serde(serialize_with = "shortest_f32")]
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// An f32 as its shortest decimal (`-0.3952287`), also where it goes through a `Value` (the
/// Responses API builds its items so), which would widen it to `-0.3952287137508392`.
fn shortest_f32<S: serde::Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(x.to_string().parse().unwrap_or(f64::from(*x)))
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<MatchedStop>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

// ---- completion responses ----

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<MatchedStop>,
}

/// The legacy completions logprobs shape: parallel arrays; `top_logprobs` maps token text to
/// logprob; the first prompt token's entries are null under `echo`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<serde_json::Map<String, Value>>>,
    pub text_offset: Vec<usize>,
}

// ---- other endpoints ----

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default = "default_true")]
    pub add_generation_prompt: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}
