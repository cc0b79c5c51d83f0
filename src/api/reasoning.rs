//! Qwen3 reasoning: the model thinks inside `<think>…</think>` before it answers.
//!
//! Three shapes reach us: output that opens with `<think>` (older Qwen3 thinking), output that
//! starts straight with the reasoning and later closes it with `</think>` because the prompt
//! already ended in `<think>\n` (Qwen3-2507 thinking models), and output with no tags at all
//! (thinking disabled: the template put an empty `<think>\n\n</think>\n\n` in the prompt).
//!
//! Trimming, the same in both modes: newlines around the reasoning are dropped, and so are the
//! newlines that start the content after `</think>`; content without any `</think>` is kept as
//! is. "Output opens with `<think>`" allows whitespace before the tag.
//!
//! Streaming and non-streaming agree except where the stream's `prompt_ends_in_think` decides
//! what [`split_reasoning`] has to guess from the text alone:
//! - prompt ended in `<think>` but the output has no `</think>` (thinking cut off): the stream
//!   has sent everything as reasoning, `split_reasoning` calls it content;
//! - prompt did not end in `<think>`, output does not open with `<think>` but contains
//!   `</think>`: the stream has sent everything as content (it must not hold back an answer
//!   waiting for a tag that almost never comes), `split_reasoning` splits at the tag.

const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";

/// Non-streaming: (reasoning_content, content). Reasoning is the text before `</think>`
/// (without a leading `<think>` and surrounding newlines trimmed); content is what follows
/// (leading newlines trimmed). No `</think>`: if the text starts with `<think>`, or
/// `in_thinking` says the output began inside the thinking (held output after it), the whole
/// rest is reasoning (truncated thinking, content None); otherwise everything is content.
/// Empty parts are None.
pub fn split_reasoning(text: &str, in_thinking: bool) -> (Option<String>, Option<String>) {
    match text.find(THINK_END) {
        Some(end) => {
            let before = &text[..end];
            let reasoning = strip_think_start(before).unwrap_or(before);
            let content = &text[end + THINK_END.len()..];
            (
                non_empty(reasoning.trim_matches('\n')),
                non_empty(content.trim_start_matches('\n')),
            )
        }
        None => match strip_think_start(text) {
            Some(reasoning) => (non_empty(reasoning.trim_matches('\n')), None),
            None if in_thinking => (non_empty(text.trim_matches('\n')), None),
            None => (None, non_empty(text)),
        },
    }
}

/// The text after a leading (whitespace allowed) `<think>`, if it has one.
fn strip_think_start(text: &str) -> Option<&str> {
    text.trim_start().strip_prefix(THINK_START)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReasoningDelta {
    pub reasoning: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Nothing but whitespace or a partial `<think>` seen yet.
    Start,
    Reasoning,
    Content,
}

pub struct ReasoningStreamParser {
    prompt_ends_in_think: bool,
    phase: Phase,
    /// Start: all output so far; Reasoning: a possible partial `</think>`.
    buf: String,
    reasoning_started: bool,
    /// Newlines at the end of the reasoning so far; sent only if more reasoning follows.
    num_held_newlines: usize,
    /// Content after `</think>` drops its leading newlines; content without tags does not.
    trim_content_start: bool,
}

impl ReasoningStreamParser {
    /// `prompt_ends_in_think`: the rendered prompt ended with an open `<think>` (start in reasoning).
    pub fn new(prompt_ends_in_think: bool) -> Self {
        Self {
            prompt_ends_in_think,
            phase: Phase::Start,
            buf: String::new(),
            reasoning_started: false,
            num_held_newlines: 0,
            trim_content_start: false,
        }
    }

    pub fn push(&mut self, delta: &str) -> ReasoningDelta {
        self.buf.push_str(delta);
        self.advance(false)
    }

    /// End of generation: a partial tag is text, held trailing newlines of the reasoning are
    /// dropped. Call once.
    pub fn finish(&mut self) -> ReasoningDelta {
        self.advance(true)
    }

    fn advance(&mut self, at_end: bool) -> ReasoningDelta {
        let mut out = ReasoningDelta::default();
        loop {
            match self.phase {
                Phase::Start => {
                    if let Some(rest) = strip_think_start(&self.buf) {
                        self.buf = rest.to_string();
                        self.phase = Phase::Reasoning;
                    } else if !at_end && THINK_START.starts_with(self.buf.trim_start()) {
                        return out;
                    } else if self.prompt_ends_in_think {
                        self.phase = Phase::Reasoning;
                    } else {
                        self.phase = Phase::Content;
                    }
                }
                Phase::Reasoning => {
                    if let Some(end) = self.buf.find(THINK_END) {
                        let reasoning: String = self.buf.drain(..end).collect();
                        self.push_reasoning(&reasoning, &mut out);
                        // Newlines still held end the reasoning: they are dropped.
                        self.buf.drain(..THINK_END.len());
                        self.phase = Phase::Content;
                        self.trim_content_start = true;
                        continue;
                    }
                    let num_held = if at_end {
                        0
                    } else {
                        partial_tag_len(&self.buf, THINK_END)
                    };
                    let ready: String = self.buf.drain(..self.buf.len() - num_held).collect();
                    self.push_reasoning(&ready, &mut out);
                    return out;
                }
                Phase::Content => {
                    let mut content = self.buf.as_str();
                    if self.trim_content_start {
                        content = content.trim_start_matches('\n');
                        self.trim_content_start = content.is_empty();
                    }
                    out.content.push_str(content);
                    self.buf.clear();
                    return out;
                }
            }
        }
    }

    fn push_reasoning(&mut self, text: &str, out: &mut ReasoningDelta) {
        let text = if self.reasoning_started {
            text
        } else {
            text.trim_start_matches('\n')
        };
        let body = text.trim_end_matches('\n');
        let num_trailing = text.len() - body.len();
        if body.is_empty() {
            self.num_held_newlines += num_trailing;
            return;
        }
        self.reasoning_started = true;
        out.reasoning
            .extend(std::iter::repeat_n('\n', self.num_held_newlines));
        out.reasoning.push_str(body);
        self.num_held_newlines = num_trailing;
    }
}

/// Length of the longest proper prefix of `tag` that `text` ends with.
fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| text.ends_with(&tag[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> (Option<String>, Option<String>) {
        split_reasoning(text, false)
    }

    fn parts(reasoning: Option<&str>, content: Option<&str>) -> (Option<String>, Option<String>) {
        (reasoning.map(String::from), content.map(String::from))
    }

    #[test]
    fn splits_reasoning_opened_by_the_model() {
        assert_eq!(
            split("<think>\nLet me add.\n2+2=4\n</think>\n\nIt is 4.\n"),
            parts(Some("Let me add.\n2+2=4"), Some("It is 4.\n"))
        );
    }

    #[test]
    fn splits_reasoning_opened_by_the_prompt() {
        assert_eq!(
            split("Let me add. </think>\n\n  It is 4."),
            parts(Some("Let me add. "), Some("  It is 4."))
        );
    }

    #[test]
    fn empty_think_block_gives_no_reasoning() {
        assert_eq!(
            split("<think>\n\n</think>\n\nHi."),
            parts(None, Some("Hi."))
        );
        assert_eq!(
            split("<think>\nHm.\n</think>\n\n"),
            parts(Some("Hm."), None)
        );
    }

    #[test]
    fn unclosed_think_is_all_reasoning() {
        assert_eq!(
            split("\n<think>\nStill thinking\n\n"),
            parts(Some("Still thinking"), None)
        );
        assert_eq!(split("<think>"), parts(None, None));
    }

    #[test]
    fn no_tags_is_all_content_untrimmed() {
        assert_eq!(
            split("\nJust an answer.\n"),
            parts(None, Some("\nJust an answer.\n"))
        );
        assert_eq!(
            split("I like <thinking> tags"),
            parts(None, Some("I like <thinking> tags"))
        );
        assert_eq!(split(""), parts(None, None));
    }

    /// Concatenated reasoning and content of a stream.
    fn stream(deltas: &[&str], prompt_ends_in_think: bool) -> (String, String) {
        let mut parser = ReasoningStreamParser::new(prompt_ends_in_think);
        let mut total = ReasoningDelta::default();
        let mut parts: Vec<ReasoningDelta> = deltas.iter().map(|d| parser.push(d)).collect();
        parts.push(parser.finish());
        for delta in parts {
            total.reasoning.push_str(&delta.reasoning);
            total.content.push_str(&delta.content);
        }
        (total.reasoning, total.content)
    }

    /// One delta, two deltas split at every char boundary, and one char at a time all give
    /// `expected`.
    fn assert_stream(text: &str, prompt_ends_in_think: bool, expected: (&str, &str)) {
        let expected = (expected.0.to_string(), expected.1.to_string());
        assert_eq!(stream(&[text], prompt_ends_in_think), expected, "{text:?}");
        for (i, _) in text.char_indices().skip(1) {
            let got = stream(&[&text[..i], &text[i..]], prompt_ends_in_think);
            assert_eq!(got, expected, "split at byte {i} of {text:?}");
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(
            stream(&chars, prompt_ends_in_think),
            expected,
            "char by char: {text:?}"
        );
    }

    /// Held output after thinking: the output begins in the thinking whether or not it opens
    /// with `<think>`, and both modes split it alike.
    #[test]
    fn output_that_begins_in_thinking() {
        for (text, reasoning, content) in [
            ("Okay, a cat.\n</think>\n\n{\"a\": 1}", "Okay, a cat.", "{\"a\": 1}"),
            ("<think>\nOkay.\n</think>\n\n{}", "Okay.", "{}"),
            ("</think>{}", "", "{}"),
            ("Thinking, cut off", "Thinking, cut off", ""),
        ] {
            let (r, c) = split_reasoning(text, true);
            assert_eq!((r.unwrap_or_default(), c.unwrap_or_default()), (reasoning.to_string(), content.to_string()), "{text:?}");
            assert_stream(text, true, (reasoning, content));
        }
    }

    /// The stream agrees with `split_reasoning`.
    fn assert_stream_matches(text: &str, prompt_ends_in_think: bool) {
        let (reasoning, content) = split_reasoning(text, false);
        let expected = (reasoning.unwrap_or_default(), content.unwrap_or_default());
        assert_stream(text, prompt_ends_in_think, (&expected.0, &expected.1));
    }

    #[test]
    fn stream_matches_split_at_every_boundary() {
        let both_flags = [
            "<think>\nLet me add.\n\n2+2=4 ✓\n</think>\n\nIt is 4.\n",
            "  <think>\n\n</think>\n\nHi 👋",
            "<think>\nCut off mid-thought <\n\n",
            "<think>\nA </thin B </think>",
            "<think>",
            "",
        ];
        for text in both_flags {
            assert_stream_matches(text, true);
            assert_stream_matches(text, false);
        }
        // The prompt opened the thinking; the output has no `<think>`.
        for text in [
            "\nLet me add.\n</think>\n\nIt is 4.",
            "Hm </think>",
            "</think>\n\n",
        ] {
            assert_stream_matches(text, true);
        }
        // Thinking disabled: no tags in the output.
        for text in [
            "\n\nJust an answer.\n",
            "<thinking> is a word",
            " < think>",
            "<thin",
        ] {
            assert_stream_matches(text, false);
        }
    }

    #[test]
    fn stream_differs_where_the_prompt_decides() {
        // Cut off before `</think>` after a prompt ending in `<think>`.
        assert_stream("\nStill thinking\n", true, ("Still thinking", ""));
        assert_eq!(
            split("\nStill thinking\n"),
            parts(None, Some("\nStill thinking\n"))
        );
        // A stray `</think>` in an answer without thinking stays content.
        assert_stream(
            "The tag </think> ends it.",
            false,
            ("", "The tag </think> ends it."),
        );
        assert_eq!(
            split("The tag </think> ends it."),
            parts(Some("The tag "), Some(" ends it."))
        );
    }

    #[test]
    fn stream_sends_answers_without_tags_at_once() {
        let mut parser = ReasoningStreamParser::new(false);
        let delta = parser.push("Hello");
        assert_eq!(
            (delta.reasoning.as_str(), delta.content.as_str()),
            ("", "Hello")
        );
        // Only a possible `<think>` is held.
        let mut parser = ReasoningStreamParser::new(false);
        assert_eq!(parser.push("\n<th"), ReasoningDelta::default());
        assert_eq!(
            parser.push("ey"),
            ReasoningDelta {
                content: "\n<they".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn stream_holds_partial_end_tag_and_trailing_newlines() {
        let mut parser = ReasoningStreamParser::new(true);
        let reasoning = |r: &str| ReasoningDelta {
            reasoning: r.into(),
            ..Default::default()
        };
        assert_eq!(parser.push("\nStep 1\n"), reasoning("Step 1"));
        assert_eq!(parser.push("</th"), ReasoningDelta::default());
        assert_eq!(parser.push("e"), reasoning("\n</the"));
        assert_eq!(parser.push("n\n</"), reasoning("n"));
        assert_eq!(
            parser.push("think>\n\nAns"),
            ReasoningDelta {
                content: "Ans".into(),
                ..Default::default()
            }
        );
        assert_eq!(
            parser.push("wer\n"),
            ReasoningDelta {
                content: "wer\n".into(),
                ..Default::default()
            }
        );
        assert_eq!(parser.finish(), ReasoningDelta::default());
    }
}
