//! `POST /infill`: llama.cpp's code-completion endpoint, as editor plugins written for
//! llama-server (llama.vscode, llama.vim) call it: `input_prefix`, `input_suffix`, other files
//! of the repository in `input_extra`, the cursor line's start in `prompt`; llama.cpp's
//! sampling names and defaults, and its response shape (`content`, `stop`, `timings`, ...), as
//! `/completion` has them (`llama.rs`).

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::fim::Fim;
use super::llama::respond;
use super::llama_sampling::LlamaSampling;
use super::state::{ApiJson, AppState, LlamaJson};
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct InfillRequest {
    pub input_prefix: String,
    pub input_suffix: String,
    #[serde(default)]
    pub input_extra: Vec<ExtraFile>,
    /// Text after the prefix (llama.vscode sends the cursor line's start here).
    #[serde(default)]
    pub prompt: String,
    #[serde(flatten)]
    pub sampling: LlamaSampling,
}

#[derive(Debug, Deserialize)]
pub struct ExtraFile {
    #[serde(default = "default_filename")]
    pub filename: String,
    pub text: String,
}

fn default_filename() -> String {
    "tmp".into()
}

pub async fn infill(State(state): State<AppState>, ApiJson(req): LlamaJson<InfillRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let engine = &state.engine;
    let tokenizer = engine.tokenizer();
    let fim = Fim::of(tokenizer, "input_prefix")?;
    let files: Vec<(&str, &str)> = req.input_extra.iter().map(|f| (f.filename.as_str(), f.text.as_str())).collect();
    let context = fim.repository(tokenizer, &files)?;
    let mut prefix = tokenizer.encode(&req.input_prefix)?;
    prefix.extend(tokenizer.encode(&req.prompt)?);
    // As llama-server does, the prompt is cut to fit rather than refused: editor plugins send
    // as much of the file and the repository as they have. Room is left for `n_predict`
    // tokens, or a quarter of the context where it is not set.
    let max_sequence = engine.max_sequence_tokens();
    let output = match req.sampling.n_predict {
        Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX).max(1),
        _ => max_sequence / 4,
    };
    let prompt = fim.fit(&context, &prefix, &tokenizer.encode(&req.input_suffix)?, max_sequence.saturating_sub(output));
    let (mut params, _) = req.sampling.params(engine, prompt.len())?;
    if !params.ignore_eos && !params.embed {
        params.stop_token_ids.extend(&fim.ends);
    }
    respond(&state, started, prompt, params, &req.sampling, "input_prefix").await
}
