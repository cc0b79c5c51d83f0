//! Relevance scores, as a Qwen3-Reranker gives them: `POST /v1/rerank` (vLLM's, Jina's and
//! Cohere's shape: a query and documents, ranked) and `POST /v1/score` (vLLM's: text pairs).
//! Each (query, document) pair is written into Qwen3-Reranker's prompt; its score is P("yes")
//! against P("no") at the prompt's last position, sigmoid(logit_yes - logit_no), from one
//! prefill through the engine (no token is generated; documents after the same query share
//! its prefix in the cache). A pair too long is refused unless `truncate_prompt_tokens` asks
//! for its document's tail to be cut. Special tokens written in a query or document are read
//! as such, as transformers and vLLM read them.

use std::time::Instant;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::generation::{random_id, unix_time};
use super::pooling::{item_error, pool_all};
use super::state::{ApiJson, AppState};
use super::types::StringOrList;
use super::validate;
use crate::engine::SamplingParams;
use crate::error::ApiError;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// The most pairs one request may score (as embeddings' inputs).
const MAX_PAIRS: usize = 2048;

/// Qwen3-Reranker's system message and default instruction (its model card's).
const SYSTEM: &str = "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".";
const DEFAULT_INSTRUCTION: &str = "Given a web search query, retrieve relevant passages that answer the query";

/// A document: a string, or Jina's `{"text": ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Document {
    Text(String),
    Object { text: String },
}

impl Document {
    fn text(&self) -> &str {
        match self {
            Document::Text(t) | Document::Object { text: t } => t,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RerankRequest {
    pub model: Option<String>,
    pub query: String,
    pub documents: Vec<Document>,
    /// The best `top_n` results (absent or 0: all).
    pub top_n: Option<i64>,
    /// Whether each result repeats its document (default true, as vLLM and Jina).
    pub return_documents: Option<bool>,
    /// The task, in Qwen3-Reranker's `<Instruct>` line (default: web search).
    pub instruction: Option<String>,
    /// Cut each pair's prompt to at most this many tokens (-1: the context) by dropping the
    /// document's tail; without it a pair too long is refused. vLLM's name.
    pub truncate_prompt_tokens: Option<i64>,
    /// Cohere's: keep about this many of each document's tokens (its tail is dropped).
    pub max_tokens_per_doc: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScoreRequest {
    pub model: Option<String>,
    /// Queries: one (scored against every `text_2`) or as many as `text_2` (pairwise).
    pub text_1: StringOrList,
    pub text_2: StringOrList,
    pub instruction: Option<String>,
    pub truncate_prompt_tokens: Option<i64>,
}

pub async fn rerank(State(state): State<AppState>, ApiJson(req): ApiJson<RerankRequest>) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    validate::check_model(req.model.as_deref(), &state.model_name)?;
    if req.documents.is_empty() {
        return Err(ApiError::invalid("documents", "`documents` must not be empty"));
    }
    let top_n = match req.top_n {
        None | Some(0) => req.documents.len(),
        Some(n) if n > 0 => (n as usize).min(req.documents.len()),
        Some(n) => return Err(ApiError::invalid("top_n", format!("`top_n` must be at least 0 (0: all), got {n}"))),
    };
    let pairs: Vec<(&str, &str)> = req.documents.iter().map(|d| (req.query.as_str(), d.text())).collect();
    let doc_cap = match req.max_tokens_per_doc {
        None => None,
        Some(n) if n >= 1 => Some(n as usize),
        Some(n) => return Err(ApiError::invalid("max_tokens_per_doc", format!("`max_tokens_per_doc` must be at least 1, got {n}"))),
    };
    let truncation = Truncation { prompt: req.truncate_prompt_tokens, per_document: doc_cap };
    let (gaps, num_tokens) = score_pairs(&state, &pairs, req.instruction.as_deref(), truncation, ("query", "documents")).await?;
    let mut order: Vec<usize> = (0..gaps.len()).collect();
    // Best first, by the logit gap (scores of 1.0 can still differ there); ties keep the
    // documents' order.
    order.sort_by(|&a, &b| gaps[b].total_cmp(&gaps[a]));
    let with_documents = req.return_documents.unwrap_or(true);
    let results: Vec<Value> = order[..top_n]
        .iter()
        .map(|&i| {
            let mut result = json!({"index": i, "relevance_score": sigmoid(gaps[i])});
            if with_documents {
                result["document"] = json!({"text": req.documents[i].text()});
            }
            result
        })
        .collect();
    state.metrics.observe_generation(None, None, started.elapsed());
    Ok(Json(json!({
        "id": random_id("rerank"),
        "object": "list",
        "model": state.model_name,
        "results": results,
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
    })))
}

pub async fn score(State(state): State<AppState>, ApiJson(req): ApiJson<ScoreRequest>) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    validate::check_model(req.model.as_deref(), &state.model_name)?;
    let (queries, documents) = (req.text_1.as_slice(), req.text_2.as_slice());
    if queries.is_empty() {
        return Err(ApiError::invalid("text_1", "`text_1` must not be empty"));
    }
    if documents.is_empty() {
        return Err(ApiError::invalid("text_2", "`text_2` must not be empty"));
    }
    let pairs: Vec<(&str, &str)> = match queries.len() {
        1 => documents.iter().map(|d| (queries[0].as_str(), d.as_str())).collect(),
        n if n == documents.len() => queries.iter().zip(documents).map(|(q, d)| (q.as_str(), d.as_str())).collect(),
        n => {
            let message = format!("`text_1` holds {n} texts and `text_2` {}: give one query, or as many as `text_2` (pairwise)", documents.len());
            return Err(ApiError::invalid("text_1", message));
        }
    };
    let truncation = Truncation { prompt: req.truncate_prompt_tokens, per_document: None };
    let (gaps, num_tokens) = score_pairs(&state, &pairs, req.instruction.as_deref(), truncation, ("text_1", "text_2")).await?;
    let data: Vec<Value> = gaps.iter().enumerate().map(|(i, &g)| json!({"index": i, "object": "score", "score": sigmoid(g)})).collect();
    state.metrics.observe_generation(None, None, started.elapsed());
    Ok(Json(json!({
        "id": random_id("score"),
        "object": "list",
        "created": unix_time(),
        "model": state.model_name,
        "data": data,
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
    })))
}

/// Qwen3-Reranker's prompt for one instruction: its token ids around each (query, document).
pub struct RerankPrompt<'a> {
    tokenizer: &'a Tokenizer,
    instruction: &'a str,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

impl<'a> RerankPrompt<'a> {
    /// `instruction`: the task (`None`: web search, the model card's default).
    pub fn new(tokenizer: &'a Tokenizer, instruction: Option<&'a str>) -> Result<Self, TokenizerError> {
        Ok(Self {
            tokenizer,
            instruction: instruction.unwrap_or(DEFAULT_INSTRUCTION),
            prefix: tokenizer.encode(&format!("<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"))?,
            suffix: tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")?,
        })
    }

    /// The pair's prompt, as the model card builds it: prefix, pair and suffix tokenized apart
    /// and joined; with `limit`, the pair's tokens are cut from the right (the document's
    /// tail) to keep the prompt within it, as the card truncates. `Err(n)`: the prompt needs
    /// `n` tokens however short the document (the query does not fit).
    pub fn ids(&self, query: &str, document: &str, limit: Option<usize>) -> Result<Result<Vec<u32>, usize>, TokenizerError> {
        let mut ids = self.pair(query, &format!(" {document}"))?;
        let fixed = self.prefix.len() + self.suffix.len();
        if let Some(limit) = limit.filter(|&l| fixed + ids.len() > l) {
            let least = self.least(query)?;
            if least > limit {
                return Ok(Err(least));
            }
            ids.truncate(limit - fixed);
        }
        Ok(Ok([&self.prefix[..], &ids, &self.suffix].concat()))
    }

    /// The fewest tokens a prompt for `query` can have: up to `<Document>:`, none of the
    /// document.
    pub fn least(&self, query: &str) -> Result<usize, TokenizerError> {
        Ok(self.prefix.len() + self.pair(query, "")?.len() + self.suffix.len())
    }

    fn pair(&self, query: &str, document: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer.encode(&format!("<Instruct>: {}\n<Query>: {query}\n<Document>:{document}", self.instruction))
    }
}

/// How a request lets its pairs be cut: `truncate_prompt_tokens` (the whole prompt, k or -1
/// for the context) and Cohere's `max_tokens_per_doc` (about n of the document's tokens).
struct Truncation {
    prompt: Option<i64>,
    per_document: Option<usize>,
}

/// Each pair's yes - no logit gap, and the prompt tokens they took. `fields`: the request's
/// names for the queries and the documents (errors name them).
async fn score_pairs(state: &AppState, pairs: &[(&str, &str)], instruction: Option<&str>, truncation: Truncation, fields: (&str, &str)) -> Result<(Vec<f64>, usize), ApiError> {
    if pairs.len() > MAX_PAIRS {
        return Err(ApiError::invalid(fields.1, format!("`{}` holds {} texts, more than {MAX_PAIRS}", fields.1, pairs.len())));
    }
    if instruction.is_some_and(str::is_empty) {
        return Err(ApiError::invalid("instruction", "`instruction` must not be empty (leave it out for the default)"));
    }
    let engine = &state.engine;
    let max = engine.max_sequence_tokens();
    let limit = match truncation.prompt {
        None => None,
        Some(-1) => Some(max),
        Some(k) if k >= 1 => Some((k as usize).min(max)),
        Some(k) => return Err(ApiError::invalid("truncate_prompt_tokens", format!("`truncate_prompt_tokens` must be at least 1 (or -1: the context), got {k}"))),
    };
    let tokenizer = engine.tokenizer();
    let (Some(yes), Some(no)) = (tokenizer.token_to_id("yes"), tokenizer.token_to_id("no")) else {
        return Err(ApiError::bad_request("this model's vocabulary has no `yes` and `no` tokens to score with"));
    };
    let template = RerankPrompt::new(tokenizer, instruction)?;
    let mut prompts = Vec::with_capacity(pairs.len());
    for (i, (query, document)) in pairs.iter().enumerate() {
        if query.is_empty() {
            return Err(item_error(ApiError::invalid(fields.0, "the query is empty"), fields.0, i));
        }
        // The document's share: its tokens past `per_document` go (the space before it and
        // its first word share a token, so "about").
        let limit = match truncation.per_document {
            Some(n) => Some(limit.unwrap_or(max).min(template.least(query)? + n)),
            None => limit,
        };
        let too_long = |field: &str, n: usize| {
            let hint = if limit.is_some() { "" } else { " (`truncate_prompt_tokens` cuts the document to fit)" };
            let mut e = ApiError::invalid(field, format!("the pair's prompt has {n} tokens, more than the {} allowed{hint}", limit.unwrap_or(max)));
            e.code = Some("context_length_exceeded");
            item_error(e, field, i)
        };
        let prompt = match template.ids(query, document, limit)? {
            Err(least) => return Err(too_long(fields.0, least)),
            Ok(prompt) if prompt.len() > max => {
                // Untruncated: the document is to blame, unless the query alone is too long.
                let field = if template.least(query)? > max { fields.0 } else { fields.1 };
                return Err(too_long(field, prompt.len()));
            }
            Ok(prompt) => prompt,
        };
        prompts.push(prompt);
    }
    let num_tokens = prompts.iter().map(Vec::len).sum();
    let params = SamplingParams { embed: true, max_tokens: 0, score_tokens: vec![yes, no], ..Default::default() };
    let logits = pool_all(engine, &prompts, &params, fields.1).await?;
    Ok((logits.iter().map(|l| f64::from(l[0]) - f64::from(l[1])).collect(), num_tokens))
}

/// P("yes") of the two: softmax over (yes, no) is the logistic of their difference.
fn sigmoid(gap: f64) -> f64 {
    1.0 / (1.0 + (-gap).exp())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_score_is_the_softmax_of_yes_against_no() {
        for (yes, no) in [(2.0f64, -1.0f64), (-3.5, 0.25), (7.0, 7.0), (-80.0, 40.0)] {
            let softmax = yes.exp() / (yes.exp() + no.exp());
            assert!((super::sigmoid(yes - no) - softmax).abs() < 1e-12, "{yes} {no}");
        }
        assert_eq!(super::sigmoid(-800.0), 0.0);
        assert_eq!(super::sigmoid(800.0), 1.0);
    }
}
