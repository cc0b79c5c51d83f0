//! Pooling requests through the engine (embeddings, reranking scores): many prompts, each
//! ending in one vector at its last token. They run in a sliding window as wide as the
//! engine's batch, so they batch together without a 2,048-item request filling the waiting
//! queue; should other clients fill that queue meanwhile, the request ends with their 429
//! (nothing is half-returned).

use std::collections::VecDeque;

use crate::engine::{EngineHandle, EngineRequest, Event, FinishReason, RequestStream, SamplingParams};
use crate::error::ApiError;

/// Each prompt's pooled vector (`Event::Pooled`), in order. A fault in item `i` names
/// `field` and says which item (see [`item_error`]).
pub async fn pool_all(engine: &EngineHandle, prompts: &[Vec<u32>], params: &SamplingParams, field: &str) -> Result<Vec<Vec<f32>>, ApiError> {
    let window = engine.config().max_num_seqs.max(1);
    let mut pending = VecDeque::with_capacity(window);
    let mut submitted = prompts.iter().enumerate();
    let mut out = Vec::with_capacity(prompts.len());
    while out.len() < prompts.len() {
        while pending.len() < window {
            let Some((i, prompt)) = submitted.next() else { break };
            let stream = engine.submit(EngineRequest { prompt: prompt.clone(), params: params.clone() });
            pending.push_back(stream.map_err(|e| item_error(e.into(), field, i))?);
        }
        let stream = pending.pop_front().expect("an item not yet returned is in the window");
        out.push(pooled(stream).await?);
    }
    Ok(out)
}

/// `e` about item `i` of the request's `field`: a 400 names the field; the message says which
/// item ("input 3: ...").
pub fn item_error(mut e: ApiError, field: &str, i: usize) -> ApiError {
    if e.status == axum::http::StatusCode::BAD_REQUEST {
        e.param = Some(field.into());
    }
    e.message = format!("{field} {i}: {}", e.message);
    e
}

/// The engine's result for one pooling request.
async fn pooled(mut stream: RequestStream) -> Result<Vec<f32>, ApiError> {
    let mut values = None;
    while let Some(event) = stream.recv().await {
        match event {
            Event::Pooled { values: v, .. } => values = Some(v),
            Event::Finished { reason: FinishReason::Abort, .. } => break,
            Event::Finished { .. } => return values.ok_or_else(|| ApiError::internal("the engine finished a pooling request without its result")),
            Event::PromptLogprobs(_) | Event::Token { .. } => {}
        }
    }
    Err(ApiError::internal("the request was aborted by the engine (see the server log)"))
}
