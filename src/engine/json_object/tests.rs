use serde_json::{Map, Value};

use super::*;

fn parse(text: &[u8]) -> Option<JsonState> {
    let mut s = JsonState::default();
    s.feed_all(text).then_some(s)
}

fn accepts_whole(text: &[u8]) -> bool {
    parse(text).is_some_and(|s| s.is_complete())
}

#[test]
fn objects_are_accepted_and_complete_only_at_their_end() {
    let docs: [&[u8]; 8] = [
        b"{}",
        b"{\"a\":1}",
        b"\n{ \"a\" : [1, -2.5e+3, 0, -0.0, 1E9, true, false, null, {\"b\": \"x\\\"y\\\\\\u00e9\\n\\/\"}], \"c\": {} }",
        b"{\"a\":[[],[[]],{}]}",
        "{\"k\u{e9}y\": \"\u{65e5}\u{672c} \u{1F600}\"}".as_bytes(),
        b"{\"a\":\"\"}",
        b"{\"\":0.5e-7}",
        b"{\"a\":{\"b\":{\"c\":[1,2,{\"d\":null}]}}}",
    ];
    for doc in docs {
        let shown = String::from_utf8_lossy(doc);
        assert!(accepts_whole(doc), "{shown}");
        for end in 0..doc.len() {
            let state = parse(&doc[..end]);
            assert!(state.is_some_and(|s| !s.is_complete()), "prefix {end} of {shown}");
        }
        assert!(serde_json::from_slice::<Map<String, Value>>(doc).is_ok(), "serde_json agrees on {shown}");
    }
}

#[test]
fn what_is_not_a_json_object_is_refused() {
    let bad: [&[u8]; 22] = [
        b"[]",
        b"\"a\"",
        b"1",
        b"{\"a\":01}",
        b"{\"a\":1,}",
        b"{a:1}",
        b"{\"a\" 1}",
        b"{\"a\":1}}",
        b"{\"a\":1} ",
        b"{\"a\":1}x",
        b"{\"a\":\"\x01\"}",
        b"{\"a\":\"\\q\"}",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":\"\\uDC00\"}",
        b"{\"a\":tru}",
        b"{\"a\":-}",
        b"{\"a\":1.}",
        b"{\"a\":1e}",
        b"{\"a\":.5}",
        b"{\"a\":\"\xc3\x28\"}",
        b"{\"a\":\"\x80\"}",
        b"{'a':1}",
    ];
    for doc in bad {
        assert!(!accepts_whole(doc), "{}", String::from_utf8_lossy(doc));
    }
}

#[test]
fn nesting_and_whitespace_runs_are_bounded() {
    let mut deep = b"{\"a\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', MAX_DEPTH as usize - 1));
    assert!(parse(&deep).is_some());
    deep.push(b'[');
    assert!(parse(&deep).is_none(), "a 65th level");
    let mut indent = b"{\n".to_vec();
    indent.extend(std::iter::repeat_n(b' ', MAX_INDENT as usize));
    assert!(parse(&indent).is_some());
    indent.push(b'\t');
    assert!(parse(&indent).is_none(), "a 21st byte of indentation");
    for run in [&b"{\n  \n"[..], b"{  ", b"{ \n", b"{\t", b"{\r\n"] {
        assert!(parse(run).is_none(), "{:?}", String::from_utf8_lossy(run));
    }
    assert!(parse(b"{\n  \"a\": 1,\n  \"b\": 2\n}").is_some_and(|s| s.is_complete()), "pretty-printed");
    assert!(parse(b"{ \"a\" : 1 , \"b\" : 2 }").is_some_and(|s| s.is_complete()), "runs restart after each token");
}

/// A small deterministic generator (xorshift), so the tests need no crate (also for the
/// schema and vocabulary tests).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `text` with one random byte removed, replaced or inserted (from `alphabet`).
    pub(crate) fn edit(&mut self, text: &[u8], alphabet: &[u8]) -> Vec<u8> {
        let mut edited = text.to_vec();
        let at = self.below(edited.len());
        match self.below(3) {
            0 => {
                edited.remove(at);
            }
            1 => edited[at] = alphabet[self.below(alphabet.len())],
            _ => edited.insert(at, alphabet[self.below(alphabet.len())]),
        }
        edited
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let words = ["", "a", "key", "é", "日本", "tab\there", "quote\"back\\slash", "\u{1}ctl", "😀"];
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => serde_json::json!(rng.next() as i64 % 100_000),
        3 => serde_json::json!((rng.next() % 1_000_000) as f64 / 1e3 - 500.0),
        4 => Value::String(words[rng.below(words.len())].to_string()),
        5 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth - 1)).collect()),
        _ => Value::Object(random_object(rng, depth - 1)),
    }
}

fn random_object(rng: &mut Rng, depth: usize) -> Map<String, Value> {
    (0..rng.below(4)).map(|i| (format!("k{i}"), random_value(rng, depth))).collect()
}

/// Whether every whitespace run outside strings is one space, or a line break and up to 20
/// spaces or tabs.
pub(crate) fn whitespace_within_limits(text: &[u8]) -> bool {
    let (mut in_string, mut escaped, mut run) = (false, false, Vec::new());
    for &b in text.iter().chain(b"x") {
        if in_string {
            (escaped, in_string) = (!escaped && b == b'\\', escaped || b != b'"');
            continue;
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            run.push(b);
            continue;
        }
        let ok = match run.split_first() {
            None => true,
            Some((b' ', rest)) => rest.is_empty(),
            Some((b'\n', rest)) => rest.len() <= 20 && rest.iter().all(|&c| c == b' ' || c == b'\t'),
            Some(_) => false,
        };
        if !ok {
            return false;
        }
        run.clear();
        in_string = b == b'"';
    }
    true
}

/// Random objects (compact and pretty) are accepted; random one-byte edits of them are accepted
/// exactly when serde_json reads an object from them.
#[test]
fn agrees_with_serde_json_on_random_objects_and_edits() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let alphabet = b"{}[]\",:0123456789-+.eEtrufalsn \n\\xu";
    let mut disagreements = Vec::new();
    let mut verdicts = [0usize; 2];
    for i in 0..400 {
        let object = Value::Object(random_object(&mut rng, 3));
        let text = if i % 2 == 0 { serde_json::to_vec(&object) } else { serde_json::to_vec_pretty(&object) }.unwrap();
        assert!(accepts_whole(&text), "{}", String::from_utf8_lossy(&text));
        for _ in 0..20 {
            let edited = rng.edit(&text, alphabet);
            // serde_json also takes whitespace after the object; we end it there. It refuses
            // numbers past f64's range (`123e456`), which JSON's grammar allows: not compared.
            // Past the whitespace limits serde_json reads on; those edits must be refused.
            let serde = match serde_json::from_slice::<Map<String, Value>>(&edited) {
                Err(e) if e.to_string().contains("number out of range") => continue,
                result => result.is_ok() && whitespace_within_limits(edited.trim_ascii_end()),
            };
            let ours = accepts_whole(edited.trim_ascii_end());
            verdicts[usize::from(serde)] += 1;
            if serde != ours {
                disagreements.push(String::from_utf8_lossy(&edited).into_owned());
            }
        }
    }
    assert!(disagreements.is_empty(), "{} disagreements, e.g. {:?}", disagreements.len(), &disagreements[..disagreements.len().min(5)]);
    assert!(verdicts[0] > 1000 && verdicts[1] > 1000, "edits refused / still objects: {verdicts:?}");
}
