use std::sync::Arc;

use serde_json::json;

use super::*;

fn feed(state: &mut ToolCallsState, text: &str) -> bool {
    text.bytes().all(|b| state.feed(b))
}

/// At every byte of each of `docs` (which `f` takes), the vocabulary walk's mask over the 256
/// single bytes and `pieces` agrees with feeding each token (plain tokens are taken by length).
fn assert_masks_match(f: &ToolCallFormat, pieces: &[&str], docs: &[&str]) {
    use super::super::constraint::Vocab;
    let mut tokens: Vec<Box<[u8]>> = (0..=255u8).map(|b| Box::from([b].as_slice())).collect();
    tokens.extend(pieces.iter().map(|p| p.as_bytes().into()));
    let vocab = Vocab::from_bytes(tokens.clone());
    for doc in docs {
        let mut state = f.start();
        for (end, b) in doc.bytes().enumerate() {
            let mask = vocab.allowed(&f.masks, &state);
            for (id, token) in tokens.iter().enumerate() {
                let mut s = state;
                let feeds = token.iter().all(|&t| s.feed(t));
                assert_eq!(mask[id / 64] >> (id % 64) & 1 == 1, feeds, "{:?} after {:?}", String::from_utf8_lossy(token), &doc[..end]);
            }
            assert!(state.feed(b), "byte {end} of {doc}");
        }
    }
}

fn weather() -> Value {
    json!({"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}})
}

#[test]
fn one_named_call_with_arguments_that_fit() {
    let f = ToolCallFormat::new(&[("get_weather", &weather())], true).unwrap();
    let ok = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
    let mut s = f.start();
    assert!(feed(&mut s, ok) && s.is_complete());
    assert!(!s.clone().feed(b'\n'), "one call only");
    for end in 0..ok.len() {
        let mut s = f.start();
        assert!(feed(&mut s, &ok[..end]) && !s.is_complete(), "prefix {end}");
    }
    for bad in [
        "{\"name\": \"get_weather\"",
        "<tool_call>\n{\"name\": \"other\", \"arguments\": {\"city\": \"P\"}}",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"c\"}}",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": 1}}",
        "<tool_call>\n{\"arguments\": {\"city\": \"P\"}}\n",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"P\"}} ",
    ] {
        let mut s = f.start();
        assert!(!(feed(&mut s, bad) && (s.is_complete() || bad.ends_with('\n') && !s.clone().feed(b'<'))), "{bad}");
    }
}

#[test]
fn required_takes_one_or_more_calls_of_any_tool() {
    let time = json!({"type": "object", "properties": {"zone": {"type": "string", "format": "time"}}});
    let f = ToolCallFormat::new(&[("get_weather", &weather()), ("get_time", &time)], false).unwrap();
    let w = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
    let t = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let mut s = f.start();
    assert!(feed(&mut s, w) && s.is_complete());
    assert!(feed(&mut s, "\n") && !s.is_complete() && feed(&mut s, t) && s.is_complete());
    // Arguments are held to the function the name chose, so the name comes first.
    let mut s = f.start();
    assert!(!feed(&mut s, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\""));
    let mut s = f.start();
    assert!(!feed(&mut s, "<tool_call>\n{\"arguments\""));
}

/// pydantic-made parameters refer to their own `$defs` (and to themselves); placed in the
/// call's schema, the references still find them, and two tools' `$defs` of one name stay apart.
#[test]
fn parameters_keep_their_own_definitions() {
    let a = json!({"type": "object", "required": ["p"], "properties": {"p": {"$ref": "#/$defs/P"}}, "$defs": {"P": {"type": "integer"}}});
    let b = json!({"type": "object", "required": ["p"], "properties": {"p": {"$ref": "#/$defs/P"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "$defs": {"P": {"type": "string"}}});
    let f = ToolCallFormat::new(&[("a", &a), ("b", &b)], false).unwrap();
    for (call, ok) in [
        ("{\"name\": \"a\", \"arguments\": {\"p\": 1}}", true),
        ("{\"name\": \"a\", \"arguments\": {\"p\": \"x\"}}", false),
        ("{\"name\": \"b\", \"arguments\": {\"p\": \"x\", \"next\": {\"p\": \"y\", \"next\": null}}}", true),
        ("{\"name\": \"b\", \"arguments\": {\"p\": 1}}", false),
    ] {
        let mut s = f.start();
        assert_eq!(feed(&mut s, &format!("<tool_call>\n{call}\n</tool_call>")) && s.is_complete(), ok, "{call}");
    }
    // `$defs` and `definitions` of one name stay apart.
    let both = json!({"type": "object", "required": ["p", "q"], "properties": {"p": {"$ref": "#/$defs/X"}, "q": {"$ref": "#/definitions/X"}},
        "$defs": {"X": {"type": "integer"}}, "definitions": {"X": {"type": "boolean"}}});
    let f = ToolCallFormat::new(&[("c", &both)], true).unwrap();
    let mut s = f.start();
    assert!(feed(&mut s, "<tool_call>\n{\"name\": \"c\", \"arguments\": {\"p\": 1, \"q\": true}}\n</tool_call>") && s.is_complete());
    let err = ToolCallFormat::new(&[("f", &json!({"type": "object", "properties": {"x": {"type": "object", "minProperties": 1}}}))], true).unwrap_err();
    assert!(err.contains("function \"f\"") && err.contains("minProperties"), "{err}");
}

/// A string argument may not spell the closing tag whole (the calls are read back by finding
/// it), though it may hold it with an escaped `>`.
#[test]
fn a_string_cannot_close_the_call() {
    let code = json!({"type": "object", "required": ["code"], "properties": {"code": {"type": "string"}}});
    let f = ToolCallFormat::new(&[("run", &code)], true).unwrap();
    let mut s = f.start();
    assert!(feed(&mut s, "<tool_call>\n{\"name\": \"run\", \"arguments\": {\"code\": \"print('</tool_call"));
    assert!(!s.clone().feed(b'>'));
    assert!(feed(&mut s, "\\u003e')\"}}\n</tool_call>") && s.is_complete());
}

/// A name holding the whole closing tag is refused by the API; parts of the tag are fine.
#[test]
fn a_name_with_part_of_the_closing_tag_is_held() {
    let empty = json!({"type": "object", "properties": {}});
    let f = ToolCallFormat::new(&[("x</tool_cally", &empty)], true).unwrap();
    let mut s = f.start();
    assert!(feed(&mut s, "<tool_call>\n{\"name\": \"x</tool_cally\", \"arguments\": {}}\n</tool_call>") && s.is_complete());
}

fn answer_schema() -> Arc<Schema> {
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["answer"], "properties": {"answer": {"type": "string"}, "sure": {"type": "boolean"}}});
    Arc::new(Schema::compile(&schema).unwrap())
}

/// `tools` beside a `json_schema` under `"auto"`: one or more calls, or the answer in the
/// schema, never both; the first byte decides.
#[test]
fn the_output_is_calls_or_an_answer_in_the_schema() {
    let f = ToolCallFormat::new(&[("get_weather", &weather())], false).unwrap().with_answer(Answer::Schema(answer_schema()));
    assert!(f.answers());
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
    let mut s = f.start();
    assert!(feed(&mut s, call) && s.is_complete());
    assert!(feed(&mut s, "\n") && !s.is_complete() && feed(&mut s, call) && s.is_complete(), "more calls, as under \"required\"");
    // No answer after a call, nor in place of a further one.
    for after in ["{", "\n{", " {"] {
        let mut t = s;
        assert!(!feed(&mut t, after), "{after:?}");
    }

    let answer = "{\"answer\": \"It is sunny.\", \"sure\": true}";
    let mut s = f.start();
    assert!(feed(&mut s, answer) && s.is_complete());
    for b in [b'<', b'\n', b' ', b'{'] {
        assert!(!s.clone().feed(b), "nothing after the answer: {:?}", b as char);
    }
    for end in 0..answer.len() {
        let mut s = f.start();
        assert!(feed(&mut s, &answer[..end]) && !s.is_complete(), "prefix {end}");
    }
    // Leading whitespace begins the answer too, and then no call can follow it.
    let mut s = f.start();
    assert!(feed(&mut s, "\n{\"answer\": \"x\"}") && s.is_complete());
    let mut s = f.start();
    assert!(!feed(&mut s, " <tool_call>"));
    // The answer is held to the schema, the call to the tool.
    for bad in ["{\"answer\": 1}", "{\"sure\": true}", "{\"other\": \"x\"}", "[", "\"x\"", "It is sunny", "<{", "<tool_call>\n{\"answer\": \"x\"}"] {
        let mut s = f.start();
        assert!(!(feed(&mut s, bad) && s.is_complete()), "{bad}");
    }
    let mut s = f.start();
    assert!(!feed(&mut s, "{\"answer\": \"x\"}\n<tool_call>"), "no call after an answer");
}

/// `parallel_tool_calls: false` (`single`) allows one call, and the answer alternative stays.
#[test]
fn a_single_call_or_an_answer() {
    let f = ToolCallFormat::new(&[("get_weather", &weather())], true).unwrap().with_answer(Answer::Schema(answer_schema()));
    let mut s = f.start();
    assert!(feed(&mut s, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>") && s.is_complete());
    assert!(!s.clone().feed(b'\n'));
    let mut s = f.start();
    assert!(feed(&mut s, "{\"answer\": \"x\"}") && s.is_complete());
    // Without an answer alternative, the output must be a call.
    let plain = ToolCallFormat::new(&[("get_weather", &weather())], true).unwrap();
    assert!(!plain.answers() && !plain.start().feed(b'{'));
}

/// `json_object` beside tools: the answer is any JSON object, as JSON mode holds it (a
/// `{"type": "object"}` schema would allow only `{}`).
#[test]
fn a_json_object_answer_is_any_object() {
    let f = ToolCallFormat::new(&[("get_weather", &weather())], false).unwrap().with_answer(Answer::Object);
    for ok in ["{}", "{\"a\": [1, {\"b\": null}], \"c\": \"<tool_call>\"}"] {
        let mut s = f.start();
        assert!(feed(&mut s, ok) && s.is_complete(), "{ok}");
        assert!(!s.clone().feed(b'\n'), "{ok}: nothing after the object");
    }
    for bad in ["[]", "1", "{\"a\": }", "{\"a\""] {
        let mut s = f.start();
        assert!(!(feed(&mut s, bad) && s.is_complete()), "{bad}");
    }
    let mut s = f.start();
    assert!(feed(&mut s, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>") && s.is_complete());
}

/// Thinking first (Qwen3): after `</think>`, the calls or the answer, and the output may end
/// only once one of them is complete.
#[test]
fn thinking_comes_before_the_calls_or_the_answer() {
    use super::super::thinking::{Held, ThinkingState};
    let f = ToolCallFormat::new(&[("get_weather", &weather())], false).unwrap().with_answer(Answer::Schema(answer_schema()));
    for after in ["{\"answer\": \"sunny\"}", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"] {
        let mut s = ThinkingState::new(Held::Calls(f.start()));
        assert!("The user asks about <weather>.</think>\n\n".bytes().all(|b| s.feed(b)) && !s.is_complete());
        assert!(after.bytes().all(|b| s.feed(b)) && s.is_complete(), "{after}");
    }
    let mut s = ThinkingState::new(Held::Calls(f.start()));
    assert!(!"</think>\nIt is sunny.".bytes().all(|b| s.feed(b)), "free text after the thinking");
}

/// The vocabulary walk agrees with feeding token by token through the choice and inside the
/// answer, where plain tokens are taken by their length.
#[test]
fn masks_match_feeding_through_the_choice_and_the_answer() {
    let f = ToolCallFormat::new(&[("get_weather", &weather())], false).unwrap().with_answer(Answer::Schema(answer_schema()));
    let pieces = ["<tool_call>", "<tool_call>\n", "{\"", "{\"answer", "\": \"", "It is", " sunny", "\"}", "\n{", " {", "</tool_call>", "a<b", "\"}\n<"];
    assert_masks_match(&f, &pieces, &["{\"answer\": \"It is sunny <b>\"}", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a<b\"}}\n</tool_call>"]);
    let mut s = f.start();
    assert_eq!(s.plain_budget(), None, "the first byte is walked");
    assert!(feed(&mut s, "{\"answer\": \"It") && s.plain_budget() == Some(u32::MAX));
}

/// A state holds one object's parse, the call's or the answer's, not one of each: the walk
/// copies it at every byte.
#[test]
fn a_state_holds_one_schema_parse() {
    let (state, schema) = (std::mem::size_of::<ToolCallsState>(), std::mem::size_of::<SchemaState>());
    assert!(state <= schema + 64, "{state} bytes, a schema's parse {schema}");
}

/// Strict tools under `"auto"`: free text, but a call, once `<tool_call>` is written, fits its
/// function; free text may end anywhere, a call only once closed.
#[test]
fn free_text_with_held_calls() {
    let f = ToolCallFormat::new(&[("get_weather", &weather())], false).unwrap().with_answer(Answer::Text);
    assert!(f.answers() && f.answers_text());
    let mut s = f.start();
    assert!(s.is_complete(), "an empty output is an answer");
    assert!(feed(&mut s, "I'll check. {\"not\": \"a call\"} a <b> <tool_ <tool_cal") && s.is_complete(), "text, even a partial tag");
    assert!(feed(&mut s, "x\n<<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}"));
    assert!(!s.is_complete(), "a call must close");
    assert!(feed(&mut s, "\n</tool_call>") && s.is_complete());
    assert!(feed(&mut s, "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>") && s.is_complete(), "more calls");
    for after in ["x", "\nx", "\n<tool_call>\n{\"name\": \"other\""] {
        let mut t = s;
        assert!(!feed(&mut t, after), "no text after the calls, nor another function: {after:?}");
    }
    // Arguments that do not fit, a name not among the tools, the tag without its line break.
    for bad in ["<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"town\"", "<tool_call>\n{\"name\": \"get_time\"", "<tool_call>{"] {
        assert!(!feed(&mut f.start(), bad), "{bad:?}");
    }
    // An output that begins with `{` and names a tool is one bare call, and ends with it.
    let bare = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}";
    let mut s = f.start();
    assert!(feed(&mut s, &bare[..bare.len() - 1]) && !s.is_complete() && feed(&mut s, "}") && s.is_complete());
    for after in ["\n<tool_call>", "x"] {
        let mut t = s;
        assert!(!feed(&mut t, after), "nothing after a bare call: {after:?}");
    }
    // Once it names a tool, its arguments are held (whitespace as the model writes it).
    for bad in ["{\"name\": \"get_weather\", \"arguments\": {\"town\"", "{\n  \"name\": \"get_weather\",\n  \"arguments\": {\"city\": 3"] {
        assert!(!feed(&mut f.start(), bad), "{bad:?}");
    }
    // JSON that goes another way before that is text: another key, a name no tool has (or a
    // longer one), and JSON after text.
    for text in ["{\"answer\": 1}", "{\"name\": \"echo\", \"arguments\": {\"a\": 1}}", "{\"name\": \"get_weather_now\"} <tool", " {\"answer\": 1}"] {
        let mut s = f.start();
        assert!(feed(&mut s, text) && s.is_complete(), "{text:?}");
    }
    let single = ToolCallFormat::new(&[("get_weather", &weather())], true).unwrap().with_answer(Answer::Text);
    let mut s = single.start();
    assert!(feed(&mut s, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>") && !feed(&mut s, "\n"), "one call only");
}

/// A bare call read back from free text is taken only if the format would have held it so.
#[test]
fn a_bare_call_fits_or_not() {
    let f = ToolCallFormat::new(&[("get_weather", &weather())], false).unwrap().with_answer(Answer::Text);
    assert!(f.fits(" {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n"));
    assert!(f.fits("{\"arguments\":{\"city\":\"Oslo\"},\"name\":\"get_weather\"}"), "keys in any order, no spaces");
    for bad in ["{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Oslo\"}}", "{\"name\": \"get_weather\", \"arguments\": {}}", "{\"name\": \"get_time\", \"arguments\": {}}", "{\"name\": \"get_weather\"", "hello"] {
        assert!(!f.fits(bad), "{bad}");
    }
}

/// The walk agrees with feeding in free text too, where plain tokens are taken whole.
#[test]
fn masks_match_feeding_through_free_text() {
    let f = ToolCallFormat::new(&[("get_weather", &weather())], false).unwrap().with_answer(Answer::Text);
    let pieces = ["<tool_call>", "<tool_call>\n", "<tool", "_call>", "{\"", "\": \"", "It is", " sunny", "\"}", "\n<", "</tool_call>", "a<b", "x<tool_call>\n{"];
    assert_masks_match(&f, &pieces, &[
        "It is <b> sunny <tool <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a<b\"}}\n</tool_call>",
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"It is\"}}",
        "{\"name\": \"It is\", \"a<b\": 1} <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"x\"}}",
    ]);
    let mut s = f.start();
    assert_eq!(s.plain_budget(), None, "the first byte is walked");
    assert!(feed(&mut s, "It") && s.plain_budget() == Some(u32::MAX), "then plain text is taken whole");
}

/// Thinking first with free text: the thinking is not held (a `<tool_call>` it mentions
/// begins nothing), what follows it is free text with held calls.
#[test]
fn free_text_after_thinking() {
    use super::super::thinking::{Held, ThinkingState};
    let f = ToolCallFormat::new(&[("get_weather", &weather())], false).unwrap().with_answer(Answer::Text);
    let think = "I could write <tool_call>\n{\"name\": \"nope\"} here.</think>\n\n";
    for (after, ok) in [("It is sunny.", true), ("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>", true), ("<tool_call>\n{\"name\": \"nope\"", false)] {
        let mut s = ThinkingState::new(Held::Calls(f.start()));
        assert!(think.bytes().all(|b| s.feed(b)));
        assert_eq!(after.bytes().all(|b| s.feed(b)) && s.is_complete(), ok, "{after}");
    }
}

/// A function whose parameters cannot be held may still be called with any object.
#[test]
fn any_object_takes_any_object() {
    let f = ToolCallFormat::new(&[("search", &any_object()), ("get_weather", &weather())], false).unwrap().with_answer(Answer::Text);
    assert!(f.fits(r#"{"name": "search", "arguments": {"q": "Eiffel tower height", "n": [1, {"a": null, "b": true}], "x": -2.5, "o": {}}}"#));
    assert!(f.fits(r#"{"name": "search", "arguments": {}}"#));
    assert!(!f.fits(r#"{"name": "search", "arguments": [1]}"#) && !f.fits(r#"{"name": "get_weather", "arguments": {"q": 1}}"#));
}
