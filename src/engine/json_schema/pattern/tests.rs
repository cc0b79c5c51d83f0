use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::*;
use crate::engine::json_object::tests::Rng;

/// Whether `p` takes the whole of `s` (fed as its UTF-8 bytes, as the schema parser feeds a
/// string's decoded characters).
fn takes(p: &Pattern, s: &str) -> bool {
    let mut state = p.start();
    for &b in s.as_bytes() {
        state = p.step(state, b);
        if state == DEAD {
            return false;
        }
    }
    p.accepts(state)
}

fn format(f: &str) -> Pattern {
    Pattern::from_format(f).expect("a known format").expect("compiles")
}

const LABEL_63: &str = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk.com";
const LABEL_64: &str = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl.com";

#[test]
fn formats_take_what_they_name() {
    let cases: [(&str, &[&str], &[&str]); 8] = [
        ("date", &["2024-02-29", "1999-12-31", "2024-04-30"], &["2024-13-01", "2024-1-01", "24-01-01", "2024-01-32", "2024-01-01T", "2023-02-30", "2024-04-31"]),
        ("time", &["23:59:60Z", "00:00:00.123+05:30", "12:30:00z"], &["24:00:00Z", "12:30:00", "12:30Z", "12:60:00Z"]),
        ("date-time", &["2024-05-01T12:30:00Z", "2024-05-01t12:30:00.5-08:00"], &["2024-05-01 12:30:00Z", "2024-05-01T12:30:00"]),
        ("duration", &["P1D", "PT1H30M", "P1Y2M3DT4H5M6.5S", "P3W", "PT0S"], &["P", "PT", "P1DT", "1D", "P1H", "P1W2D"]),
        ("email", &["a@b.co", "first.last+tag@mail.example.org"], &["a@b", "@b.co", "a@.co", "a b@c.de", "a@b..co", ".a@b.co"]),
        ("hostname", &["localhost", "a-b.example.com", "x1", LABEL_63], &["-a.com", "a-.com", "a..b", "a_b.com", "", LABEL_64]),
        ("uuid", &["123e4567-e89b-12d3-a456-426614174000"], &["123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g"]),
        ("ipv4", &["0.0.0.0", "255.255.255.255", "10.1.2.3"], &["256.0.0.1", "1.2.3", "01.2.3.4", "1.2.3.4.5"]),
    ];
    for (name, good, bad) in cases {
        let p = format(name);
        for s in good {
            assert!(takes(&p, s), "{name}: {s:?} refused");
        }
        for s in bad {
            assert!(!takes(&p, s), "{name}: {s:?} taken");
        }
    }
    assert!(Pattern::from_format("uri").is_none(), "formats beyond the list are not guessed at");
}

/// Random strings over the addresses' alphabets: taken exactly when the standard library
/// parses them (IPv6 without an embedded IPv4 tail, which the format leaves out).
#[test]
fn address_formats_agree_with_the_standard_library() {
    let (v4, v6) = (format("ipv4"), format("ipv6"));
    let mut rng = Rng(7);
    let mut taken = [0usize; 2];
    for _ in 0..40_000 {
        let n = 1 + rng.below(16);
        let s: String = (0..n).map(|_| b"0123456789.."[rng.below(12)] as char).collect();
        let want = Ipv4Addr::from_str(&s).is_ok();
        assert_eq!(takes(&v4, &s), want, "ipv4 {s:?}");
        taken[0] += usize::from(want);
        let n = 1 + rng.below(24);
        let s: String = (0..n).map(|_| b"0aF9::::"[rng.below(8)] as char).collect();
        let want = Ipv6Addr::from_str(&s).is_ok();
        assert_eq!(takes(&v6, &s), want, "ipv6 {s:?}");
        taken[1] += usize::from(want);
    }
    assert!(taken[0] > 50 && taken[1] > 50, "{taken:?}");
    for s in ["::", "::1", "1::", "fe80::1:2", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::"] {
        assert!(takes(&v6, s) && Ipv6Addr::from_str(s).is_ok(), "{s}");
    }
}

#[test]
fn schema_patterns_match_anywhere_unless_anchored() {
    let p = |s: &str| Pattern::from_schema_pattern(s).unwrap();
    let (free, anchored) = (p("ab+c"), p("^ab+c$"));
    for (s, anywhere, whole) in [("abbc", true, true), ("xxabcxx", true, false), ("ac", false, false), ("", false, false)] {
        assert_eq!(takes(&free, s), anywhere, "{s}");
        assert_eq!(takes(&anchored, s), whole, "{s}");
    }
    // All matches count, not the leftmost-first one: `ab` is taken though `a` matched first.
    assert!(takes(&p("^(a|ab)$"), "ab"));
    // ECMA's classes are ASCII: `\d` is no Arabic-Indic digit, `\w` no accented letter.
    let digits = p(r"^\d+$");
    assert!(takes(&digits, "0123") && !takes(&digits, "١٢"));
    let word = p(r"^[\w-]+$");
    assert!(takes(&word, "a_b-9") && !takes(&word, "é"));
    assert!(takes(&p(r"^[^\d]+$"), "é!") && !takes(&p(r"^\D$"), "5"));
    assert!(takes(&p(r"\bcat\b"), "a cat!") && !takes(&p(r"\bcat\b"), "cats"));
    assert!(takes(&p("^[a[]+$"), "a[a"), "`[` inside a class is a literal");
    assert!(takes(&p("^é.$"), "é日"), "non-ASCII characters are characters");
    // ECMA's `.` takes no line terminator; `--` in a class is a range ending at `-`, not Rust's
    // set difference.
    let dot = p("^.$");
    assert!(takes(&dot, "a") && !takes(&dot, "\r") && !takes(&dot, "\n") && !takes(&dot, "\u{2028}"));
    let class = p("^[^#--x]$");
    assert!(!takes(&class, "x") && !takes(&class, "$") && takes(&class, "a"));
}

#[test]
fn what_no_written_string_can_finish_is_dead() {
    // A raw control character other than JSON's short escapes cannot be written (no `\u`).
    assert!(Pattern::from_schema_pattern("^\\x01$").unwrap_err().contains("matches no string"));
    let p = Pattern::from_schema_pattern("^(a\\x01|ab)$").unwrap();
    let a = p.step(p.start(), b'a');
    assert_ne!(a, DEAD);
    assert_eq!(p.step(a, 0x01), DEAD, "the path through U+0001 is pruned");
    assert!(p.accepts(p.step(a, b'b')));
    // A newline can be written (as `\n`).
    assert!(takes(&Pattern::from_schema_pattern("^a\\nb$").unwrap(), "a\nb"));
}

#[test]
fn shortest_counts_characters_still_needed() {
    // A long chain (each state settled by the search in one pass).
    let chain = Pattern::from_schema_pattern("^(?:a|[b-y]){3000}z$").unwrap();
    assert_eq!(chain.shortest(chain.start()), 3001);
    let uuid = format("uuid");
    assert_eq!(uuid.shortest(uuid.start()), 36);
    let p = Pattern::from_schema_pattern("^日本+$").unwrap();
    assert_eq!(p.shortest(p.start()), 2, "characters, not bytes");
    let mid = p.step(p.start(), "日".as_bytes()[0]);
    assert_eq!(p.shortest(mid), 1, "the rest of 日 costs nothing, 本 one");
}

#[test]
fn unsupported_syntax_is_refused() {
    for (pattern, expected) in [("(?=a)b", "cannot be used"), ("(a)\\1", "cannot be used"), ("[]", "empty character class"), ("a\\", "lone backslash"), ("[\\D]", "inside a character class")] {
        let err = Pattern::from_schema_pattern(pattern).unwrap_err();
        assert!(err.contains(expected), "{pattern}: {err}");
    }
}
