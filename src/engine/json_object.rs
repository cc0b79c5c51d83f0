//! `response_format: {"type": "json_object"}`: the output is constrained to one JSON object
//! (RFC 8259), token by token.
//!
//! [`JsonState`] is a byte-level JSON parser whose state is a few bytes (`Copy`): the open
//! containers are bits of a `u64`. Before each draw the tokens whose bytes it accepts from the
//! sequence's state are found by `super::constraint` (the sampler gives every other token -inf);
//! EOS is allowed once the object is closed, and nothing else is then.
//!
//! Limits, each a parse error past it: 64 levels of nesting; whitespace between tokens is one
//! space, or a line break and up to 20 spaces or tabs (llama.cpp's JSON grammar allows the
//! same: enough to pretty-print, where a model steered off the token it wanted otherwise pads
//! with blank lines or spaces until `max_tokens`, as the test model did when a schema did not
//! yet let it close an object); `\u` escapes of UTF-16 surrogates
//! (characters past U+FFFF can still be written as UTF-8). Strings must be valid UTF-8.

use super::constraint::ByteParser;

const MAX_DEPTH: u8 = 64;
/// Spaces or tabs allowed after a line break.
const MAX_INDENT: u8 = 20;
/// A whitespace run that began with a line break (the low bits count the indentation after it).
const LINE_BREAK: u8 = 0x80;

/// One whitespace byte between tokens (`run`: the run so far, zeroed by any other byte): a run
/// is one space, or `\n` and up to [`MAX_INDENT`] spaces or tabs.
pub(super) fn whitespace_step(run: &mut u8, b: u8) -> bool {
    match (*run, b) {
        (0, b' ') => *run = 1,
        (0, b'\n') => *run = LINE_BREAK,
        (r, b' ' | b'\t') if r & LINE_BREAK != 0 && r & !LINE_BREAK < MAX_INDENT => *run += 1,
        _ => return false,
    }
    true
}

/// Where a JSON object's parse stands; `Copy` and hashable, so a vocabulary walk can branch on it
/// and masks can be cached by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JsonState {
    mode: Mode,
    /// Open containers, the innermost at bit `depth - 1`: 1 an array, 0 an object.
    stack: u64,
    depth: u8,
    /// Whitespace bytes in a row.
    whitespace: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// Before the root object: whitespace or `{`.
    Start,
    /// After `:`, or `,` in an array: a value.
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the innermost container's close.
    AfterValue,
    Str { key: bool, escape: Escape, utf8_left: u8 },
    Number(Number),
    /// `true`, `false` or `null` (index into [`LITERALS`]) with `matched` bytes read.
    Literal { which: u8, matched: u8 },
    /// The root object is closed.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Escape {
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and `read` hex digits; `d` if the first was `d`/`D` (a surrogate may follow).
    Hex { read: u8, d: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Number {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

impl Default for JsonState {
    fn default() -> Self {
        Self { mode: Mode::Start, stack: 0, depth: 0, whitespace: 0 }
    }
}

impl JsonState {
    /// Whether the root object is closed: the output is complete, only EOS may follow.
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Reads `bytes`; false (and a state to drop) if they do not continue a JSON object.
    pub fn feed_all(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(b))
    }

    /// Reads one byte; false if it cannot come next.
    pub fn feed(&mut self, b: u8) -> bool {
        match self.mode {
            Mode::Str { key, escape, utf8_left } => self.string_byte(key, escape, utf8_left, b),
            Mode::Number(n) => match number_step(n, b, false) {
                Step::Inside(next) => {
                    self.mode = Mode::Number(next);
                    true
                }
                Step::Ended => {
                    self.mode = Mode::AfterValue;
                    self.feed(b)
                }
                Step::Refused => false,
            },
            Mode::Literal { which, matched } => match literal_step(which, matched, b) {
                Step::Inside(matched) => {
                    self.mode = Mode::Literal { which, matched };
                    true
                }
                Step::Ended => {
                    self.mode = Mode::AfterValue;
                    true
                }
                Step::Refused => false,
            },
            Mode::Done => false,
            mode => {
                if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                    return whitespace_step(&mut self.whitespace, b);
                }
                self.whitespace = 0;
                self.structural(mode, b)
            }
        }
    }

    fn structural(&mut self, mode: Mode, b: u8) -> bool {
        let in_array = self.depth > 0 && self.stack >> (self.depth - 1) & 1 == 1;
        match (mode, b) {
            (Mode::Start, b'{') => self.open(false),
            (Mode::Start, _) => false,
            (Mode::ValueOrClose, b']') => self.close(),
            (Mode::Value | Mode::ValueOrClose, _) => self.value(b),
            (Mode::KeyOrClose, b'}') => self.close(),
            (Mode::KeyOrClose | Mode::Key, b'"') => {
                self.mode = Mode::Str { key: true, escape: Escape::None, utf8_left: 0 };
                true
            }
            (Mode::Colon, b':') => {
                self.mode = Mode::Value;
                true
            }
            (Mode::AfterValue, b',') => {
                self.mode = if in_array { Mode::Value } else { Mode::Key };
                true
            }
            (Mode::AfterValue, b'}') if !in_array => self.close(),
            (Mode::AfterValue, b']') if in_array => self.close(),
            _ => false,
        }
    }

    /// The first byte of a value.
    fn value(&mut self, b: u8) -> bool {
        self.mode = match b {
            b'{' => return self.open(false),
            b'[' => return self.open(true),
            b'"' => Mode::Str { key: false, escape: Escape::None, utf8_left: 0 },
            b'-' => Mode::Number(Number::Minus),
            b'0' => Mode::Number(Number::Zero),
            b'1'..=b'9' => Mode::Number(Number::Int),
            b't' => Mode::Literal { which: 0, matched: 1 },
            b'f' => Mode::Literal { which: 1, matched: 1 },
            b'n' => Mode::Literal { which: 2, matched: 1 },
            _ => return false,
        };
        true
    }

    fn open(&mut self, array: bool) -> bool {
        if self.depth == MAX_DEPTH {
            return false;
        }
        self.stack = (self.stack & !(1 << self.depth)) | (u64::from(array) << self.depth);
        self.depth += 1;
        self.mode = if array { Mode::ValueOrClose } else { Mode::KeyOrClose };
        true
    }

    fn close(&mut self) -> bool {
        self.depth -= 1;
        self.stack &= !(1 << self.depth);
        self.mode = if self.depth == 0 { Mode::Done } else { Mode::AfterValue };
        true
    }

    fn string_byte(&mut self, key: bool, escape: Escape, utf8_left: u8, b: u8) -> bool {
        self.mode = match string_step(escape, utf8_left, b) {
            StringStep::Refused => return false,
            StringStep::Inside(escape, utf8_left) => Mode::Str { key, escape, utf8_left },
            StringStep::Closed if key => Mode::Colon,
            StringStep::Closed => Mode::AfterValue,
        };
        true
    }
}

impl ByteParser for JsonState {
    fn feed(&mut self, b: u8) -> bool {
        JsonState::feed(self, b)
    }

    fn plain_budget(&self) -> Option<u32> {
        matches!(self.mode, Mode::Str { escape: Escape::None, utf8_left: 0, .. }).then_some(u32::MAX)
    }
}

/// What one byte does inside a string (after its opening quote).
pub(super) enum StringStep {
    Refused,
    /// Still inside, with this escape and this many UTF-8 continuation bytes to come.
    Inside(Escape, u8),
    /// The closing quote.
    Closed,
}

///
/// `utf8_left` counts the continuation bytes still to come (low 2 bits) and, for the first of
/// them, which range the lead byte allows (the bits above): UTF-8 without overlong forms,
/// surrogates or code points past U+10FFFF, as `str` requires.
pub(super) fn string_step(escape: Escape, utf8_left: u8, b: u8) -> StringStep {
    use StringStep::*;
    const E0: u8 = 1 << 2;
    const ED: u8 = 2 << 2;
    const F0: u8 = 3 << 2;
    const F4: u8 = 4 << 2;
    match escape {
        _ if utf8_left > 0 => {
            let range = match utf8_left & !3 {
                E0 => 0xA0..=0xBF,
                ED => 0x80..=0x9F,
                F0 => 0x90..=0xBF,
                F4 => 0x80..=0x8F,
                _ => 0x80..=0xBF,
            };
            if range.contains(&b) {
                Inside(escape, (utf8_left & 3) - 1)
            } else {
                Refused
            }
        }
        Escape::Backslash => match b {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Inside(Escape::None, 0),
            b'u' => Inside(Escape::Hex { read: 0, d: false }, 0),
            _ => Refused,
        },
        Escape::Hex { read, d } => {
            if !b.is_ascii_hexdigit() || (read == 1 && d && matches!(b, b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')) {
                Refused
            } else if read == 3 {
                Inside(Escape::None, 0)
            } else {
                Inside(Escape::Hex { read: read + 1, d: read == 0 && matches!(b, b'd' | b'D') }, 0)
            }
        }
        Escape::None => match b {
            b'"' => Closed,
            b'\\' => Inside(Escape::Backslash, 0),
            0x00..=0x1F => Refused,
            0x20..=0x7F => Inside(Escape::None, 0),
            0xC2..=0xDF => Inside(Escape::None, 1),
            0xE0 => Inside(Escape::None, 2 | E0),
            0xED => Inside(Escape::None, 2 | ED),
            0xE1..=0xEF => Inside(Escape::None, 2),
            0xF0 => Inside(Escape::None, 3 | F0),
            0xF4 => Inside(Escape::None, 3 | F4),
            0xF1..=0xF3 => Inside(Escape::None, 3),
            _ => Refused,
        },
    }
}

fn number_next(n: Number, b: u8) -> Option<Number> {
    use Number::*;
    Some(match (n, b) {
        (Minus, b'0') => Zero,
        (Minus, b'1'..=b'9') => Int,
        (Int, b'0'..=b'9') => Int,
        (Zero | Int, b'.') => Dot,
        (Dot | Frac, b'0'..=b'9') => Frac,
        (Zero | Int | Frac, b'e' | b'E') => Exp,
        (Exp, b'+' | b'-') => ExpSign,
        (Exp | ExpSign | ExpDigits, b'0'..=b'9') => ExpDigits,
        _ => return None,
    })
}

/// What one byte does to a number or a literal.
pub(super) enum Step<T> {
    Refused,
    /// Still inside, now here.
    Inside(T),
    /// A literal's last byte was read; for a number, the number ended before this byte, which
    /// belongs to what follows it.
    Ended,
}

/// One byte of a number; `integer`: no fraction or exponent.
pub(super) fn number_step(n: Number, b: u8, integer: bool) -> Step<Number> {
    match number_next(n, b).filter(|next| !integer || matches!(next, Number::Int | Number::Zero)) {
        Some(next) => Step::Inside(next),
        None if matches!(n, Number::Zero | Number::Int | Number::Frac | Number::ExpDigits) => Step::Ended,
        None => Step::Refused,
    }
}

/// One byte of `true`, `false` or `null` ([`LITERALS`] index `which`), `matched` bytes in.
pub(super) fn literal_step(which: u8, matched: u8, b: u8) -> Step<u8> {
    let word = LITERALS[which as usize];
    match word.get(matched as usize) {
        Some(&w) if w == b && matched as usize + 1 == word.len() => Step::Ended,
        Some(&w) if w == b => Step::Inside(matched + 1),
        _ => Step::Refused,
    }
}

#[cfg(test)]
pub(crate) mod tests;
