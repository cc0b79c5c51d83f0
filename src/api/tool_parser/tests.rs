//! Tests of `tool_parser.rs`.

use super::*;
use serde_json::json;

const WEATHER: &str =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>";
const TIME: &str =
    "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\", \"utc\": false}}\n</tool_call>";
const XML_WEATHER: &str =
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n\
    <parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";

const NONE: Vec<ToolStreamEvent> = Vec::new();

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}),
        json!({"type": "function", "function": {"name": "get_time", "parameters": {
            "type": "object", "properties": {"tz": {"type": "string"}}}}}),
        json!({"type": "function", "function": {"name": "configure", "parameters": {
            "type": "object",
            "properties": {
                "count": {"type": "integer"}, "ratio": {"type": "number"},
                "whole": {"type": "number"}, "verbose": {"type": "boolean"},
                "tags": {"type": "array"}, "opts": {"type": "object"},
                "label": {"type": "string"}, "maybe": {"type": ["null", "integer"]},
                "bad_int": {"type": "integer"}, "bad_bool": {"type": "boolean"},
                "bad_obj": {"type": "object"}, "gone": {"type": "integer"}}}}}),
    ]
}

fn names_and_args(calls: &[ToolCall]) -> Vec<(String, String)> {
    calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone()))
        .collect()
}

fn pair(name: &str, arguments: &str) -> (String, String) {
    (name.to_string(), arguments.to_string())
}

/// Content concatenation and (index, name, arguments) of every call.
type Streamed = (String, Vec<(usize, String, String)>);

fn stream(deltas: &[&str], tools: Option<Vec<Value>>) -> Streamed {
    let mut parser = ToolCallStreamParser::new(tools);
    let mut events: Vec<ToolStreamEvent> = Vec::new();
    for delta in deltas {
        events.extend(parser.push(delta));
    }
    events.extend(parser.finish());
    let mut content = String::new();
    let mut calls = Vec::new();
    for event in events {
        match event {
            ToolStreamEvent::Content(text) => {
                assert!(!text.is_empty(), "empty content event");
                content.push_str(&text);
            }
            ToolStreamEvent::ToolCall { index, call } => {
                calls.push((index, call.name, call.arguments));
            }
        }
    }
    (content, calls)
}

/// Streams `text` as one delta, as two deltas split at every char boundary, and one char
/// at a time; all must agree. Returns the one-delta result.
fn stream_every_split(text: &str, tools: Option<Vec<Value>>) -> Streamed {
    let whole = stream(&[text], tools.clone());
    for (i, _) in text.char_indices().skip(1) {
        let split = stream(&[&text[..i], &text[i..]], tools.clone());
        assert_eq!(split, whole, "split at byte {i} of {text:?}");
    }
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(
        stream(&chars, tools.clone()),
        whole,
        "char by char: {text:?}"
    );
    whole
}

/// Streaming at every split equals the non-streaming parse (well-formed text).
fn assert_stream_matches(text: &str, tools: Option<Vec<Value>>) {
    let (content, calls) = parse_tool_calls(text, tools.as_deref());
    let streamed = stream_every_split(text, tools);
    let expected_calls: Vec<(usize, String, String)> = calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| (i, c.name, c.arguments))
        .collect();
    assert_eq!(
        streamed,
        (content.unwrap_or_default(), expected_calls),
        "{text:?}"
    );
}

#[test]
fn hermes_single_call() {
    let (content, calls) = parse_tool_calls(WEATHER, None);
    assert_eq!(content, None);
    assert_eq!(
        names_and_args(&calls),
        [pair("get_weather", r#"{"city":"Zürich"}"#)]
    );
    let id = &calls[0].id;
    assert!(id.starts_with("call_") && id.len() == 29, "{id}");
    assert!(id[5..].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
}

#[test]
fn call_ids_differ() {
    let (_, a) = parse_tool_calls(WEATHER, None);
    let (_, b) = parse_tool_calls(WEATHER, None);
    assert_ne!(a[0].id, b[0].id);
}

#[test]
fn hermes_multiple_calls_keep_order() {
    let text = format!("{WEATHER}\n{TIME}\n");
    let (content, calls) = parse_tool_calls(&text, Some(&tools()));
    assert_eq!(content, None);
    assert_eq!(
        names_and_args(&calls),
        [
            pair("get_weather", r#"{"city":"Zürich"}"#),
            pair("get_time", r#"{"tz":"CET","utc":false}"#)
        ]
    );
}

#[test]
fn hermes_with_leading_and_trailing_content() {
    let text = format!("Let me check 👀.\n\n{WEATHER}\nOne moment.\n");
    let (content, calls) = parse_tool_calls(&text, None);
    assert_eq!(
        content.as_deref(),
        Some("Let me check 👀.\n\n\nOne moment.")
    );
    assert_eq!(calls.len(), 1);
}

#[test]
fn hermes_argument_variants() {
    let as_string = r#"<tool_call>{"name": "f", "arguments": "{\"a\": [1, 2]}"}</tool_call>"#;
    let absent = r#"<tool_call>{"name": "g"}</tool_call>"#;
    let parameters = r#"<tool_call>{"name": "h", "parameters": {"b": null}}</tool_call>"#;
    let text = format!("{as_string}{absent}{parameters}");
    let (_, calls) = parse_tool_calls(&text, None);
    assert_eq!(
        names_and_args(&calls),
        [
            pair("f", r#"{"a":[1,2]}"#),
            pair("g", "{}"),
            pair("h", r#"{"b":null}"#)
        ]
    );
}

#[test]
fn malformed_hermes_blocks_fall_back_to_content() {
    let cases = [
        // bad JSON
        "Sure. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call>",
        // missing name
        "<tool_call>\n{\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        // arguments not an object
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": [1]}</tool_call>",
        // unclosed block
        "Sure. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n",
    ];
    for text in cases {
        let (content, calls) = parse_tool_calls(text, None);
        assert_eq!(content.as_deref(), Some(text.trim()), "{text:?}");
        assert!(calls.is_empty(), "{text:?}");
    }
}

#[test]
fn one_malformed_block_spoils_all() {
    let text = format!("{WEATHER}\n<tool_call>{{\"name\": }}</tool_call>");
    let (content, calls) = parse_tool_calls(&text, None);
    assert_eq!(content.as_deref(), Some(text.as_str()));
    assert!(calls.is_empty());
}

#[test]
fn unknown_tool_name_is_content_only_when_tools_are_given() {
    let text = "<tool_call>{\"name\": \"launch\", \"arguments\": {}}</tool_call>";
    let (content, calls) = parse_tool_calls(text, Some(&tools()));
    assert_eq!((content.as_deref(), calls.len()), (Some(text), 0));
    let (content, calls) = parse_tool_calls(text, None);
    assert_eq!(
        (content, names_and_args(&calls)),
        (None, vec![pair("launch", "{}")])
    );
}

#[test]
fn xml_single_call_typed_by_schema() {
    let (content, calls) = parse_tool_calls(XML_WEATHER, Some(&tools()));
    assert_eq!(content, None);
    assert_eq!(
        names_and_args(&calls),
        [pair("get_weather", r#"{"city":"Paris","days":3}"#)]
    );
}

#[test]
fn xml_strips_exactly_one_newline_each_side() {
    let text = "<tool_call><function=f><parameter=code>\n\n  x = 1\n\n</parameter></function></tool_call>";
    let (_, calls) = parse_tool_calls(text, None);
    assert_eq!(
        names_and_args(&calls),
        [pair("f", r#"{"code":"\n  x = 1\n"}"#)]
    );
}

#[test]
fn xml_values_may_contain_function_end_tag() {
    let text = "<tool_call>\n<function=write>\n<parameter=code>\nprint('</function>')\n\
        </parameter>\n</function>\n</tool_call>";
    let (_, calls) = parse_tool_calls(text, None);
    assert_eq!(
        names_and_args(&calls),
        [pair("write", r#"{"code":"print('</function>')"}"#)]
    );
}

#[test]
fn xml_values_follow_schema_types() {
    let params = [
        ("count", "42"),
        ("ratio", "0.5"),
        ("whole", "3.0"),
        ("verbose", "True"),
        ("tags", "[\"a\", \"b\"]"),
        ("opts", "{\"k\": 1}"),
        ("label", "007"),
        ("maybe", "7"),
        ("bad_int", "2.5"),
        ("bad_bool", "yes"),
        ("bad_obj", "{oops"),
        ("gone", "null"),
        ("undeclared", "12"),
    ];
    let body: String = params
        .iter()
        .map(|(k, v)| format!("<parameter={k}>\n{v}\n</parameter>\n"))
        .collect();
    let text = format!("<tool_call>\n<function=configure>\n{body}</function>\n</tool_call>");
    let (_, calls) = parse_tool_calls(&text, Some(&tools()));
    let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
    assert_eq!(
        args,
        json!({
            "count": 42, "ratio": 0.5, "whole": 3, "verbose": true, "tags": ["a", "b"],
            "opts": {"k": 1}, "label": "007", "maybe": 7, "bad_int": "2.5",
            "bad_bool": "yes", "bad_obj": "{oops", "gone": null, "undeclared": "12",
        })
    );
    // Key order is the model's order.
    assert!(calls[0]
        .arguments
        .starts_with(r#"{"count":42,"ratio":0.5,"whole":3,"#));
}

#[test]
fn xml_without_schema_tries_json() {
    let text = "<tool_call>\n<function=f>\n<parameter=n>\n3\n</parameter>\n\
        <parameter=b>\nfalse\n</parameter>\n<parameter=s>\nParis, France\n</parameter>\n\
        <parameter=o>\n{\"x\": [1]}\n</parameter>\n</function>\n</tool_call>";
    let (_, calls) = parse_tool_calls(text, None);
    assert_eq!(
        names_and_args(&calls),
        [pair(
            "f",
            r#"{"n":3,"b":false,"s":"Paris, France","o":{"x":[1]}}"#
        )]
    );
}

#[test]
fn malformed_xml_falls_back_to_content() {
    let cases = [
        // no </parameter>
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>",
        // no </function>
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>",
        // empty function name
        "<tool_call>\n<function=>\n</function>\n</tool_call>",
        // stray text between parameters
        "<tool_call>\n<function=f>\nhello<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>",
        // unclosed block
        "Text <tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>\n",
    ];
    for text in cases {
        let (content, calls) = parse_tool_calls(text, None);
        assert_eq!(content.as_deref(), Some(text.trim()), "{text:?}");
        assert!(calls.is_empty(), "{text:?}");
    }
    let unknown = XML_WEATHER.replace("get_weather", "get_mood");
    assert_eq!(parse_tool_calls(&unknown, Some(&tools())).1.len(), 0);
}

#[test]
fn formats_mix_per_block() {
    let text = format!("{XML_WEATHER}\n{TIME}");
    let (_, calls) = parse_tool_calls(&text, Some(&tools()));
    assert_eq!(
        names_and_args(&calls),
        [
            pair("get_weather", r#"{"city":"Paris","days":3}"#),
            pair("get_time", r#"{"tz":"CET","utc":false}"#)
        ]
    );
}

#[test]
fn stream_matches_non_streaming_at_every_split() {
    let texts = [
        WEATHER.to_string(),
        format!("{WEATHER}\n{TIME}\n"),
        format!("  Let me check 👀.\n\n{WEATHER}\nOne moment. <tool_ca\n"),
        format!("A {WEATHER} B {TIME}  C\n"),
        XML_WEATHER.to_string(),
        format!("Calling 工具:\n{XML_WEATHER}\n{TIME}"),
        "No tools here, < tool_call> <tool_calx> </tool_call> done.".to_string(),
        "<tool_call".to_string(),
        String::new(),
    ];
    for text in &texts {
        assert_stream_matches(text, Some(tools()));
        assert_stream_matches(text, None);
    }
}

#[test]
fn stream_yields_expected_events() {
    let text = format!("Checking.\n{WEATHER}\n{XML_WEATHER}\n");
    let (content, calls) = stream_every_split(&text, Some(tools()));
    assert_eq!(content, "Checking.");
    assert_eq!(
        calls,
        [
            (
                0,
                "get_weather".to_string(),
                r#"{"city":"Zürich"}"#.to_string()
            ),
            (
                1,
                "get_weather".to_string(),
                r#"{"city":"Paris","days":3}"#.to_string()
            ),
        ]
    );
}

#[test]
fn stream_malformed_first_block_matches_non_streaming() {
    let texts = [
        format!("Sure. <tool_call>{{\"name\": }}</tool_call>\n{WEATHER}\n"),
        "Sure. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n".to_string(),
        XML_WEATHER.replace("get_weather", "get_mood"),
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call> ok".to_string(),
    ];
    for text in &texts {
        assert_stream_matches(text, Some(tools()));
        let (content, calls) = stream_every_split(text, Some(tools()));
        assert_eq!(
            (content.as_str(), calls.len()),
            (text.trim(), 0),
            "{text:?}"
        );
    }
}

#[test]
fn stream_cannot_take_back_a_sent_call() {
    // Non-streaming returns all of this as content; the stream already sent the call.
    let bad = "<tool_call>{\"name\": }</tool_call>";
    let text = format!("{WEATHER}\n{bad}\n{TIME}");
    let (content, calls) = stream_every_split(&text, None);
    assert_eq!(content, format!("{bad}\n{TIME}"));
    assert_eq!(
        calls,
        [(
            0,
            "get_weather".to_string(),
            r#"{"city":"Zürich"}"#.to_string()
        )]
    );
}

#[test]
fn stream_sends_content_early_and_holds_partial_tags() {
    let mut parser = ToolCallStreamParser::new(None);
    assert_eq!(
        parser.push("Hello"),
        [ToolStreamEvent::Content("Hello".into())]
    );
    assert_eq!(
        parser.push(" wor"),
        [ToolStreamEvent::Content(" wor".into())]
    );
    // "d " is sent without its trailing space; "<tool_ca" could start a block.
    assert_eq!(
        parser.push("d <tool_ca"),
        [ToolStreamEvent::Content("d".into())]
    );
    assert_eq!(
        parser.push("rd"),
        [ToolStreamEvent::Content(" <tool_card".into())]
    );
    assert_eq!(parser.push("\n\n"), NONE);
    assert_eq!(parser.push("<tool_call>{\"name\": \"f\"}"), NONE);
    let events = parser.push("</tool_call>\n");
    assert!(
        matches!(&events[..], [ToolStreamEvent::ToolCall { index: 0, call }] if call.name == "f"),
        "{events:?}"
    );
    // Whitespace after the call is never sent.
    assert_eq!(parser.push("\n "), NONE);
    assert_eq!(parser.finish(), NONE);
}

#[test]
fn stream_flushes_unclosed_block_and_partial_tag_as_content() {
    let mut parser = ToolCallStreamParser::new(None);
    assert_eq!(parser.push("<tool_call>{\"name\""), NONE);
    assert_eq!(
        parser.finish(),
        [ToolStreamEvent::Content("<tool_call>{\"name\"".into())]
    );
    let mut parser = ToolCallStreamParser::new(None);
    assert_eq!(
        parser.push("x <tool_"),
        [ToolStreamEvent::Content("x".into())]
    );
    assert_eq!(
        parser.finish(),
        [ToolStreamEvent::Content(" <tool_".into())]
    );
}

#[test]
fn a_bare_hermes_body_naming_a_known_tool_is_a_call() {
    let tools = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
    let text = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
    let (content, calls) = parse_tool_calls(text, Some(&tools));
    assert_eq!(content, None);
    assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("get_weather", "{\"city\":\"Paris\"}"));
    // Without tools, or naming an unknown tool, or with trailing prose: plain content.
    assert!(parse_tool_calls(text, None).1.is_empty());
    assert!(parse_tool_calls(&text.replace("get_weather", "other"), Some(&tools)).1.is_empty());
    assert!(parse_tool_calls(&format!("{text} done"), Some(&tools)).1.is_empty());
    for split in 1..text.len() {
        let mut p = ToolCallStreamParser::new(Some(tools.clone()));
        let mut events = p.push(&text[..split]);
        events.extend(p.push(&text[split..]));
        assert!(events.is_empty(), "held until the end");
        let events = p.finish();
        assert!(matches!(&events[..], [ToolStreamEvent::ToolCall { index: 0, call }] if call.name == "get_weather"), "{events:?}");
    }
    // JSON that is not a call streams out as content at the end, same as non-streaming.
    let other = "{\"answer\": 42}";
    let mut p = ToolCallStreamParser::new(Some(tools.clone()));
    let mut events = p.push(other);
    events.extend(p.finish());
    assert_eq!(events, vec![ToolStreamEvent::Content(other.to_string())]);
    assert_eq!(parse_tool_calls(other, Some(&tools)).0.as_deref(), Some(other));
}

/// Under a `strict` function only a bare call that passes the check counts, both ways.
#[test]
fn a_checked_bare_call_counts_only_if_it_passes() {
    let tools = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
    let check: BareCheck = Arc::new(|body: &str| body.contains("\"city\""));
    for (text, is_call) in [("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}", true), ("{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Paris\"}}", false)] {
        let (content, calls) = parse_tool_calls_checked(text, Some(&tools), Some(&check));
        assert_eq!((content.is_none(), calls.len()), (is_call, usize::from(is_call)), "{text}");
        let mut p = ToolCallStreamParser::new(Some(tools.clone())).with_bare_check(Some(check.clone()));
        let mut events = p.push(text);
        events.extend(p.finish());
        let expected = if is_call { 1 } else { 0 };
        assert_eq!(events.iter().filter(|e| matches!(e, ToolStreamEvent::ToolCall { .. })).count(), expected, "{text}: {events:?}");
        if !is_call {
            assert_eq!(events, vec![ToolStreamEvent::Content(text.to_string())]);
        }
    }
}

#[test]
fn a_call_cut_short_is_the_raw_output_both_ways() {
    // As max_tokens or a stop string leave it: inside the body, inside the closing tag, and
    // the untagged body small models write. vLLM's Hermes parser also returns the raw text.
    let texts = [
        "<tool_call>\n{\"name\": \"get_weather\", \"".to_string(),
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_".to_string(),
        "{\"name\": \"get_weather\", \"".to_string(),
        format!("Checking. {}", &XML_WEATHER[..XML_WEATHER.len() - 20]),
    ];
    for text in &texts {
        assert_eq!(parse_tool_calls(text, Some(&tools())), (Some(text.trim().to_string()), vec![]), "{text:?}");
        assert_eq!(stream_every_split(text, Some(tools())), (text.trim().to_string(), vec![]), "{text:?}");
    }
}
