//! GBNF text (llama.cpp's grammar format, which vLLM's xgrammar reads too) into rules: each rule
//! a list of alternatives, each alternative a sequence of character classes and rule references.
//! Groups and repetitions become rules of their own (`x*` is `R ::= x R | ""`), so what comes out
//! is a plain context-free grammar.
//!
//! The syntax: `name ::= ...` rules (`root` is where the output starts), `"literal"` strings,
//! `[a-z0-9_]` / `[^"\\]` classes, `.` for any character, `( ... )` groups, `|` alternatives,
//! `*` `+` `?` `{m}` `{m,}` `{m,n}` repetitions, `#` comments to the end of the line. Escapes in
//! strings and classes: `\n \r \t \\ \" \[ \] \- \^ \xHH \uHHHH \UHHHHHHHH`. A rule goes on
//! across lines until the next `name ::=`.

use std::collections::HashMap;

/// A repetition's upper bound at most this (each copy is a rule).
const MAX_REPEAT: u32 = 1000;
/// Characters and rule calls in all, repetitions written out, at most this.
const MAX_ITEMS: usize = 1 << 20;
/// Groups inside one another at most this deep: the parser recurses into each, and a request's
/// `((((...))))` must not exhaust the thread's stack (5,000 did). Real grammars nest a few deep.
const MAX_NESTING: usize = 64;

/// One character: in one of `ranges` (inclusive code points), or with `negated` in none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Class {
    pub ranges: Vec<(u32, u32)>,
    pub negated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Item {
    Char(Class),
    Rule(usize),
}

/// The grammar's rules by index; `alts[r]` the alternatives of rule `r`.
#[derive(Debug)]
pub(super) struct Rules {
    pub names: Vec<String>,
    pub alts: Vec<Vec<Vec<Item>>>,
    pub root: usize,
}

/// Parses `text`; the error says where (line and column) and what is wrong.
pub(super) fn parse(text: &str) -> Result<Rules, String> {
    let chars: Vec<char> = text.chars().collect();
    let line_starts = std::iter::once(0).chain(chars.iter().enumerate().filter(|(_, &c)| c == '\n').map(|(i, _)| i + 1)).collect();
    let mut p = Parser { chars, line_starts, at: 0, names: Vec::new(), ids: HashMap::new(), alts: Vec::new(), defined: Vec::new(), items: 0, nesting: 0 };
    p.skip_space();
    if p.at == p.chars.len() {
        return Err("the grammar is empty: it needs a `root ::= ...` rule".into());
    }
    while p.at < p.chars.len() {
        let start = p.at;
        let name = p.name().ok_or_else(|| p.error("a rule name (`name ::= ...`)"))?;
        p.skip_space();
        if !p.eat_str("::=") {
            return Err(p.error(&format!("`::=` after the rule name `{name}`")));
        }
        let id = p.rule(&name);
        if p.defined[id] {
            p.at = start;
            return Err(p.error_at(&format!("rule `{name}` is defined twice")));
        }
        p.defined[id] = true;
        p.skip_space();
        let alts = p.alternatives(false)?;
        p.alts[id] = alts;
    }
    if let Some(id) = p.defined.iter().position(|d| !d) {
        return Err(format!("rule `{}` is used but not defined", p.names[id]));
    }
    let root = *p.ids.get("root").ok_or("the grammar has no `root` rule (where the output starts)")?;
    Ok(Rules { names: p.names, alts: p.alts, root })
}

struct Parser {
    chars: Vec<char>,
    /// Where each line begins, for `position`.
    line_starts: Vec<usize>,
    at: usize,
    names: Vec<String>,
    ids: HashMap<String, usize>,
    alts: Vec<Vec<Vec<Item>>>,
    defined: Vec<bool>,
    /// Characters and rule calls so far (`MAX_ITEMS`).
    items: usize,
    /// Groups open around the parser's position (`MAX_NESTING`).
    nesting: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        self.at += usize::from(hit);
        hit
    }

    fn eat_str(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        let hit = self.chars.len() >= self.at + n && self.chars[self.at..self.at + n].iter().copied().eq(s.chars());
        if hit {
            self.at += n;
        }
        hit
    }

    /// Whitespace (line breaks too) and `#` comments.
    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.at += 1;
                }
            } else if c.is_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.at += 1;
        }
        (self.at > start).then(|| self.chars[start..self.at].iter().collect())
    }

    /// Whether a new rule (`name ::=`) starts here.
    fn at_rule_start(&mut self) -> bool {
        let start = self.at;
        let hit = self.name().is_some() && {
            self.skip_space();
            self.eat_str("::=")
        };
        self.at = start;
        hit
    }

    /// The rule called `name`, made (not yet defined) on first sight.
    fn rule(&mut self, name: &str) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        self.ids.insert(name.to_string(), self.names.len());
        self.new_rule(name.to_string(), Vec::new(), false)
    }

    fn new_rule(&mut self, name: String, alts: Vec<Vec<Item>>, defined: bool) -> usize {
        self.names.push(name);
        self.alts.push(alts);
        self.defined.push(defined);
        self.names.len() - 1
    }

    /// A rule of its own for a group or a repetition, named after where it is.
    fn helper(&mut self, alts: Vec<Vec<Item>>) -> usize {
        let (line, column) = self.position(self.at);
        self.new_rule(format!("<line {line} column {column}>"), alts, true)
    }

    /// `a | b | ...` up to the end of the rule, or (`in_group`) the closing `)`.
    fn alternatives(&mut self, in_group: bool) -> Result<Vec<Vec<Item>>, String> {
        let mut alts = vec![self.sequence(in_group)?];
        while self.eat('|') {
            self.skip_space();
            alts.push(self.sequence(in_group)?);
        }
        if in_group && !self.eat(')') {
            return Err(self.error("`)` to close the group"));
        }
        Ok(alts)
    }

    fn sequence(&mut self, in_group: bool) -> Result<Vec<Item>, String> {
        let mut seq = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None | Some('|') => return Ok(seq),
                Some(')') if in_group => return Ok(seq),
                _ if !in_group && self.at_rule_start() => return Ok(seq),
                _ => {}
            }
            let atom = self.atom()?;
            let atom = self.repetition(atom)?;
            self.items += atom.len();
            if self.items > MAX_ITEMS {
                return Err(self.error_at(&format!("the grammar is too large: more than {MAX_ITEMS} characters and rule calls once its repetitions are written out")));
            }
            seq.extend(atom);
        }
    }

    fn atom(&mut self) -> Result<Vec<Item>, String> {
        let c = self.peek().expect("sequence() saw a character");
        match c {
            '"' => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    match self.peek() {
                        None | Some('\n') => return Err(self.error("`\"` to close the string")),
                        Some('"') => break,
                        _ => {
                            let c = self.char_in_literal()?;
                            items.push(Item::Char(Class { ranges: vec![(c, c)], negated: false }));
                        }
                    }
                }
                self.at += 1;
                Ok(items)
            }
            '[' => {
                self.at += 1;
                let negated = self.eat('^');
                let mut ranges = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(self.error("`]` to close the character class")),
                        Some(']') => break,
                        _ => {
                            let lo = self.char_in_literal()?;
                            let hi = if self.peek() == Some('-') && self.chars.get(self.at + 1).is_some_and(|&c| c != ']') {
                                self.at += 1;
                                self.char_in_literal()?
                            } else {
                                lo
                            };
                            if hi < lo {
                                return Err(self.error_at("a character range's end comes before its start"));
                            }
                            ranges.push((lo, hi));
                        }
                    }
                }
                self.at += 1;
                Ok(vec![Item::Char(Class { ranges, negated })])
            }
            '.' => {
                self.at += 1;
                Ok(vec![Item::Char(Class { ranges: Vec::new(), negated: true })])
            }
            '(' => {
                if self.nesting == MAX_NESTING {
                    return Err(self.error_at(&format!("groups are nested more than {MAX_NESTING} deep")));
                }
                self.at += 1;
                self.skip_space();
                self.nesting += 1;
                let alts = self.alternatives(true)?;
                self.nesting -= 1;
                Ok(vec![Item::Rule(self.helper(alts))])
            }
            _ => match self.name() {
                Some(name) => Ok(vec![Item::Rule(self.rule(&name))]),
                None => Err(self.error_at(&format!("unexpected {c:?}: expected a string, a class, `.`, `(`, or a rule name"))),
            },
        }
    }

    /// `atom` with the repetition after it, if any.
    fn repetition(&mut self, atom: Vec<Item>) -> Result<Vec<Item>, String> {
        let start = self.at;
        while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
            self.at += 1;
        }
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.at += 1;
                let min = self.number()?;
                self.skip_space();
                let max = if self.eat(',') {
                    self.skip_space();
                    if self.peek() == Some('}') { None } else { Some(self.number()?) }
                } else {
                    Some(min)
                };
                self.skip_space();
                if self.peek() != Some('}') {
                    return Err(self.error("`}` to close the repetition"));
                }
                if max.is_some_and(|max| max < min) {
                    return Err(self.error_at("a repetition's maximum is below its minimum"));
                }
                if max.unwrap_or(min) > MAX_REPEAT {
                    return Err(self.error_at(&format!("a repetition may be at most {MAX_REPEAT}")));
                }
                (min, max)
            }
            _ => {
                self.at = start;
                return Ok(atom);
            }
        };
        self.at += 1;
        // A string or a group repeated is called, not copied.
        let atom = if atom.len() == 1 { atom } else { vec![Item::Rule(self.helper(vec![atom]))] };
        let mut out: Vec<Item> = (0..min).flat_map(|_| atom.iter().cloned()).collect();
        match max {
            // x* : R ::= x R | ""
            None => {
                let r = self.helper(Vec::new());
                let mut again = atom;
                again.push(Item::Rule(r));
                self.alts[r] = vec![again, Vec::new()];
                out.push(Item::Rule(r));
            }
            // Up to k more: R_k ::= x R_(k-1) | "" (R_1 ::= x | "").
            Some(max) if max > min => {
                self.items += 2 * (max - min) as usize;
                let mut inner: Option<usize> = None;
                for _ in min..max {
                    let mut seq = atom.clone();
                    seq.extend(inner.map(Item::Rule));
                    inner = Some(self.helper(vec![seq, Vec::new()]));
                }
                out.extend(inner.map(Item::Rule));
            }
            Some(_) => {}
        }
        Ok(out)
    }

    fn number(&mut self) -> Result<u32, String> {
        self.skip_space();
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        let digits: String = self.chars[start..self.at].iter().collect();
        digits.parse().map_err(|_| self.error("a number in the repetition"))
    }

    /// One character of a string or a class, escapes read.
    fn char_in_literal(&mut self) -> Result<u32, String> {
        let c = self.peek().expect("caller checked");
        self.at += 1;
        if c != '\\' {
            return Ok(c as u32);
        }
        let e = self.peek().ok_or_else(|| self.error("an escaped character after `\\`"))?;
        self.at += 1;
        let hex = |p: &mut Self, n: usize| -> Result<u32, String> {
            let digits: String = p.chars.get(p.at..p.at + n).unwrap_or_default().iter().collect();
            let v = u32::from_str_radix(&digits, 16).ok().filter(|_| digits.len() == n && digits.chars().all(|c| c.is_ascii_hexdigit())).ok_or_else(|| p.error(&format!("{n} hex digits after `\\{e}`")))?;
            p.at += n;
            char::from_u32(v).map(|_| v).ok_or_else(|| p.error_at(&format!("\\{e}{digits} is not a Unicode character")))
        };
        Ok(match e {
            'n' => '\n' as u32,
            'r' => '\r' as u32,
            't' => '\t' as u32,
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            '\\' | '"' | '[' | ']' | '-' | '^' | '/' | '.' | '*' | '+' | '?' | '(' | ')' | '{' | '}' | '|' => e as u32,
            _ => {
                self.at -= 1;
                return Err(self.error_at(&format!("unknown escape `\\{e}`")));
            }
        })
    }

    fn position(&self, at: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= at);
        (line, at - self.line_starts[line - 1] + 1)
    }

    /// "line L column C: expected {what}".
    fn error(&self, what: &str) -> String {
        self.error_at(&format!("expected {what}"))
    }

    fn error_at(&self, message: &str) -> String {
        let (line, column) = self.position(self.at);
        format!("line {line} column {column}: {message}")
    }
}
