//! `tool_choice: "required"` or a named function: the output is held to tool calls in the
//! Hermes format Qwen's templates teach (`<tool_call>\n{"name": ..., "arguments": {...}}\n
//! </tool_call>`), each call's object to a schema made from the tools' `parameters`
//! ([`ToolCallFormat::new`]), so the arguments always parse and fit the function. The API's
//! tool-call parser then reads the calls from the text as it would any other.
//!
//! `tools` beside a JSON `response_format` under `tool_choice: "auto"` (OpenAI's structured
//! output for agents): the output is the calls, or else the answer in the format
//! ([`ToolCallFormat::with_answer`]). The first byte decides, and cleanly: a call begins with
//! `<`, which no JSON value does.
//!
//! `tools` with a `strict` function under `tool_choice: "auto"` ([`Answer::Text`]): the output
//! is free text, but once it writes `<tool_call>` the call is held as above, so a call that
//! comes back always fits its function (OpenAI's strict function calling). Small models often
//! write a call bare, without the tags, and the API reads an output that is one such object as
//! a call: so an output that begins with `{` and goes on as a call would (`{"name":
//! "get_weather"`) is held to be that one call; one that goes another way (another key, a
//! name no tool has) is free text after all.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::constraint::{ByteParser, MaskCache};
use super::json_object::JsonState;
use super::json_schema::{Schema, SchemaState};
use super::thinking::ThinkingState;

const OPEN: &[u8] = b"<tool_call>\n";
const CLOSE: &[u8] = b"\n</tool_call>";
/// Calls one output may hold under `"required"` (a runaway list ends here).
const MAX_CALLS: u8 = 16;
/// Quotes a bare call writes before it is held: its first key and that key's string value
/// (`{"name": "get_weather"`, as the model writes calls).
const BARE_COMMIT: u8 = 4;

/// The calls an output must make: the schema of one call's object, and whether only one call
/// may be made (a named function) or one or more (`"required"`); or, with an answer, the
/// calls it may make instead of the answer.
#[derive(Debug)]
pub struct ToolCallFormat {
    schema: Schema,
    single: bool,
    /// What the output may be instead of calls: the answer, in its format.
    answer: Option<Answer>,
    pub(super) masks: MaskCache<ToolCallsState>,
    /// Masks while thinking before the calls (`super::thinking`).
    pub(super) thinking_masks: MaskCache<ThinkingState>,
}

/// The format of an answer written instead of calls: `response_format`'s.
#[derive(Debug)]
pub enum Answer {
    /// Any JSON object (`json_object`), as `super::json_object` holds it: a schema of
    /// `{"type": "object"}` would allow only `{}` (schemas take no properties they do not name).
    Object,
    /// An object valid under the schema (`json_schema`), the one the API compiled for it.
    Schema(Arc<Schema>),
    /// Free text, in which `<tool_call>` begins a held call; after the calls the output ends.
    /// An output that begins with `{` and names a tool is one bare call.
    Text,
}

impl ToolCallFormat {
    /// `tools`: `(name, parameters schema)` of each function the output may call, one call of
    /// the one function if `single`. The error names the tool whose parameters cannot be held.
    /// A name may not hold `</tool_call>` (the call would end inside it): the API refuses such
    /// tools under any `tool_choice` (`validate::tools`).
    pub fn new(tools: &[(&str, &Value)], single: bool) -> Result<Self, String> {
        let mut calls = Vec::with_capacity(tools.len());
        let mut defs = Map::new();
        for (i, &(name, parameters)) in tools.iter().enumerate() {
            Schema::compile(parameters).map_err(|e| format!("the parameters of function {name:?}: {e}"))?;
            let at = if tools.len() == 1 { "/properties/arguments".to_string() } else { format!("/anyOf/{i}/properties/arguments") };
            let arguments = rebase(parameters, i, &at, &mut defs);
            calls.push(json!({"type": "object", "required": ["name", "arguments"], "properties": {"name": {"const": name}, "arguments": arguments}}));
        }
        let mut schema = match calls.len() {
            1 => calls.pop().expect("one call"),
            _ => json!({"anyOf": calls}),
        };
        schema["$defs"] = Value::Object(defs);
        let schema = Schema::compile(&schema).map_err(|e| format!("the tools together: {e}"))?;
        Ok(Self { schema, single, answer: None, masks: MaskCache::with_capacity(256), thinking_masks: MaskCache::with_capacity(16) })
    }

    /// The calls, or instead of any call the answer in `answer`'s format (`tool_choice: "auto"`
    /// beside a JSON `response_format`).
    pub fn with_answer(self, answer: Answer) -> Self {
        Self { answer: Some(answer), ..self }
    }

    /// Whether the output may be an answer instead of calls.
    pub fn answers(&self) -> bool {
        self.answer.is_some()
    }

    /// Whether the output is free text in which only the calls are held ([`Answer::Text`]).
    pub fn answers_text(&self) -> bool {
        matches!(self.answer, Some(Answer::Text))
    }

    /// Whether `call` (a call's object, e.g. a bare one read back from free text) is one the
    /// format would have let the output write.
    pub fn fits(&self, call: &str) -> bool {
        let mut state = self.start();
        state.answer = AnswerState::None;
        OPEN.iter().chain(call.trim().as_bytes()).chain(CLOSE).all(|&b| state.feed(b)) && state.is_complete()
    }

    pub(super) fn start(&self) -> ToolCallsState {
        let answer = match &self.answer {
            None => AnswerState::None,
            Some(Answer::Object) => AnswerState::Object(JsonState::default()),
            Some(Answer::Schema(schema)) => AnswerState::Schema(Arc::as_ptr(schema) as usize),
            Some(Answer::Text) => AnswerState::TextStart,
        };
        ToolCallsState { phase: Phase::Open(0), call: self.schema.start(), tag: 0, calls: 0, single: self.single, answer }
    }
}

/// Where an output of tool calls stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ToolCallsState {
    phase: Phase,
    /// The current call's object (or the last one's, finished).
    call: SchemaState,
    /// How much of `</tool_call>` the call's last bytes spell: inside a string it may not be
    /// written whole, or the parser reading the calls back would end the call there (a string
    /// can spell it with an escape, `\u003e` for the `>`).
    tag: u8,
    calls: u8,
    single: bool,
    /// The answer the output may be instead of calls (and a JSON object's parse, once begun);
    /// `None` once a call begins, so the states of calls are the same with or without one.
    answer: AnswerState,
}

/// An answer's parse ([`Answer`]), small so that every state stays so: a schema's is held in
/// `ToolCallsState::call` once begun (no call can follow it), and only its schema's address
/// is kept before that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AnswerState {
    None,
    /// The object's parse, from its start.
    Object(JsonState),
    /// The address of the answer's [`Schema`], which the format holds (`Answer::Schema`).
    Schema(usize),
    /// Free text (`Answer::Text`) before its first byte, which may begin a bare call.
    TextStart,
    /// Free text (`Answer::Text`); `Phase::Open` counts how much of `OPEN` it ends with.
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    /// `OPEN`, this many bytes in (in free text: how many of its last bytes spell the start
    /// of `OPEN`).
    Open(u8),
    /// Inside the call's object.
    Call,
    /// `CLOSE`, this many bytes in.
    Close(u8),
    /// After a call: the output may end, or (`"required"`) a line break begins another.
    Done,
    /// Inside the answer, which holds the rest of the output.
    Answer,
    /// Inside a bare call (`Answer::Text`), which holds the rest of the output; `tag` counts
    /// its quotes up to `BARE_COMMIT`, before which it may still turn out to be text.
    Bare,
}

impl ToolCallsState {
    /// Whether a call has just closed, or the answer is complete, so the output may end.
    pub fn is_complete(&self) -> bool {
        match self.phase {
            Phase::Done => true,
            // Free text may end anywhere, even after `<tool`.
            Phase::Open(_) => matches!(self.answer, AnswerState::Text | AnswerState::TextStart),
            Phase::Bare => self.call.is_complete(),
            Phase::Answer => match self.answer {
                AnswerState::Object(s) => s.is_complete(),
                _ => self.call.is_complete(),
            },
            _ => false,
        }
    }

    /// The first byte of an output that may be an answer: `<` begins a call (and the answer is
    /// dropped), anything else the answer (false if it cannot begin one).
    fn choose(&mut self, b: u8) -> bool {
        if b == OPEN[0] {
            self.answer = AnswerState::None;
            self.phase = Phase::Open(1);
            return true;
        }
        self.phase = Phase::Answer;
        if let AnswerState::Schema(schema) = self.answer {
            // SAFETY: the address of the schema in the `Arc` that the format holds
            // (`ToolCallFormat::start`); the format is kept alive beside every state made from
            // it (`Constraint::ToolCalls`), as a schema is beside its states
            // (`SchemaState::schema`).
            self.call = unsafe { &*(schema as *const Schema) }.start();
        }
        self.feed_answer(b)
    }

    /// The first byte of free text: `{` begins a bare call, anything else the text.
    fn begin_text(&mut self, b: u8) -> bool {
        // (The state is `ToolCallFormat::start`'s: the call's parse is fresh, `tag` 0.)
        if b == b'{' {
            self.answer = AnswerState::None;
            self.phase = Phase::Bare;
            return self.call.feed(b);
        }
        self.answer = AnswerState::Text;
        self.feed(b)
    }

    /// A byte of a bare call: held once its name is written, text if it goes another way
    /// before that (so JSON that names no tool is not made into a call).
    fn feed_bare(&mut self, b: u8) -> bool {
        let mut call = self.call;
        if call.feed(b) {
            self.call = call;
            self.tag += u8::from(b == b'"' && self.tag < BARE_COMMIT);
            return true;
        }
        if self.tag >= BARE_COMMIT {
            return false;
        }
        // Text after all; the call's parse is dropped, so text states share their masks.
        self.answer = AnswerState::Text;
        self.phase = Phase::Open(0);
        self.call = self.call.restart();
        self.tag = 0;
        self.feed(b)
    }

    /// A byte of the answer.
    fn feed_answer(&mut self, b: u8) -> bool {
        match &mut self.answer {
            AnswerState::Object(s) => ByteParser::feed(s, b),
            _ => self.call.feed(b),
        }
    }
}

/// Follows `</tool_call>` through a call's bytes (`tag`: how much of it they end with); false
/// at its last byte.
fn past_tag(tag: &mut u8, b: u8) -> bool {
    let end = &CLOSE[1..];
    *tag = if b == end[*tag as usize] { *tag + 1 } else { u8::from(b == end[0]) };
    (*tag as usize) < end.len()
}

impl ByteParser for ToolCallsState {
    fn feed(&mut self, b: u8) -> bool {
        self.phase = match self.phase {
            Phase::Open(0) if self.answer == AnswerState::TextStart => return self.begin_text(b),
            Phase::Bare => return self.feed_bare(b),
            // Free text: only `<tool_call>`'s line break is held (the call has begun).
            Phase::Open(i) if self.answer == AnswerState::Text && OPEN[i as usize] != b => {
                if i as usize + 1 == OPEN.len() {
                    return false;
                }
                Phase::Open(u8::from(b == OPEN[0]))
            }
            Phase::Open(0) if matches!(self.answer, AnswerState::Object(_) | AnswerState::Schema(_)) => return self.choose(b),
            Phase::Answer => return self.feed_answer(b),
            Phase::Open(i) if OPEN[i as usize] != b => return false,
            Phase::Open(i) if i as usize + 1 == OPEN.len() => {
                self.answer = AnswerState::None;
                self.call = self.call.restart();
                self.tag = 0;
                Phase::Call
            }
            Phase::Open(i) => Phase::Open(i + 1),
            Phase::Call if !self.call.feed(b) || !past_tag(&mut self.tag, b) => return false,
            Phase::Call if self.call.is_complete() => Phase::Close(0),
            Phase::Call => Phase::Call,
            Phase::Close(i) if CLOSE[i as usize] != b => return false,
            Phase::Close(i) if i as usize + 1 == CLOSE.len() => {
                self.calls += 1;
                Phase::Done
            }
            Phase::Close(i) => Phase::Close(i + 1),
            Phase::Done if b == b'\n' && !self.single && self.calls < MAX_CALLS => Phase::Open(0),
            Phase::Done => return false,
        };
        true
    }

    fn plain_budget(&self) -> Option<u32> {
        // Plain text holds no `<`, so it cannot spell the closing tag from a clean start.
        match self.phase {
            Phase::Call if self.tag == 0 => self.call.plain_budget(),
            // Plain text holds no `<`, so it cannot begin a call.
            Phase::Open(0) if self.answer == AnswerState::Text => Some(u32::MAX),
            // Before the name, a token the call cannot take is text: walk them all.
            Phase::Bare if self.tag >= BARE_COMMIT => self.call.plain_budget(),
            Phase::Bare => None,
            Phase::Answer => match self.answer {
                AnswerState::Object(s) => s.plain_budget(),
                _ => self.call.plain_budget(),
            },
            _ => None,
        }
    }
}

/// Parameters any JSON object fits (what [`Schema`] holds of "any value": each of its kinds,
/// nested), for a function whose own cannot be held but whose calls may still be made.
pub fn any_object() -> Value {
    let kinds = json!([{"type": "object", "additionalProperties": {"$ref": "#/$defs/any"}}, {"type": "array", "items": {"$ref": "#/$defs/any"}},
        {"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]);
    json!({"type": "object", "additionalProperties": {"$ref": "#/$defs/any"}, "$defs": {"any": {"anyOf": kinds}}})
}

/// Tool `tool`'s `parameters` placed at JSON pointer `at` of a larger schema: its `$defs` /
/// `definitions` moved into `defs` with names prefixed by the tool and the keyword
/// (`t{tool}_` / `t{tool}d_`), and its `$ref`s rewritten to match (`#/$defs/X` to
/// `#/$defs/t{tool}_X`, any other `#...` to `#{at}...`).
fn rebase(parameters: &Value, tool: usize, at: &str, defs: &mut Map<String, Value>) -> Value {
    let prefixes = [("$defs", format!("t{tool}_")), ("definitions", format!("t{tool}d_"))];
    fn refs(v: &Value, prefixes: &[(&str, String); 2], at: &str) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => {
                            let moved = prefixes.iter().find_map(|(k, p)| r.strip_prefix(&format!("#/{k}/")).map(|rest| (p, rest)));
                            let r = match (moved, r.strip_prefix('#')) {
                                (Some((prefix, rest)), _) => format!("#/$defs/{prefix}{rest}"),
                                (None, Some(rest)) => format!("#{at}{rest}"),
                                (None, None) => r.clone(),
                            };
                            (k.clone(), Value::String(r))
                        }
                        _ => (k.clone(), refs(x, prefixes, at)),
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| refs(x, prefixes, at)).collect()),
            other => other.clone(),
        }
    }
    let mut rebased = refs(parameters, &prefixes, at);
    if let Value::Object(o) = &mut rebased {
        for (key, prefix) in &prefixes {
            if let Some(Value::Object(d)) = o.remove(*key) {
                defs.extend(d.into_iter().map(|(name, def)| (format!("{prefix}{name}"), def)));
            }
        }
    }
    rebased
}

#[cfg(test)]
mod tests;
