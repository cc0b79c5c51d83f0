use std::sync::Arc;

use crate::engine::constraint::{Constraint, OutputFormat, Vocab};
use crate::engine::json_object::tests::Rng;

use super::*;

fn tokens() -> Vec<Box<[u8]>> {
    let mut tokens: Vec<Box<[u8]>> = (0..=255u8).map(|b| Box::from([b].as_slice())).collect();
    for piece in ["pos", "positive", "posit", "ive", "neg", "negative", "ative", " positive", "Positive", "neutral", "neu", "tral\n", "@", "alan", ".com", ".com\n", "\n", "a.b", "\u{e9}t\u{e9}", "\u{e9}", "</think>", "</think>\n\n", "1", "12", "123", "-", "x1"] {
        tokens.push(piece.as_bytes().into());
    }
    tokens
}

/// Whether the whole of `text` is accepted and the output may end after it.
fn takes(format: &OutputFormat, text: &str) -> bool {
    let mut c = format.start().unwrap();
    c.advance(text.as_bytes()) && c.is_complete()
}

fn regex(r: &str) -> OutputFormat {
    OutputFormat::Regex(Arc::new(RegexFormat::regex(r).unwrap()))
}

fn choice(c: &[&str]) -> OutputFormat {
    OutputFormat::Regex(Arc::new(RegexFormat::choice(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()))
}

/// At every prefix of `doc`, the mask is exactly the tokens whose bytes feeding accepts.
fn masks_agree(name: &str, mut c: Constraint, doc: &str) -> Constraint {
    let tokens = tokens();
    let vocab = Vocab::from_bytes(tokens.clone());
    for (end, &b) in doc.as_bytes().iter().enumerate() {
        let mask = c.allowed(&vocab);
        for (id, token) in tokens.iter().enumerate() {
            let mut t = c.clone();
            assert_eq!(mask[id / 64] >> (id % 64) & 1 == 1, t.advance(token), "{name}: {:?} after {:?}", String::from_utf8_lossy(token), &doc[..end]);
        }
        assert!(c.advance(&[b]), "{name}: byte {end} of {doc:?}");
    }
    c
}

#[test]
fn a_choice_is_one_of_the_strings_whole() {
    let f = choice(&["positive", "negative", "neutral\n", "a.b", "(x|y)*"]);
    for good in ["positive", "negative", "neutral\n", "a.b", "(x|y)*"] {
        assert!(takes(&f, good), "{good}");
    }
    for bad in ["", "pos", "Positive", " positive", "positive ", "neutral", "axb", "x", "xy", "positivenegative"] {
        assert!(!takes(&f, bad), "{bad:?}");
    }
    let done = masks_agree("choice", f.start().unwrap(), "positive");
    assert!(done.is_complete());
    let vocab = Vocab::from_bytes(tokens());
    assert!(done.allowed(&vocab).iter().all(|&w| w == 0), "nothing but EOS after a whole choice");
    // A prefix of another choice: the output may end or go on.
    let f = choice(&["12", "123"]);
    let c = masks_agree("prefix", f.start().unwrap(), "12");
    assert!(c.is_complete());
    assert!(c.allowed(&vocab).iter().any(|&w| w != 0));
}

#[test]
fn a_regex_matches_the_whole_output() {
    let f = regex(r"\w+@\w+\.com\n");
    assert!(!takes(&f, "alan.turing@enigma.com\n"), "`.` is not a word character");
    assert!(takes(&f, "alan@enigma.com\n"));
    assert!(!takes(&f, "alan@enigma.com"), "unanchored would have matched");
    assert!(!takes(&f, "Alan: alan@enigma.com\n"));
    masks_agree("email", f.start().unwrap(), "alan@x1.com\n");
    // `\d` is ASCII (as in a schema's `pattern`); anchors are allowed; `.` takes no line break.
    let f = regex(r"^-?\d{1,3}$");
    for (text, ok) in [("1", true), ("-123", true), ("1234", false), ("\u{663}", false), ("", false)] {
        assert_eq!(takes(&f, text), ok, "{text:?}");
    }
    let f = regex(".*");
    assert!(takes(&f, "") && takes(&f, "\u{e9}t\u{e9} x") && !takes(&f, "a\nb"));
    let c = masks_agree("any", f.start().unwrap(), "\u{e9}t\u{e9}");
    assert!(c.is_complete());
}

/// Random strings of a small alphabet: the constraint takes each exactly when the `regex`
/// crate's whole-string match (the same expression anchored) does.
#[test]
fn regexes_agree_with_the_regex_crate() {
    let cases = [r"(ab|a)(c|bcd)", r"[a-c]{2,4}d?", r"a*b+c{0,2}", r"(a|b)*abb", r"[^a]b.c", r"(?:x|y|)z?"];
    let mut rng = Rng(31);
    for r in cases {
        let f = regex(r);
        let full = regex::Regex::new(&format!("^(?:{r})$")).unwrap();
        for _ in 0..2000 {
            let len = rng.below(7);
            let s: String = (0..len).map(|_| b"abcdxyz"[rng.below(7)] as char).collect();
            assert_eq!(takes(&f, &s), full.is_match(&s), "{r} on {s:?}");
        }
    }
}

#[test]
fn bad_expressions_are_refused_with_a_reason() {
    for (r, says) in [("(a", "cannot be used"), ("a{1000000000}", "cannot be used"), ("(?=a)b", "cannot be used"), ("[^\\s\\S]", "matches no string")] {
        let e = RegexFormat::regex(r).unwrap_err();
        assert!(e.contains(says), "{r}: {e}");
    }
    assert!(RegexFormat::choice(&[]).unwrap_err().contains("at least one"));
}

/// Output may hold any byte (a JSON string's pattern may not): control characters in a regex
/// or a choice are taken as written; `(?x)` comments run to the end of their line.
#[test]
fn control_characters_and_verbose_regexes() {
    let f = regex(r"\x1b\[0m|a\x01?b");
    for (text, ok) in [("\x1b[0m", true), ("ab", true), ("a\u{1}b", true), ("a\u{2}b", false)] {
        assert_eq!(takes(&f, text), ok, "{text:?}");
    }
    assert!(takes(&choice(&["a\u{1}", "b"]), "a\u{1}"));
    let f = regex("(?x) a+ # any number of a\n b");
    assert!(takes(&f, "aab") && !takes(&f, "a b"));
    // A choice list's trie may be larger than a pattern's table.
    let many: Vec<String> = (0..2000).map(|i| format!("label number {i}")).collect();
    let f = OutputFormat::Regex(Arc::new(RegexFormat::choice(&many).unwrap()));
    assert!(takes(&f, "label number 1999") && !takes(&f, "label number 2000"));
}

/// Thinking first (Qwen3 with `enable_thinking`), then the choice.
#[test]
fn a_choice_after_thinking() {
    let f = choice(&["positive", "negative"]);
    let c = masks_agree("thinking", f.start_after_thinking().unwrap(), "<think>\npositive? not sure</think>negative");
    assert!(c.is_complete());
    let mut c = f.start_after_thinking().unwrap();
    assert!(!c.advance(b"</think>maybe"));
    // No whitespace is taken between the thinking and the choice but what the choice holds.
    let mut c = f.start_after_thinking().unwrap();
    assert!(!c.advance(b"</think>\n\npositive"));
    let f = choice(&[" yes", ""]);
    let mut c = f.start_after_thinking().unwrap();
    assert!(c.advance(b"<think>hm</think>") && c.is_complete(), "an empty answer may end at once");
    assert!(c.advance(b" yes") && c.is_complete());
}

fn grammar(text: &str) -> OutputFormat {
    OutputFormat::Regex(Arc::new(RegexFormat::grammar(text).unwrap()))
}

/// A GBNF grammar through the vocabulary walk: each mask is exactly the tokens it takes, a
/// character split across tokens included, and after thinking as a regex is.
#[test]
fn a_grammar_masks_the_vocabulary_as_it_parses() {
    let f = grammar("root ::= word (\"@\" word)* \".com\"? \"\\n\"\nword ::= [a-z\u{e9}]+ [0-9]?");
    assert!(takes(&f, "alan@x1.com\n") && takes(&f, "\u{e9}t\u{e9}\n") && !takes(&f, "alan@\n") && !takes(&f, "Alan\n"));
    let done = masks_agree("grammar", f.start().unwrap(), "alan@\u{e9}t\u{e9}@x1.com\n");
    assert!(done.is_complete());
    let vocab = Vocab::from_bytes(tokens());
    assert!(done.allowed(&vocab).iter().all(|&w| w == 0), "nothing but EOS after the line break");
    let c = masks_agree("grammar after thinking", f.start_after_thinking().unwrap(), "<think>\nx</think>pos@neg\n");
    assert!(c.is_complete());
    // Inside a string any plain text may come, and the walk takes plain tokens whole: the
    // masks are still exactly what feeding takes, and outside the string no shortcut is taken.
    let f = grammar("root ::= \"[\" (\"\\\"\" [^\"\\\\]* \"\\\"\")? \"]\"");
    assert!(takes(&f, "[\"a<\u{e9}\"]") && !takes(&f, "[\"a\\\"]") && takes(&f, "[]"));
    let c = masks_agree("string", f.start().unwrap(), "[\"pos\u{e9}t\u{e9}<ative\"]");
    assert!(c.is_complete());
    let Constraint::Regex(_, s) = f.start().unwrap() else { unreachable!() };
    let mut inside = s;
    assert!(s.plain_budget().is_none() && inside.feed(b'[') && inside.feed(b'"') && inside.plain_budget() == Some(u32::MAX));
}
