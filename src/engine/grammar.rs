//! A GBNF grammar (`structured_outputs.grammar`, `guided_grammar`, llama.cpp's `grammar`) as an
//! automaton over the output's bytes, built as the outputs need it.
//!
//! The rules (see [`parse`]) are laid out flat: each alternative a run of elements ending in
//! `End`. A parse in progress is a set of stacks, each the position of the next character class
//! to match with the positions to go back to after it (llama.cpp's grammar sampler keeps the same
//! sets); stacks share their tails, each frame interned once as a node (position, parent node),
//! and a call in tail position pushes no frame, so a repetition (`x*` is `R ::= x R | ""`) runs
//! in constant depth. A set of stacks (with the UTF-8 character being read, if any) is interned
//! as a state id, and each (state, byte) step is remembered: the vocabulary walk and the
//! sequences that share the grammar (one compiled grammar per text, `FormatCache`) revisit few
//! states. A byte is refused unless some character starting with it can come next, so an output
//! can always be finished: rules that can never end, and left recursion (which has no finite
//! set of stacks), are refused when the grammar is compiled.

mod check;
mod parse;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use parse::{Class, Item};

/// A state no output can be in: the byte is refused.
pub(in crate::engine) const DEAD: u32 = u32::MAX;
/// The parent of a bottom frame.
const NONE: u32 = u32::MAX;
/// Past this many bytes of tables the grammar is compiled afresh for later requests
/// (`is_stale`), so a long-running server's tables stay bounded.
const STALE_BYTES: usize = 32 << 20;
/// Past this many, no new state is made: the byte that needs one is refused (the output ends
/// sooner), so one request cannot grow the tables without bound.
const MAX_BYTES: usize = 512 << 20;
/// A state with more stacks than this (an ambiguous grammar, whose stack sets can double with
/// each character, `S ::= " " S "b" | " " S "c" | ""`) is not made: the byte is refused.
const MAX_TOPS: usize = 4096;
/// Frames one closure may visit (nullable calls nested deep can multiply them likewise).
const MAX_FRAMES: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
enum Elem {
    Char(u32),
    Rule(u32),
    End,
}

#[derive(Debug)]
pub struct Grammar {
    elems: Vec<Elem>,
    classes: Vec<Class>,
    /// Each rule's alternatives' first positions.
    starts: Vec<Vec<u32>>,
    /// The state before any output.
    start: u32,
    tables: Mutex<Tables>,
    /// The tables' size in bytes, roughly (read without the lock by `is_stale`).
    bytes: AtomicUsize,
}

#[derive(Debug, Default)]
struct Tables {
    /// Stack frames: (position, parent frame).
    nodes: Vec<(u32, u32)>,
    node_ids: HashMap<(u32, u32), u32>,
    states: Vec<State>,
    state_ids: HashMap<State, u32>,
    steps: HashMap<(u32, u8), u32>,
    bytes: usize,
}

/// The stacks' tops (each at a character class), whether the output may end here, and the
/// character being read: `left` more bytes after `partial`'s bits, which must end at `min` or
/// above (no overlong forms).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    tops: Box<[u32]>,
    accept: bool,
    partial: u32,
    left: u8,
    min: u32,
}

impl Grammar {
    /// Compiles GBNF `text`; the error says where and what is wrong.
    pub fn compile(text: &str) -> Result<Self, String> {
        let rules = parse::parse(text)?;
        let mut classes: Vec<Class> = Vec::new();
        let mut class_ids: HashMap<(Vec<(u32, u32)>, bool), u32> = HashMap::new();
        let mut elems = Vec::new();
        let mut starts = Vec::with_capacity(rules.alts.len());
        for alts in &rules.alts {
            let mut rule_starts = Vec::with_capacity(alts.len());
            // An alternative with a class that matches nothing can never be taken: dropped, so
            // that no output starts down it (a rule left with none is refused by `check`).
            for alt in alts.iter().filter(|alt| !alt.iter().any(|i| matches!(i, Item::Char(c) if c.normalized().is_empty()))) {
                rule_starts.push(elems.len() as u32);
                for item in alt {
                    elems.push(match item {
                        Item::Char(class) => {
                            let class = class.normalized();
                            let next = classes.len() as u32;
                            let id = *class_ids.entry((class.ranges.clone(), class.negated)).or_insert(next);
                            if id == next {
                                classes.push(class);
                            }
                            Elem::Char(id)
                        }
                        Item::Rule(r) => Elem::Rule(*r as u32),
                    });
                }
                elems.push(Elem::End);
            }
            starts.push(rule_starts);
        }
        let mut grammar = Self { elems, classes, starts, start: DEAD, tables: Mutex::new(Tables::default()), bytes: AtomicUsize::new(0) };
        grammar.check(&rules.names)?;
        let work = grammar.starts[rules.root].iter().map(|&s| (s, NONE)).collect();
        let mut t = Tables::default();
        let (tops, accept) = grammar.closure(&mut t, work).ok_or("the grammar is too ambiguous: its start has more parses than the parser follows")?;
        grammar.start = t.state(State { tops, accept, partial: 0, left: 0, min: 0 });
        grammar.bytes.store(t.bytes, Ordering::Relaxed);
        grammar.tables = Mutex::new(t);
        Ok(grammar)
    }

    /// The state before any output.
    pub(in crate::engine) fn start(&self) -> u32 {
        self.start
    }

    /// The state after byte `b`, or [`DEAD`].
    pub(in crate::engine) fn step(&self, at: u32, b: u8) -> u32 {
        if at == DEAD {
            return DEAD;
        }
        let mut t = self.tables.lock().expect("grammar tables");
        if let Some(&next) = t.steps.get(&(at, b)) {
            return next;
        }
        let next = self.compute_step(&mut t, at, b);
        t.steps.insert((at, b), next);
        t.bytes += 16;
        self.bytes.store(t.bytes, Ordering::Relaxed);
        next
    }

    /// Whether the output may end in state `at`.
    pub(in crate::engine) fn accepts(&self, at: u32) -> bool {
        at != DEAD && self.tables.lock().expect("grammar tables").states[at as usize].accept
    }

    /// Whether any *plain* text (see `constraint::Vocab`: whole characters, none of them a
    /// control character, `"`, `\\` or `<`) may come next in state `at`, ending in it again
    /// (inside a string of `json.gbnf`): the vocabulary walk then takes plain tokens whole.
    pub(in crate::engine) fn takes_any_plain_text(&self, at: u32) -> bool {
        if at == DEAD {
            return false;
        }
        let t = self.tables.lock().expect("grammar tables");
        let s = &t.states[at as usize];
        if s.left != 0 {
            return false;
        }
        // Every plain character leads to the same state if each top's class takes all of them
        // or none; then one of them tells which.
        let plain = [(0x20, 0x21), (0x23, 0x3b), (0x3d, 0x5b), (0x5d, 0x7e), (0x80, 0x10ffff)];
        let uniform = s.tops.iter().all(|&n| match self.elems[t.nodes[n as usize].0 as usize] {
            Elem::Char(c) => {
                let class = &self.classes[c as usize];
                plain.iter().all(|&(lo, hi)| !class.meets(lo, hi)) || plain.iter().all(|&(lo, hi)| class.covers(lo, hi))
            }
            _ => unreachable!("stack tops are at classes"),
        });
        if !uniform {
            return false;
        }
        drop(t);
        self.step(at, b'a') == at
    }

    /// Whether the tables have grown past their bound: later requests get a fresh compile.
    pub fn is_stale(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > STALE_BYTES
    }

    fn compute_step(&self, t: &mut Tables, at: u32, b: u8) -> u32 {
        let s = t.states[at as usize].clone();
        let (partial, left, min) = if s.left == 0 {
            match b {
                0x00..=0x7f => return self.read_char(t, &s.tops, b as u32),
                0xc2..=0xdf => (u32::from(b & 0x1f), 1, 0x80),
                0xe0..=0xef => (u32::from(b & 0x0f), 2, 0x800),
                0xf0..=0xf4 => (u32::from(b & 0x07), 3, 0x10000),
                _ => return DEAD,
            }
        } else if b & 0xc0 == 0x80 {
            (s.partial << 6 | u32::from(b & 0x3f), s.left - 1, s.min)
        } else {
            return DEAD;
        };
        if left == 0 {
            return if partial < min { DEAD } else { self.read_char(t, &s.tops, partial) };
        }
        // Only if some character that starts so can come next.
        let shift = 6 * u32::from(left);
        let (lo, hi) = ((partial << shift).max(min), ((partial << shift) | ((1 << shift) - 1)).min(0x10ffff));
        let possible = lo <= hi
            && s.tops.iter().any(|&n| match self.elems[t.nodes[n as usize].0 as usize] {
                Elem::Char(c) => self.classes[c as usize].meets(lo, hi),
                _ => unreachable!("stack tops are at classes"),
            });
        if !possible || t.bytes > MAX_BYTES {
            return DEAD;
        }
        t.state(State { tops: s.tops, accept: false, partial, left, min })
    }

    /// The state after character `c` from the stacks `tops`.
    fn read_char(&self, t: &mut Tables, tops: &[u32], c: u32) -> u32 {
        if char::from_u32(c).is_none() || t.bytes > MAX_BYTES {
            return DEAD;
        }
        let work: Vec<(u32, u32)> = tops
            .iter()
            .map(|&n| t.nodes[n as usize])
            .filter(|&(pos, _)| matches!(self.elems[pos as usize], Elem::Char(k) if self.classes[k as usize].matches(c)))
            .map(|(pos, parent)| (pos + 1, parent))
            .collect();
        let Some((tops, accept)) = self.closure(t, work) else {
            tracing::warn!("a grammar's parse has more stacks here than the parser follows ({MAX_TOPS} tops, {MAX_FRAMES} frames): the character is refused");
            return DEAD;
        };
        if tops.is_empty() && !accept {
            return DEAD;
        }
        t.state(State { tops, accept, partial: 0, left: 0, min: 0 })
    }

    /// Every stack the frames in `work` lead to before reading a character: their tops (sorted)
    /// and whether one of them ends the output; `None` past `MAX_TOPS` or `MAX_FRAMES`.
    fn closure(&self, t: &mut Tables, mut work: Vec<(u32, u32)>) -> Option<(Box<[u32]>, bool)> {
        let mut seen = HashSet::new();
        let (mut tops, mut accept) = (Vec::new(), false);
        while let Some((pos, parent)) = work.pop() {
            if !seen.insert((pos, parent)) {
                continue;
            }
            if seen.len() > MAX_FRAMES || tops.len() > MAX_TOPS {
                return None;
            }
            match self.elems[pos as usize] {
                Elem::Char(_) => tops.push(t.node(pos, parent)),
                Elem::Rule(r) => {
                    let back = pos + 1;
                    // A call in tail position returns straight to the caller's parent.
                    let parent = if matches!(self.elems[back as usize], Elem::End) { parent } else { t.node(back, parent) };
                    work.extend(self.starts[r as usize].iter().map(|&s| (s, parent)));
                }
                Elem::End if parent == NONE => accept = true,
                Elem::End => work.push(t.nodes[parent as usize]),
            }
        }
        tops.sort_unstable();
        tops.dedup();
        Some((tops.into(), accept))
    }
}

impl Tables {
    fn node(&mut self, pos: u32, parent: u32) -> u32 {
        let next = self.nodes.len() as u32;
        let id = *self.node_ids.entry((pos, parent)).or_insert(next);
        if id == next {
            self.nodes.push((pos, parent));
            self.bytes += 24;
        }
        id
    }

    fn state(&mut self, state: State) -> u32 {
        if let Some(&id) = self.state_ids.get(&state) {
            return id;
        }
        let id = self.states.len() as u32;
        self.bytes += 96 + 8 * state.tops.len();
        self.states.push(state.clone());
        self.state_ids.insert(state, id);
        id
    }
}

impl Class {
    /// Ranges sorted and merged.
    fn normalized(&self) -> Self {
        let mut ranges = self.ranges.clone();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Self { ranges: merged, negated: self.negated }
    }

    fn matches(&self, c: u32) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }

    fn is_empty(&self) -> bool {
        !self.meets(0, 0x10ffff)
    }

    /// Whether every character (not a surrogate) in `lo..=hi` matches; ranges merged.
    fn covers(&self, lo: u32, hi: u32) -> bool {
        let segments = [(lo, hi.min(0xd7ff)), (lo.max(0xe000), hi)];
        segments.iter().filter(|(a, b)| a <= b).all(|&(a, b)| {
            let inside = self.ranges.iter().any(|&(r0, r1)| r0 <= a && b <= r1);
            let outside = !self.ranges.iter().any(|&(r0, r1)| r0 <= b && a <= r1);
            if self.negated { outside } else { inside }
        })
    }

    /// Whether some character (not a surrogate) in `lo..=hi` matches; ranges merged.
    fn meets(&self, lo: u32, hi: u32) -> bool {
        let segments = [(lo, hi.min(0xd7ff)), (lo.max(0xe000), hi)];
        segments.iter().filter(|(a, b)| a <= b).any(|&(a, b)| {
            if !self.negated {
                return self.ranges.iter().any(|&(r0, r1)| r0 <= b && a <= r1);
            }
            // The first character from `a` that no range covers.
            let mut x = a;
            for &(r0, r1) in &self.ranges {
                if r1 < x {
                    continue;
                }
                if r0 > x {
                    break;
                }
                x = r1.saturating_add(1);
            }
            x <= b
        })
    }
}

#[cfg(test)]
mod tests;
