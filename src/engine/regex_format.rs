//! vLLM's `structured_outputs` `regex`, `choice` and `grammar`: the whole output held to a
//! regular expression, to exactly one of a list of strings (a regex of the escaped strings), or
//! to a GBNF grammar (llama.cpp's `grammar` too).
//!
//! A regex or a choice is a [`Pattern`] (the DFA table a JSON schema's `pattern` uses) over the
//! output's bytes as written; a grammar a [`Grammar`], an automaton built as outputs need it.
//! A byte is refused where no string could still match after it, so the output can always be
//! finished (every byte is a token in Qwen's vocabulary); EOS is allowed wherever the output so
//! far matches, and alone once nothing can follow.

use super::constraint::{ByteParser, MaskCache};
use super::grammar::{self, Grammar};
use super::json_schema::pattern::{self, Pattern};
use super::thinking::ThinkingState;

/// A compiled `regex`, `choice` or `grammar`, with the masks found for its states.
#[derive(Debug)]
pub struct RegexFormat {
    automaton: Automaton,
    pub(super) masks: MaskCache<RegexState>,
    /// Masks while thinking before the held output (`super::thinking`).
    pub(super) thinking_masks: MaskCache<ThinkingState>,
}

#[derive(Debug)]
enum Automaton {
    Dfa(Pattern),
    Grammar(Grammar),
}

impl RegexFormat {
    /// `regex` (a JSON Schema `pattern`'s ECMA-262 syntax: `\d` is `[0-9]`, `.` no line break)
    /// matched against the whole output.
    pub fn regex(regex: &str) -> Result<Self, String> {
        Ok(Self::new(Automaton::Dfa(Pattern::from_output_regex(regex)?)))
    }

    /// Exactly one of `choices`, as written.
    pub fn choice(choices: &[String]) -> Result<Self, String> {
        if choices.is_empty() {
            return Err("must list at least one string".into());
        }
        Ok(Self::new(Automaton::Dfa(Pattern::from_choices(choices)?)))
    }

    /// The whole output a sentence of the GBNF grammar `text` (from its `root` rule).
    pub fn grammar(text: &str) -> Result<Self, String> {
        Ok(Self::new(Automaton::Grammar(Grammar::compile(text)?)))
    }

    fn new(automaton: Automaton) -> Self {
        Self { automaton, masks: MaskCache::with_capacity(256), thinking_masks: MaskCache::with_capacity(16) }
    }

    pub(super) fn start(&self) -> RegexState {
        let at = match &self.automaton {
            Automaton::Dfa(p) => u32::from(p.start()),
            Automaton::Grammar(g) => g.start(),
        };
        RegexState { format: self as *const Self as usize, at }
    }

    /// Whether later requests should get a fresh compile (a grammar's tables grew too large).
    pub fn is_stale(&self) -> bool {
        matches!(&self.automaton, Automaton::Grammar(g) if g.is_stale())
    }
}

/// Where a regex-held output's match stands. `Copy`; refers to its [`RegexFormat`] by address,
/// which the sequence keeps alive (an `Arc`) for as long as the state is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegexState {
    format: usize,
    at: u32,
}

impl RegexState {
    fn automaton<'p>(&self) -> &'p Automaton {
        // SAFETY: `RegexFormat::start` set the address of a format that the sequence holds in an
        // `Arc` beside every state derived from it (`Constraint::Regex`, `OutputFormat` inside
        // `Constraint::Thinking`), and states are read only while that constraint is borrowed.
        unsafe { &(*(self.format as *const RegexFormat)).automaton }
    }

    /// Whether the output so far matches (EOS may come).
    pub fn is_complete(&self) -> bool {
        match self.automaton() {
            Automaton::Dfa(p) => p.accepts(self.at as pattern::PatState),
            Automaton::Grammar(g) => g.accepts(self.at),
        }
    }
}

impl ByteParser for RegexState {
    fn feed(&mut self, b: u8) -> bool {
        let next = match self.automaton() {
            Automaton::Dfa(p) => match p.step(self.at as pattern::PatState, b) {
                pattern::DEAD => grammar::DEAD,
                next => u32::from(next),
            },
            Automaton::Grammar(g) => g.step(self.at, b),
        };
        if next == grammar::DEAD {
            return false;
        }
        self.at = next;
        true
    }

    fn plain_budget(&self) -> Option<u32> {
        match self.automaton() {
            Automaton::Grammar(g) if g.takes_any_plain_text(self.at) => Some(u32::MAX),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
