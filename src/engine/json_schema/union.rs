//! Unions of objects (`anyOf` / `oneOf` of two or more objects, pydantic's unions of models):
//! merged, once `$ref`s are resolved, into one `super::Node::Objects` that the parser reads as
//! one object keeping the alternatives its keys allow.

use std::collections::HashSet;

use serde_json::Value;

use super::compile::push;
use super::{Node, NodeId, UnionKey, MAX_CHOICES};

/// Replaces the objects among union `id`'s alternatives (two or more) by one [`Node::Objects`].
/// A property the objects share must have the same schema in each, or be an `enum` / `const`
/// in each (its values then narrow the alternatives). A `oneOf`'s objects must exclude one
/// another: some property every one of them requires takes values only one of them allows (a
/// discriminator), so no instance is valid under two.
pub(super) fn merge_objects(nodes: &mut Vec<Node>, id: NodeId, where_: &str, one_of: bool) -> Result<(), String> {
    let Node::Union(members) = &nodes[id as usize] else { return Ok(()) };
    let objects: Vec<NodeId> = members.iter().copied().filter(|&m| matches!(nodes[m as usize], Node::Object { .. })).collect();
    if objects.len() < 2 {
        return Ok(());
    }
    if objects.len() > MAX_CHOICES {
        return Err(format!("`anyOf` / `oneOf` at {where_} has more than {MAX_CHOICES} objects"));
    }
    // Each property name, with the value node each alternative that has it gives it.
    type Uses = Vec<(usize, NodeId)>;
    let mut uses: Vec<(Box<[u8]>, Uses)> = Vec::new();
    for (a, &o) in objects.iter().enumerate() {
        let Node::Object { props, .. } = &nodes[o as usize] else { unreachable!("filtered to objects") };
        for (name, value) in props {
            match uses.iter_mut().find(|(n, _)| n == name) {
                Some((_, u)) => u.push((a, *value)),
                None => uses.push((name.clone(), vec![(a, *value)])),
            }
        }
    }
    if uses.len() > MAX_CHOICES {
        return Err(format!("the objects of `anyOf` / `oneOf` at {where_} have more than {MAX_CHOICES} properties together"));
    }
    let mut keys = Vec::with_capacity(uses.len());
    let mut discriminated = false;
    // A property with a schema per group of alternatives: it waits for a discriminator.
    let mut split = None;
    for (name, u) in uses {
        let has = u.iter().fold(0u64, |m, &(a, _)| m | 1 << a);
        let first = u[0].1;
        let mut assumed = HashSet::new();
        let groups = if u.iter().all(|&(_, v)| same(nodes, v, first, &mut assumed)) {
            vec![(has, first)]
        } else if u.iter().all(|&(_, v)| matches!(&nodes[v as usize], Node::Enum { tags, .. } if tags.is_empty())) {
            let (mut values, mut tags): (Vec<Box<[u8]>>, Vec<u64>) = (Vec::new(), Vec::new());
            for &(a, v) in &u {
                let Node::Enum { values: allowed, .. } = &nodes[v as usize] else { unreachable!("checked to be enums") };
                for text in allowed {
                    match values.iter().position(|t| same_json(t, text)) {
                        Some(i) => tags[i] |= 1 << a,
                        None => {
                            values.push(text.clone());
                            tags.push(1 << a);
                        }
                    }
                }
            }
            if values.len() > MAX_CHOICES {
                return Err(format!("property {:?} of the objects of `anyOf` / `oneOf` at {where_} takes more than {MAX_CHOICES} values", String::from_utf8_lossy(&name)));
            }
            let required_by_all = objects.iter().all(|&o| match &nodes[o as usize] {
                Node::Object { props, required } => props.iter().position(|(n, _)| *n == name).is_some_and(|i| required >> i & 1 == 1),
                _ => false,
            });
            discriminated |= required_by_all && tags.iter().all(|t| t.count_ones() == 1);
            vec![(has, push(nodes, Node::Enum { values, tags })?)]
        } else {
            let mut groups: Vec<(u64, NodeId)> = Vec::new();
            for &(a, v) in &u {
                match groups.iter_mut().find(|(_, g)| same(nodes, *g, v, &mut HashSet::new())) {
                    Some((alts, _)) => *alts |= 1 << a,
                    None => groups.push((1 << a, v)),
                }
            }
            split.get_or_insert_with(|| String::from_utf8_lossy(&name).into_owned());
            groups
        };
        keys.push(UnionKey { name, has, groups });
    }
    // Without a discriminator, alternatives that give a property different schemas could stay
    // open together with nothing left to tell them apart.
    if let (Some(name), false) = (&split, discriminated) {
        return Err(format!(
            "the objects of `anyOf` / `oneOf` at {where_} give property {name:?} different schemas: only `enum` / `const` values may differ between them, unless a property all of them require has `enum` / `const` values that tell them apart (a discriminator)"
        ));
    }
    if one_of && !discriminated {
        return Err(format!(
            "the objects of `oneOf` at {where_} need a property all of them require whose `enum` / `const` values differ (a discriminator), so that no output is valid under two"
        ));
    }
    let required = objects
        .iter()
        .map(|&o| {
            let Node::Object { props, required } = &nodes[o as usize] else { unreachable!("filtered to objects") };
            props.iter().enumerate().filter(|(i, _)| required >> i & 1 == 1).fold(0u64, |m, (_, (n, _))| m | 1 << keys.iter().position(|k| k.name == *n).expect("every name is a key"))
        })
        .collect();
    let merged = push(nodes, Node::Objects { alts: objects.clone(), keys, required })?;
    let Node::Union(members) = &mut nodes[id as usize] else { unreachable!("checked above") };
    let at = members.iter().position(|m| *m == objects[0]).expect("a member");
    members.retain(|m| !objects.contains(m));
    members.insert(at.min(members.len()), merged);
    Ok(())
}

/// Whether two JSON texts are the same value (numbers by value: `1` and `1.0` are one).
fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (serde_json::from_slice::<Value>(a), serde_json::from_slice::<Value>(b)) {
        (Ok(Value::Number(x)), Ok(Value::Number(y))) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Whether nodes `a` and `b` take the same values, structurally. Pairs in `assumed` are taken
/// to be the same (those being compared, and those found so): each pair is compared once, so
/// shared and recursive references cost no more than the nodes, and a difference anywhere
/// makes the whole answer false.
fn same(nodes: &[Node], a: NodeId, b: NodeId, assumed: &mut HashSet<(NodeId, NodeId)>) -> bool {
    if a == b || !assumed.insert((a, b)) {
        return true;
    }
    let mut same = |x: NodeId, y: NodeId| same(nodes, x, y, assumed);
    match (&nodes[a as usize], &nodes[b as usize]) {
        (Node::String { min, max, pattern }, Node::String { min: m, max: x, pattern: p }) => (min, max, pattern) == (m, x, p),
        (Node::Number { integer, range }, Node::Number { integer: i, range: r }) => integer == i && range == r,
        (Node::Boolean, Node::Boolean) | (Node::Null, Node::Null) => true,
        (Node::Enum { values, tags }, Node::Enum { values: v, tags: t }) => values == v && tags.is_empty() && t.is_empty(),
        (Node::Array { items, min, max }, Node::Array { items: i, min: m, max: x }) => (min, max) == (m, x) && same(*items, *i),
        (Node::Map { values }, Node::Map { values: v }) => same(*values, *v),
        (Node::Object { props, required }, Node::Object { props: p, required: r }) => {
            required == r && props.len() == p.len() && props.iter().zip(p).all(|((n, x), (m, y))| n == m && same(*x, *y))
        }
        (Node::Union(x), Node::Union(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(*x, *y)),
        _ => false,
    }
}

