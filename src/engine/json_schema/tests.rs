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
        (json!({"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}}), "`multipleOf` at `/properties/a`"),
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

/// Is `text` a JSON number in the range (each bound `Some((value, exclusive))`)? By serde_json
/// and `f64` comparisons: exact for the short numbers and bounds used here.
fn in_range(text: &str, integer: bool, lo: Option<(f64, bool)>, hi: Option<(f64, bool)>) -> bool {
    let Ok(Value::Number(n)) = serde_json::from_str::<Value>(text) else { return false };
    if text.contains(['e', 'E']) || (integer && !(n.is_i64() || n.is_u64())) {
        return false;
    }
    let x = n.as_f64().unwrap();
    lo.is_none_or(|(l, open)| x > l || (!open && x == l)) && hi.is_none_or(|(h, open)| x < h || (!open && x == h))
}

/// Bounded numbers: random short texts are taken exactly when they are numbers in range, and a
/// random walk never reaches a prefix no byte can continue.
#[test]
fn bounded_numbers_take_exactly_their_range() {
    type Bound = Option<(f64, bool)>;
    let cases: [(&str, Value, bool, Bound, Bound); 10] = [
        ("integer", json!({"minimum": 1000}), true, Some((1000.0, false)), None),
        ("number", json!({"minimum": -20000, "exclusiveMaximum": 5000.5}), false, Some((-20000.0, false)), Some((5000.5, true))),
        ("integer", json!({"minimum": -5, "maximum": 120}), true, Some((-5.0, false)), Some((120.0, false))),
        ("integer", json!({"exclusiveMinimum": 0, "exclusiveMaximum": 10}), true, Some((0.0, true)), Some((10.0, true))),
        ("integer", json!({"maximum": -3}), true, None, Some((-3.0, false))),
        ("integer", json!({"minimum": 0.5, "maximum": 2.5}), true, Some((0.5, false)), Some((2.5, false))),
        ("number", json!({"minimum": 0, "maximum": 1}), false, Some((0.0, false)), Some((1.0, false))),
        ("number", json!({"exclusiveMinimum": -1.5, "maximum": 2.25}), false, Some((-1.5, true)), Some((2.25, false))),
        ("number", json!({"exclusiveMinimum": 0.5}), false, Some((0.5, true)), None),
        ("number", json!({"minimum": 1e-7, "maximum": 2e14}), false, Some((1e-7, false)), Some((2e14, false))),
    ];
    let mut rng = Rng(99);
    for (t, bounds, integer, lo, hi) in cases {
        let mut prop = bounds.as_object().unwrap().clone();
        prop.insert("type".into(), json!(t));
        let schema = Schema::compile(&json!({"type": "object", "properties": {"n": prop}})).unwrap();
        let mut taken = 0;
        for _ in 0..20_000 {
            let len = 1 + rng.below(6);
            let text: String = (0..len).map(|_| b"0123456789-.0112e"[rng.below(17)] as char).collect();
            let want = in_range(&text, integer, lo, hi);
            taken += usize::from(want);
            assert_eq!(accepts_whole(&schema, format!(r#"{{"n":{text}}}"#).as_bytes()), want, "{t} {bounds} {text:?}");
        }
        assert!(taken > 100, "{t} {bounds}: {taken} taken");
        // At and around each bound.
        for (b, _) in [lo, hi].into_iter().flatten() {
            for d in [0.0, 1.0, -1.0, 0.5, -0.5, 0.25, -0.25, 0.001, -0.001, 1e-6, -1e-6, 2.0, -2.0] {
                for text in [format!("{}", b + d), format!("{:.1}", b + d), format!("{:.0}", b + d)] {
                    let want = in_range(&text, integer, lo, hi);
                    assert_eq!(accepts_whole(&schema, format!(r#"{{"n":{text}}}"#).as_bytes()), want, "{t} {bounds} {text:?}");
                }
            }
        }
        for _ in 0..300 {
            let mut state = parse(&schema, br#"{"n":"#).unwrap();
            for _ in 0..40 {
                let next: Vec<SchemaState> = b"0123456789-.}".iter().filter_map(|&b| { let mut s = state; s.feed(b).then_some(s) }).collect();
                assert!(!next.is_empty(), "{t} {bounds}: dead end at {state:?}");
                state = next[rng.below(next.len())];
                if state.is_complete() {
                    break;
                }
            }
        }
    }
}

#[test]
fn strings_follow_their_pattern_or_format() {
    let schema = Schema::compile(&json!({"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-\\d+$", "maxLength": 6},
        "note": {"type": "string", "pattern": "^a\\nb/\"c$"},
        "when": {"type": ["string", "null"], "format": "date-time"}}})).unwrap();
    for (doc, ok) in [
        (r#"{"id":"123e4567-e89b-12d3-a456-426614174000"}"#, true),
        (r#"{"id":"123e4567-e89b-12d3-a456-42661417400"}"#, false),
        (r#"{"code":"ABC-12"}"#, true),
        (r#"{"code":"ABC-123"}"#, false),
        (r#"{"code":"AB-1"}"#, false),
        (r#"{"note":"a\nb\/\"c"}"#, true),
        (r#"{"note":"a\nb/\"c"}"#, true),
        (r#"{"note":"a\u000ab/\"c"}"#, false),
        (r#"{"when":"2024-05-01T12:00:00Z"}"#, true),
        (r#"{"when":null}"#, true),
        (r#"{"when":"yesterday"}"#, false),
    ] {
        assert_eq!(accepts_whole(&schema, doc.as_bytes()), ok, "{doc}");
    }
    // Under a length limit a character is refused where the pattern could not then be finished
    // in the characters left: after "ABC-1" (5 of 6) a digit may follow, no letter.
    let after = parse(&schema, br#"{"code":"ABC-1"#).unwrap();
    assert!({ let mut s = after; s.feed(b'2') } && !{ let mut s = after; s.feed(b'X') });
    // No escape can continue "A": a backslash is refused there.
    assert!(!{ let mut s = parse(&schema, br#"{"code":"A"#).unwrap(); s.feed(b'\\') });
}

#[test]
fn maps_take_any_keys() {
    let schema = Schema::compile(&json!({"type": "object", "required": ["scores"], "properties": {
        "scores": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}}})).unwrap();
    for (doc, ok) in [
        (r#"{"scores":{}}"#, true),
        (r#"{"scores":{"a":1, "b c\n":2, "日本":30}}"#, true),
        (r#"{"scores":{"a":-1}}"#, false),
        (r#"{"scores":{"a":"x"}}"#, false),
        (r#"{"scores":{"a":1,}}"#, false),
        (r#"{"scores":{"a"}}"#, false),
    ] {
        assert_eq!(accepts_whole(&schema, doc.as_bytes()), ok, "{doc}");
    }
    let root = Schema::compile(&json!({"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}})).unwrap();
    assert!(accepts_whole(&root, br#"{"x":["a"],"y":[]}"#) && !accepts_whole(&root, br#"{"x":"a"}"#));
}

/// Random byte-level walks (every byte value a candidate) under patterns, formats, length
/// limits, bounded numbers, maps and a union of objects: some byte can always follow.
#[test]
fn no_prefix_is_a_dead_end_under_patterns_bounds_and_maps() {
    let union = pets_union();
    let schema = Schema::compile(&json!({"type": "object", "$defs": union["$defs"], "properties": {
        "pet": union["properties"]["pet"],
        "code": {"type": "string", "pattern": "^[A-Z]{2,3}-\\d+$", "maxLength": 7},
        "tag": {"type": "string", "pattern": "x\\by|q"},
        "day": {"type": "string", "format": "date"},
        "ip": {"type": "string", "format": "ipv6"},
        "p": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.75},
        "k": {"type": "integer", "minimum": 10, "maximum": 12},
        "m": {"type": "object", "additionalProperties": {"type": "integer", "exclusiveMaximum": -2}}}})).unwrap();
    let mut rng = Rng(5);
    let mut complete = 0;
    for _ in 0..300 {
        let mut state = schema.start();
        for _ in 0..400 {
            if state.is_complete() {
                complete += 1;
                break;
            }
            let next: Vec<SchemaState> = (0..=255u8).filter_map(|b| { let mut s = state; s.feed(b).then_some(s) }).collect();
            assert!(!next.is_empty(), "dead end at {state:?}");
            state = next[rng.below(next.len())];
        }
    }
    assert!(complete > 10, "{complete} walks completed");
}

/// pydantic's discriminated union: `oneOf` two models told apart by a `const`.
fn pets_union() -> Value {
    json!({"type": "object", "required": ["pet"], "properties": {"pet": {
            "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
            "discriminator": {"propertyName": "kind", "mapping": {"cat": "#/$defs/Cat", "dog": "#/$defs/Dog"}}}},
        "$defs": {
            "Cat": {"type": "object", "required": ["kind", "meows"], "properties": {"kind": {"const": "cat", "type": "string"}, "meows": {"type": "boolean"}, "name": {"type": "string"}}},
            "Dog": {"type": "object", "required": ["kind", "barks"], "properties": {"kind": {"const": "dog", "type": "string"}, "barks": {"type": "integer", "minimum": 0}, "name": {"type": "string"}}}}})
}

#[test]
fn unions_of_objects_keep_the_alternatives_the_keys_allow() {
    let schema = Schema::compile(&pets_union()).unwrap();
    for (doc, ok) in [
        (r#"{"pet":{"kind":"cat","meows":true}}"#, true),
        (r#"{"pet":{"meows":false,"name":"Tom","kind":"cat"}}"#, true),
        (r#"{"pet":{"barks":3,"kind":"dog"}}"#, true),
        (r#"{"pet":{"name":"Rex","kind":"dog","barks":0}}"#, true),
        (r#"{"pet":{"kind":"cat","barks":3}}"#, false),
        (r#"{"pet":{"meows":true,"kind":"dog"}}"#, false),
        (r#"{"pet":{"kind":"cat","meows":true,"barks":1}}"#, false),
        (r#"{"pet":{"name":"x"}}"#, false),
        (r#"{"pet":{"kind":"cat"}}"#, false),
        (r#"{"pet":{"kind":"cow","meows":true}}"#, false),
        (r#"{"pet":{"kind":"dog","barks":-1}}"#, false),
    ] {
        assert_eq!(accepts_whole(&schema, doc.as_bytes()), ok, "{doc}");
    }
    // Once a key is Cat's alone, only "cat" may start the discriminator's value.
    let meowed = parse(&schema, br#"{"pet":{"meows":true,"kind":"#).unwrap();
    let continues = |bytes: &[u8]| {
        let mut s = meowed;
        bytes.iter().all(|&b| s.feed(b))
    };
    assert!(continues(br#""c"#) && !continues(br#""d"#));

    // `anyOf` needs no discriminator: keys alone tell the alternatives apart, or an instance of
    // either is fine.
    let either = Schema::compile(&json!({"type": "object", "properties": {"v": {"anyOf": [
        {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}, "both": {"type": "string"}}},
        {"type": "object", "required": ["b"], "properties": {"b": {"type": "string"}, "both": {"type": "string"}}},
        {"type": "null"}]}}})).unwrap();
    for (doc, ok) in [(r#"{"v":{"a":1}}"#, true), (r#"{"v":{"both":"x","b":"y"}}"#, true), (r#"{"v":null}"#, true), (r#"{"v":{"a":1,"b":"y"}}"#, false), (r#"{"v":{"both":"x"}}"#, false)] {
        assert_eq!(accepts_whole(&either, doc.as_bytes()), ok, "{doc}");
    }

    // Shared properties with the same format, written out in each model, are one schema.
    let dated = |kind: &str| json!({"type": "object", "required": ["kind", "born"], "properties": {"kind": {"const": kind}, "born": {"type": "string", "format": "date"}}});
    let union = Schema::compile(&json!({"type": "object", "properties": {"v": {"oneOf": [dated("a"), dated("b")]}}})).unwrap();
    assert!(accepts_whole(&union, br#"{"v":{"born":"2024-01-02","kind":"b"}}"#));

    // Behind a discriminator, models may give one property different schemas: it is offered
    // once the discriminator has chosen.
    let typed = |kind: &str, t: &str| json!({"type": "object", "required": ["kind", "v"], "properties": {"kind": {"const": kind}, "v": {"type": t}}});
    let split = Schema::compile(&json!({"type": "object", "properties": {"x": {"oneOf": [typed("n", "integer"), typed("s", "string")]}}})).unwrap();
    for (doc, ok) in [(r#"{"x":{"kind":"n","v":1}}"#, true), (r#"{"x":{"kind":"s","v":"a"}}"#, true), (r#"{"x":{"kind":"s","v":1}}"#, false), (r#"{"x":{"v":1,"kind":"n"}}"#, false)] {
        assert_eq!(accepts_whole(&split, doc.as_bytes()), ok, "{doc}");
    }

    let err = |schema: Value| Schema::compile(&schema).unwrap_err();
    // `1` and `1.0` are one value: no discriminator.
    let one = |v: Value| json!({"type": "object", "required": ["k"], "properties": {"k": {"const": v}}});
    assert!(err(json!({"type": "object", "properties": {"v": {"oneOf": [one(json!(1)), one(json!(1.0))]}}})).contains("discriminator"));
    // References that join again (a lattice of 8^12 paths) are compared once per pair.
    let mut defs = Map::new();
    for chain in ["T", "U"] {
        for i in 0..12 {
            let next = json!({"$ref": format!("#/$defs/{chain}{}", i + 1)});
            let props: Map<String, Value> = "abcdefgh".chars().map(|c| (c.to_string(), next.clone())).collect();
            defs.insert(format!("{chain}{i}"), json!({"type": "object", "properties": props}));
        }
        defs.insert(format!("{chain}12"), json!({"type": "string"}));
    }
    let x = |chain: &str| json!({"type": "object", "properties": {"x": {"$ref": format!("#/$defs/{chain}0")}}});
    assert!(Schema::compile(&json!({"type": "object", "$defs": defs, "properties": {"v": {"anyOf": [x("T"), x("U")]}}})).is_ok());
    let obj = |t: &str| json!({"type": "object", "properties": {"x": {"type": t}}});
    assert!(err(json!({"type": "object", "properties": {"v": {"anyOf": [obj("string"), obj("integer")]}}})).contains("different schemas"));
    assert!(err(json!({"type": "object", "properties": {"v": {"oneOf": [obj("string"), obj("string")]}}})).contains("discriminator"));
}

/// A random schema `depth` levels deep at most, over every supported keyword (and some
/// combinations the compiler refuses).
fn random_schema(rng: &mut Rng, depth: usize) -> Value {
    let names = ["a", "b", "ab", "kind", "x y", "é"];
    let leaf = depth == 0;
    match rng.below(if leaf { 6 } else { 11 }) {
        0 => {
            let mut s = json!({"type": "string"});
            match rng.below(6) {
                0 => s["maxLength"] = json!(rng.below(5)),
                1 => s["minLength"] = json!(1 + rng.below(3)),
                2 => s["pattern"] = json!(["^[a-c]+$", "b", "^x?y{1,2}$", "\\d"][rng.below(4)]),
                3 => s["format"] = json!(["date", "uuid", "ipv4", "email", "time"][rng.below(5)]),
                4 => {
                    s["pattern"] = json!("^[a-z]+[0-9]$");
                    s["maxLength"] = json!(1 + rng.below(4));
                }
                _ => {}
            }
            s
        }
        1 => {
            let mut s = json!({"type": (["integer", "number"][rng.below(2)])});
            let bound = |rng: &mut Rng| json!([-3.5, -1.0, 0.0, 0.25, 2.0, 10.0, 150.0][rng.below(7)]);
            for k in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
                if rng.below(3) == 0 {
                    s[k] = bound(rng);
                }
            }
            s
        }
        2 => json!({"type": "boolean"}),
        3 => json!({"type": (["null", "string"][rng.below(2)])}),
        4 => json!({"enum": ([&["x", "y"][..], &["x"], &["y", "z"]][rng.below(3)])}),
        5 => json!({"const": rng.below(3)}),
        6 => {
            let mut s = json!({"type": "array", "items": random_schema(rng, depth - 1)});
            if rng.below(2) == 0 {
                s["minItems"] = json!(rng.below(2));
                s["maxItems"] = json!(1 + rng.below(3));
            }
            s
        }
        7 | 8 => random_object(rng, depth, &names),
        9 => json!({"type": "object", "additionalProperties": random_schema(rng, depth - 1)}),
        _ => {
            let n = 2 + rng.below(2);
            let alternatives: Vec<Value> = (0..n)
                .map(|i| match rng.below(3) {
                    // Objects told apart by a required `kind`.
                    0 => {
                        let mut o = random_object(rng, depth, &names);
                        o["properties"]["kind"] = json!({"const": format!("k{i}")});
                        o["required"] = json!(["kind"]);
                        o
                    }
                    1 => random_object(rng, depth, &names),
                    _ => random_schema(rng, depth - 1),
                })
                .collect();
            json!({(["anyOf", "oneOf"][rng.below(2)]): alternatives})
        }
    }
}

fn random_object(rng: &mut Rng, depth: usize, names: &[&str]) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for _ in 0..rng.below(4) {
        let name = names[rng.below(names.len())];
        props.insert(name.into(), random_schema(rng, depth.saturating_sub(1)));
        if rng.below(3) == 0 && !required.contains(&name) {
            required.push(name);
        }
    }
    json!({"type": "object", "properties": props, "required": required})
}

/// Random schemas over every keyword: compiling never panics, and random byte walks under the
/// ones that compile never reach a dead end; what completes is JSON.
#[test]
fn random_schemas_compile_or_are_refused_and_never_dead_end() {
    let mut rng = Rng(0x5EED_0BAD_CAFE);
    let (mut compiled, mut refused, mut complete) = (0, 0, 0);
    for _ in 0..400 {
        let root = random_object(&mut rng, 3, &["a", "b", "ab", "kind", "x y", "é"]);
        let Ok(schema) = Schema::compile(&root) else {
            refused += 1;
            continue;
        };
        compiled += 1;
        for _ in 0..4 {
            let (mut state, mut text) = (schema.start(), Vec::new());
            for _ in 0..200 {
                if state.is_complete() {
                    complete += 1;
                    // (serde_json refuses numbers past f64's range, which JSON's grammar allows.)
                    let parsed = serde_json::from_slice::<Value>(&text);
                    assert!(parsed.as_ref().map_or_else(|e| e.to_string().contains("number out of range"), |_| true), "{}", String::from_utf8_lossy(&text));
                    break;
                }
                let next: Vec<(u8, SchemaState)> = (0..=255u8).filter_map(|b| { let mut s = state; s.feed(b).then_some((b, s)) }).collect();
                assert!(!next.is_empty(), "dead end under {root} after {:?}", String::from_utf8_lossy(&text));
                let (b, s) = next[rng.below(next.len())];
                text.push(b);
                state = s;
            }
        }
    }
    assert!(compiled > 150 && refused > 10 && complete > 100, "{compiled} compiled, {refused} refused, {complete} complete");
}
