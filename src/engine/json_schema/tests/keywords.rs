//! The keywords beyond types and structure: numeric bounds, patterns and formats, maps, unions
//! of objects; and random schemas over all of them.

use serde_json::{json, Map, Value};

use super::{accepts_whole, parse};
use crate::engine::constraint::ByteParser;
use crate::engine::json_object::tests::Rng;
use crate::engine::json_schema::{Schema, SchemaState};

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

/// 300 random walks over number bytes from `{"n":`, 40 bytes each: none reaches a prefix no
/// byte can continue.
fn walk_numbers(schema: &Schema, rng: &mut Rng, what: &str) {
    for _ in 0..300 {
        let mut state = parse(schema, br#"{"n":"#).unwrap();
        for _ in 0..40 {
            let next: Vec<SchemaState> = b"0123456789-.}".iter().filter_map(|&b| { let mut s = state; s.feed(b).then_some(s) }).collect();
            assert!(!next.is_empty(), "{what}: dead end at {state:?}");
            state = next[rng.below(next.len())];
            if state.is_complete() {
                break;
            }
        }
    }
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
        walk_numbers(&schema, &mut rng, &format!("{t} {bounds}"));
    }
}

/// `text` (no exponent, at most 8 decimals) in units of 10^-8, exactly.
fn scaled(text: &str) -> Option<i128> {
    let (neg, t) = text.strip_prefix('-').map_or((false, text), |t| (true, t));
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if frac.len() > 8 {
        return None;
    }
    let v = format!("{int}{frac:0<8}").parse::<i128>().ok()?;
    Some(if neg { -v } else { v })
}

/// `multipleOf`, alone and under bounds: random short texts are taken exactly when they are
/// numbers in range whose value is a whole multiple of the step in decimal (0.3 of 0.1), and a
/// random walk never reaches a prefix no byte can continue.
#[test]
fn multiples_take_exactly_their_values() {
    let cases = [
        ("integer", json!({"multipleOf": 5}), None, None),
        ("integer", json!({"multipleOf": 3, "minimum": 10, "maximum": 40}), Some((10.0, false)), Some((40.0, false))),
        ("integer", json!({"multipleOf": 2.5}), None, None),
        ("number", json!({"multipleOf": 0.25}), None, None),
        ("number", json!({"multipleOf": 0.1, "minimum": -1, "exclusiveMaximum": 2}), Some((-1.0, false)), Some((2.0, true))),
        ("number", json!({"multipleOf": 7, "exclusiveMinimum": 0}), Some((0.0, true)), None),
        ("number", json!({"multipleOf": 0.03, "minimum": 0.1, "maximum": 0.2}), Some((0.1, false)), Some((0.2, false))),
    ];
    let mut rng = Rng(7);
    for (t, keywords, lo, hi) in cases {
        let integer = t == "integer";
        let step = scaled(&keywords["multipleOf"].to_string()).unwrap();
        let mut prop = keywords.as_object().unwrap().clone();
        prop.insert("type".into(), json!(t));
        let schema = Schema::compile(&json!({"type": "object", "properties": {"n": prop}})).unwrap();
        let want = |text: &str| in_range(text, integer, lo, hi) && scaled(text).is_some_and(|v| v % step == 0);
        let mut taken = 0;
        for _ in 0..20_000 {
            let len = 1 + rng.below(5);
            let text: String = (0..len).map(|_| b"0123456789-.0512"[rng.below(16)] as char).collect();
            taken += usize::from(want(&text));
            assert_eq!(accepts_whole(&schema, format!(r#"{{"n":{text}}}"#).as_bytes()), want(&text), "{t} {keywords} {text:?}");
        }
        assert!(taken > 0, "{t} {keywords}: {taken} taken");
        for text in ["0", "-0", "0.3", "0.30", "0.75", "-2.5", "5", "-5", "10", "12", "15", "21", "35", "42", "0.12", "0.15", "0.18", "0.21", "1.9", "2", "-1", "-1.1"] {
            assert_eq!(accepts_whole(&schema, format!(r#"{{"n":{text}}}"#).as_bytes()), want(text), "{t} {keywords} {text:?}");
        }
        walk_numbers(&schema, &mut rng, &format!("{t} {keywords}"));
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
fn length_and_count_bounds_outside_u32_say_the_range() {
    for key in ["minLength", "maxLength", "minItems", "maxItems"] {
        let t = if key.ends_with("Items") { json!({"type": "array", "items": {"type": "string"}}) } else { json!({"type": "string"}) };
        for bad in [json!(4294967296u64), json!(-1), json!(2.5)] {
            let mut x = t.clone();
            x[key] = bad.clone();
            let e = Schema::compile(&json!({"type": "object", "properties": {"x": x}})).unwrap_err();
            assert!(e.contains(&format!("`{key}`")) && e.contains("whole number in [0, 4294967295]") && e.contains(&bad.to_string()), "{e}");
        }
    }
    assert!(Schema::compile(&json!({"type": "object", "properties": {"x": {"type": "string", "maxLength": 4294967295u64}}})).is_ok());
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
            if rng.below(4) == 0 {
                s["multipleOf"] = json!([0.5, 3.0, 0.1, 7.0][rng.below(4)]);
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
