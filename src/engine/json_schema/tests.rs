use serde_json::{json, Map, Value};

use super::*;
use crate::engine::constraint::Vocab;
use crate::engine::json_object::tests::{whitespace_within_limits, Rng};

fn pets() -> Value {
    json!({
        "$defs": {"Pet": {"type": "object", "additionalProperties": false, "required": ["kind", "age"],
            "properties": {"kind": {"enum": ["cat", "dog", "caterpillar"]}, "age": {"type": "integer", "description": "years"}}}},
        "title": "Owner",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 12},
            "score": {"type": "number"},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "pet": {"$ref": "#/$defs/Pet"},
            "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
            "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "level": {"const": 3},
            "note": {"type": ["string", "null"]}
        },
        "required": ["name", "score", "ok", "tags", "pet", "nick", "level"]
    })
}

fn parse(schema: &Schema, text: &[u8]) -> Option<SchemaState> {
    let mut s = schema.start();
    text.iter().all(|&b| s.feed(b)).then_some(s)
}

fn accepts_whole(schema: &Schema, text: &[u8]) -> bool {
    parse(schema, text).is_some_and(|s| s.is_complete())
}

#[test]
fn instances_are_accepted_and_complete_only_at_their_end() {
    let schema = Schema::compile(&pets()).unwrap();
    let docs = [
        r#"{"name":"Tom","score":1.5e3,"ok":true,"tags":[],"pet":{"kind":"cat","age":3},"nick":null,"level":3}"#,
        r#"{ "level": 3, "nick": "T", "pet": {"age": -0, "kind": "caterpillar"}, "tags": ["a", "b\"c"], "ok": false, "score": -2, "name": "N", "note": null, "pets": [{"kind":"dog","age":10}] }"#,
        "{\n  \"name\": \"\u{e9}\",\n  \"score\": 0,\n  \"ok\": true,\n  \"tags\": [\"x\"],\n  \"pet\": {\"kind\": \"dog\", \"age\": 1},\n  \"nick\": \"n\",\n  \"level\": 3,\n  \"note\": \"y\"\n}",
    ];
    for doc in docs {
        let doc = doc.as_bytes();
        assert!(accepts_whole(&schema, doc), "{}", String::from_utf8_lossy(doc));
        for end in 0..doc.len() {
            assert!(parse(&schema, &doc[..end]).is_some_and(|s| !s.is_complete()), "prefix {end} of {}", String::from_utf8_lossy(doc));
        }
    }
}

#[test]
fn what_the_schema_does_not_allow_is_refused() {
    let schema = Schema::compile(&pets()).unwrap();
    let base = r#""score":1,"ok":true,"tags":[],"pet":{"kind":"cat","age":3},"nick":null,"level":3"#;
    let with_name = |name: &str| format!(r#"{{"name":{name},{base}}}"#);
    for (name, ok) in [(r#""""#, false), (r#""a""#, true), (r#""123456789012""#, true), (r#""1234567890123""#, false), (r#""\u00e9\n日本語ab""#, true)] {
        assert_eq!(accepts_whole(&schema, with_name(name).as_bytes()), ok, "{name}");
    }
    let tags = |t: &str| format!(r#"{{"name":"a",{}}}"#, base.replace(r#""tags":[]"#, &format!(r#""tags":{t}"#)));
    assert!(accepts_whole(&schema, tags(r#"["x","y"]"#).as_bytes()));
    assert!(!accepts_whole(&schema, tags(r#"["x","y","z"]"#).as_bytes()), "maxItems 2");
    let bad = [
        format!(r#"{{{base}}}"#),                              // "name" missing
        format!(r#"{{"name":"a",{base},"extra":1}}"#),         // a key not in properties
        format!(r#"{{"name":"a","name":"b",{base}}}"#),        // a key twice
        format!(r#"{{"name":1,{base}}}"#),                     // a number for a string
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""age":3"#, r#""age":3.5"#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""age":3"#, r#""age":3e2"#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""kind":"cat""#, r#""kind":"cow""#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""kind":"cat""#, r#""kind":"ca""#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""level":3"#, r#""level":4"#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""level":3"#, r#""level":30"#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""nick":null"#, r#""nick":5"#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""tags":[]"#, r#""tags":[1]"#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""ok":true"#, r#""ok":"true""#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""pet":{"kind":"cat","age":3}"#, r#""pet":{"kind":"cat"}"#),
        format!(r#"{{"name":"a",{base}}}"#).replace(r#""name""#, r#""nam""#),
        format!(r#"{{"name":"a",{base}}} "#),
    ];
    for doc in &bad {
        assert!(!accepts_whole(&schema, doc.as_bytes()), "{doc}");
    }
    assert!(accepts_whole(&schema, format!(r#"{{"name":"a",{base}}}"#).as_bytes()), "the base itself is fine");
}

#[test]
fn unsupported_schemas_are_refused_naming_the_problem() {
    let cases = [
        (json!({"type": "array", "items": {"type": "string"}}), "root must be an object"),
        (json!({"type": "object", "properties": {"a": {"type": "object", "minProperties": 1}}}), "`minProperties` at `/properties/a`"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "minLength": 3, "maxLength": 2}}}), "`minLength` at `/properties/a` is above"),
        (json!({"type": "object", "properties": {"a": {"type": "array", "items": {"$ref": "#"}, "minItems": 1}}, "required": ["a"]}), "nests less than 12"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "format": "uri"}}}), "`format` \"uri\" at `/properties/a` is not supported"),
        (json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}), "supported only without `properties`"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)y"}}}), "`pattern` \"(?=x)y\" at `/properties/a` cannot be used"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "format": "uuid", "minLength": 40}}}), "`minLength` beside"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "format": "uuid", "maxLength": 35}}}), "`maxLength` at `/properties/a` is below"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x", "format": "uuid"}}}), "together"),
        (json!({"type": "object", "properties": {"a": {"type": "integer", "exclusiveMinimum": 1, "maximum": 1.5}}}), "leave no integer"),
        (json!({"type": "object", "properties": {"a": {"type": "number", "minimum": 2, "exclusiveMaximum": 2}}}), "leave no number"),
        (json!({"type": "object", "properties": {"a": {"type": "number", "maximum": 1e20}}}), "under 10^15"),
        (json!({"type": "object", "properties": {"a": {"type": "number", "minimum": 0.1234567890123}}}), "at most 12 decimals"),
        (json!({"type": "object", "properties": {"a": {"type": "number", "multipleOf": 0}}}), "`multipleOf` at `/properties/a` must be greater than 0"),
        (json!({"type": "object", "properties": {"a": {"type": "integer", "multipleOf": -2}}}), "`multipleOf` at `/properties/a` must be greater than 0"),
        (json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 10, "maximum": 12, "multipleOf": 7}}}), "leave no integer"),
        (json!({"type": "object", "properties": {"a": {"type": "number", "multipleOf": "2"}}}), "`multipleOf` at `/properties/a` must be a number"),
        (json!({"type": "object", "properties": {"a": {"type": "integer", "enum": [2, 4], "multipleOf": 2}}}), "keyword `multipleOf` beside `enum`"),
        (json!({"type": "object", "properties": {"a": {"type": "integer", "enum": [1, 5], "minimum": 3}}}), "keyword `minimum` beside `enum`"),
        (json!({"type": "object", "properties": {"a": {"oneOf": [{"type": "integer"}, {"type": "null"}], "minimum": 5}}}), "keyword `minimum` beside `oneOf`"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "enum": [1, 2]}}}), "no `enum` / `const` value"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "a{1000000000}"}}}), "cannot be used"),
        (json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x)|(y"}}}), "cannot be used"),
        (json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"enum": ["x"]}]}}}), "start alike"),
        (json!({"type": "object", "properties": {"a": {}}}), "no `type`"),
        (json!({"type": "object", "properties": {"a": {"enum": [{"x": 1}]}}}), "`enum` values"),
        (json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}), "names \"b\""),
        (json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}}), "points nowhere"),
        (json!({"type": "object", "properties": {"a": {"type": "array"}}}), "needs `items`"),
        (json!({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 2}]}}}), "start alike"),
        (json!({"type": "object", "properties": {"x": {"$ref": "#/properties/x"}}}), "refers to itself"),
        (json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}}), "refers to itself"),
        (json!({"type": "object", "properties": {"x": {"anyOf": [{"$ref": "#/properties/x"}, {"type": "null"}]}}}), "holds itself"),
        (json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": "a"}), "`required`"),
        (json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/S", "maxItems": 2}}, "$defs": {"S": {"type": "string"}}}), "`maxItems` beside `$ref`"),
        (json!({"type": "object", "properties": {"a": {"allOf": [{"type": "string"}, {"type": "integer"}]}}}), "`allOf`"),
        (ref_chain(200), "more than 128 deep"),
        (json!({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}), "nests less than 12"),
    ];
    for (schema, expected) in cases {
        let err = Schema::compile(&schema).expect_err(&schema.to_string());
        assert!(err.contains(expected), "{schema}: {err}");
    }
}

/// A property behind a chain of `n` references.
fn ref_chain(n: usize) -> Value {
    let mut defs = Map::new();
    for i in 0..n {
        defs.insert(format!("A{i}"), json!({"$ref": format!("#/$defs/A{}", i + 1)}));
    }
    defs.insert(format!("A{n}"), json!({"type": "string"}));
    json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/A0"}}, "$defs": defs})
}

#[test]
fn recursive_references_hold_at_every_depth_up_to_the_limit() {
    assert!(Schema::compile(&ref_chain(100)).is_ok(), "a chain of 100 references");
    let tree = json!({"$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
        "required": ["v", "kids"]}}, "$ref": "#/$defs/Node"});
    let schema = Schema::compile(&tree).unwrap();
    assert!(accepts_whole(&schema, br#"{"v":1,"kids":[{"v":2,"kids":[]},{"kids":[{"v":3,"kids":[]}],"v":4}]}"#));
    assert!(!accepts_whole(&schema, br#"{"v":1,"kids":[{"v":2}]}"#));
    // Each level is an object and an array: depth 12 holds six levels.
    let nested = |levels: usize| format!("{}{}", r#"{"v":0,"kids":["#.repeat(levels), "]}".repeat(levels));
    assert!(parse(&schema, nested(5).as_bytes()).is_some());
    assert!(parse(&schema, nested(7).as_bytes()).is_none());
}

/// Inside a string without length limits every position is the same state, and so is every
/// item of an array without count limits (so their masks are cached once); under a limit the
/// count is part of the state.
#[test]
fn states_repeat_where_the_masks_do() {
    let schema = Schema::compile(&json!({"type": "object", "properties": {"s": {"type": "string"}, "t": {"type": "string", "maxLength": 9},
        "a": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer"}}}},
        "b": {"type": "array", "items": {"type": "integer"}, "maxItems": 5}, "c": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        "u": {"type": "string", "minLength": 2}}})).unwrap();
    assert_eq!(parse(&schema, br#"{"a":[{"x":1},{"x""#), parse(&schema, br#"{"a":[{"x""#));
    assert_ne!(parse(&schema, br#"{"b":[1,2"#), parse(&schema, br#"{"b":[1"#));
    // Past a lower limit with no upper one, counting stops.
    assert_eq!(parse(&schema, br#"{"c":[1,2,3"#), parse(&schema, br#"{"c":[1,2"#));
    assert_eq!(parse(&schema, br#"{"u":"abcdef"#), parse(&schema, br#"{"u":"ab"#));
    assert_ne!(parse(&schema, br#"{"u":"a"#), parse(&schema, br#"{"u":"ab"#));
    assert!(!accepts_whole(&schema, br#"{"u":"a"}"#) && accepts_whole(&schema, br#"{"u":"abcdef"}"#) && !accepts_whole(&schema, br#"{"c":[]}"#));
    let free = parse(&schema, br#"{"s":""#).unwrap();
    assert_eq!(parse(&schema, "{\"s\":\"any text, \u{e9}t\u{e9} \\\" and all".as_bytes()), Some(free));
    let limited = parse(&schema, br#"{"t":""#).unwrap();
    assert_ne!(parse(&schema, br#"{"t":"ab"#), Some(limited));
}

/// `minItems` on nested arrays, and the nesting a non-empty array of arrays needs.
#[test]
fn item_counts_hold_at_every_level() {
    let schema = Schema::compile(&json!({"type": "object", "required": ["m"], "properties": {"m": {"type": "array", "maxItems": 2,
        "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1}}}})).unwrap();
    for (doc, ok) in [(r#"{"m":[]}"#, true), (r#"{"m":[[1],[2,3]]}"#, true), (r#"{"m":[[]]}"#, false), (r#"{"m":[[1],[2],[3]]}"#, false)] {
        assert_eq!(accepts_whole(&schema, doc.as_bytes()), ok, "{doc}");
    }
}

/// pydantic v1's `allOf: [{"$ref": ...}]` beside a description is the reference.
#[test]
fn a_one_element_all_of_is_its_schema() {
    let schema = Schema::compile(&json!({"type": "object", "required": ["p"], "$defs": {"P": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}},
        "properties": {"p": {"allOf": [{"$ref": "#/$defs/P"}], "description": "a P"}}})).unwrap();
    assert!(accepts_whole(&schema, br#"{"p":{"n":1}}"#));
    assert!(!accepts_whole(&schema, br#"{"p":{}}"#));
}

/// pydantic's `Optional[Self]`: a union holding a reference to the model being compiled.
#[test]
fn an_optional_reference_to_the_model_itself_compiles() {
    let linked = json!({"$defs": {"Item": {"type": "object", "required": ["v", "next"],
        "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/$defs/Item"}, {"type": "null"}]}}}},
        "$ref": "#/$defs/Item"});
    let schema = Schema::compile(&linked).unwrap();
    assert!(accepts_whole(&schema, br#"{"v":1,"next":{"v":2,"next":null}}"#));
    assert!(!accepts_whole(&schema, br#"{"v":1,"next":{"v":2}}"#));
}

/// Strings are UTF-8 as `str` requires: no overlong forms, surrogates or code points past U+10FFFF.
#[test]
fn strings_are_valid_utf8() {
    let schema = Schema::compile(&json!({"type": "object", "properties": {"s": {"type": "string"}}})).unwrap();
    let doc = |bytes: &[u8]| [&br#"{"s":""#[..], bytes, b"\"}"].concat();
    for good in [0xE9, 0x800, 0xD7FF, 0xE000, 0x10000, 0x10FFFF] {
        let c = char::from_u32(good).unwrap();
        assert!(accepts_whole(&schema, &doc(c.to_string().as_bytes())), "U+{good:X}");
    }
    for bad in [&b"\xE0\x80\x80"[..], b"\xED\xA0\x80", b"\xF0\x80\x80\x80", b"\xF4\x90\x80\x80", b"\xC0\x80", b"\xF5\x80\x80\x80"] {
        assert!(!accepts_whole(&schema, &doc(bad)), "{bad:x?}");
    }
}

/// Random byte-level generation under a recursive schema whose nesting is optional: whatever
/// bytes were taken, some byte can always follow until the object is complete (the parser
/// starts no value it could not finish within its depth).
#[test]
fn no_accepted_prefix_is_a_dead_end() {
    let tree = json!({"$defs": {"Node": {"type": "object", "required": ["v"], "properties": {"v": {"type": "integer"},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}, "twin": {"$ref": "#/$defs/Node"}}}}, "$ref": "#/$defs/Node"});
    let schema = Schema::compile(&tree).unwrap();
    let bytes = b"{}[]\",:0123456789-vkidstwn ";
    let mut rng = Rng(42);
    let mut deepest = 0;
    for _ in 0..200 {
        let mut state = schema.start();
        for _ in 0..3000 {
            if state.is_complete() {
                break;
            }
            let next: Vec<SchemaState> = bytes.iter().filter_map(|&b| { let mut s = state; s.feed(b).then_some(s) }).collect();
            assert!(!next.is_empty(), "dead end at {state:?}");
            // Prefer opening and continuing to closing, to reach the depth limit.
            state = next[rng.below(next.len())];
            deepest = deepest.max(state.depth);
        }
    }
    assert_eq!(deepest as usize, MAX_DEPTH, "the walks reached the depth limit");
}

/// Validity under `pets()`, written out for the subset it uses.
fn valid(v: &Value, s: &Value, root: &Value) -> bool {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return valid(v, root.pointer(&r[1..]).unwrap(), root);
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e.contains(v);
    }
    if let Some(c) = s.get("const") {
        return c == v;
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        return any.iter().any(|a| valid(v, a, root));
    }
    let types: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
        _ => unreachable!(),
    };
    types.iter().any(|&t| match (t, v) {
        ("object", Value::Object(o)) => {
            let props = s["properties"].as_object().unwrap();
            let required = s["required"].as_array().map_or(vec![], |r| r.iter().map(|x| x.as_str().unwrap()).collect());
            o.keys().all(|k| props.contains_key(k))
                && required.iter().all(|r| o.contains_key(*r))
                && o.iter().all(|(k, x)| valid(x, &props[k], root))
        }
        ("array", Value::Array(a)) => {
            let n = a.len() as u64;
            n >= s["minItems"].as_u64().unwrap_or(0) && n <= s["maxItems"].as_u64().unwrap_or(u64::MAX) && a.iter().all(|x| valid(x, &s["items"], root))
        }
        ("string", Value::String(x)) => {
            let n = x.chars().count() as u64;
            n >= s["minLength"].as_u64().unwrap_or(0) && n <= s["maxLength"].as_u64().unwrap_or(u64::MAX)
        }
        ("boolean", Value::Bool(_)) | ("null", Value::Null) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("number", Value::Number(_)) => true,
        _ => false,
    })
}


fn random_pet(rng: &mut Rng) -> Value {
    let kind = ["cat", "dog", "caterpillar"][rng.below(3)];
    json!({"kind": kind, "age": rng.below(30) as i64 - 5})
}

fn random_owner(rng: &mut Rng) -> Value {
    let words = ["", "Tom", "é", "a\"b", "x\\y", "日本"];
    let names = ["Tom", "é", "a\"b", "x\\y", "日本", "Tom Tom Tom"];
    let mut o = Map::new();
    o.insert("name".into(), json!(names[rng.below(names.len())]));
    o.insert("score".into(), json!((rng.next() % 100_000) as f64 / 100.0 - 300.0));
    o.insert("ok".into(), json!(rng.below(2) == 0));
    o.insert("tags".into(), Value::Array((0..rng.below(3)).map(|_| json!(words[rng.below(words.len())])).collect()));
    o.insert("pet".into(), random_pet(rng));
    if rng.below(2) == 0 {
        o.insert("pets".into(), Value::Array((0..rng.below(3)).map(|_| random_pet(rng)).collect()));
    }
    o.insert("nick".into(), if rng.below(2) == 0 { Value::Null } else { json!("n") });
    o.insert("level".into(), json!(3));
    if rng.below(2) == 0 {
        o.insert("note".into(), Value::Null);
    }
    // Keys in a random order.
    let mut entries: Vec<(String, Value)> = o.into_iter().collect();
    for i in (1..entries.len()).rev() {
        entries.swap(i, rng.below(i + 1));
    }
    Value::Object(entries.into_iter().collect())
}

/// A JSON value read by serde_json, refusing an object with a key twice (serde_json's `Value`
/// keeps the last; the output parser refuses a repeated key).
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Unique, A::Error> {
                let mut o = Map::new();
                while let Some((k, v)) = m.next_entry::<String, Unique>()? {
                    if o.insert(k.clone(), v.0).is_some() {
                        return Err(serde::de::Error::custom(format!("key {k} twice")));
                    }
                }
                Ok(Unique(Value::Object(o)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element::<Unique>()? {
                    v.push(x.0);
                }
                Ok(Unique(Value::Array(v)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Unique, E> {
                Ok(Unique(json!(s)))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Unique, E> {
                Ok(Unique(json!(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Unique, E> {
                Ok(Unique(json!(n)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Unique, E> {
                Ok(Unique(json!(n)))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Unique, E> {
                Ok(Unique(json!(n)))
            }
            fn visit_unit<E>(self) -> Result<Unique, E> {
                Ok(Unique(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

/// Random valid instances (random key orders, compact and pretty) are accepted; one-byte edits
/// of them are accepted exactly when serde_json reads them (no key twice) and they are still
/// valid.
#[test]
fn agrees_with_a_validator_on_random_instances_and_edits() {
    let root = pets();
    let schema = Schema::compile(&root).unwrap();
    let mut rng = Rng(0xDEAD_BEEF_1234_5678);
    let alphabet = b"{}[]\",:0123456789-.etrufalsn \\";
    let (mut disagreements, mut verdicts) = (Vec::new(), [0usize; 2]);
    for i in 0..300 {
        let owner = random_owner(&mut rng);
        assert!(valid(&owner, &root, &root));
        let text = if i % 2 == 0 { serde_json::to_vec(&owner) } else { serde_json::to_vec_pretty(&owner) }.unwrap();
        assert!(accepts_whole(&schema, &text), "{}", String::from_utf8_lossy(&text));
        for _ in 0..20 {
            let edited = rng.edit(&text, alphabet);
            // serde_json refuses numbers past f64's range, which JSON's grammar allows: not compared.
            let expected = match serde_json::from_slice::<Unique>(&edited) {
                Err(e) if e.to_string().contains("number out of range") => continue,
                parsed => parsed.is_ok_and(|v| valid(&v.0, &root, &root)) && whitespace_within_limits(edited.trim_ascii_end()),
            };
            verdicts[usize::from(expected)] += 1;
            if expected != accepts_whole(&schema, edited.trim_ascii_end()) {
                disagreements.push(String::from_utf8_lossy(&edited).into_owned());
            }
        }
    }
    assert!(disagreements.is_empty(), "{} disagreements, e.g. {:?}", disagreements.len(), &disagreements[..disagreements.len().min(4)]);
    assert!(verdicts[0] > 1000 && verdicts[1] > 500, "{verdicts:?}");
}

/// The vocabulary walk from schema states gives exactly the tokens whose bytes the parser takes.
#[test]
fn the_vocabulary_walk_matches_feeding_each_token() {
    let schema = Schema::compile(&pets()).unwrap();
    let doc = br#"{"name": "T\u00e9", "score": -1.5, "ok": true, "tags": ["a"], "pet": {"kind": "caterpillar", "age": 3}, "nick": null, "level": 3}"#;
    let mut tokens: Vec<Box<[u8]>> = (0..=255u8).map(|b| Box::from([b].as_slice())).collect();
    for piece in ["{\"", "\":", "\": \"", "\",", "\"}", "}}", "name", "\"name\"", "cat", "\"cat\"", "\"caterpillar\"", "\"dog\"}", "true", "null", "nu",
        "3,", "3}", "-1", ".5", "e5", "[\"", "\"]", "pet", "\"pet\": {", "kind", "age\":", "score", "level\": 3}", "tags"] {
        tokens.push(piece.as_bytes().into());
    }
    let vocab = Vocab::from_bytes(tokens.clone());
    let mut state = schema.start();
    for &b in doc.iter() {
        let mask = vocab.allowed(&schema.masks, &state);
        for (id, token) in tokens.iter().enumerate() {
            let mut s = state;
            let want = token.iter().all(|&t| s.feed(t));
            assert_eq!(mask[id / 64] >> (id % 64) & 1 == 1, want, "{:?} after {:?}", String::from_utf8_lossy(token), state.mode);
        }
        assert!(state.feed(b));
    }
    assert!(state.is_complete());
}

mod keywords;
