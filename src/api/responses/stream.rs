//! A response streamed as the Responses API's typed events: `response.created`, then per output
//! item `response.output_item.added`, its deltas (`response.reasoning_text.delta`,
//! `response.output_text.delta` inside a content part, `response.function_call_arguments.*`)
//! and `response.output_item.done`, and last `response.completed` (or `response.incomplete`
//! at `max_output_tokens`) with the whole response. Each event carries its `sequence_number`.

use serde_json::{json, Value};

use super::logprobs::{entry, ContentTokens};
use super::{assistant_message, call_item, message_item, output_text, reasoning_item, status, usage, Echo};
use crate::api::chat::ChatContext;
use crate::api::generation::{item_id, Timing, ABORTED};
use crate::api::sse::SseSender;
use crate::api::tool_parser::ToolCall;
use crate::api::types::{ChatMessage, ChatTokenLogprob, Delta};
use crate::engine::{Event, FinishReason, RequestStream};

/// Streams the request's output; the final response object and the assistant turn it adds to
/// the conversation, or `None` if the client left or the engine failed.
/// With `logprobs`, the message's tokens' logprobs go with its text deltas.
pub(super) async fn run(echo: &Echo, ctx: &ChatContext, mut stream: RequestStream, num_prompt_tokens: usize, logprobs: bool, timing: &mut Timing, tx: &SseSender) -> Option<(Value, ChatMessage)> {
    let tokens = logprobs.then(ContentTokens::default);
    let mut w = Writer { tx, seq: 0, items: vec![], open: None, reasoning: String::new(), content: String::new(), calls: vec![], status: "completed", tokens };
    let start = json!({"response": echo.response("in_progress", &[], None)});
    if !w.send("response.created", start.clone()).await || !w.send("response.in_progress", start).await {
        return None;
    }
    let mut parse = ctx.choice_stream();
    loop {
        let Some(event) = stream.recv().await else {
            w.send("error", json!({"code": "server_error", "message": "the engine stopped before the request finished", "param": null})).await;
            return None;
        };
        match event {
            Event::PromptLogprobs(_) | Event::Pooled { .. } => {}
            Event::Token { text, token, logprobs, .. } => {
                timing.token();
                if let (Some(tokens), Some(l)) = (&mut w.tokens, &logprobs) {
                    tokens.token(&text, entry(&ctx.tokenizer, token, l));
                }
                if !w.delta(parse.delta(&text, false)).await {
                    return None;
                }
            }
            Event::Finished { reason, text, usage: u, .. } => {
                if reason == FinishReason::Abort {
                    w.send("error", json!({"code": "server_error", "message": ABORTED, "param": null})).await;
                    return None;
                }
                let status = status(Some(reason));
                w.status = status;
                if let Some(tokens) = &mut w.tokens {
                    tokens.text(&text);
                }
                if !w.delta(parse.delta(&text, true)).await || !w.close().await {
                    return None;
                }
                let response = echo.response(status, &w.items, Some(usage(ctx, num_prompt_tokens, u, &w.items)));
                let kind = if status == "incomplete" { "response.incomplete" } else { "response.completed" };
                w.send(kind, json!({"response": response})).await;
                let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
                let message = assistant_message(&non_empty(std::mem::take(&mut w.content)), &non_empty(std::mem::take(&mut w.reasoning)), &w.calls);
                return Some((response, message));
            }
        }
    }
}

/// The item being streamed.
enum Open {
    Reasoning { id: String, text: String },
    Message { id: String, text: String, logprobs: Vec<ChatTokenLogprob> },
}

struct Writer<'a> {
    tx: &'a SseSender,
    seq: u64,
    /// Items done, in output order.
    items: Vec<Value>,
    open: Option<Open>,
    reasoning: String,
    content: String,
    calls: Vec<ToolCall>,
    /// A closed message's status: the response's once it is known.
    status: &'static str,
    /// The output's tokens, when the message's logprobs are asked for.
    tokens: Option<ContentTokens<ChatTokenLogprob>>,
}

impl Writer<'_> {
    /// One event; false when the client has gone.
    async fn send(&mut self, kind: &str, mut payload: Value) -> bool {
        payload["type"] = kind.into();
        payload["sequence_number"] = self.seq.into();
        self.seq += 1;
        self.tx.event(kind, &payload).await
    }

    async fn delta(&mut self, delta: Delta) -> bool {
        let entries = self.tokens.as_mut().map(|t| t.delta(&delta)).unwrap_or_default();
        if let Some(text) = delta.reasoning_content {
            if !self.reasoning_text(&text).await {
                return false;
            }
        }
        if let Some(text) = delta.content {
            if !self.output_text(&text, entries).await {
                return false;
            }
        }
        for call in delta.tool_calls {
            if !self.call(ToolCall { id: call.id, name: call.function.name, arguments: call.function.arguments }).await {
                return false;
            }
        }
        true
    }

    async fn reasoning_text(&mut self, delta: &str) -> bool {
        let index = self.items.len();
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            let id = item_id("rs");
            if !self.close().await || !self.send("response.output_item.added", json!({"output_index": index, "item": {"type": "reasoning", "id": id, "summary": [], "content": []}})).await {
                return false;
            }
            self.open = Some(Open::Reasoning { id, text: String::new() });
        }
        let Some(Open::Reasoning { id, text }) = &mut self.open else { unreachable!("opened above") };
        text.push_str(delta);
        self.reasoning.push_str(delta);
        let payload = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta});
        self.send("response.reasoning_text.delta", payload).await
    }

    /// The message's text `delta`, written by the tokens with logprob `entries`.
    async fn output_text(&mut self, delta: &str, entries: Vec<ChatTokenLogprob>) -> bool {
        let index = self.items.len();
        if !matches!(self.open, Some(Open::Message { .. })) {
            let id = item_id("msg");
            let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
            if !self.close().await
                || !self.send("response.output_item.added", json!({"output_index": index, "item": item})).await
                || !self.send("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text("", Vec::new())})).await
            {
                return false;
            }
            self.open = Some(Open::Message { id, text: String::new(), logprobs: Vec::new() });
        }
        let Some(Open::Message { id, text, logprobs }) = &mut self.open else { unreachable!("opened above") };
        text.push_str(delta);
        logprobs.extend(entries.iter().cloned());
        self.content.push_str(delta);
        let payload = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": entries});
        self.send("response.output_text.delta", payload).await
    }

    /// Ends the item being streamed, if any.
    async fn close(&mut self) -> bool {
        let index = self.items.len();
        let item = match self.open.take() {
            None => return true,
            Some(Open::Reasoning { id, text }) => {
                if !self.send("response.reasoning_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text})).await {
                    return false;
                }
                reasoning_item(&id, &text)
            }
            Some(Open::Message { id, text, logprobs }) => {
                let done = json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": logprobs});
                let part = json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text(&text, logprobs.clone())});
                if !self.send("response.output_text.done", done).await || !self.send("response.content_part.done", part).await {
                    return false;
                }
                message_item(&id, &text, self.status, logprobs)
            }
        };
        self.items.push(item.clone());
        self.send("response.output_item.done", json!({"output_index": index, "item": item})).await
    }

    /// A whole tool call (the parser yields each once its closing tag is read).
    async fn call(&mut self, call: ToolCall) -> bool {
        if !self.close().await {
            return false;
        }
        let index = self.items.len();
        let id = item_id("fc");
        let mut added = call_item(&id, &call, "in_progress");
        added["arguments"] = "".into();
        let done = json!({"item_id": id, "output_index": index, "name": call.name, "arguments": call.arguments});
        if !self.send("response.output_item.added", json!({"output_index": index, "item": added})).await
            || !self.send("response.function_call_arguments.delta", json!({"item_id": id, "output_index": index, "delta": call.arguments})).await
            || !self.send("response.function_call_arguments.done", done).await
        {
            return false;
        }
        let item = call_item(&id, &call, "completed");
        self.items.push(item.clone());
        self.calls.push(call);
        self.send("response.output_item.done", json!({"output_index": index, "item": item})).await
    }
}
