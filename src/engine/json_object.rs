//! `response_format: {"type": "json_object"}`: the output is constrained to one JSON object
//! (RFC 8259), token by token.
//!
//! [`JsonState`] is a byte-level JSON parser whose state is a few bytes (`Copy`): the open
//! containers are bits of a `u64`. Before each draw, [`JsonVocab::allowed`] says which tokens'
//! bytes the parser accepts from the sequence's state; the sampler gives every other token -inf.
//! EOS is allowed once the object is closed, and nothing else is then. The vocabulary is walked
//! in sorted byte order, so a shared prefix is parsed once and a rejected prefix rules out every
//! token that starts with it; the answer is cached per state (a generation revisits few states:
//! "inside a string", "after a value in an object at depth 2", ...).
//!
//! Limits, each a parse error past it: 64 levels of nesting, 64 whitespace bytes in a row (a
//! model may otherwise pad with spaces until `max_tokens`), `\u` escapes of UTF-16 surrogates
//! (characters past U+FFFF can still be written as UTF-8). Strings must be valid UTF-8.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::tokenizer::Tokenizer;

const MAX_DEPTH: u8 = 64;
const MAX_WHITESPACE: u8 = 64;
/// Cached masks (each vocab / 8 bytes: 19 KB for Qwen's 151,665 tokens).
const MAX_CACHED_STATES: usize = 2048;

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
enum Escape {
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and `read` hex digits; `d` if the first was `d`/`D` (a surrogate may follow).
    Hex { read: u8, d: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Number {
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
            Mode::Number(n) => match number_next(n, b) {
                Some(next) => {
                    self.mode = Mode::Number(next);
                    true
                }
                // The number ended; the byte belongs to what follows it.
                None if matches!(n, Number::Zero | Number::Int | Number::Frac | Number::ExpDigits) => {
                    self.mode = Mode::AfterValue;
                    self.feed(b)
                }
                None => false,
            },
            Mode::Literal { which, matched } => {
                let word = LITERALS[which as usize];
                if word[matched as usize] != b {
                    return false;
                }
                self.mode = if matched as usize + 1 == word.len() { Mode::AfterValue } else { Mode::Literal { which, matched: matched + 1 } };
                true
            }
            Mode::Done => false,
            mode => {
                if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                    self.whitespace += 1;
                    return self.whitespace <= MAX_WHITESPACE;
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
        let str_mode = |escape, utf8_left| Mode::Str { key, escape, utf8_left };
        self.mode = match escape {
            _ if utf8_left > 0 => match b {
                0x80..=0xBF => str_mode(escape, utf8_left - 1),
                _ => return false,
            },
            Escape::Backslash => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => str_mode(Escape::None, 0),
                b'u' => str_mode(Escape::Hex { read: 0, d: false }, 0),
                _ => return false,
            },
            Escape::Hex { read, d } => {
                if !b.is_ascii_hexdigit() || (read == 1 && d && matches!(b, b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')) {
                    return false;
                }
                if read == 3 {
                    str_mode(Escape::None, 0)
                } else {
                    str_mode(Escape::Hex { read: read + 1, d: read == 0 && matches!(b, b'd' | b'D') }, 0)
                }
            }
            Escape::None => match b {
                b'"' if key => Mode::Colon,
                b'"' => Mode::AfterValue,
                b'\\' => str_mode(Escape::Backslash, 0),
                0x00..=0x1F => return false,
                0x20..=0x7F => str_mode(Escape::None, 0),
                0xC2..=0xDF => str_mode(Escape::None, 1),
                0xE0..=0xEF => str_mode(Escape::None, 2),
                0xF0..=0xF4 => str_mode(Escape::None, 3),
                _ => return false,
            },
        };
        true
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

/// The vocabulary as bytes, sorted for the walk, and the masks found so far. One per engine,
/// built when the first JSON request comes.
pub struct JsonVocab {
    /// Each token's bytes, by id; empty for special tokens (never allowed).
    bytes: Vec<Box<[u8]>>,
    /// Ids of the tokens with bytes in byte order, each with the length of the prefix it shares
    /// with the one before.
    sorted: Vec<(u32, u32)>,
    cache: Mutex<HashMap<JsonState, Arc<[u64]>>>,
}

impl JsonVocab {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        Self::from_bytes(tokenizer.token_bytes())
    }

    /// `bytes[id]`: what token `id` writes; empty for one that may never be sampled here.
    pub fn from_bytes(bytes: Vec<Box<[u8]>>) -> Self {
        let mut ids: Vec<u32> = (0..bytes.len() as u32).filter(|&i| !bytes[i as usize].is_empty()).collect();
        ids.sort_unstable_by(|&a, &b| bytes[a as usize].cmp(&bytes[b as usize]));
        let mut sorted = Vec::with_capacity(ids.len());
        let mut previous: &[u8] = &[];
        for &id in &ids {
            let b = &bytes[id as usize];
            let shared = b.iter().zip(previous).take_while(|(x, y)| x == y).count();
            sorted.push((id, shared as u32));
            previous = b;
        }
        Self { bytes, sorted, cache: Mutex::new(HashMap::new()) }
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes token `id` writes (empty: none, or a special token).
    pub fn token(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b)
    }

    /// One bit per token id (`id / 64`, bit `id % 64`): whether its bytes continue `state`.
    pub fn allowed(&self, state: &JsonState) -> Arc<[u64]> {
        if let Some(mask) = self.cache.lock().expect("json mask cache").get(state) {
            return mask.clone();
        }
        let mask: Arc<[u64]> = self.walk(*state).into();
        let mut cache = self.cache.lock().expect("json mask cache");
        if cache.len() >= MAX_CACHED_STATES {
            cache.clear();
        }
        cache.insert(*state, mask.clone());
        mask
    }

    /// The sorted walk: `states[d]` is the state after the first `d` bytes of the current token,
    /// for every `d` its bytes were accepted up to.
    fn walk(&self, start: JsonState) -> Vec<u64> {
        let mut mask = vec![0u64; self.bytes.len().div_ceil(64)];
        let mut states = vec![start];
        for &(id, shared) in &self.sorted {
            let shared = shared as usize;
            // The token before failed within the prefix this one shares: so does this one.
            if shared >= states.len() {
                continue;
            }
            states.truncate(shared + 1);
            let mut state = states[shared];
            let mut ok = true;
            for &b in &self.bytes[id as usize][shared..] {
                if !state.feed(b) {
                    ok = false;
                    break;
                }
                states.push(state);
            }
            if ok {
                mask[id as usize / 64] |= 1 << (id % 64);
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests;
