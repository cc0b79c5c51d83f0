//! Compiling a JSON Schema into `super::Node`s: keywords checked against the supported subset,
//! `$ref`s resolved (recursion included), unions checked to start differently, patterns and
//! formats built into tables, bounds read exactly, and the nesting each node needs worked out.

use std::collections::HashMap;

use serde_json::Value;

use super::number::Range;
use super::pattern::{Pattern, FORMATS};
use super::union::merge_objects;
use super::{Node, NodeId, MAX_CHOICES, MAX_DEPTH, MAX_NAME_BYTES, UNLIMITED};

/// A compiled schema's parts (see `super::Schema`).
pub(super) struct Compiled {
    pub nodes: Vec<Node>,
    pub need: Vec<u8>,
    pub root: NodeId,
    pub patterns: Vec<Pattern>,
}

/// Compiles `schema`; the error says which keyword at which JSON pointer is the problem.
pub(super) fn compile(schema: &Value) -> Result<Compiled, String> {
    let mut c = Compiler { root: schema, nodes: Vec::new(), refs: HashMap::new(), unions: Vec::new(), depth: 0, patterns: Vec::new(), pattern_ids: HashMap::new() };
    let root = c.node(schema, "")?;
    let (mut nodes, root) = resolve_aliases(c.nodes, root)?;
    for (id, where_, one_of) in &c.unions {
        merge_objects(&mut nodes, *id, where_, *one_of)?;
    }
    for (id, where_, _) in c.unions {
        check_union(&nodes, id, &where_)?;
    }
    // A root union of objects alone (tool calls of several functions) is its merged object.
    let root = match &nodes[root as usize] {
        Node::Union(members) if members.len() == 1 => members[0],
        _ => root,
    };
    if !matches!(nodes[root as usize], Node::Object { .. } | Node::Map { .. } | Node::Objects { .. }) {
        return Err("the schema's root must be an object (`\"type\": \"object\"`)".into());
    }
    let need = nesting_needed(&nodes);
    if need[root as usize] as usize > MAX_DEPTH {
        return Err(format!("no instance of the schema nests less than {MAX_DEPTH} levels deep (required objects within required objects, or without end)"));
    }
    Ok(Compiled { nodes, need, root, patterns: c.patterns })
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, NodeId>,
    /// Unions made, with where they are and whether they are a `oneOf`, to check once every
    /// reference is resolved.
    unions: Vec<(NodeId, String, bool)>,
    /// Schemas being compiled, one within another (nesting and `$ref` chains).
    depth: usize,
    patterns: Vec<Pattern>,
    /// Where each `pattern` / `format` text is in `patterns`.
    pattern_ids: HashMap<(&'static str, String), u16>,
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
            Node::Array { items, .. } | Node::Map { values: items } => *items = targets[*items as usize],
            Node::Union(ids) => ids.iter_mut().for_each(|id| *id = targets[*id as usize]),
            _ => {}
        }
    }
    Ok((nodes, targets[root as usize]))
}

pub(super) fn push(nodes: &mut Vec<Node>, node: Node) -> Result<NodeId, String> {
    let id = NodeId::try_from(nodes.len()).ok().filter(|&id| id != UNLIMITED).ok_or_else(|| "the schema has too many parts".to_string())?;
    nodes.push(node);
    Ok(id)
}

/// Which first bytes can start a value of `id`: bits for `{`, `[`, `"`, a number, t/f, n. A
/// union that holds itself (through other unions) has no first byte of its own: an error.
fn kinds(nodes: &[Node], id: NodeId, visiting: &mut Vec<NodeId>) -> Result<u8, String> {
    Ok(match &nodes[id as usize] {
        Node::Object { .. } | Node::Map { .. } | Node::Objects { .. } => 1,
        Node::Array { .. } => 2,
        Node::String { .. } => 4,
        Node::Number { .. } => 8,
        Node::Boolean => 16,
        Node::Null => 32,
        Node::Enum { values, .. } => values.iter().map(|v| first_kind(v[0])).fold(0, |a, k| a | k),
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
            return Err(format!("`anyOf` / `oneOf` / a `type` list at {where_} has two alternatives that start alike (two objects, two strings, ...): not supported"));
        }
        seen |= k;
    }
    Ok(())
}

/// For every node, the fewest containers a value of it must open: 0 for a scalar, 1 for an
/// array or a map (either may be empty), 1 + the most its required properties need for an object, the
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
                // It may be empty.
                Node::Map { .. } => 1,
                Node::Union(ids) | Node::Objects { alts: ids, .. } => ids.iter().map(|&m| need[m as usize]).min().unwrap_or(u8::MAX),
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
        push(&mut self.nodes, node)
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
            "anyOf", "oneOf", "$defs", "definitions", "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
            "multipleOf",
        ];
        // `discriminator` (OpenAPI's; pydantic writes it beside a `oneOf`) only names what the
        // alternatives' values enforce anyway.
        let union_here = o.contains_key("anyOf") || o.contains_key("oneOf");
        if let Some(k) = o.keys().find(|k| !(known.contains(&k.as_str()) || ANNOTATIONS.contains(&k.as_str()) || (union_here && *k == "discriminator"))) {
            return Err(format!("keyword `{k}` at {where_} is not supported (the output would not be held to it)"));
        }
        // Beside a list of values or of alternatives, a keyword would go unheeded: refused.
        let beside = |allowed: &[&str], what: &str| match o.keys().find(|k| !allowed.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str())) {
            Some(k) => Err(format!("keyword `{k}` beside `{what}` at {where_} is not supported (the output would not be held to it)")),
            None => Ok(()),
        };
        if o.contains_key("enum") || o.contains_key("const") {
            beside(&["enum", "const", "type", "$defs", "definitions"], if o.contains_key("enum") { "enum" } else { "const" })?;
            let mut values: Vec<&Value> = match (o.get("enum"), o.get("const")) {
                (Some(Value::Array(v)), None) => v.iter().collect(),
                (None, Some(v)) => vec![v],
                _ => return Err(format!("`enum` at {where_} must be an array (and not come with `const`)")),
            };
            // pydantic's `Literal` writes a `type` beside them: only the values of that type hold.
            if let Some(t) = o.get("type") {
                let types: Vec<&str> = match t {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => return Err(format!("`type` at {where_} must be a type name or a list of them")),
                };
                values.retain(|v| types.iter().any(|&t| is_of_type(v, t)));
                if values.is_empty() {
                    return Err(format!("no `enum` / `const` value at {where_} is of its `type`"));
                }
            }
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
            return self.push(Node::Enum { values: texts, tags: Vec::new() });
        }
        // Alternatives must start differently (checked later), so at most one can hold for a
        // value: `oneOf` is `anyOf`.
        let union = match (o.get("anyOf"), o.get("oneOf")) {
            (Some(_), Some(_)) => return Err(format!("`anyOf` and `oneOf` together at {where_} are not supported")),
            (Some(any), None) => Some(("anyOf", any)),
            (None, Some(one)) => Some(("oneOf", one)),
            (None, None) => None,
        };
        if let Some((keyword, alternatives)) = union {
            beside(&["anyOf", "oneOf", "$defs", "definitions", "discriminator"], keyword)?;
            let alternatives = alternatives.as_array().filter(|a| !a.is_empty()).ok_or_else(|| format!("`{keyword}` at {where_} must be a non-empty array"))?;
            let ids = alternatives.iter().enumerate().map(|(i, a)| self.node(a, &format!("{at}/{keyword}/{i}"))).collect::<Result<Vec<_>, _>>()?;
            return self.union(ids, &where_, keyword == "oneOf");
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
            self.union(ids, &where_, false)
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
                    Some(values @ Value::Object(_)) if props_in.is_empty() && o.get("required").is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)) => {
                        let values = self.node(values, &format!("{at}/additionalProperties"))?;
                        return self.push(Node::Map { values });
                    }
                    Some(Value::Object(_)) => return Err(format!("`additionalProperties` as a schema at {where_} is supported only without `properties` and `required` (a map)")),
                    Some(_) => return Err(format!("`additionalProperties` at {where_} must be true, false or a schema")),
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
                let pattern = self.pattern(o, min, max, where_)?;
                Node::String { min, max, pattern }
            }
            "integer" => Node::Number { integer: true, range: Range::from_schema(o, true, where_)? },
            "number" => Node::Number { integer: false, range: Range::from_schema(o, false, where_)? },
            "boolean" => Node::Boolean,
            "null" => Node::Null,
            other => return Err(format!("`type` {other:?} at {where_} is not a JSON Schema type")),
        };
        self.push(node)
    }

    /// A string's `pattern` or `format`, if it has one (not both); `minLength` beside it only
    /// where every string the pattern takes is that long anyway.
    fn pattern(&mut self, o: &serde_json::Map<String, Value>, min: u32, max: u32, where_: &str) -> Result<Option<u16>, String> {
        let (keyword, text) = match (o.get("pattern"), o.get("format")) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err(format!("`pattern` and `format` together at {where_} are not supported")),
            (Some(Value::String(p)), None) => ("pattern", p),
            (None, Some(Value::String(f))) => ("format", f),
            _ => return Err(format!("`pattern` / `format` at {where_} must be a string")),
        };
        // One table per distinct pattern or format: built once, and the same in every place
        // (so two models of a union with a `date` each have one schema for it).
        let index = match self.pattern_ids.get(&(keyword, text.clone())) {
            Some(&i) => i,
            None => {
                let pattern = match keyword {
                    "pattern" => Pattern::from_schema_pattern(text),
                    _ => Pattern::from_format(text).unwrap_or_else(|| Err(format!("is not supported (only {FORMATS})"))),
                }
                .map_err(|e| format!("`{keyword}` {text:?} at {where_} {e}"))?;
                if self.patterns.len() == usize::from(u16::MAX) {
                    return Err("the schema has too many patterns".into());
                }
                self.patterns.push(pattern);
                let i = self.patterns.len() as u16 - 1;
                self.pattern_ids.insert((keyword, text.clone()), i);
                i
            }
        };
        let pattern = &self.patterns[index as usize];
        if pattern.shortest(pattern.start()) > max {
            return Err(format!("`maxLength` at {where_} is below the fewest characters the `pattern` / `format` takes"));
        }
        if pattern.shortest(pattern.start()) < min {
            return Err(format!("`minLength` beside `pattern` / `format` at {where_} is supported only where every match is that long"));
        }
        Ok(Some(index))
    }

    fn union(&mut self, ids: Vec<NodeId>, where_: &str, one_of: bool) -> Result<NodeId, String> {
        let id = self.push(Node::Union(ids))?;
        self.unions.push((id, where_.to_string(), one_of));
        Ok(id)
    }
}

/// A `min`/`max` keyword pair (both optional): whole numbers with `min <= max`.
fn bounds(o: &serde_json::Map<String, Value>, min: &str, max: &str, where_: &str) -> Result<(u32, u32), String> {
    let read = |k: &str, default: u32| match o.get(k) {
        None => Ok(default),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("`{k}` at {where_} must be a whole number in [0, {}], got {v}", u32::MAX)),
    };
    let (lo, hi) = (read(min, 0)?, read(max, u32::MAX)?);
    if lo > hi {
        return Err(format!("`{min}` at {where_} is above `{max}`"));
    }
    Ok((lo, hi))
}

/// Whether `v` is an instance of JSON Schema type `t`.
fn is_of_type(v: &Value, t: &str) -> bool {
    match (t, v) {
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        ("number", Value::Number(_)) | ("string", Value::String(_)) | ("boolean", Value::Bool(_)) | ("null", Value::Null) => true,
        ("object", Value::Object(_)) | ("array", Value::Array(_)) => true,
        _ => false,
    }
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
