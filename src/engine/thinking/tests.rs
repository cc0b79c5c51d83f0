use std::sync::Arc;

use serde_json::json;

use crate::engine::constraint::{Constraint, OutputFormat, Vocab};
use crate::engine::json_schema::Schema;
use crate::engine::tool_calls::ToolCallFormat;

fn tokens() -> Vec<Box<[u8]>> {
    let mut tokens: Vec<Box<[u8]>> = (0..=255u8).map(|b| Box::from([b].as_slice())).collect();
    for piece in ["</think>", "</", "think>", "</think>\n\n", "\n\n{", " {\"", "{\"", "hello", "a\"b", "\"}", "<tool_call>\n", "\n</tool_call>", "think>hello", "think>{", "k>\n{"] {
        tokens.push(piece.as_bytes().into());
    }
    tokens
}

/// At every prefix of `doc`, the constraint's mask is exactly the tokens feeding accepts, and
/// it is complete only at the end.
fn check(name: &str, format: OutputFormat, doc: &str) {
    let tokens = tokens();
    let vocab = Vocab::from_bytes(tokens.clone());
    let mut c = format.start_after_thinking().unwrap();
    for (end, &b) in doc.as_bytes().iter().enumerate() {
        assert!(!c.is_complete(), "{name}: complete at {end}");
        let mask = c.allowed(&vocab);
        for (id, token) in tokens.iter().enumerate() {
            let mut t = c.clone();
            assert_eq!(mask[id / 64] >> (id % 64) & 1 == 1, t.advance(token), "{name}: {:?} after {:?}", String::from_utf8_lossy(token), &doc[..end]);
        }
        assert!(c.advance(&[b]), "{name}: byte {end} of {doc:?}");
    }
    assert!(c.is_complete(), "{name}: not complete at the end");
}

#[test]
fn held_output_begins_after_the_thinking() {
    let thought = "<think>\nThe user wants {\"a\": ...} </thin and \"quotes\" \\ too.\n</think>\n\n";
    check("json_object", OutputFormat::JsonObject, &format!("{thought}{{\"a\": \"x\"}}"));
    let schema = Schema::compile(&json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "maximum": 9}}})).unwrap();
    check("schema", OutputFormat::JsonSchema(Arc::new(schema)), &format!("{thought}{{\"n\": 7}}"));
    let params = json!({"type": "object", "properties": {"q": {"type": "string"}}});
    let calls = ToolCallFormat::new(&[("search", &params)], true).unwrap();
    check("tool calls", OutputFormat::ToolCalls(Arc::new(calls)), &format!("{thought}<tool_call>\n{{\"name\": \"search\", \"arguments\": {{\"q\": \"x\"}}}}\n</tool_call>"));
    // No thinking at all: `</think>` straight away.
    check("at once", OutputFormat::JsonObject, "</think>{}");
}

#[test]
fn what_follows_the_thinking_is_held() {
    let feed = |text: &str| {
        let mut c: Constraint = OutputFormat::JsonObject.start_after_thinking().unwrap();
        c.advance(text.as_bytes())
    };
    assert!(feed("<think>anything at all: }{ \" \\ </thi"));
    assert!(!feed("</think>\n\nnot json"));
    assert!(feed("</think>\n\n\n\n\n{"), "four line breaks, then one more as the object's whitespace");
    assert!(!feed("</think>\n\n\n\n\n\n{"));
}
