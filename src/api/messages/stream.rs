//! A message streamed as Anthropic's events: `message_start`, then per content block
//! `content_block_start`, its `content_block_delta`s (`thinking_delta`, `text_delta`,
//! `input_json_delta`) and `content_block_stop`, then `message_delta` (the stop reason and
//! output tokens) and `message_stop`.

use serde_json::{json, Value};

use super::{stop_reason, tool_use, usage};
use crate::api::chat::ChatContext;
use crate::api::generation::{Timing, ABORTED};
use crate::api::sse::SseSender;
use crate::api::tool_parser::ToolCall;
use crate::api::types::Delta;
use crate::engine::{Event, FinishReason, RequestStream, Usage};

pub(super) async fn run(id: &str, model: &str, ctx: &ChatContext, mut stream: RequestStream, num_prompt_tokens: usize, timing: &mut Timing, tx: &SseSender) {
    // `message_start` waits for the first event: by then the request is admitted, and its
    // usage can split the prompt into what the prefix cache held and the rest, as Anthropic's does.
    let mut first = Some(stream.recv().await);
    let usage_so_far = usage(num_prompt_tokens, Usage { num_prompt_tokens, num_output_tokens: 0, num_cached_tokens: stream.num_cached_tokens() });
    let start = json!({"message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage_so_far}});
    let mut w = Writer { tx, index: 0, open: None, called: false };
    if !w.send("message_start", start).await {
        return;
    }
    let mut parse = ctx.choice_stream();
    loop {
        let next = match first.take() {
            Some(event) => event,
            None => stream.recv().await,
        };
        let Some(event) = next else {
            w.send("error", json!({"error": {"type": "api_error", "message": "the engine stopped before the request finished"}})).await;
            return;
        };
        match event {
            Event::PromptLogprobs(_) | Event::Pooled { .. } => {}
            Event::Token { text, .. } => {
                timing.token();
                if !w.delta(parse.delta(&text, false)).await {
                    return;
                }
            }
            Event::Finished { reason, stop_reason: stop, text, usage: u, .. } => {
                if reason == FinishReason::Abort {
                    w.send("error", json!({"error": {"type": "api_error", "message": ABORTED}})).await;
                    return;
                }
                if !w.delta(parse.delta(&text, true)).await || !w.close().await {
                    return;
                }
                let (stop_reason, stop_sequence) = stop_reason(Some(reason), stop.as_ref(), w.called);
                // The whole usage (the SDK takes `message_delta`'s over `message_start`'s).
                let delta = json!({"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage(num_prompt_tokens, u)});
                if w.send("message_delta", delta).await {
                    w.send("message_stop", json!({})).await;
                }
                return;
            }
        }
    }
}

/// The kind of block being streamed.
#[derive(PartialEq)]
enum Open {
    Thinking,
    Text,
}

struct Writer<'a> {
    tx: &'a SseSender,
    /// The next block's index.
    index: usize,
    open: Option<Open>,
    called: bool,
}

impl Writer<'_> {
    async fn send(&self, kind: &str, mut payload: Value) -> bool {
        payload["type"] = kind.into();
        self.tx.event(kind, &payload).await
    }

    async fn delta(&mut self, delta: Delta) -> bool {
        if let Some(text) = delta.reasoning_content {
            if !self.block(Open::Thinking, json!({"type": "thinking", "thinking": "", "signature": ""}), json!({"type": "thinking_delta", "thinking": text})).await {
                return false;
            }
        }
        if let Some(text) = delta.content {
            if !self.block(Open::Text, json!({"type": "text", "text": ""}), json!({"type": "text_delta", "text": text})).await {
                return false;
            }
        }
        for call in delta.tool_calls {
            let call = ToolCall { id: call.id, name: call.function.name, arguments: call.function.arguments };
            let mut start = tool_use(&call);
            let input = std::mem::replace(&mut start["input"], json!({}));
            if !self.close().await
                || !self.send("content_block_start", json!({"index": self.index, "content_block": start})).await
                || !self.send("content_block_delta", json!({"index": self.index, "delta": {"type": "input_json_delta", "partial_json": input.to_string()}})).await
                || !self.send("content_block_stop", json!({"index": self.index})).await
            {
                return false;
            }
            self.index += 1;
            self.called = true;
        }
        true
    }

    /// `delta` into a block of `kind`, opening one (`start`) after closing any other.
    async fn block(&mut self, kind: Open, start: Value, delta: Value) -> bool {
        if self.open.as_ref() != Some(&kind) {
            if !self.close().await || !self.send("content_block_start", json!({"index": self.index, "content_block": start})).await {
                return false;
            }
            self.open = Some(kind);
        }
        self.send("content_block_delta", json!({"index": self.index, "delta": delta})).await
    }

    async fn close(&mut self) -> bool {
        if self.open.take().is_none() {
            return true;
        }
        let ok = self.send("content_block_stop", json!({"index": self.index})).await;
        self.index += 1;
        ok
    }
}
