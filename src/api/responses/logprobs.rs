//! `include: ["message.output_text.logprobs"]`: the logprobs of the tokens that wrote the
//! message's text, not those of its reasoning or its tool calls.
//!
//! Each token's text is placed in the output as the engine released it. When the output's
//! parser releases text as the message's, the tokens whose text overlaps it are the message's
//! (one that straddles its start or end wrote part of it); those wholly before it (reasoning,
//! `</think>` and the line breaks after it, a call's markup) are dropped. A whole response runs
//! the same steps over its decoded tokens (`whole`), so it lists what the stream sent.

use std::collections::VecDeque;

use crate::api::chat::{token_logprob, ChatContext};
use crate::api::types::ChatTokenLogprob;
use crate::engine::sampler::Logprobs;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// The output so far and its tokens not yet given to the message or dropped, each with an entry
/// `E` (its logprobs).
pub(super) struct ContentTokens<E> {
    output: String,
    /// (start, end) of each token's text in `output`, and its entry.
    pending: VecDeque<(usize, usize, E)>,
}

impl<E> Default for ContentTokens<E> {
    fn default() -> Self {
        Self { output: String::new(), pending: VecDeque::new() }
    }
}

impl<E> ContentTokens<E> {
    /// A generated token with its logprob `entry`: `text` is what the engine released with it
    /// (empty while a character or a possible stop string is held back).
    pub fn token(&mut self, text: &str, entry: E) {
        let start = self.output.len();
        self.text(text);
        self.pending.push_back((start, self.output.len(), entry));
    }

    /// Text released without a token of its own (held back until the end): the tokens whose
    /// text was held back wrote it.
    pub fn text(&mut self, text: &str) {
        let start = self.output.len();
        self.output.push_str(text);
        for t in self.pending.iter_mut().rev().take_while(|t| t.0 == start && t.1 == start) {
            t.1 = self.output.len();
        }
    }

    /// The entries of the tokens that wrote `content`, the text just released as the message's.
    pub fn content(&mut self, content: &str) -> Vec<E> {
        let Some(start) = Some(content).filter(|c| !c.is_empty()).and_then(|c| self.output.rfind(c)) else { return Vec::new() };
        let end = start + content.len();
        let mut entries = Vec::new();
        while let Some(&(a, b, _)) = self.pending.front() {
            if a >= end {
                break;
            }
            let (_, _, entry) = self.pending.pop_front().expect("a front");
            if b > start || (a == b && a >= start) {
                entries.push(entry);
            }
        }
        entries
    }
}

/// A token's logprob entry, as chat's `logprobs.content` has it.
pub(super) fn entry(tokenizer: &Tokenizer, token: u32, logprobs: &Logprobs) -> ChatTokenLogprob {
    token_logprob(tokenizer, token, logprobs, false)
}

/// The message's token entries of a whole (not streamed) output: its tokens decoded as the
/// engine decodes them and parsed as a stream is.
pub(super) fn whole(ctx: &ChatContext, tokenizer: &Tokenizer, tokens: &[u32], logprobs: &[Logprobs]) -> Vec<ChatTokenLogprob> {
    let mut decoder = IncrementalDecoder::new(true);
    let mut parse = ctx.choice_stream();
    let mut spans = ContentTokens::default();
    let mut entries = Vec::new();
    for (&token, l) in tokens.iter().zip(logprobs) {
        let text = decoder.push(tokenizer, token).unwrap_or_default();
        spans.token(&text, entry(tokenizer, token, l));
        if let Some(content) = parse.delta(&text, false).content {
            entries.extend(spans.content(&content));
        }
    }
    let rest = decoder.finish(tokenizer).unwrap_or_default();
    spans.text(&rest);
    if let Some(content) = parse.delta(&rest, true).content {
        entries.extend(spans.content(&content));
    }
    entries
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::ContentTokens;

    /// Feeds `(text, token name)` pairs; after the tokens named in `releases`, the parser
    /// releases that text as the message's. Returns the names given to the message.
    fn message_tokens(tokens: &[(&str, &str)], releases: &[(usize, &str)]) -> Vec<String> {
        let mut t = ContentTokens::<serde_json::Value>::default();
        let mut got = Vec::new();
        for (i, (text, name)) in tokens.iter().enumerate() {
            t.token(text, json!(name));
            for (_, content) in releases.iter().filter(|(at, _)| *at == i) {
                got.extend(t.content(content).into_iter().map(|v| v.as_str().unwrap().to_string()));
            }
        }
        got
    }

    #[test]
    fn only_the_tokens_that_wrote_the_message_are_its() {
        // Thinking, its end and the line breaks after it, then the text, then a call.
        let tokens = [("<think>\n", "a"), ("hm", "b"), ("</think>", "c"), ("\n\n", "d"), ("The", "e"), (" answer", "f"), ("<tool_call>", "g"), ("{}", "h")];
        assert_eq!(message_tokens(&tokens, &[(4, "The"), (5, " answer")]), ["e", "f"]);
        // A token that straddles the text's start wrote part of it.
        let tokens = [("hm</think>", "a"), ("\n\nThe", "b"), (" end", "c")];
        assert_eq!(message_tokens(&tokens, &[(1, "The"), (2, " end")]), ["b", "c"]);
        // A character split across tokens: the held-back token's text comes with the next.
        let tokens = [("caf", "a"), ("", "b"), ("\u{e9}", "c"), ("!", "d")];
        assert_eq!(message_tokens(&tokens, &[(0, "caf"), (2, "\u{e9}"), (3, "!")]), ["a", "b", "c", "d"]);
        // Text the parser held back (a possible tag) and then released: its tokens, once.
        let tokens = [("x", "a"), ("<", "b"), ("3", "c")];
        assert_eq!(message_tokens(&tokens, &[(0, "x"), (2, "<3")]), ["a", "b", "c"]);
        // Nothing released as the message: no tokens.
        assert!(message_tokens(&tokens, &[]).is_empty());
    }
}
