//! Output constraints (`response_format`, `structured_outputs`, a forced `tool_choice`): which
//! tokens may come next.
//!
//! A constraint is a byte-level parser whose state is `Copy` ([`ByteParser`]):
//! `super::json_object::JsonState` for any JSON object, `super::json_schema::SchemaState` for
//! a schema, `super::regex_format::RegexState` for a regex or a choice,
//! `super::tool_calls::ToolCallsState` for tool calls. Before each draw, [`Vocab::allowed`] says which tokens' bytes the parser accepts
//! from the sequence's state; the sampler gives every other token -inf. The vocabulary is
//! walked in sorted byte order, so a shared prefix is parsed once and a rejected prefix rules
//! out every token that starts with it; the answer is cached per state ([`MaskCache`]), since a
//! generation revisits few states ("inside a string", "after a value at depth 2", ...).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use super::json_object::JsonState;
use super::json_schema::{Schema, SchemaState};
use super::regex_format::{RegexFormat, RegexState};
use super::thinking::{Held, ThinkingState};
use super::tool_calls::{ToolCallFormat, ToolCallsState};
use crate::tokenizer::Tokenizer;

/// A parser the vocabulary walk can branch on: copied at every shared prefix.
pub trait ByteParser: Copy + Eq + Hash {
    /// Reads one byte; false if it cannot come next.
    fn feed(&mut self, b: u8) -> bool;

    /// Inside a string, between characters, where any plain text (see [`Vocab`]) of at most
    /// this many characters may come next: the walk then takes the plain tokens that fit
    /// without feeding them. `None` where it must feed every token (a pattern, an escape, ...).
    fn plain_budget(&self) -> Option<u32> {
        None
    }
}

/// What `response_format` or `structured_outputs` asks of the output.
#[derive(Debug, Clone, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    /// One JSON object.
    JsonObject,
    /// A JSON object valid under the schema.
    JsonSchema(Arc<Schema>),
    /// The whole output matching a regex or a grammar, or one of a list of strings.
    Regex(Arc<RegexFormat>),
    /// Tool calls (`tool_choice` `"required"` or a named function).
    ToolCalls(Arc<ToolCallFormat>),
}

impl PartialEq for OutputFormat {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Text, Self::Text) | (Self::JsonObject, Self::JsonObject) => true,
            (Self::JsonSchema(a), Self::JsonSchema(b)) => Arc::ptr_eq(a, b),
            (Self::Regex(a), Self::Regex(b)) => Arc::ptr_eq(a, b),
            (Self::ToolCalls(a), Self::ToolCalls(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl OutputFormat {
    /// Whether a cached format should be compiled afresh (see `RegexFormat::is_stale`).
    fn is_stale(&self) -> bool {
        matches!(self, Self::Regex(r) if r.is_stale())
    }

    /// A fresh parse for one sequence; `None` for plain text.
    pub fn start(&self) -> Option<Constraint> {
        match self {
            Self::Text => None,
            Self::JsonObject => Some(Constraint::Object(JsonState::default())),
            Self::JsonSchema(schema) => Some(Constraint::Schema(schema.clone(), schema.start())),
            Self::Regex(regex) => Some(Constraint::Regex(regex.clone(), regex.start())),
            Self::ToolCalls(calls) => Some(Constraint::ToolCalls(calls.clone(), calls.start())),
        }
    }

    /// A fresh parse that first lets the model think, free until `</think>` (see
    /// `super::thinking`); `None` for plain text.
    pub fn start_after_thinking(&self) -> Option<Constraint> {
        let held = match self.start()? {
            Constraint::Object(s) => Held::Object(s),
            Constraint::Schema(_, s) => Held::Schema(s),
            Constraint::Regex(_, s) => Held::Regex(s),
            Constraint::ToolCalls(_, s) => Held::Calls(s),
            Constraint::Thinking(..) => unreachable!("start() makes no thinking constraint"),
        };
        Some(Constraint::Thinking(self.clone(), ThinkingState::new(held)))
    }
}

/// One sequence's parse of its output so far. (A schema's state is the larger, ~250 bytes: one
/// per sequence, copied at each step anyway.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Constraint {
    Object(JsonState),
    Schema(Arc<Schema>, SchemaState),
    Regex(Arc<RegexFormat>, RegexState),
    ToolCalls(Arc<ToolCallFormat>, ToolCallsState),
    /// Thinking first, then the format (which keeps the schema or tools alive).
    Thinking(OutputFormat, ThinkingState),
}

impl Constraint {
    /// Whether the output may end here: EOS is allowed (and, for a JSON object, only EOS;
    /// after a tool call, another call may also begin; a regex may go on if it can).
    pub fn is_complete(&self) -> bool {
        match self {
            Self::Object(s) => s.is_complete(),
            Self::Schema(_, s) => s.is_complete(),
            Self::Regex(_, s) => s.is_complete(),
            Self::ToolCalls(_, s) => s.is_complete(),
            Self::Thinking(_, s) => s.is_complete(),
        }
    }

    /// The tokens that continue the output (see [`Vocab::allowed`]).
    pub fn allowed(&self, vocab: &Vocab) -> Arc<[u64]> {
        match self {
            Self::Object(s) => vocab.allowed(&vocab.object_masks, s),
            Self::Schema(schema, s) => vocab.allowed(&schema.masks, s),
            Self::Regex(regex, s) => vocab.allowed(&regex.masks, s),
            Self::ToolCalls(calls, s) => vocab.allowed(&calls.masks, s),
            // Once held, the format's own masks (and cache).
            Self::Thinking(format, s) => match (format, s.held()) {
                (OutputFormat::JsonObject, Some(Held::Object(h))) => vocab.allowed(&vocab.object_masks, h),
                (OutputFormat::JsonSchema(schema), Some(Held::Schema(h))) => vocab.allowed(&schema.masks, h),
                (OutputFormat::Regex(regex), Some(Held::Regex(h))) => vocab.allowed(&regex.masks, h),
                (OutputFormat::ToolCalls(calls), Some(Held::Calls(h))) => vocab.allowed(&calls.masks, h),
                // Thinking: each format's own cache (a held state may hold its schema's address,
                // which a later schema could reuse).
                (OutputFormat::JsonObject, None) => vocab.allowed(&vocab.thinking_masks, s),
                (OutputFormat::JsonSchema(schema), None) => vocab.allowed(&schema.thinking_masks, s),
                (OutputFormat::Regex(regex), None) => vocab.allowed(&regex.thinking_masks, s),
                (OutputFormat::ToolCalls(calls), None) => vocab.allowed(&calls.thinking_masks, s),
                _ => unreachable!("a thinking constraint holds its format's parser"),
            },
        }
    }

    /// Reads a sampled token's bytes; false (the state is then spoilt) if they do not continue
    /// the output, which a token drawn under this state's mask always does.
    pub fn advance(&mut self, bytes: &[u8]) -> bool {
        match self {
            Self::Object(s) => s.feed_all(bytes),
            Self::Schema(_, s) => bytes.iter().all(|&b| ByteParser::feed(s, b)),
            Self::Regex(_, s) => bytes.iter().all(|&b| s.feed(b)),
            Self::ToolCalls(_, s) => bytes.iter().all(|&b| s.feed(b)),
            Self::Thinking(_, s) => bytes.iter().all(|&b| s.feed(b)),
        }
    }
}

/// Compiled output formats (schemas, forced tool calls) by the text they were made from, so
/// that requests asking the same (a batch job's, an agent's every turn) share one and the masks
/// found for it; emptied when full.
pub struct FormatCache {
    formats: Mutex<HashMap<String, OutputFormat>>,
    capacity: usize,
}

impl FormatCache {
    /// Room for `capacity` formats (each holding up to ~5 MB of masks).
    pub fn with_capacity(capacity: usize) -> Self {
        Self { formats: Mutex::new(HashMap::new()), capacity }
    }

    /// The format made before from `key`, or `make`'s (kept if it is one).
    pub fn get(&self, key: String, make: impl FnOnce() -> Result<OutputFormat, String>) -> Result<OutputFormat, String> {
        if let Some(f) = self.formats.lock().expect("format cache").get(&key).filter(|f| !f.is_stale()) {
            return Ok(f.clone());
        }
        let made = off_the_runtime(make)?;
        let mut formats = self.formats.lock().expect("format cache");
        if formats.len() >= self.capacity {
            formats.clear();
        }
        let entry = formats.entry(key).or_insert_with(|| made.clone());
        if entry.is_stale() {
            *entry = made;
        }
        Ok(entry.clone())
    }

    /// `schema` compiled (`response_format: json_schema`), or the one compiled before from the
    /// same text; the error says which keyword at which JSON pointer is the problem.
    pub fn schema(&self, schema: &serde_json::Value) -> Result<OutputFormat, String> {
        self.get(format!("schema {schema}"), || Ok(OutputFormat::JsonSchema(Arc::new(Schema::compile(schema)?))))
    }

    /// `regex` compiled (`structured_outputs.regex`), or the one compiled before.
    pub fn regex(&self, regex: &str) -> Result<OutputFormat, String> {
        self.get(format!("regex {regex}"), || Ok(OutputFormat::Regex(Arc::new(RegexFormat::regex(regex)?))))
    }

    /// GBNF `grammar` compiled (`structured_outputs.grammar`), or the one compiled before.
    pub fn grammar(&self, grammar: &str) -> Result<OutputFormat, String> {
        self.get(format!("grammar {grammar}"), || Ok(OutputFormat::Regex(Arc::new(RegexFormat::grammar(grammar)?))))
    }

    /// `choices` compiled (`structured_outputs.choice`), or the ones compiled before.
    pub fn choice(&self, choices: &[String]) -> Result<OutputFormat, String> {
        let key = format!("choice {}", serde_json::Value::from(choices));
        self.get(key, || Ok(OutputFormat::Regex(Arc::new(RegexFormat::choice(choices)?))))
    }
}

/// Runs `f`, which may take a while (a grammar at the parser's size cap compiles in ~0.5 s),
/// telling the async runtime first, so that other requests' tasks move to its other workers
/// rather than wait behind it.
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Cached masks of one kind of parser (each vocab / 8 bytes: 19 KB for Qwen's 151,665 tokens),
/// emptied when full.
pub struct MaskCache<S> {
    masks: Mutex<HashMap<S, Arc<[u64]>>>,
    capacity: usize,
}

impl<S> MaskCache<S> {
    /// Room for `capacity` masks: the engine's one for `json_object` holds 2048 (~38 MB at
    /// most), each schema request's 256 (~5 MB).
    pub fn with_capacity(capacity: usize) -> Self {
        Self { masks: Mutex::new(HashMap::new()), capacity }
    }
}

impl<S> std::fmt::Debug for MaskCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskCache")
    }
}

/// The vocabulary as bytes, sorted for the walk. One per engine, made when the first
/// constrained request comes; `object_masks` serves every `json_object` request (a schema's
/// masks live with the schema).
///
/// A token is *plain* if its bytes are whole UTF-8 characters, none of them a control
/// character, `"`, `\\` or `<`: inside a string any parser takes it as text (`<` is left out
/// for tool calls, whose strings may not spell their closing tag). Most of the vocabulary is
/// plain, and a walk from inside a string ([`ByteParser::plain_budget`]) takes those by their
/// length in characters and feeds only the rest: a walk there fed every byte of ~150,000
/// tokens before.
pub struct Vocab {
    /// Each token's bytes, by id; empty for special tokens (never allowed).
    bytes: Vec<Box<[u8]>>,
    /// Ids of the tokens with bytes in byte order, each with the length of the prefix it shares
    /// with the one before.
    sorted: Vec<(u32, u32)>,
    /// The same for the tokens that are not plain.
    sorted_rest: Vec<(u32, u32)>,
    /// `plain_within[c]`: the plain tokens of at most `c` characters (the last: all of them).
    plain_within: Vec<Vec<u64>>,
    object_masks: MaskCache<JsonState>,
    /// Masks while thinking before `json_object` output.
    thinking_masks: MaskCache<ThinkingState>,
}

impl Vocab {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        Self::from_bytes(tokenizer.token_bytes())
    }

    /// `bytes[id]`: what token `id` writes; empty for one that may never be sampled here.
    pub fn from_bytes(bytes: Vec<Box<[u8]>>) -> Self {
        let mut ids: Vec<u32> = (0..bytes.len() as u32).filter(|&i| !bytes[i as usize].is_empty()).collect();
        ids.sort_unstable_by(|&a, &b| bytes[a as usize].cmp(&bytes[b as usize]));
        let chars: Vec<Option<usize>> = bytes.iter().map(|b| plain_chars(b)).collect();
        let sorted = shared_prefixes(&bytes, &ids);
        let rest: Vec<u32> = ids.iter().copied().filter(|&id| chars[id as usize].is_none()).collect();
        let sorted_rest = shared_prefixes(&bytes, &rest);
        let longest = chars.iter().flatten().copied().max().unwrap_or(0);
        let words = bytes.len().div_ceil(64);
        let mut plain_within = vec![vec![0u64; words]; longest + 1];
        for (id, n) in chars.iter().enumerate().filter_map(|(id, n)| n.map(|n| (id, n))) {
            for mask in &mut plain_within[n..] {
                mask[id / 64] |= 1 << (id % 64);
            }
        }
        Self { bytes, sorted, sorted_rest, plain_within, object_masks: MaskCache::with_capacity(2048), thinking_masks: MaskCache::with_capacity(256) }
    }

    /// The bytes token `id` writes (empty: none, or a special token).
    pub fn token(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b)
    }

    /// One bit per token id (`id / 64`, bit `id % 64`): whether its bytes continue `state`.
    pub fn allowed<S: ByteParser>(&self, cache: &MaskCache<S>, state: &S) -> Arc<[u64]> {
        if let Some(mask) = cache.masks.lock().expect("mask cache").get(state) {
            return mask.clone();
        }
        let mask: Arc<[u64]> = self.walk(*state).into();
        let mut cached = cache.masks.lock().expect("mask cache");
        if cached.len() >= cache.capacity {
            cached.clear();
        }
        cached.insert(*state, mask.clone());
        mask
    }

    /// The sorted walk: `states[d]` is the state after the first `d` bytes of the current token,
    /// for every `d` its bytes were accepted up to. From inside a string the plain tokens that
    /// fit are taken whole, and only the rest are walked.
    fn walk<S: ByteParser>(&self, start: S) -> Vec<u64> {
        let (mut mask, tokens) = match start.plain_budget() {
            Some(budget) => (self.plain_within[(budget as usize).min(self.plain_within.len() - 1)].clone(), &self.sorted_rest),
            None => (vec![0u64; self.bytes.len().div_ceil(64)], &self.sorted),
        };
        let mut states = vec![start];
        for &(id, shared) in tokens {
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

/// `ids` (in byte order), each with the length of the prefix it shares with the one before.
fn shared_prefixes(bytes: &[Box<[u8]>], ids: &[u32]) -> Vec<(u32, u32)> {
    let mut previous: &[u8] = &[];
    ids.iter()
        .map(|&id| {
            let b = &bytes[id as usize];
            let shared = b.iter().zip(previous).take_while(|(x, y)| x == y).count();
            previous = b;
            (id, shared as u32)
        })
        .collect()
}

/// A plain token's length in characters (see [`Vocab`]); `None` if it is not plain.
fn plain_chars(bytes: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(bytes).ok().filter(|t| !t.is_empty())?;
    text.chars().all(|c| c >= ' ' && !matches!(c, '"' | '\\' | '<' | '\u{7f}')).then(|| text.chars().count())
}

#[cfg(test)]
mod tests;
