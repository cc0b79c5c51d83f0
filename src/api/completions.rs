//! `POST /v1/completions`: raw prompts (text or token ids, one or many) -> text, with `echo`
//! and prompt logprobs as OpenAI's legacy API has them.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::fim;
use super::output_format;
use super::generation::{collect, random_id, unix_time, usage, StreamUsage, Timing, ABORTED};
use super::sse::sse_response;
use super::state::{ApiJson, AppState};
use super::types::*;
use super::validate;
use crate::engine::sampler::{Logprobs, MAX_LOGPROBS};
use crate::engine::{EngineRequest, Event, FinishReason, RequestStream};
use crate::error::ApiError;
use crate::tokenizer::Tokenizer;

/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

pub async fn completions(State(state): State<AppState>, ApiJson(req): ApiJson<CompletionRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    validate::check_model(req.sampling.model.as_deref(), &state.model_name)?;
    let suffix = req.suffix.as_deref().filter(|s| !s.is_empty());
    if suffix.is_some() && req.echo {
        return Err(ApiError::invalid("echo", "`echo` cannot be combined with `suffix`: the prompt the model reads is not the text sent"));
    }
    check_best_of(req.best_of, req.sampling.n)?;
    let stream_usage = StreamUsage::requested(&req.sampling)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_LOGPROBS as i64).contains(&k) => Some(k as usize),
        Some(k) => return Err(ApiError::invalid("logprobs", format!("`logprobs` must be in [0, {MAX_LOGPROBS}], got {k}"))),
    };
    let engine = &state.engine;
    let tokenizer = engine.tokenizer();
    let mut prompts: Vec<Vec<u32>> = match &req.prompt {
        Prompt::Text(t) => vec![tokenizer.encode(t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| tokenizer.encode(t)).collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(lists) => lists.clone(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list"));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(ApiError::invalid("prompt", format!("prompt {i} is empty")));
    }
    for prompt in &mut prompts {
        validate::truncate_prompt(&req.sampling, prompt, engine.max_sequence_tokens())?;
    }
    let mut fim_ends = vec![];
    if let Some(suffix) = suffix {
        (prompts, fim_ends) = fim::fill_in_the_middle(tokenizer, prompts, suffix)?;
    }
    let (format, field) = output_format::requested(req.response_format.as_ref(), &req.structured, &state.formats)?;
    validate::held_output_compatible(&req.sampling, &format, &field, false, false)?;
    let mut params = validate::sampling_params(&req.sampling, tokenizer.vocab_size(), DEFAULT_MAX_TOKENS, logprobs, engine.sampling_defaults())?;
    params.format = format;
    if !params.ignore_eos {
        params.stop_token_ids.extend(fim_ends);
    }
    if req.echo && logprobs.is_some() {
        params.prompt_logprobs = logprobs;
    }
    let n = params.n;
    engine.check_fits_waiting_queue(prompts.len(), n)?;
    // Submit every prompt before reading any: they batch together in the engine.
    let mut streams = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        let limit = req.sampling.output_limit().0;
        let submitted = engine.submit(EngineRequest { prompt: prompt.clone(), params: params.clone() });
        streams.push(submitted.map_err(|e| validate::length_error(e, engine.max_sequence_tokens(), "prompt", limit))?);
    }
    let ctx = Ctx { id: random_id("cmpl"), created: unix_time(), model: state.model_name.clone(), tokenizer: tokenizer.clone(), echo: req.echo, logprobs, token_ids: req.return_tokens_as_token_ids };
    let mut timing = Timing::new(started);
    if req.sampling.stream {
        let metrics = state.metrics.clone();
        return Ok(sse_response(move |tx| async move {
            stream_completions(&ctx, streams, prompts, n, stream_usage, &mut timing, &tx).await;
            timing.record(&metrics);
        }));
    }
    let mut choices = vec![];
    let mut usages = vec![];
    let mut num_prompt_tokens = 0;
    for (p, stream) in streams.into_iter().enumerate() {
        num_prompt_tokens += stream.num_prompt_tokens;
        let collected = collect(stream, n, &mut timing).await?;
        for (j, c) in collected.choices.into_iter().enumerate() {
            let (text, lp) = ctx.choice_text(&prompts[p], collected.prompt_logprobs.as_deref(), &c.tokens, &c.logprobs, &c.text);
            usages.push(c.usage);
            let (finish_reason, stop_reason) = (Some(c.finish_reason.unwrap_or(FinishReason::Stop).as_str()), MatchedStop::of(c.stop_reason.as_ref()));
            choices.push(CompletionChoice { index: p * n + j, text, logprobs: lp, finish_reason, stop_reason });
        }
    }
    timing.record(&state.metrics);
    let body = Completion {
        id: ctx.id,
        object: "text_completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage: Some(usage(num_prompt_tokens, usages)),
    };
    Ok(Json(body).into_response())
}

/// OpenAI's `best_of` (candidates generated server-side, the best `n` returned) must be at
/// least `n`; only `best_of == n` is served (every candidate is returned).
fn check_best_of(best_of: Option<i64>, n: Option<i64>) -> Result<(), ApiError> {
    let (Some(best_of), n) = (best_of, n.unwrap_or(1)) else {
        return Ok(());
    };
    if best_of < n {
        return Err(ApiError::invalid("best_of", format!("`best_of` must be at least `n` ({n}), got {best_of}")));
    }
    if best_of != n {
        return Err(ApiError::invalid("best_of", format!("`best_of` other than `n` ({n}) is not supported, got {best_of}")));
    }
    Ok(())
}

struct Ctx {
    id: String,
    created: u64,
    model: String,
    tokenizer: Tokenizer,
    echo: bool,
    logprobs: Option<usize>,
    /// `return_tokens_as_token_ids`.
    token_ids: bool,
}

impl Ctx {
    fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// How a token is named in logprobs: its text, or `token_id:{id}`.
    fn token_name(&self, id: u32) -> String {
        if self.token_ids {
            format!("token_id:{id}")
        } else {
            self.token_text(id)
        }
    }

    fn top(&self, l: &Logprobs) -> Map<String, Value> {
        l.top.iter().map(|&(id, lp)| (self.token_name(id), json!(lp))).collect()
    }

    /// Appends tokens to a legacy logprobs object, tracking text offsets (of the text either way).
    /// Offsets count chars, as Python's `str` indexing (OpenAI, vLLM); a token holding part
    /// of a char counts as what it is shown as (U+FFFD).
    fn extend(&self, out: &mut CompletionLogprobs, offset: &mut usize, tokens: &[u32], logprobs: &[Option<&Logprobs>]) {
        for (&t, l) in tokens.iter().zip(logprobs) {
            let text = self.token_text(t);
            out.text_offset.push(*offset);
            *offset += text.chars().count();
            out.tokens.push(if self.token_ids { self.token_name(t) } else { text });
            out.token_logprobs.push(l.map(|l| l.token_logprob));
            out.top_logprobs.push(l.map(|l| self.top(l)));
        }
    }

    /// The choice's text (prompt first under `echo`) and its logprobs.
    fn choice_text(&self, prompt: &[u32], prompt_lp: Option<&[Option<Logprobs>]>, tokens: &[u32], lps: &[Logprobs], text: &str) -> (String, Option<CompletionLogprobs>) {
        let mut full = String::new();
        let mut out = CompletionLogprobs::default();
        let mut offset = 0;
        if self.echo {
            full = self.tokenizer.decode(prompt, false).unwrap_or_default();
            if self.logprobs.is_some() {
                let lp: Vec<Option<&Logprobs>> = match prompt_lp {
                    Some(p) => p.iter().map(Option::as_ref).collect(),
                    None => vec![None; prompt.len()],
                };
                self.extend(&mut out, &mut offset, prompt, &lp);
            }
        }
        full.push_str(text);
        if self.logprobs.is_some() {
            let lp: Vec<Option<&Logprobs>> = lps.iter().map(Some).collect();
            self.extend(&mut out, &mut offset, tokens, &lp);
        }
        (full, self.logprobs.map(|_| out))
    }
}

async fn stream_completions(ctx: &Ctx, streams: Vec<RequestStream>, prompts: Vec<Vec<u32>>, n: usize, stream_usage: StreamUsage, timing: &mut Timing, tx: &super::sse::SseSender) {
    // Fan the prompts' streams into one channel, tagged with the prompt index.
    let (fan_tx, mut fan_rx) = mpsc::unbounded_channel::<(usize, Event)>();
    let prompt_sizes: Vec<usize> = streams.iter().map(|s| s.num_prompt_tokens).collect();
    let num_prompt_tokens: usize = prompt_sizes.iter().sum();
    for (p, mut s) in streams.into_iter().enumerate() {
        let fan_tx = fan_tx.clone();
        // Ends (dropping the engine stream, so the request is aborted) with its last event, or
        // as soon as the stream's reader has gone (a client gone before any event).
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = s.recv() => {
                        if e.is_none_or(|e| fan_tx.send((p, e)).is_err()) {
                            break;
                        }
                    }
                    () = fan_tx.closed() => break,
                }
            }
        });
    }
    drop(fan_tx);
    let chunk = |index: usize, text: String, logprobs: Option<CompletionLogprobs>, (finish, stop_reason): (Option<&'static str>, Option<MatchedStop>), usage: Option<Usage>| Completion {
        id: ctx.id.clone(),
        object: "text_completion",
        created: ctx.created,
        model: ctx.model.clone(),
        choices: vec![CompletionChoice { index, text, logprobs, finish_reason: finish, stop_reason }],
        usage,
    };
    let mut num_output_tokens = vec![0usize; prompts.len() * n];
    let mut offsets = vec![0usize; prompts.len() * n];
    let mut prompt_lps: Vec<Option<Vec<Option<Logprobs>>>> = vec![None; prompts.len()];
    let mut echoed = vec![false; prompts.len() * n];
    let mut usages = vec![];
    while let Some((p, event)) = fan_rx.recv().await {
        let (j, delta, token, finish) = match event {
            Event::PromptLogprobs(l) => {
                prompt_lps[p] = Some(l);
                continue;
            }
            Event::Pooled { .. } => continue,
            Event::Token { index, token, text, logprobs } => {
                timing.token();
                num_output_tokens[p * n + index] += 1;
                (index, text, Some((token, logprobs)), (None, None))
            }
            Event::Finished { index, reason, stop_reason, text, usage } => {
                if reason == FinishReason::Abort {
                    tx.fail(ABORTED).await;
                    return;
                }
                usages.push(usage);
                num_output_tokens[p * n + index] = usage.num_output_tokens;
                (index, text, None, (Some(reason.as_str()), MatchedStop::of(stop_reason.as_ref())))
            }
        };
        let index = p * n + j;
        let mut text = String::new();
        let mut lp = ctx.logprobs.map(|_| CompletionLogprobs::default());
        if ctx.echo && !echoed[index] {
            // The prompt (and its logprobs) leads the choice's first chunk.
            echoed[index] = true;
            let (prompt_text, prompt_lp) = ctx.choice_text(&prompts[p], prompt_lps[p].as_deref(), &[], &[], "");
            offsets[index] = prompt_text.chars().count();
            text = prompt_text;
            if prompt_lp.is_some() {
                lp = prompt_lp;
            }
        }
        text.push_str(&delta);
        if let (Some(out), Some((token, l))) = (lp.as_mut(), token) {
            ctx.extend(out, &mut offsets[index], &[token], &[l.as_ref()]);
        }
        if text.is_empty() && finish.0.is_none() && lp.as_ref().is_none_or(|l| l.tokens.is_empty()) {
            continue;
        }
        if !tx.json(&chunk(index, text, lp, finish, stream_usage.so_far(prompt_sizes[p], num_output_tokens[index]))).await {
            return;
        }
    }
    if usages.len() < prompts.len() * n {
        tx.fail("the engine stopped before the request finished").await;
        return;
    }
    if stream_usage.last_chunk {
        let u = usage(num_prompt_tokens, usages);
        tx.json(&Completion { id: ctx.id.clone(), object: "text_completion", created: ctx.created, model: ctx.model.clone(), choices: vec![], usage: Some(u) }).await;
    }
    tx.done().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sequence::tests::byte_level_tokenizer;

    #[test]
    fn best_of_must_be_at_least_n_and_is_served_only_at_n() {
        for (best_of, n) in [(None, Some(3)), (Some(1), None), (Some(2), Some(2))] {
            assert!(check_best_of(best_of, n).is_ok(), "{best_of:?} {n:?}");
        }
        for (best_of, n, says) in [(Some(1), Some(2), "at least `n` (2)"), (Some(0), None, "at least"), (Some(3), Some(2), "not supported")] {
            let e = check_best_of(best_of, n).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("best_of"));
            assert!(e.message.contains(says), "{}", e.message);
        }
    }

    #[test]
    fn text_offsets_count_chars() {
        // "é" is bytes C3 A9, "è" C3 A8: `Ã©`, `Ã¨` in the byte-level alphabet.
        let vocab = json!({"Le": 0, "Ġcaf": 1, "Ã©": 2, "Ġcr": 3, "Ã¨": 4, "me": 5, "Ã": 6, "©": 7, "!": 8});
        let ctx = |echo| Ctx { id: String::new(), created: 0, model: String::new(), tokenizer: byte_level_tokenizer(vocab.clone()), echo, logprobs: Some(0), token_ids: false };
        let lp = |n| vec![Logprobs { token_logprob: 0.0, top: vec![] }; n];
        let (text, out) = ctx(true).choice_text(&[0, 1, 2], None, &[3, 4, 5], &lp(3), " crème");
        let out = out.unwrap();
        assert_eq!(text, "Le café crème");
        assert_eq!(out.text_offset, [0, 2, 6, 7, 10, 11]);
        let chars: Vec<char> = text.chars().collect();
        for (token, &at) in out.tokens.iter().zip(&out.text_offset) {
            assert_eq!(chars[at..at + token.chars().count()].iter().collect::<String>(), *token);
        }
        // A char split over two tokens: each is shown as, and counts as, one U+FFFD.
        let (_, out) = ctx(false).choice_text(&[0], None, &[6, 7, 8], &lp(3), "é!");
        let out = out.unwrap();
        assert_eq!(out.tokens, ["\u{FFFD}", "\u{FFFD}", "!"]);
        assert_eq!(out.text_offset, [0, 1, 2]);
    }
}
