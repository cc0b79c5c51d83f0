use crate::engine::json_object::tests::Rng;

use super::*;

fn compile(text: &str) -> Grammar {
    Grammar::compile(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The state after `text`, or [`DEAD`].
fn run(g: &Grammar, text: &[u8]) -> u32 {
    text.iter().fold(g.start(), |at, &b| g.step(at, b))
}

fn takes(g: &Grammar, text: &str) -> bool {
    g.accepts(run(g, text.as_bytes()))
}

/// A random string over `alphabet`, up to `max` characters.
fn random_text(rng: &mut Rng, alphabet: &[char], max: usize) -> String {
    let n = rng.below(max + 1);
    (0..n).map(|_| alphabet[rng.below(alphabet.len())]).collect()
}

#[test]
fn a_regular_grammar_takes_what_the_same_regex_matches() {
    let cases = [
        (r#"root ::= [a-c]* "x" [0-9]{1,3}"#, r"^[a-c]*x[0-9]{1,3}$"),
        ("root ::= (\"ab\" | \"b\")+ tail?\ntail ::= \"c\" # a comment\n", r"^(ab|b)+c?$"),
        (r#"root ::= [^abx] . "a"{2,}"#, r"^[^abx][\s\S]a{2,}$"),
        (r#"root ::= ("x"?)* "b" | """#, r"^(x*b)?$"),
        ("root ::= \"\\x61\" \"\\u00e9\"? [\\n\\t-]", "^a\u{e9}?[\n\t-]$"),
    ];
    let alphabet = ['a', 'b', 'c', 'x', '0', '1', '9', '\u{e9}', '\n', '\t', '-', '\u{1f600}'];
    let mut rng = Rng(7);
    for (grammar, regex) in cases {
        let g = compile(grammar);
        let r = regex::Regex::new(regex).unwrap();
        for _ in 0..3000 {
            let text = random_text(&mut rng, &alphabet, 7);
            assert_eq!(takes(&g, &text), r.is_match(&text), "{grammar} on {text:?}");
        }
    }
}

#[test]
fn a_recursive_grammar_takes_balanced_brackets_only() {
    let g = compile("root ::= (\"(\" root \")\" | \"[\" root \"]\")*");
    let balanced = |t: &str| {
        let mut stack = Vec::new();
        for c in t.chars() {
            match c {
                '(' | '[' => stack.push(c),
                ')' if stack.pop() == Some('(') => {}
                ']' if stack.pop() == Some('[') => {}
                _ => return false,
            }
        }
        stack.is_empty()
    };
    let mut rng = Rng(3);
    let mut yes = 0;
    for _ in 0..20_000 {
        let text = random_text(&mut rng, &['(', ')', '[', ']'], 12);
        let ok = balanced(&text);
        yes += usize::from(ok);
        assert_eq!(takes(&g, &text), ok, "{text:?}");
    }
    assert!(yes > 100, "the sample held {yes} balanced strings");
    assert!(takes(&g, &"([".repeat(200).chars().chain("])".repeat(200).chars()).collect::<String>()));
}

/// llama.cpp's `json.gbnf`, as its users pass it.
const JSON: &str = r#"
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"#;

#[test]
fn the_json_grammar_takes_json_and_refuses_its_corruptions() {
    let g = compile(JSON);
    let mut rng = Rng(11);
    for i in 0..300 {
        let value = serde_json::json!({"id": i, "name": format!("n\u{e9}{i}\"\\"), "tags": ["a", i % 7, {"deep": [[], {}]}], "ok": i % 2 == 0, "none": null, "x": -1.5});
        let text = if i % 2 == 0 { serde_json::to_string(&value).unwrap() } else { serde_json::to_string_pretty(&value).unwrap().replace("  ", " ") };
        assert!(takes(&g, &text), "{text}");
        // Cut short, or one byte changed to a structural one: refused (or, where the change
        // still spells JSON, taken only if serde reads it).
        let cut = rng.below(text.len());
        if text.is_char_boundary(cut) {
            assert!(!takes(&g, &text[..cut]), "{:?}", &text[..cut]);
        }
        let mut bytes = text.clone().into_bytes();
        let at = rng.below(bytes.len());
        bytes[at] = b"{}[],:\"x"[rng.below(8)];
        if let Ok(changed) = String::from_utf8(bytes) {
            let is_json = serde_json::from_str::<serde_json::Value>(&changed).is_ok_and(|v| v.is_object());
            assert_eq!(takes(&g, &changed), is_json, "{changed}");
        }
    }
}

#[test]
fn every_state_reached_can_still_finish() {
    // A random walk over the bytes each state allows: never stuck, and the refused bytes are
    // those after which no sentence goes on.
    let g = compile(JSON);
    let mut rng = Rng(5);
    for _ in 0..40 {
        let mut at = g.start();
        for _ in 0..200 {
            let next: Vec<u8> = (0..=255u8).filter(|&b| g.step(at, b) != DEAD).collect();
            assert!(!next.is_empty() || g.accepts(at), "stuck");
            if next.is_empty() || (g.accepts(at) && rng.below(8) == 0) {
                break;
            }
            at = g.step(at, next[rng.below(next.len())]);
        }
    }
}

#[test]
fn utf8_is_read_a_byte_at_a_time_and_only_toward_allowed_characters() {
    let g = compile("root ::= [\u{e9}-\u{ea}] \"\u{1f600}\"");
    let e_acute = "\u{e9}".as_bytes();
    assert_ne!(g.step(g.start(), e_acute[0]), DEAD, "the lead byte of \u{e9}");
    assert_eq!(g.step(g.start(), 0xc4), DEAD, "no allowed character starts with 0xC4");
    assert_eq!(g.step(g.start(), e_acute[1]), DEAD, "a continuation byte first");
    assert_eq!(run(&g, &[0xc3, 0xab]), DEAD, "\u{eb} is outside the class");
    assert!(!g.accepts(run(&g, e_acute)), "the emoji is still to come");
    assert!(takes(&g, "\u{ea}\u{1f600}"));
    // Overlong forms and surrogates are refused even where `.` takes anything.
    let any = compile("root ::= .");
    for bad in [&[0xc0, 0x80][..], &[0xe0, 0x80, 0x80], &[0xed, 0xa0, 0x80], &[0xf4, 0x90, 0x80, 0x80], &[0xff]] {
        assert!(!any.accepts(run(&any, bad)), "{bad:x?}");
    }
    assert!(takes(&any, "\u{10ffff}") && takes(&any, "\n") && !takes(&any, "ab"));
}

#[test]
fn repetitions_run_in_bounded_tables() {
    // A tail call pushes no frame: a long output needs no more states than a short one.
    let g = compile("root ::= item* \"!\"\nitem ::= \"ab\" | \"c\"");
    let text = "abc".repeat(5000) + "!";
    assert!(takes(&g, &text));
    let t = g.tables.lock().unwrap();
    assert!(t.states.len() < 20 && t.nodes.len() < 20, "{} states, {} nodes", t.states.len(), t.nodes.len());
}

#[test]
fn bad_grammars_are_refused_saying_where_and_why() {
    for (text, says) in [
        ("", "empty"),
        ("item ::= \"a\"", "no `root` rule"),
        ("root ::= item", "rule `item` is used but not defined"),
        ("root ::= \"a\"\nroot ::= \"b\"", "line 2 column 1: rule `root` is defined twice"),
        ("root ::= \"a", "line 1 column 12: expected `\"` to close the string"),
        ("root ::= [a-", "`]` to close the character class"),
        ("root ::= [z-a]", "end comes before its start"),
        ("root ::= (\"a\" | \"b\"", "`)` to close the group"),
        ("root ::= \"\\q\"", "unknown escape `\\q`"),
        ("root ::= \"\\u12\"", "4 hex digits"),
        ("root ::= \"\\x+1\"", "2 hex digits"),
        ("root ::= \"a\"{3,2}", "maximum is below its minimum"),
        ("root ::= \"a\"{2000}", "at most 1000"),
        ("root = \"a\"", "expected `::=` after the rule name `root`"),
        ("root ::= @", "unexpected '@'"),
        ("root ::= expr\nexpr ::= expr \"+\" term | term\nterm ::= [0-9]", "rule `expr` is left-recursive"),
        ("root ::= a\na ::= b \"x\"\nb ::= \"\" | a", "left-recursive"),
        ("root ::= \"a\" root", "rule `root` can never end"),
        ("root ::= [^\\x00-\\U0010FFFF]", "can never end"),
        (&((0..1100).map(|i| format!("r{i} ")).collect::<String>().replacen("r", "root ::= r", 1)
            + &(0..1100).map(|i| format!("\nr{i} ::= \"a\"{{1000}}")).collect::<String>()), "too large"),
    ] {
        match Grammar::compile(text) {
            Ok(_) => panic!("{text:?} compiled"),
            Err(e) => assert!(e.contains(says), "{text:?}: {e:?} does not say {says:?}"),
        }
    }
    // Right recursion, nullable starts in tail position, and rules across lines are fine.
    for text in ["root ::= \"a\" root | \"b\"", "root ::= x* \"b\"\nx ::= \"\" | \"a\"", "root ::=\n  \"a\"\n  | \"b\"\n\nother ::= \"c\""] {
        compile(text);
    }
}

#[test]
fn an_ambiguous_grammar_is_followed_to_a_bound_and_no_further() {
    // Each space doubles the stacks (which letter closes it): past `MAX_TOPS` the space is
    // refused, while the letters that close what is open still come.
    let g = compile("root ::= s\ns ::= \" \" s \"b\" | \" \" s \"c\" | \"\"");
    let mut at = g.start();
    let mut spaces = 0;
    while g.step(at, b' ') != DEAD {
        at = g.step(at, b' ');
        spaces += 1;
        assert!(spaces <= 13, "{spaces} spaces");
    }
    assert!(spaces >= 8, "refused after {spaces} spaces");
    assert!(takes(&g, &(" ".repeat(spaces) + &"bc".repeat(spaces / 2) + &"b".repeat(spaces % 2))));
    // Nullable calls nested 24 deep have 2^24 ways to start: refused when compiled.
    let mut text = String::from("root ::= r0\n");
    for i in 0..24 {
        text += &format!("r{i} ::= r{n} r{n} | \"\"\n", n = i + 1);
    }
    text += "r24 ::= \"x\" | \"\"";
    let e = Grammar::compile(&text).expect_err("compiled");
    assert!(e.contains("too ambiguous"), "{e}");
}

#[test]
fn a_long_repeated_string_is_called_not_copied() {
    let word = "abcdefghij".repeat(10);
    let g = compile(&format!("root ::= \"{word}\"{{1000}} (\"x\"{{100}}){{100}}"));
    // Copied, the word alone would be 100,000 elements.
    assert!(g.elems.len() < 5_000, "{} elements", g.elems.len());
    assert!(takes(&g, &(word.repeat(1000) + &"x".repeat(10_000))));
    assert!(!takes(&g, &(word.repeat(999) + &"x".repeat(10_000))));
    assert!(!takes(&g, &(word.repeat(1000) + &"x".repeat(9_999))));
}

#[test]
fn an_alternative_that_cannot_match_is_never_started() {
    let g = compile("root ::= \"a\" [] | \"b\"");
    assert_eq!(g.step(g.start(), b'a'), DEAD);
    assert!(takes(&g, "b"));
}

#[test]
fn nesting_is_bounded_and_long_chains_are_checked() {
    // Groups within groups recurse in the parser: 64 deep is fine, deeper a clear error (5,000
    // overflowed the server thread's stack).
    let nested = |depth: usize| format!("root ::= {}\"a\"{}", "(".repeat(depth), ")".repeat(depth));
    assert!(takes(&compile(&nested(64)), "a"));
    for depth in [65, 5000] {
        let e = Grammar::compile(&nested(depth)).expect_err("compiled");
        assert!(e.contains("nested more than 64 deep") && e.contains("line 1 column 74"), "{e}");
    }
    // 100,000 rules in a chain (a request's 3 MB grammar): the checks used to re-scan every
    // rule once per rule found, and search the chain once per call (quadratic: minutes of a
    // core, on after the client had gone). Each rule calling the next between two characters
    // compiles; each beginning with the next, and the last with the first, is left-recursive.
    let n = 100_000;
    let chain = |alt: &dyn Fn(usize) -> String, last: &str| {
        let mut text = String::from("root ::= r0\n");
        for i in 0..n {
            text += &format!("r{i} ::= {}\n", alt(i + 1));
        }
        text + &format!("r{n} ::= {last}")
    };
    let g = compile(&chain(&|next| format!("\"a\" r{next} \"b\" | \"x\""), "\"c\""));
    assert!(takes(&g, "aaxbb") && takes(&g, "x") && !takes(&g, "aaxb"));
    let e = Grammar::compile(&chain(&|next| format!("r{next} \"a\" | \"b\""), "r0 \"x\" | \"d\"")).expect_err("compiled");
    assert!(e.contains("rule `r0` is left-recursive"), "{e}");
    // The same length where no rule can end: every alternative needs the next rule.
    let mut text = String::from("root ::= r0\n");
    for i in 0..n {
        text += &format!("r{i} ::= \"a\" r{}\n", i + 1);
    }
    let e = Grammar::compile(&(text + &format!("r{n} ::= \"a\" r0"))).expect_err("compiled");
    assert!(e.contains("can never end"), "{e}");
}
