//! `include: ["message.output_text.logprobs"]`: the logprobs of the tokens that wrote the
//! message's text, not those of its reasoning or its tool calls.
//!
//! Each token's text is placed in the output as the engine released it. The output's parser
//! releases reasoning and the message's text in order; each is found in the output after what
//! was released before it (never in text the parser still holds back). The tokens whose text
//! overlaps the message's text are the message's (one that straddles its start or end wrote part
//! of it); those wholly before it (reasoning, `</think>` and the line breaks after it, a call's
//! markup) are dropped. A whole response runs the same steps over the texts the engine released
//! with its tokens (`whole`), so it lists what the stream sent.

use std::collections::VecDeque;

use crate::api::chat::{token_logprob, ChatContext};
use crate::api::generation::ChoiceResult;
use crate::api::types::{ChatTokenLogprob, Delta};
use crate::engine::sampler::Logprobs;
use crate::tokenizer::Tokenizer;

/// The output so far and its tokens not yet given to the message or dropped, each with an entry
/// `E` (its logprobs).
pub(super) struct ContentTokens<E> {
    output: String,
    /// (start, end) of each token's text in `output`, and its entry.
    pending: VecDeque<(usize, usize, E)>,
    /// The end in `output` of the text released so far.
    released: usize,
}

impl<E> Default for ContentTokens<E> {
    fn default() -> Self {
        Self { output: String::new(), pending: VecDeque::new(), released: 0 }
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

    /// Text just released as reasoning: the tokens wholly in it or before it are not the
    /// message's.
    pub fn reasoning(&mut self, reasoning: &str) {
        let Some((_, end)) = self.locate(reasoning) else { return };
        while self.pending.front().is_some_and(|&(a, b, _)| a < end && b <= end) {
            self.pending.pop_front();
        }
    }

    /// The entries of the tokens that wrote `content`, the text just released as the message's.
    pub fn content(&mut self, content: &str) -> Vec<E> {
        let Some((start, end)) = self.locate(content) else { return Vec::new() };
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

    /// The entries of the message's tokens in what the parser released (reasoning before text).
    pub fn delta(&mut self, delta: &Delta) -> Vec<E> {
        if let Some(reasoning) = &delta.reasoning_content {
            self.reasoning(reasoning);
        }
        delta.content.as_deref().map(|c| self.content(c)).unwrap_or_default()
    }

    /// Where `text`, just released, is in the output: its first place after what was released
    /// before it.
    fn locate(&mut self, text: &str) -> Option<(usize, usize)> {
        if text.is_empty() {
            return None;
        }
        let start = self.released + self.output[self.released..].find(text)?;
        self.released = start + text.len();
        Some((start, self.released))
    }
}

/// A token's logprob entry, as chat's `logprobs.content` has it.
pub(super) fn entry(tokenizer: &Tokenizer, token: u32, logprobs: &Logprobs) -> ChatTokenLogprob {
    token_logprob(tokenizer, token, logprobs, false)
}

/// The message's token entries of a whole (not streamed) output: its tokens' texts as the
/// engine released them, parsed as a stream is, so it lists what the stream would have.
pub(super) fn whole(ctx: &ChatContext, c: &ChoiceResult) -> Vec<ChatTokenLogprob> {
    let mut parse = ctx.choice_stream();
    let mut spans = ContentTokens::default();
    let mut entries = Vec::new();
    let mut at = 0;
    for ((&token, l), &end) in c.tokens.iter().zip(&c.logprobs).zip(&c.token_ends) {
        let text = &c.text[at..end];
        at = end;
        spans.token(text, entry(&ctx.tokenizer, token, l));
        entries.extend(spans.delta(&parse.delta(text, false)));
    }
    let rest = &c.text[at..];
    spans.text(rest);
    entries.extend(spans.delta(&parse.delta(rest, true)));
    entries
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::ContentTokens;

    /// Feeds `(text, token name)` pairs; after the tokens named in `releases`, the parser
    /// releases that text as the message's (or, marked `?`, as reasoning). Returns the names
    /// given to the message.
    fn message_tokens(tokens: &[(&str, &str)], releases: &[(usize, &str)]) -> Vec<String> {
        let mut t = ContentTokens::<serde_json::Value>::default();
        let mut got = Vec::new();
        for (i, (text, name)) in tokens.iter().enumerate() {
            t.token(text, json!(name));
            for (_, released) in releases.iter().filter(|(at, _)| *at == i) {
                match released.strip_prefix('?') {
                    Some(reasoning) => t.reasoning(reasoning),
                    None => got.extend(t.content(released).into_iter().map(|v| v.as_str().unwrap().to_string())),
                }
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
        // Text the parser still holds back is not where released text is looked for.
        let tokens = [("<", "a"), ("<", "b")];
        assert_eq!(message_tokens(&tokens, &[(1, "<")]), ["a"]);
        // The message's text also in the reasoning before it: the message's own tokens.
        let tokens = [("<think>\n", "a"), ("The", "b"), ("</think>", "c"), ("\n\n", "d"), ("The", "e")];
        assert_eq!(message_tokens(&tokens, &[(1, "?The"), (4, "The")]), ["e"]);
        // One token ends the reasoning and starts the text: it wrote part of the text.
        let tokens = [("<think>\n", "a"), ("hm", "b"), ("m</think>\n\nOK", "c")];
        assert_eq!(message_tokens(&tokens, &[(1, "?hm"), (2, "?m"), (2, "OK")]), ["c"]);
        // Nothing released as the message: no tokens.
        assert!(message_tokens(&tokens, &[]).is_empty());
    }
}
