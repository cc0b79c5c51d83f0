//! vLLM's `structured_outputs` `regex` and `choice`: the whole output held to a regular
//! expression, or to exactly one of a list of strings (a regex of the escaped strings).
//!
//! The expression is a [`Pattern`] (the DFA table a JSON schema's `pattern` uses) over the
//! output's bytes as written. A byte is refused where no string could still match after it, so
//! the output can always be finished (every byte is a token in Qwen's vocabulary); EOS is
//! allowed wherever the output so far matches, and alone once nothing can follow.

use super::constraint::{ByteParser, MaskCache};
use super::json_schema::pattern::{PatState, Pattern, DEAD};
use super::thinking::ThinkingState;

/// A compiled `regex` or `choice`, with the masks found for its states.
#[derive(Debug)]
pub struct RegexFormat {
    pattern: Pattern,
    pub(super) masks: MaskCache<RegexState>,
    /// Masks while thinking before the held output (`super::thinking`).
    pub(super) thinking_masks: MaskCache<ThinkingState>,
}

impl RegexFormat {
    /// `regex` (a JSON Schema `pattern`'s ECMA-262 syntax: `\d` is `[0-9]`, `.` no line break)
    /// matched against the whole output.
    pub fn regex(regex: &str) -> Result<Self, String> {
        Ok(Self::new(Pattern::from_output_regex(regex)?))
    }

    /// Exactly one of `choices`, as written.
    pub fn choice(choices: &[String]) -> Result<Self, String> {
        if choices.is_empty() {
            return Err("must list at least one string".into());
        }
        Ok(Self::new(Pattern::from_choices(choices)?))
    }

    fn new(pattern: Pattern) -> Self {
        Self { pattern, masks: MaskCache::with_capacity(256), thinking_masks: MaskCache::with_capacity(16) }
    }

    pub(super) fn start(&self) -> RegexState {
        RegexState { format: self as *const Self as usize, at: self.pattern.start() }
    }
}

/// Where a regex-held output's match stands. `Copy`; refers to its [`RegexFormat`] by address,
/// which the sequence keeps alive (an `Arc`) for as long as the state is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegexState {
    format: usize,
    at: PatState,
}

impl RegexState {
    fn pattern<'p>(&self) -> &'p Pattern {
        // SAFETY: `RegexFormat::start` set the address of a format that the sequence holds in an
        // `Arc` beside every state derived from it (`Constraint::Regex`, `OutputFormat` inside
        // `Constraint::Thinking`), and states are read only while that constraint is borrowed.
        unsafe { &(*(self.format as *const RegexFormat)).pattern }
    }

    /// Whether the output so far matches (EOS may come).
    pub fn is_complete(&self) -> bool {
        self.pattern().accepts(self.at)
    }
}

impl ByteParser for RegexState {
    fn feed(&mut self, b: u8) -> bool {
        let next = self.pattern().step(self.at, b);
        if next == DEAD {
            return false;
        }
        self.at = next;
        true
    }
}

#[cfg(test)]
mod tests;
