//! `pattern` and `format` on strings: a string's characters held to a regular expression.
//!
//! The expression becomes a DFA (regex-automata), read out into a table of the states a string
//! can reach, over the DFA's byte classes, keeping only the states from which some string the
//! output can still write is accepted: a byte that would leave them is refused, so a string
//! begun under a pattern can always be finished. The bytes fed are the string's decoded
//! characters as UTF-8 (an escape like `\n` feeds the byte it stands for; `\u` escapes are not
//! taken, every character can be written as itself).

use std::collections::{HashMap, VecDeque};

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::nfa::thompson;
use regex_automata::util::{start, syntax};
use regex_automata::{Anchored, MatchKind};

use crate::engine::json_object::Escape;

/// A state index of a [`Pattern`]; [`DEAD`] for no state.
pub(in crate::engine) type PatState = u16;
pub(in crate::engine) const DEAD: PatState = PatState::MAX;

/// States a pattern may have (they index the table as `u16`s, [`DEAD`] excluded).
const MAX_STATES: usize = 4096;
/// States a list of choices may have: its DFA is a trie of their characters (~1 state a byte).
const MAX_CHOICE_STATES: usize = 32768;
/// Memory the NFA, and then the DFA, may take while they are built (`a{1000000000}` would
/// otherwise build a billion NFA states before the DFA's limit is looked at).
const BUILD_LIMIT: usize = 8 << 20;

/// Characters a decoded string can hold: anything from U+0020 up, and the control characters
/// JSON has short escapes for (`\b`, `\t`, `\n`, `\f`, `\r`).
fn writable(b: u8) -> bool {
    b >= 0x20 || matches!(b, 0x08 | 0x09 | 0x0A | 0x0C | 0x0D)
}

/// Which bytes the text held to a pattern can hold.
#[derive(Clone, Copy)]
enum Text {
    /// A JSON string's decoded characters ([`writable`]).
    JsonString,
    /// Output as written: any byte.
    Output,
}

impl Text {
    fn holds(self, b: u8) -> bool {
        match self {
            Self::JsonString => writable(b),
            Self::Output => true,
        }
    }
}

/// Whether byte `b` begins a character (an ASCII byte or a UTF-8 lead byte).
pub(super) fn begins_char(b: u8) -> bool {
    !(0x80..0xC0).contains(&b)
}

#[derive(Debug)]
pub(in crate::engine) struct Pattern {
    class: [u8; 256],
    classes: usize,
    /// `next[state * classes + class]`: the state after a byte of that class, or [`DEAD`].
    next: Vec<PatState>,
    /// Whether the string may end in each state.
    accepts: Vec<bool>,
    /// Per state, the fewest characters still needed for the string to be accepted.
    shortest: Vec<u32>,
}

impl Pattern {
    /// A JSON Schema `pattern` (ECMA-262 syntax, matched anywhere in the string unless anchored
    /// with `^` / `$`).
    pub fn from_schema_pattern(pattern: &str) -> Result<Self, String> {
        let rust = ecma_to_rust(pattern)?;
        // Alone first: an unbalanced `)` would otherwise close the group it is wrapped in.
        syntax::parse(&rust).map_err(|e| format!("cannot be used: {e}"))?;
        Self::build(&format!("(?s:.)*(?:{rust})(?s:.)*"), Text::JsonString, MAX_STATES)
    }

    /// A guided-decoding regex (`structured_outputs.regex`): a schema `pattern`'s syntax,
    /// matched against the whole output (as xgrammar and Outlines match it for vLLM).
    pub(in crate::engine) fn from_output_regex(regex: &str) -> Result<Self, String> {
        let rust = ecma_to_rust(regex)?;
        // Not wrapped: a whole-output match needs no group (and `(?x)`'s comments would swallow
        // its closing parenthesis).
        Self::build(&rust, Text::Output, MAX_STATES)
    }

    /// Exactly one of `choices` (`structured_outputs.choice`), each taken literally.
    pub(in crate::engine) fn from_choices(choices: &[String]) -> Result<Self, String> {
        Self::build(&choices.iter().map(|c| literal(c)).collect::<Vec<_>>().join("|"), Text::Output, MAX_CHOICE_STATES)
    }

    /// A JSON Schema `format` among those OpenAI's strict mode lists; `None` for any other.
    pub fn from_format(format: &str) -> Option<Result<Self, String>> {
        format_regex(format).map(|r| Self::build(&r, Text::JsonString, MAX_STATES))
    }

    /// `regex` (Rust syntax) matched against the whole string. (`MatchKind::All`: a
    /// leftmost-first DFA would drop `ab` from `a|ab` once `a` had matched.)
    /// (At most `max_states` states, over the bytes `text` can hold.)
    fn build(regex: &str, text: Text, max_states: usize) -> Result<Self, String> {
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::All)
                    .start_kind(StartKind::Anchored)
                    .determinize_size_limit(Some(BUILD_LIMIT))
                    .dfa_size_limit(Some(BUILD_LIMIT)),
            )
            .syntax(syntax::Config::new().unicode(true).utf8(true))
            .thompson(thompson::Config::new().nfa_size_limit(Some(BUILD_LIMIT)))
            .build(regex)
            .map_err(|e| format!("cannot be used: {e}"))?;
        let start = dfa.start_state(&start::Config::new().anchored(Anchored::Yes)).map_err(|e| format!("cannot be used: {e}"))?;
        let mut class = [0u8; 256];
        for b in 0..=255u8 {
            class[b as usize] = dfa.byte_classes().get(b);
        }
        let classes = dfa.byte_classes().alphabet_len();
        // A representative byte per class among those the text can hold, if it has one.
        let mut sample: Vec<Option<u8>> = vec![None; classes];
        for b in (0..=255u8).filter(|&b| text.holds(b)) {
            sample[class[b as usize] as usize].get_or_insert(b);
        }
        // Every state reachable from the start by such bytes, numbered in visiting order.
        let mut index: HashMap<_, usize> = HashMap::from([(start, 0)]);
        let mut ids = vec![start];
        let mut next = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let id = ids[i];
            for &b in &sample {
                let to = b.map(|b| dfa.next_state(id, b)).filter(|&to| !dfa.is_dead_state(to) && !dfa.is_quit_state(to));
                next.push(match to {
                    Some(to) => *index.entry(to).or_insert_with(|| {
                        ids.push(to);
                        ids.len() - 1
                    }),
                    None => usize::MAX,
                });
            }
            if ids.len() > max_states {
                return Err(format!("is too complex (more than {max_states} states)"));
            }
            i += 1;
        }
        let accepts: Vec<bool> = ids.iter().map(|&id| dfa.is_match_state(dfa.next_eoi_state(id))).collect();
        let shortest = shortest_to_accept(&next, classes, &accepts, &class, text);
        if shortest[0] == u32::MAX {
            return Err("matches no string".into());
        }
        // Bytes into states that can no longer reach an accepted end are refused.
        let next = next.into_iter().map(|n| if n == usize::MAX || shortest[n] == u32::MAX { DEAD } else { n as PatState }).collect();
        Ok(Self { class, classes, next, accepts, shortest })
    }

    pub(in crate::engine) fn start(&self) -> PatState {
        0
    }

    /// The state after decoded byte `b`, or [`DEAD`].
    pub(in crate::engine) fn step(&self, s: PatState, b: u8) -> PatState {
        self.next[s as usize * self.classes + self.class[b as usize] as usize]
    }

    pub(in crate::engine) fn accepts(&self, s: PatState) -> bool {
        self.accepts[s as usize]
    }

    /// The fewest characters that finish an accepted string from `s`.
    pub fn shortest(&self, s: PatState) -> u32 {
        self.shortest[s as usize]
    }
}

/// Per state, the fewest characters (bytes that begin one) on a path of bytes `text` holds to an
/// accepting state; `u32::MAX` where there is none. A breadth-first search back from the
/// accepting states, edges costing 0 or 1 (linear in the table).
fn shortest_to_accept(next: &[usize], classes: usize, accepts: &[bool], class: &[u8; 256], text: Text) -> Vec<u32> {
    // The cheapest byte of each class: 0 if a continuation byte is among them.
    let mut cost = vec![u32::MAX; classes];
    for b in (0..=255u8).filter(|&b| text.holds(b)) {
        let c = &mut cost[class[b as usize] as usize];
        *c = (*c).min(u32::from(begins_char(b)));
    }
    let states = accepts.len();
    let mut into: Vec<Vec<(usize, u32)>> = vec![Vec::new(); states];
    for s in 0..states {
        for c in (0..classes).filter(|&c| cost[c] != u32::MAX) {
            let to = next[s * classes + c];
            if to != usize::MAX {
                into[to].push((s, cost[c]));
            }
        }
    }
    let mut shortest = vec![u32::MAX; states];
    let mut queue: VecDeque<usize> = (0..states).filter(|&s| accepts[s]).collect();
    queue.iter().for_each(|&s| shortest[s] = 0);
    while let Some(to) = queue.pop_front() {
        for &(from, c) in &into[to] {
            let via = shortest[to] + c;
            if via < shortest[from] {
                shortest[from] = via;
                if c == 0 { queue.push_front(from) } else { queue.push_back(from) }
            }
        }
    }
    shortest
}

/// `text` as a regex that matches it alone: every character regex syntax gives a meaning
/// escaped.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Rewrites an ECMA-262 pattern for Rust's regex syntax where the two read the same text
/// differently: `\d` and `\w` are ASCII classes there (Unicode ones in Rust), `\b` an ASCII
/// word boundary (a backspace inside a class), `.` excludes every line terminator, and `[`,
/// `&`, `~` and a second `-` in a row inside a class are literal (Rust's nested classes and set
/// operations). What Rust does not have (look-around, back-references) fails to compile after.
fn ecma_to_rust(p: &str) -> Result<String, String> {
    let mut out = String::with_capacity(p.len() + 16);
    let mut in_class = false;
    let mut dash = false;
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        let after_dash = std::mem::replace(&mut dash, in_class && c == '-');
        match c {
            '\\' => {
                let Some(e) = chars.next() else { return Err("ends in a lone backslash".into()) };
                let piece = match (e, in_class) {
                    ('d', false) => "[0-9]",
                    ('d', true) => "0-9",
                    ('w', false) => "[0-9A-Za-z_]",
                    ('w', true) => "0-9A-Za-z_",
                    ('D', false) => "[^0-9]",
                    ('W', false) => "[^0-9A-Za-z_]",
                    ('D' | 'W', true) => return Err(format!("`\\{e}` inside a character class is not supported")),
                    ('b', false) => r"(?-u:\b)",
                    ('B', false) => r"(?-u:\B)",
                    ('b', true) => r"\x08",
                    _ => {
                        out.push('\\');
                        out.push(e);
                        continue;
                    }
                };
                out.push_str(piece);
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // A `]` or `^]` right after the opening bracket: ECMA's empty class or a
                // literal `]` in Rust; neither is worth supporting.
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().expect("peeked"));
                }
                if chars.peek() == Some(&']') {
                    return Err("an empty character class (`[]` or `[^]`) is not supported".into());
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '-' if after_dash => {
                dash = false;
                out.push_str("\\-");
            }
            '[' | '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '.' if !in_class => out.push_str("[^\\n\\r\\u{2028}\\u{2029}]"),
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// The formats of OpenAI's strict mode, as regexes over the whole string (RFC 3339 dates and
/// times, ISO 8601 durations, RFC 4122 UUIDs; emails and hostnames by their usual ASCII shape,
/// labels of at most 63 characters; a hostname's 253-character total is not checked).
fn format_regex(format: &str) -> Option<String> {
    // Days by month (February 29 in any year).
    const DATE: &str = "[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-9]))";
    const TIME: &str = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
    const LABEL: &str = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    const OCTET: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    const H: &str = "[0-9A-Fa-f]{1,4}";
    Some(match format {
        "date" => DATE.to_string(),
        "time" => TIME.to_string(),
        "date-time" => format!("{DATE}[Tt]{TIME}"),
        "duration" => {
            let n = "[0-9]+";
            let secs = format!("{n}(?:\\.{n})?S");
            let date = format!("(?:{n}Y(?:{n}M)?(?:{n}D)?|{n}M(?:{n}D)?|{n}D)");
            let time = format!("T(?:{n}H(?:{n}M)?(?:{secs})?|{n}M(?:{secs})?|{secs})");
            format!("P(?:{n}W|{date}(?:{time})?|{time})")
        }
        "email" => format!("[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]+(?:\\.[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]+)*@{LABEL}(?:\\.{LABEL})+"),
        "hostname" => format!("{LABEL}(?:\\.{LABEL})*"),
        "ipv4" => format!("{OCTET}(?:\\.{OCTET}){{3}}"),
        "ipv6" => [
            format!("(?:{H}:){{7}}{H}"),
            format!("(?:{H}:){{1,7}}:"),
            format!("(?:{H}:){{1,6}}:{H}"),
            format!("(?:{H}:){{1,5}}(?::{H}){{1,2}}"),
            format!("(?:{H}:){{1,4}}(?::{H}){{1,3}}"),
            format!("(?:{H}:){{1,3}}(?::{H}){{1,4}}"),
            format!("(?:{H}:){{1,2}}(?::{H}){{1,5}}"),
            format!("{H}:(?::{H}){{1,6}}"),
            format!(":(?:(?::{H}){{1,7}}|:)"),
        ]
        .join("|"),
        "uuid" => "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}".to_string(),
        _ => return None,
    })
}

/// The bytes JSON's short escapes stand for (after `\\`): `"`, `\\`, `/`, b, f, n, r, t.
fn unescaped(b: u8) -> Option<u8> {
    Some(match b {
        b'"' | b'\\' | b'/' => b,
        b'b' => 0x08,
        b'f' => 0x0C,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        _ => return None,
    })
}

/// Byte `b` of a string held to `pattern`, whose match is at `pat` (the string's characters
/// `counted` with this byte's, at most `max`): the match's next state, or `None` if `b` cannot
/// come. A character's bytes go to the pattern as written, an escape's as the byte it stands
/// for; a backslash only where some escape could follow, and no `\u` escapes.
pub(super) fn pattern_step(pattern: &Pattern, pat: PatState, escape: Escape, b: u8, counted: u32, max: u32) -> Option<PatState> {
    let fits = |next: PatState| next != DEAD && counted.saturating_add(pattern.shortest(next)) <= max;
    match (escape, b) {
        (Escape::None, b'"') => Some(pat),
        (Escape::None, b'\\') => b"\"\\/bfnrt".iter().any(|&e| fits(pattern.step(pat, unescaped(e).expect("an escape")))).then_some(pat),
        (Escape::None, _) => Some(pattern.step(pat, b)).filter(|&n| fits(n)),
        (Escape::Backslash, _) => Some(pattern.step(pat, unescaped(b)?)).filter(|&n| fits(n)),
        (Escape::Hex { .. }, _) => None,
    }
}

/// The formats [`Pattern::from_format`] knows, for error messages.
pub(super) const FORMATS: &str = "date-time, date, time, duration, email, hostname, ipv4, ipv6, uuid";

#[cfg(test)]
mod tests;
