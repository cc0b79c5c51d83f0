//! Tool calls in Qwen output. Every call sits in a `<tool_call>…</tool_call>` block whose body is
//! one of two formats, detected per block:
//! - Hermes JSON (Qwen2.5, Qwen3): `{"name": "f", "arguments": {…}}`;
//! - Qwen3-Coder XML: `<function=f><parameter=p>\nraw text\n</parameter></function>`, whose raw
//!   values are typed through the tool's JSON schema (`ParamType`).
//!
//! Small Qwen models often answer a tool request with the bare Hermes body and no tags; when
//! tools were given and the WHOLE output is one such object naming a known tool, it is taken
//! as a call too (the stream holds back output that starts with `{` until the end to decide).
//! Under `tool_choice: "auto"` with held calls (a `strict` function, or tools beside a JSON
//! format), a bare one counts only if it fits ([`BareCheck`]): it need not have been held as a
//! call (beside a format the answer is what is held).
//!
//! Non-streaming is all-or-nothing: one malformed block turns the whole text back into content.
//! Streaming cannot take back a call it has already sent, so the two agree on everything except
//! text where a malformed or unclosed block follows a well-formed call: there the stream has
//! sent the earlier calls and carries on with the rest as content. After a malformed block the
//! stream treats all later text as content, so text whose *first* block is malformed comes out
//! the same both ways.
//!
//! Content is trimmed at both ends in both modes. The stream achieves that by dropping leading
//! whitespace and holding back trailing whitespace until non-whitespace content follows it (it
//! is dropped at `finish`), so a content delta's trailing spaces/newlines arrive one delta late.

use std::sync::Arc;

use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::{Map, Number, Value};

const CALL_START: &str = "<tool_call>";
const CALL_END: &str = "</tool_call>";
const FUNCTION_START: &str = "<function=";
const FUNCTION_END: &str = "</function>";
const PARAM_START: &str = "<parameter=";
const PARAM_END: &str = "</parameter>";

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// `"call_"` + 24 random alphanumerics.
    pub id: String,
    pub name: String,
    /// A JSON object, compact, keys in the order the model wrote them.
    pub arguments: String,
}

impl ToolCall {
    fn with_new_id(name: String, arguments: String) -> Self {
        let suffix: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        Self {
            id: format!("call_{suffix}"),
            name,
            arguments,
        }
    }
}

/// Non-streaming: splits a finished completion into content and tool calls. Content is the
/// text outside the tool-call blocks, trimmed (None when empty). If ANY block is malformed
/// (bad JSON, missing name, unclosed tag, name not in `tools` when tools are given), return
/// the whole text as content and no calls: malformed calls fall back to plain content.
pub fn parse_tool_calls(text: &str, tools: Option<&[Value]>) -> (Option<String>, Vec<ToolCall>) {
    parse_tool_calls_checked(text, tools, None)
}

/// Whether a bare call's object (its text) fits the held calls
/// (`crate::engine::tool_calls::ToolCallFormat::fits`).
pub type BareCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// [`parse_tool_calls`], taking a bare call only if `check` (when given) passes it.
pub fn parse_tool_calls_checked(text: &str, tools: Option<&[Value]>, check: Option<&BareCheck>) -> (Option<String>, Vec<ToolCall>) {
    let all_content = || (non_empty(text.trim()), Vec::new());
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(CALL_START) {
        content.push_str(&rest[..start]);
        let body = &rest[start + CALL_START.len()..];
        let Some(end) = body.find(CALL_END) else {
            return all_content();
        };
        let Some(call) = parse_block(&body[..end], tools) else {
            return all_content();
        };
        calls.push(call);
        rest = &body[end + CALL_END.len()..];
    }
    content.push_str(rest);
    if calls.is_empty() {
        if let Some(call) = parse_bare_call(text, tools, check) {
            return (None, vec![call]);
        }
    }
    (non_empty(content.trim()), calls)
}

/// The whole text as an untagged Hermes body, when tools were given and it names one (and
/// `check` passes it).
fn parse_bare_call(text: &str, tools: Option<&[Value]>, check: Option<&BareCheck>) -> Option<ToolCall> {
    let body = text.trim();
    if tools.is_none() || !body.starts_with('{') || !body.ends_with('}') || check.is_some_and(|fits| !fits(body)) {
        return None;
    }
    parse_block(body, tools)
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolStreamEvent {
    Content(String),
    /// `index` counts the calls of this completion from 0.
    ToolCall {
        index: usize,
        call: ToolCall,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum StreamState {
    /// Outside a block; `buf` holds a possible partial `<tool_call>`.
    Content,
    /// After `<tool_call>`; `buf` holds the block body so far.
    InBlock,
    /// A block was malformed: everything else is content.
    PassThrough,
    /// Tools were given and the output began with `{`: possibly a bare call; `buf` holds all
    /// of it until `finish` decides.
    BareCandidate,
}

/// Streaming: fed text deltas, yields content deltas and whole tool calls as they complete.
pub struct ToolCallStreamParser {
    tools: Option<Vec<Value>>,
    state: StreamState,
    buf: String,
    /// InBlock: bytes of `buf` already searched for `</tool_call>`.
    num_scanned: usize,
    /// Trailing whitespace of the content so far; sent only if more content follows.
    held_whitespace: String,
    content_started: bool,
    /// The output was held as a possible bare call and turned out not to be one.
    bare_ruled_out: bool,
    bare_check: Option<BareCheck>,
    num_calls: usize,
}

impl ToolCallStreamParser {
    pub fn new(tools: Option<Vec<Value>>) -> Self {
        Self {
            tools,
            state: StreamState::Content,
            buf: String::new(),
            num_scanned: 0,
            held_whitespace: String::new(),
            content_started: false,
            bare_ruled_out: false,
            bare_check: None,
            num_calls: 0,
        }
    }

    /// Takes a bare call only if `check` passes it ([`parse_tool_calls_checked`]).
    pub fn with_bare_check(self, check: Option<BareCheck>) -> Self {
        Self { bare_check: check, ..self }
    }

    pub fn push(&mut self, delta: &str) -> Vec<ToolStreamEvent> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            match self.state {
                StreamState::Content => {
                    if !self.bare_ruled_out && !self.content_started && self.num_calls == 0 && self.tools.is_some() {
                        match self.buf.trim_start().chars().next() {
                            None => return out,
                            Some('{') => {
                                self.state = StreamState::BareCandidate;
                                return out;
                            }
                            Some(_) => {}
                        }
                    }
                    if let Some(start) = self.buf.find(CALL_START) {
                        let before: String = self.buf.drain(..start).collect();
                        self.emit_content(&before, &mut out);
                        self.buf.drain(..CALL_START.len());
                        self.state = StreamState::InBlock;
                        self.num_scanned = 0;
                        continue;
                    }
                    let num_held = partial_tag_len(&self.buf, CALL_START);
                    let ready: String = self.buf.drain(..self.buf.len() - num_held).collect();
                    self.emit_content(&ready, &mut out);
                    return out;
                }
                StreamState::InBlock => {
                    // The tag may straddle the already-searched part and the new delta.
                    let mut from = self.num_scanned.saturating_sub(CALL_END.len() - 1);
                    while !self.buf.is_char_boundary(from) {
                        from -= 1;
                    }
                    let Some(found) = self.buf[from..].find(CALL_END) else {
                        self.num_scanned = self.buf.len();
                        return out;
                    };
                    let end = from + found;
                    match parse_block(&self.buf[..end], self.tools.as_deref()) {
                        Some(call) => {
                            out.push(ToolStreamEvent::ToolCall {
                                index: self.num_calls,
                                call,
                            });
                            self.num_calls += 1;
                            self.state = StreamState::Content;
                        }
                        None => {
                            let raw = format!("{CALL_START}{}{CALL_END}", &self.buf[..end]);
                            self.emit_content(&raw, &mut out);
                            self.state = StreamState::PassThrough;
                        }
                    }
                    self.buf.drain(..end + CALL_END.len());
                }
                StreamState::PassThrough => {
                    let rest = std::mem::take(&mut self.buf);
                    self.emit_content(&rest, &mut out);
                    return out;
                }
                StreamState::BareCandidate => return out,
            }
        }
    }

    /// End of generation: flush; an unclosed or malformed block comes out as Content.
    /// Held trailing whitespace is dropped. Call once; the parser is spent afterwards.
    pub fn finish(&mut self) -> Vec<ToolStreamEvent> {
        let mut out = Vec::new();
        if self.state == StreamState::BareCandidate {
            let text = std::mem::take(&mut self.buf);
            if let Some(call) = parse_bare_call(&text, self.tools.as_deref(), self.bare_check.as_ref()) {
                self.num_calls += 1;
                self.state = StreamState::PassThrough;
                return vec![ToolStreamEvent::ToolCall { index: 0, call }];
            }
            // Not a bare call: run the held text through the ordinary content path.
            self.state = StreamState::Content;
            self.bare_ruled_out = true;
            out = self.push(&text);
        }
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            StreamState::InBlock => {
                self.emit_content(&format!("{CALL_START}{rest}"), &mut out);
            }
            StreamState::Content | StreamState::PassThrough | StreamState::BareCandidate => self.emit_content(&rest, &mut out),
        }
        self.held_whitespace.clear();
        self.state = StreamState::PassThrough;
        out
    }

    /// Sends `text` as content, trimming the start of the whole content and holding back its
    /// trailing whitespace; adjacent content events are merged.
    fn emit_content(&mut self, text: &str, out: &mut Vec<ToolStreamEvent>) {
        let text = if self.content_started {
            text
        } else {
            text.trim_start()
        };
        let body = text.trim_end();
        if body.is_empty() {
            if self.content_started {
                self.held_whitespace.push_str(text);
            }
            return;
        }
        let mut piece = std::mem::take(&mut self.held_whitespace);
        piece.push_str(body);
        self.held_whitespace.push_str(&text[body.len()..]);
        self.content_started = true;
        match out.last_mut() {
            Some(ToolStreamEvent::Content(last)) => last.push_str(&piece),
            _ => out.push(ToolStreamEvent::Content(piece)),
        }
    }
}

/// Length of the longest proper prefix of `tag` that `text` ends with.
fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| text.ends_with(&tag[..n]))
        .unwrap_or(0)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Parses the text between `<tool_call>` and `</tool_call>`; None when malformed.
fn parse_block(body: &str, tools: Option<&[Value]>) -> Option<ToolCall> {
    let body = body.trim();
    let (name, arguments) = match body.strip_prefix(FUNCTION_START) {
        Some(xml) => parse_xml(xml, tools)?,
        None => parse_hermes(body)?,
    };
    if let Some(tools) = tools {
        find_tool(tools, &name)?;
    }
    Some(ToolCall::with_new_id(
        name,
        serde_json::to_string(&arguments).ok()?,
    ))
}

/// `{"name": …, "arguments": {…}}`; `arguments` may also be a string holding a JSON object
/// (some fine-tunes do that), be called `parameters`, or be absent (no arguments).
fn parse_hermes(body: &str) -> Option<(String, Value)> {
    let Value::Object(call) = serde_json::from_str::<Value>(body).ok()? else {
        return None;
    };
    let name = call.get("name")?.as_str()?;
    if name.is_empty() {
        return None;
    }
    let arguments = match call.get("arguments").or_else(|| call.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(args)) => Value::Object(args.clone()),
        Some(Value::String(text)) => match serde_json::from_str(text).ok()? {
            Value::Object(args) => Value::Object(args),
            _ => return None,
        },
        Some(_) => return None,
    };
    Some((name.to_string(), arguments))
}

/// `<function=NAME>` (already stripped) then `<parameter=P>VALUE</parameter>`s separated only by
/// whitespace, then `</function>`. Strict: a missing closing tag is malformed.
fn parse_xml(xml: &str, tools: Option<&[Value]>) -> Option<(String, Value)> {
    let (name, rest) = xml.split_once('>')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    // Values are raw text (often code), so the last `</function>` is the real one.
    let end = rest.rfind(FUNCTION_END)?;
    if !rest[end + FUNCTION_END.len()..].trim().is_empty() {
        return None;
    }
    let mut params = &rest[..end];
    let mut arguments = Map::new();
    loop {
        params = params.trim_start();
        if params.is_empty() {
            return Some((name.to_string(), Value::Object(arguments)));
        }
        let (param, after) = params.strip_prefix(PARAM_START)?.split_once('>')?;
        let param = param.trim();
        if param.is_empty() {
            return None;
        }
        let (raw, after) = after.split_once(PARAM_END)?;
        let raw = raw.strip_prefix('\n').unwrap_or(raw);
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        let ty = ParamType::lookup(tools, name, param);
        arguments.insert(param.to_string(), ty.convert(raw));
        params = after;
    }
}

/// The tool named `name`: entries are OpenAI `{"type":"function","function":{…}}` or bare
/// function objects.
fn find_tool<'a>(tools: &'a [Value], name: &str) -> Option<&'a Value> {
    tools
        .iter()
        .map(|tool| tool.get("function").unwrap_or(tool))
        .find(|function| function.get("name").and_then(Value::as_str) == Some(name))
}

/// How an XML parameter's raw text becomes JSON. Type names follow vLLM's qwen3_coder parser.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ParamType {
    /// No `tools` in the request: JSON if the text parses as JSON, else a string.
    Unknown,
    String,
    Integer,
    Number,
    Boolean,
    /// object / array: parsed JSON if valid, else a string.
    Json,
}

impl ParamType {
    fn lookup(tools: Option<&[Value]>, function: &str, param: &str) -> Self {
        let Some(tools) = tools else {
            return Self::Unknown;
        };
        let declared = find_tool(tools, function)
            .and_then(|f| f.get("parameters"))
            .and_then(|p| p.get("properties"))
            .and_then(|props| props.get(param))
            .and_then(|prop| prop.get("type"));
        // `"type": ["integer", "null"]` names its real type first or second.
        let ty = match declared {
            Some(Value::String(ty)) => ty.as_str(),
            Some(Value::Array(types)) => types
                .iter()
                .filter_map(Value::as_str)
                .find(|ty| *ty != "null")
                .unwrap_or("string"),
            // Undeclared parameters and schemas without a type stay strings, as in vLLM.
            _ => "string",
        };
        let ty = ty.trim().to_ascii_lowercase();
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| ty.starts_with(p));
        if starts(&["int", "uint", "long", "short", "unsigned"]) {
            Self::Integer
        } else if starts(&["num", "float", "double"]) {
            Self::Number
        } else if matches!(ty.as_str(), "boolean" | "bool" | "binary") {
            Self::Boolean
        } else if matches!(ty.as_str(), "object" | "array" | "arr") || starts(&["dict", "list"]) {
            Self::Json
        } else {
            Self::String
        }
    }

    /// A value that does not fit its declared type stays the raw string (vLLM turns a bad
    /// boolean into `false`; keeping the text loses nothing). `null` is null for every type
    /// but string.
    fn convert(self, raw: &str) -> Value {
        let text = raw.trim();
        let as_string = || Value::String(raw.to_string());
        if self != Self::String && text == "null" {
            return Value::Null;
        }
        match self {
            Self::String => as_string(),
            Self::Unknown => serde_json::from_str(raw).unwrap_or_else(|_| as_string()),
            Self::Json => serde_json::from_str(raw).unwrap_or_else(|_| as_string()),
            Self::Boolean => match text.to_ascii_lowercase().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => as_string(),
            },
            Self::Integer => match serde_json::from_str::<Number>(text) {
                Ok(n) if n.is_i64() || n.is_u64() => Value::Number(n),
                Ok(n) => integral(&n).map_or_else(as_string, Value::from),
                Err(_) => as_string(),
            },
            Self::Number => match serde_json::from_str::<Number>(text) {
                // `3.0` becomes `3`, as vLLM does.
                Ok(n) => integral(&n).map_or(Value::Number(n), Value::from),
                Err(_) => as_string(),
            },
        }
    }
}

/// The integer a float number equals exactly, if it is one and fits an i64.
fn integral(n: &Number) -> Option<i64> {
    let x = n.as_f64()?;
    (n.is_f64() && x.fract() == 0.0 && x.abs() < 9.0e15).then_some(x as i64)
}

#[cfg(test)]
mod tests;
