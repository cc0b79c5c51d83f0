//! `response_format: {"type": "json_schema", "json_schema": {"schema": ...}}`: the output is held
//! to a JSON object valid under the schema, byte by byte ([`SchemaState`], driven like
//! `super::json_object::JsonState` by `super::constraint`).
//!
//! The subset is what OpenAI's strict mode and pydantic models use: `type` (one or a list),
//! `properties` + `required` (keys in any order, each at most once, no others; `}` only once
//! every required key is written), `additionalProperties` false or true (no extra keys are
//! written either way) or a schema without `properties` (a map), `items` with `minItems` /
//! `maxItems`, `minLength` / `maxLength` (in characters), `pattern` and `format`
//! ([`pattern`]), `minimum` / `maximum`, their exclusive forms and `multipleOf` ([`number`]), `enum`,
//! `const`, `anyOf` / `oneOf` whose alternatives start differently (`{`, `[`, a string, a
//! number, a boolean, null: `Optional[X]` is `anyOf: [X, {type: null}]`) or are objects
//! ([`Node::Objects`]: pydantic's unions of models, discriminated or not), `allOf` of one
//! schema, `$ref` into `$defs` / `definitions` (recursion too), and the annotations `title`,
//! `description`, `default`, `examples`. Anything else (`propertyNames`, `minProperties`, ...) is
//! refused when the request comes, naming the keyword and where it is: the output would not
//! be held to it. The root must be an object.

use serde_json::Value;

use super::constraint::{ByteParser, MaskCache};
use super::json_object::{literal_step, number_step, string_step, whitespace_step, Escape, Number, Step, StringStep};
use super::thinking::ThinkingState;
use number::{Bounded, Range};
use pattern::{pattern_step, PatState, Pattern};

/// Open containers in one output.
const MAX_DEPTH: usize = 12;
/// Properties of one object, values of one enum (bits of a `u64`).
const MAX_CHOICES: usize = 64;
/// Bytes of a key or of one enum value's JSON text.
const MAX_NAME_BYTES: usize = 255;

type NodeId = u16;

/// In `Mode::Str`, for a string without length limits: every such string parses alike.
const UNLIMITED: NodeId = NodeId::MAX;

#[derive(Debug)]
enum Node {
    Object { props: Vec<(Box<[u8]>, NodeId)>, required: u64 },
    /// `additionalProperties: {schema}` without `properties`: any keys, each with a value of
    /// `values` (a repeated key is not refused).
    Map { values: NodeId },
    /// `minItems` / `maxItems`.
    Array { items: NodeId, min: u32, max: u32 },
    /// `minLength` / `maxLength`, in characters (an escape is one); `pattern` / `format` (an
    /// index into `Schema::patterns`).
    String { min: u32, max: u32, pattern: Option<u16> },
    /// `range`: `minimum` / `maximum`, their exclusive forms and `multipleOf`.
    Number { integer: bool, range: Option<Range> },
    Boolean,
    Null,
    /// The allowed values, each as its compact JSON text. `tags` (empty for a plain `enum`):
    /// for a property of [`Node::Objects`] whose alternatives allow different values, which
    /// alternatives allow each value.
    Enum { values: Vec<Box<[u8]>>, tags: Vec<u64> },
    /// Two or more objects of one `anyOf` / `oneOf`, read as one object: a key is one some
    /// alternative still open has (and, where alternatives give it different schemas, one
    /// whose open alternatives agree on it), and `}` closes once one alternative has its
    /// required keys. `required` is per alternative, over `keys`.
    Objects { alts: Vec<NodeId>, keys: Vec<UnionKey>, required: Vec<u64> },
    /// Alternatives that no first byte could start twice.
    Union(Vec<NodeId>),
    /// A `$ref`, while compiling: the node it names (none are left after).
    Alias(NodeId),
}

/// A property of [`Node::Objects`]: its name, the alternatives that have it, and its value's
/// node for each group of them (one group where they agree, or where it is an enum in each,
/// merged into one whose values narrow the alternatives; more where a discriminator must
/// first narrow them to one group).
#[derive(Debug)]
struct UnionKey {
    name: Box<[u8]>,
    has: u64,
    groups: Vec<(u64, NodeId)>,
}

impl UnionKey {
    /// The value's node if the open alternatives `alive` that have this key agree on one.
    fn value_for(&self, alive: u64) -> Option<NodeId> {
        let mut open = self.groups.iter().filter(|(alts, _)| alts & alive != 0);
        match (open.next(), open.next()) {
            (Some(&(_, node)), None) => Some(node),
            _ => None,
        }
    }
}

/// A compiled schema and the masks found for it (shared by a request's `n` sequences).
#[derive(Debug)]
pub struct Schema {
    nodes: Vec<Node>,
    /// Per node, the fewest containers a value of it must open to be complete (`u8::MAX`: more
    /// than the parser holds). The parser only starts a value that fits in the levels left, so
    /// every output it accepts can still be completed.
    need: Vec<u8>,
    root: NodeId,
    /// The `pattern`s and `format`s strings are held to.
    patterns: Vec<Pattern>,
    pub(super) masks: MaskCache<SchemaState>,
    /// Masks while thinking before the held object (`super::thinking`).
    pub(super) thinking_masks: MaskCache<ThinkingState>,
}

impl Schema {
    /// Compiles `schema`; the error says which keyword at which JSON pointer is the problem.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let compile::Compiled { nodes, need, root, patterns } = compile::compile(schema)?;
        Ok(Self { nodes, need, root, patterns, masks: MaskCache::with_capacity(256), thinking_masks: MaskCache::with_capacity(16) })
    }

    pub(super) fn start(&self) -> SchemaState {
        SchemaState { schema: self as *const Schema as usize, mode: Mode::Value(self.root), frames: [Frame::default(); MAX_DEPTH], depth: 0, whitespace: 0 }
    }
}

/// Where a schema-held output's parse stands. `Copy`; refers to its [`Schema`] by address,
/// which the sequence keeps alive (an `Arc`) for as long as the state is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SchemaState {
    schema: usize,
    mode: Mode,
    frames: [Frame; MAX_DEPTH],
    depth: u8,
    whitespace: u8,
}

/// An open container: its node, for an object the properties already written, and for
/// [`Node::Objects`] the alternatives it can still be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Frame {
    node: NodeId,
    seen: u64,
    alive: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// A value of this node (whitespace first).
    Value(NodeId),
    /// After `[`: a value of the items node, or `]`.
    ValueOrClose(NodeId),
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// Inside a key: the properties it can still be, `read` bytes in.
    KeyName { candidates: u64, read: u8 },
    /// After a key: `:`, then the value of property `prop`.
    Colon { prop: u8 },
    /// Inside a map's key.
    MapKey { escape: Escape, utf8_left: u8 },
    /// After a map's key: `:`, then a value.
    MapColon,
    AfterValue,
    /// Inside a string value of `node`, `chars` characters in; `pat`: where its pattern's
    /// match stands (0 without one).
    Str { node: NodeId, escape: Escape, utf8_left: u8, chars: u32, pat: PatState },
    Number { part: Number, integer: bool },
    /// Inside a number of `node`, which has bounds.
    Bounded { node: NodeId, num: Bounded },
    Literal { which: u8, matched: u8 },
    /// Inside an enum value: the values it can still be, `read` bytes in.
    Enum { node: NodeId, candidates: u64, read: u8 },
    Done,
}

impl SchemaState {
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
    }

    /// A fresh parse under the same schema.
    pub(super) fn restart(&self) -> Self {
        self.schema().start()
    }

    /// Node `id` of this state's schema.
    fn node<'s>(&self, id: NodeId) -> &'s Node {
        &self.schema().nodes[id as usize]
    }

    /// This state's schema. Not tied to `&self`: the parse changes `self` while it reads nodes.
    fn schema<'s>(&self) -> &'s Schema {
        // SAFETY: `Schema::start` set the address of a schema that the sequence holds in an
        // `Arc` beside every state derived from it (`Constraint::Schema`), and the vocabulary
        // walk reads states only while the constraint that owns that `Arc` is borrowed.
        unsafe { &*(self.schema as *const Schema) }
    }

    fn top(&self) -> Frame {
        self.frames[self.depth as usize - 1]
    }

    /// Whether a value of `node` can start here and still be completed in the levels left.
    fn fits(&self, node: NodeId) -> bool {
        self.depth as usize + self.schema().need[node as usize] as usize <= MAX_DEPTH
    }

    /// For the innermost array (its frame's `seen` counts the items begun, if counted): whether
    /// it holds `minItems` already, and whether it may take another item.
    fn array_may_close(&self) -> bool {
        let Node::Array { min, .. } = self.node(self.top().node) else { unreachable!("an array frame") };
        self.top().seen >= u64::from(*min)
    }

    /// Whether the innermost array counts its items: only under `minItems` / `maxItems`, since
    /// the count is part of the state (without, every item's states repeat the first one's, and
    /// their masks are cached once).
    fn array_counted(&self) -> bool {
        let Node::Array { min, max, .. } = self.node(self.top().node) else { unreachable!("an array frame") };
        *min > 0 || *max < u32::MAX
    }

    /// Keeps an array's item count only as far as its limits look: without `maxItems` a count
    /// past `minItems` changes no mask, so it stops there (and the states repeat).
    fn clamp_count(&mut self, frame: usize) {
        let Node::Array { min, max, .. } = self.node(self.frames[frame].node) else { unreachable!("an array frame") };
        if *max == u32::MAX {
            self.frames[frame].seen = self.frames[frame].seen.min(u64::from(*min));
        }
    }

    fn array_may_grow(&self) -> bool {
        let Node::Array { max, .. } = self.node(self.top().node) else { unreachable!("an array frame") };
        self.top().seen < u64::from(*max)
    }

    /// The properties of the innermost object not yet written whose values fit.
    fn open_props(&self, props: &[(Box<[u8]>, NodeId)]) -> u64 {
        let unseen = !self.top().seen & low_bits(props.len());
        props.iter().enumerate().filter(|&(i, (_, p))| unseen >> i & 1 == 1 && self.fits(*p)).fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The keys of the innermost [`Node::Objects`] not yet written that an alternative still
    /// open has, and whose values fit.
    fn open_keys(&self, keys: &[UnionKey]) -> u64 {
        let (seen, alive) = (self.top().seen, self.top().alive);
        keys.iter().enumerate().filter(|&(i, k)| seen >> i & 1 == 0 && k.value_for(alive).is_some_and(|v| self.fits(v))).fold(0, |m, (i, _)| m | 1 << i)
    }

    fn step(&mut self, b: u8) -> bool {
        match self.mode {
            Mode::Str { node, escape, utf8_left, chars, pat } => {
                let (min, max, pattern) = match node {
                    UNLIMITED => (0, u32::MAX, None),
                    _ => match *self.node(node) {
                        Node::String { min, max, pattern } => (min, max, pattern.map(|p| &self.schema().patterns[p as usize])),
                        _ => unreachable!("a string mode holds a string node"),
                    },
                };
                // A character begins: a plain byte, a UTF-8 lead byte or a backslash. The count is
                // part of the state, so it is kept only as far as the limits look: without any,
                // every position in every string is one state, and its mask is cached once.
                let begins = escape == Escape::None && utf8_left == 0 && b != b'"';
                let counted = chars + u32::from(begins);
                let chars = if max == u32::MAX { counted.min(min) } else { counted };
                let pat = match pattern {
                    Some(p) => match pattern_step(p, pat, escape, b, counted, max) {
                        Some(pat) => pat,
                        None => return false,
                    },
                    None => pat,
                };
                self.mode = match string_step(escape, utf8_left, b) {
                    StringStep::Refused => return false,
                    StringStep::Inside(..) if counted > max => return false,
                    StringStep::Inside(escape, utf8_left) => Mode::Str { node, escape, utf8_left, chars, pat },
                    StringStep::Closed if counted < min || pattern.is_some_and(|p| !p.accepts(pat)) => return false,
                    StringStep::Closed => Mode::AfterValue,
                };
                true
            }
            Mode::Number { part, integer } => self.apply(number_step(part, b, integer), |part| Mode::Number { part, integer }, Some(b)),
            Mode::Bounded { node, num } => {
                let Node::Number { integer, range: Some(range) } = self.node(node) else { unreachable!("a bounded number's node") };
                self.apply(num.step(b, range, *integer), |num| Mode::Bounded { node, num }, Some(b))
            }
            Mode::Literal { which, matched } => self.apply(literal_step(which, matched, b), |matched| Mode::Literal { which, matched }, None),
            Mode::Enum { node, candidates, read } => {
                let Node::Enum { values, tags } = self.node(node) else { unreachable!("an enum mode holds an enum node") };
                let next = matching(values.iter().map(|v| &v[..]), candidates, read as usize, b);
                if next != 0 {
                    self.mode = Mode::Enum { node, candidates: next, read: read + 1 };
                    return true;
                }
                // A value ended (a number cannot tell before the byte after it); a tagged one
                // narrows its object's alternatives to those that allow it.
                match values.iter().enumerate().position(|(i, v)| candidates >> i & 1 == 1 && v.len() == read as usize) {
                    Some(i) => {
                        if let Some(tag) = tags.get(i) {
                            self.frames[self.depth as usize - 1].alive &= tag;
                        }
                        self.mode = Mode::AfterValue;
                        self.step(b)
                    }
                    None => false,
                }
            }
            Mode::KeyName { candidates, read } => {
                let object = self.node(self.top().node);
                if b == b'"' {
                    return match (0..key_count(object)).position(|i| candidates >> i & 1 == 1 && key_name(object, i).len() == read as usize) {
                        Some(prop) => {
                            self.mode = Mode::Colon { prop: prop as u8 };
                            true
                        }
                        None => false,
                    };
                }
                let next = matching((0..key_count(object)).map(|i| key_name(object, i)), candidates, read as usize, b);
                self.mode = Mode::KeyName { candidates: next, read: read.saturating_add(1) };
                next != 0
            }
            Mode::MapKey { escape, utf8_left } => {
                self.mode = match string_step(escape, utf8_left, b) {
                    StringStep::Refused => return false,
                    StringStep::Inside(escape, utf8_left) => Mode::MapKey { escape, utf8_left },
                    StringStep::Closed => Mode::MapColon,
                };
                true
            }
            Mode::Done => false,
            mode => {
                if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                    return whitespace_step(&mut self.whitespace, b);
                }
                self.whitespace = 0;
                self.structural(mode, b)
            }
        }
    }

    /// A number's or literal's step: `inside` is the mode within it; at a number's end the byte
    /// that ended it (`reread`) goes to what follows, a literal ends on its own last byte.
    fn apply<T>(&mut self, step: Step<T>, inside: impl FnOnce(T) -> Mode, reread: Option<u8>) -> bool {
        match step {
            Step::Inside(t) => {
                self.mode = inside(t);
                true
            }
            Step::Ended => {
                self.mode = Mode::AfterValue;
                reread.is_none_or(|b| self.step(b))
            }
            Step::Refused => false,
        }
    }

    fn structural(&mut self, mode: Mode, b: u8) -> bool {
        match mode {
            Mode::Value(node) => self.value(node, b),
            Mode::ValueOrClose(_) if b == b']' => self.array_may_close() && self.close(),
            Mode::ValueOrClose(items) => {
                // The first item (`maxItems: 0` refuses it); the array's frame stays where it
                // is if the item opens a container of its own.
                let (array, counted) = (self.depth as usize - 1, self.array_counted());
                let started = self.array_may_grow() && self.value(items, b);
                if started {
                    self.frames[array].seen = u64::from(counted);
                    self.clamp_count(array);
                }
                started
            }
            Mode::KeyOrClose | Mode::Key | Mode::AfterValue if self.depth > 0 => {
                let frame = self.top();
                match self.node(frame.node) {
                    object @ (Node::Object { .. } | Node::Objects { .. }) => {
                        let (unseen, may_close) = match object {
                            Node::Object { props, required } => (self.open_props(props), required & !frame.seen == 0),
                            Node::Objects { keys, required, .. } => (
                                self.open_keys(keys),
                                required.iter().enumerate().any(|(a, r)| frame.alive >> a & 1 == 1 && r & !frame.seen == 0),
                            ),
                            _ => unreachable!("matched above"),
                        };
                        match (mode, b) {
                            (Mode::KeyOrClose | Mode::Key, b'"') if unseen != 0 => {
                                self.mode = Mode::KeyName { candidates: unseen, read: 0 };
                                true
                            }
                            (Mode::KeyOrClose | Mode::AfterValue, b'}') if may_close => self.close(),
                            (Mode::AfterValue, b',') if unseen != 0 => {
                                self.mode = Mode::Key;
                                true
                            }
                            _ => false,
                        }
                    }
                    Node::Map { values } => {
                        let more = self.fits(*values);
                        match (mode, b) {
                            (Mode::KeyOrClose | Mode::Key, b'"') if more => {
                                self.mode = Mode::MapKey { escape: Escape::None, utf8_left: 0 };
                                true
                            }
                            (Mode::KeyOrClose | Mode::AfterValue, b'}') => self.close(),
                            (Mode::AfterValue, b',') if more => {
                                self.mode = Mode::Key;
                                true
                            }
                            _ => false,
                        }
                    }
                    Node::Array { items, .. } => match (mode, b) {
                        (Mode::AfterValue, b',') if self.fits(*items) && self.array_may_grow() => {
                            self.frames[self.depth as usize - 1].seen += u64::from(self.array_counted());
                            self.clamp_count(self.depth as usize - 1);
                            self.mode = Mode::Value(*items);
                            true
                        }
                        (Mode::AfterValue, b']') if self.array_may_close() => self.close(),
                        _ => false,
                    },
                    _ => unreachable!("frames hold objects and arrays"),
                }
            }
            Mode::Colon { prop } if b == b':' => {
                let schema = self.schema();
                let top = &mut self.frames[self.depth as usize - 1];
                top.seen |= 1 << prop;
                let value = match schema.nodes[top.node as usize] {
                    Node::Object { ref props, .. } => props[prop as usize].1,
                    Node::Objects { ref keys, .. } => {
                        let key = &keys[prop as usize];
                        top.alive &= key.has;
                        key.value_for(top.alive).expect("a key is offered only where its value is known")
                    }
                    _ => unreachable!("keys are read in objects"),
                };
                self.mode = Mode::Value(value);
                true
            }
            Mode::MapColon if b == b':' => {
                let Node::Map { values } = self.node(self.top().node) else { unreachable!("map keys are read in maps") };
                self.mode = Mode::Value(*values);
                true
            }
            _ => false,
        }
    }

    /// The first byte of a value of `node`.
    fn value(&mut self, node: NodeId, b: u8) -> bool {
        if !self.fits(node) {
            return false;
        }
        self.mode = match (self.node(node), b) {
            (Node::Object { .. } | Node::Map { .. }, b'{') => return self.open(node, Mode::KeyOrClose, 0),
            (Node::Objects { alts, .. }, b'{') => {
                // The alternatives whose required keys fit in the levels left (one at least:
                // `fits(node)` takes the fewest).
                let alive = alts.iter().enumerate().filter(|&(_, &a)| self.fits(a)).fold(0, |m, (i, _)| m | 1 << i);
                return self.open(node, Mode::KeyOrClose, alive);
            }
            (Node::Array { items, .. }, b'[') => {
                let items = *items;
                return self.open(node, Mode::ValueOrClose(items), 0);
            }
            (Node::String { min, max, pattern }, b'"') => {
                let node = if *min == 0 && *max == u32::MAX && pattern.is_none() { UNLIMITED } else { node };
                Mode::Str { node, escape: Escape::None, utf8_left: 0, chars: 0, pat: 0 }
            }
            (Node::Number { integer, range: Some(range) }, _) => match Bounded::start(b, range, *integer) {
                Some(num) => Mode::Bounded { node, num },
                None => return false,
            },
            (Node::Number { integer, range: None }, b'-') => Mode::Number { part: Number::Minus, integer: *integer },
            (Node::Number { integer, range: None }, b'0') => Mode::Number { part: Number::Zero, integer: *integer },
            (Node::Number { integer, range: None }, b'1'..=b'9') => Mode::Number { part: Number::Int, integer: *integer },
            (Node::Boolean, b't') => Mode::Literal { which: 0, matched: 1 },
            (Node::Boolean, b'f') => Mode::Literal { which: 1, matched: 1 },
            (Node::Null, b'n') => Mode::Literal { which: 2, matched: 1 },
            (Node::Enum { values, tags }, _) => {
                // A tagged enum offers only the values of alternatives still open.
                let open = if tags.is_empty() {
                    low_bits(values.len())
                } else {
                    tags.iter().enumerate().filter(|(_, t)| *t & self.top().alive != 0).fold(0, |m, (i, _)| m | 1 << i)
                };
                match matching(values.iter().map(|v| &v[..]), open, 0, b) {
                    0 => return false,
                    candidates => Mode::Enum { node, candidates, read: 1 },
                }
            }
            (Node::Union(ids), _) => {
                // At most one alternative can start with `b` (checked when compiling).
                return ids.iter().any(|&id| {
                    let mut attempt = *self;
                    attempt.value(id, b) && {
                        *self = attempt;
                        true
                    }
                });
            }
            _ => return false,
        };
        true
    }

    fn open(&mut self, node: NodeId, mode: Mode, alive: u64) -> bool {
        if self.depth as usize == MAX_DEPTH {
            return false;
        }
        self.frames[self.depth as usize] = Frame { node, seen: 0, alive };
        self.depth += 1;
        self.mode = mode;
        true
    }

    fn close(&mut self) -> bool {
        self.depth -= 1;
        self.frames[self.depth as usize] = Frame::default();
        self.mode = if self.depth == 0 { Mode::Done } else { Mode::AfterValue };
        true
    }
}

impl ByteParser for SchemaState {
    fn feed(&mut self, b: u8) -> bool {
        self.step(b)
    }

    fn plain_budget(&self) -> Option<u32> {
        match self.mode {
            Mode::MapKey { escape: Escape::None, utf8_left: 0 } | Mode::Str { node: UNLIMITED, escape: Escape::None, utf8_left: 0, .. } => Some(u32::MAX),
            Mode::Str { node, escape: Escape::None, utf8_left: 0, chars, .. } => match *self.node(node) {
                Node::String { max, pattern: None, .. } => Some(max.saturating_sub(chars)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// How many keys an object node names.
fn key_count(object: &Node) -> usize {
    match object {
        Node::Object { props, .. } => props.len(),
        Node::Objects { keys, .. } => keys.len(),
        _ => unreachable!("keys are read in objects"),
    }
}

/// Key `i` of an object node.
fn key_name(object: &Node, i: usize) -> &[u8] {
    match object {
        Node::Object { props, .. } => &props[i].0,
        Node::Objects { keys, .. } => &keys[i].name,
        _ => unreachable!("keys are read in objects"),
    }
}

fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1 << n) - 1
    }
}

/// Of `candidates` (bits into `names`), those whose byte `read` is `b`.
fn matching<'a>(names: impl Iterator<Item = &'a [u8]>, candidates: u64, read: usize, b: u8) -> u64 {
    names.enumerate().filter(|(i, n)| candidates >> i & 1 == 1 && n.get(read) == Some(&b)).fold(0, |m, (i, _)| m | 1 << i)
}

mod compile;
mod number;
pub(super) mod pattern;
mod union;
#[cfg(test)]
mod tests;
