//! The checks a grammar passes when compiled: every rule can end, and no rule can begin with
//! itself (left recursion). Both run in time linear in the grammar's size, as its rules come
//! from requests: a fixpoint over the rules re-scanned until nothing changed took quadratic
//! time on a chain of 100,000 rules, minutes of a core.

use super::{Elem, Grammar};

impl Grammar {
    /// Refuses a rule that can never end and left recursion that would grow the stacks.
    pub(super) fn check(&self, names: &[String]) -> Result<(), String> {
        let finite = self.derivable(|c| !self.classes[c as usize].is_empty());
        if let Some(r) = finite.iter().position(|f| !f) {
            return Err(format!("rule `{}` can never end (each of its alternatives needs itself again, or a class that matches nothing)", names[r]));
        }
        let nullable = self.derivable(|_| false);
        // Edges to the rules an alternative can begin with; `true` if the call returns to more.
        let mut edges: Vec<Vec<(u32, bool)>> = vec![Vec::new(); self.starts.len()];
        for (r, rule_starts) in self.starts.iter().enumerate() {
            for &s in rule_starts {
                let items: Vec<Elem> = self.alternative(s).copied().collect();
                for (i, e) in items.iter().enumerate() {
                    let Elem::Rule(b) = *e else { break };
                    edges[r].push((b, i + 1 < items.len()));
                    if !nullable[b as usize] {
                        break;
                    }
                }
            }
        }
        // A call that returns to more, from a rule that the callee can begin with again, grows
        // the stacks without bound: an edge within a strongly connected component.
        let component = components(&edges);
        for (a, out) in edges.iter().enumerate() {
            if out.iter().any(|&(b, returns)| returns && component[b as usize] == component[a]) {
                return Err(format!("rule `{}` is left-recursive (it can begin with itself): write the repetition with `*`, `+` or right recursion", names[a]));
            }
        }
        Ok(())
    }

    /// The elements of the alternative starting at `start`.
    fn alternative(&self, start: u32) -> impl Iterator<Item = &Elem> {
        self.elems[start as usize..].iter().take_while(|e| !matches!(e, Elem::End))
    }

    /// The rules that can derive a string of characters whose classes pass `char_ok` (all
    /// classes: rules that can end; none: rules that can end having read nothing). Each
    /// alternative counts the calls it still waits for; a rule found derivable releases its
    /// callers' counts once.
    fn derivable(&self, char_ok: impl Fn(u32) -> bool) -> Vec<bool> {
        let n = self.starts.len();
        let mut done = vec![false; n];
        let mut waiting: Vec<(usize, usize)> = Vec::new(); // (rule, calls left) per alternative
        let mut callers: Vec<Vec<usize>> = vec![Vec::new(); n]; // alternatives, once per call
        let mut work = Vec::new();
        for (r, rule_starts) in self.starts.iter().enumerate() {
            for &s in rule_starts {
                if self.alternative(s).any(|e| matches!(*e, Elem::Char(c) if !char_ok(c))) {
                    continue;
                }
                let alt = waiting.len();
                let mut calls = 0;
                for e in self.alternative(s) {
                    if let Elem::Rule(b) = *e {
                        callers[b as usize].push(alt);
                        calls += 1;
                    }
                }
                waiting.push((r, calls));
                if calls == 0 && !done[r] {
                    done[r] = true;
                    work.push(r);
                }
            }
        }
        while let Some(b) = work.pop() {
            for &alt in &callers[b] {
                let (r, calls) = &mut waiting[alt];
                *calls -= 1;
                if *calls == 0 && !done[*r] {
                    done[*r] = true;
                    work.push(*r);
                }
            }
        }
        done
    }
}

/// Each node's strongly connected component (Tarjan's algorithm with an explicit stack, so a
/// long chain of rules cannot exhaust the thread's).
fn components(edges: &[Vec<(u32, bool)>]) -> Vec<u32> {
    let n = edges.len();
    let mut t = Tarjan { index: vec![UNSEEN; n], low: vec![0; n], on_stack: vec![false; n], stack: Vec::new(), next: 0 };
    let (mut component, mut components) = (vec![UNSEEN; n], 0u32);
    for root in 0..n {
        if t.index[root] != UNSEEN {
            continue;
        }
        t.visit(root);
        // (node, its next edge)
        let mut calls = vec![(root, 0usize)];
        while let Some(top) = calls.last_mut() {
            let v = top.0;
            if let Some(&(w, _)) = edges[v].get(top.1) {
                top.1 += 1;
                let w = w as usize;
                if t.index[w] == UNSEEN {
                    t.visit(w);
                    calls.push((w, 0));
                } else if t.on_stack[w] {
                    t.low[v] = t.low[v].min(t.index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(u, _)) = calls.last() {
                t.low[u] = t.low[u].min(t.low[v]);
            }
            if t.low[v] == t.index[v] {
                loop {
                    let w = t.stack.pop().expect("v is on the stack");
                    t.on_stack[w] = false;
                    component[w] = components;
                    if w == v {
                        break;
                    }
                }
                components += 1;
            }
        }
    }
    component
}

const UNSEEN: u32 = u32::MAX;

struct Tarjan {
    index: Vec<u32>,
    low: Vec<u32>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: u32,
}

impl Tarjan {
    fn visit(&mut self, v: usize) {
        self.index[v] = self.next;
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
    }
}
