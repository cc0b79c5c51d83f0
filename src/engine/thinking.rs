//! Thinking before held output: `enable_thinking: true` with a JSON format or forced tool calls,
//! on a template that renders thinking (Qwen3). The output is free text until the model closes
//! its thinking with `</think>`, then up to [`GAP`] line breaks or spaces (none before a regex
//! or a choice, which say what may follow), then held by the format's parser. EOS is not
//! allowed before the held part is complete.

use super::constraint::ByteParser;
use super::json_object::JsonState;
use super::json_schema::SchemaState;
use super::regex_format::RegexState;
use super::tool_calls::ToolCallsState;

const END: &[u8] = b"</think>";
/// Line breaks or spaces taken between `</think>` and the held output.
const GAP: u8 = 4;

/// The state of one of the held formats' parsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Held {
    Object(JsonState),
    Schema(SchemaState),
    Regex(RegexState),
    Calls(ToolCallsState),
}

impl Held {
    pub fn is_complete(&self) -> bool {
        match self {
            Self::Object(s) => s.is_complete(),
            Self::Schema(s) => s.is_complete(),
            Self::Regex(s) => s.is_complete(),
            Self::Calls(s) => s.is_complete(),
        }
    }
}

impl ByteParser for Held {
    fn feed(&mut self, b: u8) -> bool {
        match self {
            Self::Object(s) => ByteParser::feed(s, b),
            Self::Schema(s) => s.feed(b),
            Self::Regex(s) => s.feed(b),
            Self::Calls(s) => s.feed(b),
        }
    }

    fn plain_budget(&self) -> Option<u32> {
        match self {
            Self::Object(s) => s.plain_budget(),
            Self::Schema(s) => s.plain_budget(),
            Self::Regex(s) => s.plain_budget(),
            Self::Calls(s) => s.plain_budget(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    /// Free text, whose last bytes spell this much of `</think>`.
    Thinking(u8),
    /// After `</think>`: this many line breaks or spaces.
    Gap(u8),
    /// The held output, begun.
    Held,
}

/// Where an output that thinks first stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThinkingState {
    phase: Phase,
    held: Held,
}

impl ThinkingState {
    pub fn new(held: Held) -> Self {
        Self { phase: Phase::Thinking(0), held }
    }

    /// The held parser's state once the held output has begun.
    pub fn held(&self) -> Option<&Held> {
        (self.phase == Phase::Held).then_some(&self.held)
    }

    /// Whether the output may end: after the thinking, where the held parse may (a regex may
    /// match nothing at all).
    pub fn is_complete(&self) -> bool {
        !matches!(self.phase, Phase::Thinking(_)) && self.held.is_complete()
    }
}

impl ByteParser for ThinkingState {
    fn feed(&mut self, b: u8) -> bool {
        match self.phase {
            Phase::Thinking(i) => {
                let i = if b == END[i as usize] { i + 1 } else { u8::from(b == END[0]) };
                self.phase = match (i as usize == END.len(), &self.held) {
                    (false, _) => Phase::Thinking(i),
                    // A regex or a choice says itself what may follow, whitespace included.
                    (true, Held::Regex(_)) => Phase::Held,
                    (true, _) => Phase::Gap(0),
                };
                true
            }
            Phase::Gap(n) if n < GAP && matches!(b, b'\n' | b' ') => {
                self.phase = Phase::Gap(n + 1);
                true
            }
            Phase::Gap(_) => {
                self.phase = Phase::Held;
                self.held.feed(b)
            }
            Phase::Held => self.held.feed(b),
        }
    }

    fn plain_budget(&self) -> Option<u32> {
        match self.phase {
            // Plain text holds no `<`: it cannot spell `</think>` from a clean start.
            Phase::Thinking(0) => Some(u32::MAX),
            Phase::Held => self.held.plain_budget(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
