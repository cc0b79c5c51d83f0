use serde_json::json;

use super::*;

fn feed(state: &mut ToolCallsState, text: &str) -> bool {
    text.bytes().all(|b| state.feed(b))
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
