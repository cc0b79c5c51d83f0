//! `response_format: {"type": "json_schema", "json_schema": {"schema": ...}}`: the output is held
//! to a JSON object valid under the schema, byte by byte ([`SchemaState`], driven like
//! `super::json_object::JsonState` by `super::constraint`).
//!
//! The subset is what OpenAI's strict mode and pydantic models use: `type` (one or a list),
//! `properties` + `required` (keys in any order, each at most once, no others; `}` only once
//! every required key is written), `additionalProperties` false or true (no extra keys are
//! written either way), `items` with `minItems` / `maxItems`, `minLength` / `maxLength` (in
//! characters), `enum`, `const`, `anyOf` whose alternatives start differently (`{`, `[`, a
//! string, a number, a boolean, null: `Optional[X]` is `anyOf: [X, {type: null}]`), `allOf`
//! of one schema, `$ref` into `$defs` / `definitions` (recursion too), and the annotations
//! `title`, `description`, `default`, `examples`. Anything else (`pattern`, `format`,
//! `minimum`, `oneOf`, ...) is refused when the request comes, naming the keyword and where it
//! is: the output would not be held to it. The root must be an object.

use std::collections::HashMap;

use serde_json::Value;

use super::constraint::{ByteParser, MaskCache};
use super::json_object::{number_complete, number_next, string_step, whitespace_step, Escape, Number, StringStep, LITERALS};

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
    /// `minItems` / `maxItems`.
    Array { items: NodeId, min: u32, max: u32 },
    /// `minLength` / `maxLength`, in characters (an escape is one).
    String { min: u32, max: u32 },
    Number { integer: bool },
    Boolean,
    Null,
    /// The allowed values, each as its compact JSON text.
    Enum(Vec<Box<[u8]>>),
    /// Alternatives that no first byte could start twice.
    Union(Vec<NodeId>),
    /// A `$ref`, while compiling: the node it names (none are left after).
    Alias(NodeId),
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
    pub(super) masks: MaskCache<SchemaState>,
}

impl Schema {
    /// Compiles `schema`; the error says which keyword at which JSON pointer is the problem.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let mut c = Compiler { root: schema, nodes: Vec::new(), refs: HashMap::new(), unions: Vec::new(), depth: 0 };
        let root = c.node(schema, "")?;
        let (nodes, root) = resolve_aliases(c.nodes, root)?;
        for (id, where_) in c.unions {
            check_union(&nodes, id, &where_)?;
        }
        if !matches!(nodes[root as usize], Node::Object { .. }) {
            return Err("the schema's root must be an object (`\"type\": \"object\"`)".into());
        }
        let need = nesting_needed(&nodes);
        if need[root as usize] as usize > MAX_DEPTH {
            return Err(format!("no instance of the schema nests less than {MAX_DEPTH} levels deep (required objects within required objects, or without end)"));
        }
        Ok(Self { nodes, need, root, masks: MaskCache::with_capacity(256) })
    }

    pub(super) fn start(&self) -> SchemaState {
        SchemaState { schema: self as *const Schema as usize, mode: Mode::Value(self.root), frames: [Frame::default(); MAX_DEPTH], depth: 0, whitespace: 0 }
    }
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, NodeId>,
    /// Unions made, with where they are, to check once every reference is resolved.
    unions: Vec<(NodeId, String)>,
    /// Schemas being compiled, one within another (nesting and `$ref` chains).
    depth: usize,
}

/// How deep schemas may sit within one another, `$ref`s followed: compiling recurses.
const MAX_SCHEMA_NESTING: usize = 128;

/// Replaces every alias (a `$ref`) by the node it ends at; an alias that ends at itself is an
/// error. Returns the nodes (aliases left in place, referred to by none) and the root.
fn resolve_aliases(mut nodes: Vec<Node>, root: NodeId) -> Result<(Vec<Node>, NodeId), String> {
    let target = |nodes: &[Node], mut id: NodeId| {
        for _ in 0..=nodes.len() {
            match nodes[id as usize] {
                Node::Alias(next) => id = next,
                _ => return Ok(id),
            }
        }
        Err("a `$ref` refers to itself and to nothing else".to_string())
    };
    let targets: Vec<NodeId> = (0..nodes.len() as NodeId).map(|id| target(&nodes, id)).collect::<Result<_, _>>()?;
    for node in &mut nodes {
        match node {
            Node::Object { props, .. } => props.iter_mut().for_each(|(_, id)| *id = targets[*id as usize]),
            Node::Array { items, .. } => *items = targets[*items as usize],
            Node::Union(ids) => ids.iter_mut().for_each(|id| *id = targets[*id as usize]),
            _ => {}
        }
    }
    Ok((nodes, targets[root as usize]))
}

/// Which first bytes can start a value of `id`: bits for `{`, `[`, `"`, a number, t/f, n. A
/// union that holds itself (through other unions) has no first byte of its own: an error.
fn kinds(nodes: &[Node], id: NodeId, visiting: &mut Vec<NodeId>) -> Result<u8, String> {
    Ok(match &nodes[id as usize] {
        Node::Object { .. } => 1,
        Node::Array { .. } => 2,
        Node::String { .. } => 4,
        Node::Number { .. } => 8,
        Node::Boolean => 16,
        Node::Null => 32,
        Node::Enum(values) => values.iter().map(|v| first_kind(v[0])).fold(0, |a, k| a | k),
        Node::Union(ids) => {
            if visiting.contains(&id) {
                return Err("an `anyOf` holds itself through `$ref`s".into());
            }
            visiting.push(id);
            let mut all = 0;
            for &member in ids {
                all |= kinds(nodes, member, visiting)?;
            }
            visiting.pop();
            all
        }
        Node::Alias(_) => unreachable!("aliases are resolved before"),
    })
}

/// A union's alternatives must start differently, so the first byte picks one.
fn check_union(nodes: &[Node], id: NodeId, where_: &str) -> Result<(), String> {
    let Node::Union(ids) = &nodes[id as usize] else { return Ok(()) };
    let mut seen = 0u8;
    for &member in ids {
        let k = kinds(nodes, member, &mut vec![id])?;
        if seen & k != 0 {
            return Err(format!("`anyOf` / a `type` list at {where_} has two alternatives that start alike (two objects, two strings, ...): not supported"));
        }
        seen |= k;
    }
    Ok(())
}

/// For every node, the fewest containers a value of it must open: 0 for a scalar, 1 for an
/// array (it may be empty), 1 + the most its required properties need for an object, the
/// fewest of its alternatives for a union; `u8::MAX` past the parser's depth (or without end).
fn nesting_needed(nodes: &[Node]) -> Vec<u8> {
    let mut need = vec![u8::MAX; nodes.len()];
    // Each round settles at least one more node; values only fall.
    for _ in 0..=nodes.len() {
        let mut changed = false;
        for (id, node) in nodes.iter().enumerate() {
            let n = match node {
                Node::Object { props, required } => {
                    let deepest = props.iter().enumerate().filter(|(i, _)| required >> i & 1 == 1).map(|(_, (_, p))| need[*p as usize]).max().unwrap_or(0);
                    deepest.saturating_add(1)
                }
                // Empty, or its fewest items.
                Node::Array { items, min, .. } => if *min > 0 { need[*items as usize].saturating_add(1) } else { 1 },
                Node::Union(ids) => ids.iter().map(|&m| need[m as usize]).min().unwrap_or(u8::MAX),
                _ => 0,
            };
            let n = if n as usize > MAX_DEPTH { u8::MAX } else { n };
            if n < need[id] {
                need[id] = n;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    need
}

const ANNOTATIONS: [&str; 7] = ["title", "description", "default", "examples", "$schema", "$id", "$comment"];

impl Compiler<'_> {
    fn push(&mut self, node: Node) -> Result<NodeId, String> {
        let id = NodeId::try_from(self.nodes.len()).ok().filter(|&id| id != UNLIMITED).ok_or_else(|| "the schema has too many parts".to_string())?;
        self.nodes.push(node);
        Ok(id)
    }

    fn node(&mut self, s: &Value, at: &str) -> Result<NodeId, String> {
        if self.depth == MAX_SCHEMA_NESTING {
            return Err(format!("schemas sit more than {MAX_SCHEMA_NESTING} deep within one another (`$ref`s followed) at `{at}`"));
        }
        self.depth += 1;
        let node = self.node_within(s, at);
        self.depth -= 1;
        node
    }

    fn node_within(&mut self, s: &Value, at: &str) -> Result<NodeId, String> {
        let where_ = if at.is_empty() { "the root".to_string() } else { format!("`{at}`") };
        let Some(o) = s.as_object() else {
            return Err(format!("{where_} must be a schema object"));
        };
        // pydantic v1 wraps a reference in a one-element `allOf` to give it a description.
        if let Some(all) = o.get("allOf") {
            return match all.as_array().map(Vec::as_slice) {
                Some([only]) if o.keys().all(|k| ["allOf", "$defs", "definitions"].contains(&k.as_str()) || ANNOTATIONS.contains(&k.as_str())) => {
                    self.node(only, &format!("{at}/allOf/0"))
                }
                _ => Err(format!("`allOf` at {where_} is supported only as one schema with annotations beside it")),
            };
        }
        if let Some(r) = o.get("$ref") {
            let r = r.as_str().ok_or_else(|| format!("`$ref` at {where_} must be a string"))?;
            if let Some(k) = o.keys().find(|k| *k != "$ref" && *k != "$defs" && *k != "definitions" && !ANNOTATIONS.contains(&k.as_str())) {
                return Err(format!("keyword `{k}` beside `$ref` at {where_} is not supported (the output would not be held to it)"));
            }
            if let Some(&id) = self.refs.get(r) {
                return Ok(id);
            }
            let target = r
                .strip_prefix('#')
                .and_then(|p| self.root.pointer(p))
                .ok_or_else(|| format!("`$ref` {r:?} at {where_} points nowhere in the schema (only `#/...` references)"))?;
            // A placeholder first, so a reference within the target (recursion) finds it.
            let id = self.push(Node::Alias(0))?;
            self.refs.insert(r.to_string(), id);
            let resolved = self.node(target, r.trim_start_matches('#'))?;
            self.nodes[id as usize] = Node::Alias(resolved);
            return Ok(id);
        }
        let known = [
            "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength", "enum", "const",
            "anyOf", "$defs", "definitions",
        ];
        if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str())) {
            return Err(format!("keyword `{k}` at {where_} is not supported (the output would not be held to it)"));
        }
        if o.contains_key("enum") || o.contains_key("const") {
            let values: Vec<&Value> = match (o.get("enum"), o.get("const")) {
                (Some(Value::Array(v)), None) => v.iter().collect(),
                (None, Some(v)) => vec![v],
                _ => return Err(format!("`enum` at {where_} must be an array (and not come with `const`)")),
            };
            if values.is_empty() || values.len() > MAX_CHOICES {
                return Err(format!("`enum` at {where_} must have 1 to {MAX_CHOICES} values"));
            }
            let texts = values
                .iter()
                .map(|v| {
                    let text = serde_json::to_vec(v).expect("a JSON value serializes");
                    if v.is_object() || v.is_array() || text.len() > MAX_NAME_BYTES {
                        Err(format!("`enum` values at {where_} must be strings, numbers, booleans or null of at most {MAX_NAME_BYTES} bytes"))
                    } else {
                        Ok(text.into_boxed_slice())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            return self.push(Node::Enum(texts));
        }
        if let Some(any) = o.get("anyOf") {
            let alternatives = any.as_array().filter(|a| !a.is_empty()).ok_or_else(|| format!("`anyOf` at {where_} must be a non-empty array"))?;
            let ids = alternatives.iter().enumerate().map(|(i, a)| self.node(a, &format!("{at}/anyOf/{i}"))).collect::<Result<Vec<_>, _>>()?;
            return self.union(ids, &where_);
        }
        let types: Vec<&str> = match o.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => ts.iter().map(|t| t.as_str().ok_or_else(|| format!("`type` at {where_} must name types"))).collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("`type` at {where_} must be a type name or a list of them")),
            None => return Err(format!("{where_} has no `type`: a schema for any value is not supported")),
        };
        let ids = types.iter().map(|t| self.typed(t, o, at, &where_)).collect::<Result<Vec<_>, _>>()?;
        if ids.len() == 1 {
            Ok(ids[0])
        } else {
            self.union(ids, &where_)
        }
    }

    fn typed(&mut self, t: &str, o: &serde_json::Map<String, Value>, at: &str, where_: &str) -> Result<NodeId, String> {
        let node = match t {
            "object" => {
                let empty = serde_json::Map::new();
                let props_in = match o.get("properties") {
                    None => &empty,
                    Some(Value::Object(p)) => p,
                    Some(_) => return Err(format!("`properties` at {where_} must be an object")),
                };
                if props_in.len() > MAX_CHOICES {
                    return Err(format!("an object at {where_} has more than {MAX_CHOICES} properties"));
                }
                match o.get("additionalProperties") {
                    None | Some(Value::Bool(_)) => {}
                    Some(_) => return Err(format!("`additionalProperties` at {where_} may only be true or false (a map of any keys is not supported)")),
                }
                let mut props: Vec<(Box<[u8]>, NodeId)> = Vec::new();
                for (name, schema) in props_in {
                    if name.len() > MAX_NAME_BYTES || name.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
                        return Err(format!("property name {name:?} at {where_} is too long or needs escapes"));
                    }
                    let id = self.node(schema, &format!("{at}/properties/{name}"))?;
                    props.push((name.as_bytes().into(), id));
                }
                let mut required = 0u64;
                let required_in = match o.get("required") {
                    None => &[][..],
                    Some(Value::Array(r)) => r.as_slice(),
                    Some(_) => return Err(format!("`required` at {where_} must be an array of property names")),
                };
                for r in required_in {
                    let i = r
                        .as_str()
                        .and_then(|r| props.iter().position(|(n, _)| **n == *r.as_bytes()))
                        .ok_or_else(|| format!("`required` at {where_} names {r}, which is not among its `properties`"))?;
                    required |= 1 << i;
                }
                Node::Object { props, required }
            }
            "array" => {
                let items = o.get("items").ok_or_else(|| format!("an array at {where_} needs `items`"))?;
                let (min, max) = bounds(o, "minItems", "maxItems", where_)?;
                Node::Array { items: self.node(items, &format!("{at}/items"))?, min, max }
            }
            "string" => {
                let (min, max) = bounds(o, "minLength", "maxLength", where_)?;
                Node::String { min, max }
            }
            "integer" => Node::Number { integer: true },
            "number" => Node::Number { integer: false },
            "boolean" => Node::Boolean,
            "null" => Node::Null,
            other => return Err(format!("`type` {other:?} at {where_} is not a JSON Schema type")),
        };
        self.push(node)
    }

    fn union(&mut self, ids: Vec<NodeId>, where_: &str) -> Result<NodeId, String> {
        let id = self.push(Node::Union(ids))?;
        self.unions.push((id, where_.to_string()));
        Ok(id)
    }
}

/// A `min`/`max` keyword pair (both optional): whole numbers with `min <= max`.
fn bounds(o: &serde_json::Map<String, Value>, min: &str, max: &str, where_: &str) -> Result<(u32, u32), String> {
    let read = |k: &str, default: u32| match o.get(k) {
        None => Ok(default),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("`{k}` at {where_} must be a whole number")),
    };
    let (lo, hi) = (read(min, 0)?, read(max, u32::MAX)?);
    if lo > hi {
        return Err(format!("`{min}` at {where_} is above `{max}`"));
    }
    Ok((lo, hi))
}

fn first_kind(b: u8) -> u8 {
    match b {
        b'{' => 1,
        b'[' => 2,
        b'"' => 4,
        b't' | b'f' => 16,
        b'n' => 32,
        _ => 8,
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

/// An open container: its node, and for an object the properties already written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Frame {
    node: NodeId,
    seen: u64,
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
    AfterValue,
    /// Inside a string value of `node`, `chars` characters in.
    Str { node: NodeId, escape: Escape, utf8_left: u8, chars: u32 },
    Number { part: Number, integer: bool },
    Literal { which: u8, matched: u8 },
    /// Inside an enum value: the values it can still be, `read` bytes in.
    Enum { node: NodeId, candidates: u64, read: u8 },
    Done,
}

impl SchemaState {
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
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

    fn step(&mut self, b: u8) -> bool {
        match self.mode {
            Mode::Str { node, escape, utf8_left, chars } => {
                let (min, max) = match node {
                    UNLIMITED => (0, u32::MAX),
                    _ => match *self.node(node) {
                        Node::String { min, max } => (min, max),
                        _ => unreachable!("a string mode holds a string node"),
                    },
                };
                // A character begins: a plain byte, a UTF-8 lead byte or a backslash. The count is
                // part of the state, so it is kept only as far as the limits look: without any,
                // every position in every string is one state, and its mask is cached once.
                let begins = escape == Escape::None && utf8_left == 0 && b != b'"';
                let counted = chars + u32::from(begins);
                let chars = if max == u32::MAX { counted.min(min) } else { counted };
                self.mode = match string_step(escape, utf8_left, b) {
                    StringStep::Refused => return false,
                    StringStep::Inside(..) if counted > max => return false,
                    StringStep::Inside(escape, utf8_left) => Mode::Str { node, escape, utf8_left, chars },
                    StringStep::Closed if counted < min => return false,
                    StringStep::Closed => Mode::AfterValue,
                };
                true
            }
            Mode::Number { part, integer } => match number_next(part, b).filter(|n| !integer || matches!(n, Number::Int | Number::Zero)) {
                Some(part) => {
                    self.mode = Mode::Number { part, integer };
                    true
                }
                None if number_complete(part) => {
                    self.mode = Mode::AfterValue;
                    self.step(b)
                }
                None => false,
            },
            Mode::Literal { which, matched } => {
                let word = LITERALS[which as usize];
                if word[matched as usize] != b {
                    return false;
                }
                self.mode = if matched as usize + 1 == word.len() { Mode::AfterValue } else { Mode::Literal { which, matched: matched + 1 } };
                true
            }
            Mode::Enum { node, candidates, read } => {
                let Node::Enum(values) = self.node(node) else { unreachable!("an enum mode holds an enum node") };
                let next = matching(values.iter().map(|v| &v[..]), candidates, read as usize, b);
                if next != 0 {
                    self.mode = Mode::Enum { node, candidates: next, read: read + 1 };
                    return true;
                }
                // A value ended (a number cannot tell before the byte after it).
                if values.iter().enumerate().any(|(i, v)| candidates >> i & 1 == 1 && v.len() == read as usize) {
                    self.mode = Mode::AfterValue;
                    return self.step(b);
                }
                false
            }
            Mode::KeyName { candidates, read } => {
                let Node::Object { props, .. } = self.node(self.top().node) else { unreachable!("keys are read in objects") };
                if b == b'"' {
                    return match props.iter().enumerate().position(|(i, (n, _))| candidates >> i & 1 == 1 && n.len() == read as usize) {
                        Some(prop) => {
                            self.mode = Mode::Colon { prop: prop as u8 };
                            true
                        }
                        None => false,
                    };
                }
                let next = matching(props.iter().map(|(n, _)| &n[..]), candidates, read as usize, b);
                self.mode = Mode::KeyName { candidates: next, read: read.saturating_add(1) };
                next != 0
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
                    Node::Object { props, required } => {
                        let unseen = self.open_props(props);
                        let may_close = required & !frame.seen == 0;
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
                let Node::Object { props, .. } = self.node(self.top().node) else { unreachable!("keys are read in objects") };
                let value = props[prop as usize].1;
                self.frames[self.depth as usize - 1].seen |= 1 << prop;
                self.mode = Mode::Value(value);
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
            (Node::Object { .. }, b'{') => return self.open(node, Mode::KeyOrClose),
            (Node::Array { items, .. }, b'[') => {
                let items = *items;
                return self.open(node, Mode::ValueOrClose(items));
            }
            (Node::String { min, max }, b'"') => {
                let node = if *min == 0 && *max == u32::MAX { UNLIMITED } else { node };
                Mode::Str { node, escape: Escape::None, utf8_left: 0, chars: 0 }
            }
            (Node::Number { integer }, b'-') => Mode::Number { part: Number::Minus, integer: *integer },
            (Node::Number { integer }, b'0') => Mode::Number { part: Number::Zero, integer: *integer },
            (Node::Number { integer }, b'1'..=b'9') => Mode::Number { part: Number::Int, integer: *integer },
            (Node::Boolean, b't') => Mode::Literal { which: 0, matched: 1 },
            (Node::Boolean, b'f') => Mode::Literal { which: 1, matched: 1 },
            (Node::Null, b'n') => Mode::Literal { which: 2, matched: 1 },
            (Node::Enum(values), _) => match matching(values.iter().map(|v| &v[..]), low_bits(values.len()), 0, b) {
                0 => return false,
                candidates => Mode::Enum { node, candidates, read: 1 },
            },
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

    fn open(&mut self, node: NodeId, mode: Mode) -> bool {
        if self.depth as usize == MAX_DEPTH {
            return false;
        }
        self.frames[self.depth as usize] = Frame { node, seen: 0 };
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

#[cfg(test)]
mod tests;
