use super::*;
use crate::engine::json_object::tests::Rng;
use crate::engine::json_object::JsonState;
use crate::engine::tool_calls::ToolCallFormat;

fn bit(mask: &[u64], id: usize) -> bool {
    mask[id / 64] >> (id % 64) & 1 == 1
}

/// The sorted walk gives, for every state met along some objects, exactly the tokens whose
/// bytes the parser accepts one by one; and a cached mask is the same as a fresh one.
#[test]
fn the_vocabulary_walk_matches_feeding_each_token() {
    let mut rng = Rng(7);
    let mut tokens: Vec<Box<[u8]>> = (0..=255u8).map(|b| Box::from([b].as_slice())).collect();
    let pieces: [&[u8]; 24] = [
        b"{\"", b"\":", b"\": \"", b"\",", b"\"}", b"}}", b"]}", b"},", b"true", b"tr", b"null,", b"1.", b"0e", b"-1",
        b"\\u", b"\\n", b"  ", b"\n  ", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xe6\x97\xa5", b"abc", b"a\"b",
    ];
    for _ in 0..300 {
        let len = 1 + rng.below(3);
        tokens.push((0..len).flat_map(|_| pieces[rng.below(pieces.len())].iter().copied()).collect());
    }
    tokens.push(Box::default()); // a special token: never allowed
    let vocab = Vocab::from_bytes(tokens.clone());
    let cache = MaskCache::with_capacity(16);
    let docs: [&[u8]; 3] = [
        b"{\"a\": [1, -2.5e+3, true, {\"b\": \"x\\\"\xc3\xa9\\u00e9\"}], \"c\": null}",
        b"{\n  \"k\": {\"x\": []}\n}",
        b"{\"n\":0}",
    ];
    let mut checked = 0;
    for doc in docs {
        let mut state = JsonState::default();
        for &b in doc.iter() {
            let mask = vocab.allowed(&cache, &state);
            assert_eq!(mask, vocab.allowed(&cache, &state), "cached");
            for (id, token) in tokens.iter().enumerate() {
                let mut s = state;
                let want = !token.is_empty() && s.feed_all(token);
                assert_eq!(bit(&mask, id), want, "token {:?} after {:?}", String::from_utf8_lossy(token), state);
            }
            checked += 1;
            assert!(state.feed(b));
        }
        assert!(state.is_complete());
        let done = vocab.allowed(&cache, &state);
        assert!(done.iter().all(|&w| w == 0), "nothing but EOS after the object");
    }
    assert!(checked > 80);
}

/// Requests with the same schema share one compiled schema (and its masks); a different one, or
/// one past the capacity, is compiled anew; a refused one stays an error.
#[test]
fn schemas_are_shared_by_their_text() {
    let cache = FormatCache::with_capacity(2);
    let a = serde_json::json!({"type": "object", "properties": {"x": {"type": "integer"}}});
    let b = serde_json::json!({"type": "object", "properties": {"y": {"type": "integer"}}});
    let first = cache.schema(&a).unwrap();
    assert_eq!(first, cache.schema(&a.clone()).unwrap(), "the same Arc");
    assert_ne!(first, cache.schema(&b).unwrap());
    assert!(cache.schema(&serde_json::json!({"type": "object", "properties": {"x": {"type": "object", "minProperties": 1}}})).unwrap_err().contains("minProperties"));
    // Full: emptied, so `a` is compiled again.
    cache.schema(&serde_json::json!({"type": "object"})).unwrap();
    assert_ne!(first, cache.schema(&a).unwrap());
}

/// At every prefix of `doc` (read from `start`), the walk's mask is exactly the tokens feeding
/// accepts.
fn walk_agrees<S: ByteParser + std::fmt::Debug>(name: &str, vocab: &Vocab, tokens: &[Box<[u8]>], cache: &MaskCache<S>, start: S, doc: &[u8]) {
    let mut state = start;
    for (end, &b) in doc.iter().enumerate() {
        let mask = vocab.allowed(cache, &state);
        for (id, token) in tokens.iter().enumerate() {
            let mut s = state;
            let feeds = token.iter().all(|&t| s.feed(t));
            assert_eq!(bit(&mask, id), feeds, "{name}: {:?} after {:?}", String::from_utf8_lossy(token), String::from_utf8_lossy(&doc[..end]));
        }
        assert!(state.feed(b), "{name}: byte {end} refused");
    }
}

/// Plain tokens are taken by their length inside strings (with and without limits, in map keys
/// and tool-call arguments) exactly as feeding them would take them; other tokens are walked.
#[test]
fn plain_tokens_are_taken_as_feeding_takes_them() {
    let mut tokens: Vec<Box<[u8]>> = (0..=255u8).map(|b| Box::from([b].as_slice())).collect();
    for piece in ["hello", " world", "é日", "日本語テキスト", "abcdefghijk", "</tool_call>", "</tool", "_call", ">", "ab\"", "\\n", "\"}", "\":", "12", "a<b", "\u{7f}x"] {
        tokens.push(piece.as_bytes().into());
    }
    tokens.push(b"\xe6\x97".as_slice().into());
    let vocab = Vocab::from_bytes(tokens.clone());
    let object = r#"{"a b": "hello world \u00e9 日本", "c": ["x", "</tool_call>"]}"#.as_bytes();
    walk_agrees("json_object", &vocab, &tokens, &vocab.object_masks, JsonState::default(), object);
    let schema = Schema::compile(&serde_json::json!({"type": "object", "properties": {
        "short": {"type": "string", "maxLength": 7}, "long": {"type": "string", "minLength": 2},
        "m": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}}}})).unwrap();
    let doc = r#"{"short": "hi 日本", "long": "abcdefghijk", "m": {"key 日": "abc"}}"#.as_bytes();
    walk_agrees("schema", &vocab, &tokens, &schema.masks, schema.start(), doc);
    let params = serde_json::json!({"type": "object", "required": ["s"], "properties": {"s": {"type": "string", "maxLength": 30}}});
    let calls = ToolCallFormat::new(&[("f", &params)], true).unwrap();
    let doc = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"s\": \"a </tool_call b 日\"}}\n</tool_call>".as_bytes();
    walk_agrees("tool calls", &vocab, &tokens, &calls.masks, calls.start(), doc);
}
