//! Stored responses: each one's object (for `GET /v1/responses/{id}`), its conversation
//! (for a later request's `previous_response_id`) and its own input items (for
//! `GET /v1/responses/{id}/input_items`), in memory, the oldest forgotten first once
//! there are too many or they take too many bytes (a chain of responses repeats its
//! conversation in each).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

use crate::api::types::ChatMessage;

struct Stored {
    conversation: Vec<ChatMessage>,
    /// This request's `input` alone, normalised (`input_items.rs`).
    input_items: Vec<Value>,
    response: Value,
    /// Its size as JSON.
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Stored>,
    /// Ids, oldest first.
    order: VecDeque<String>,
    bytes: usize,
}

pub struct ResponseStore {
    inner: Mutex<Inner>,
    capacity: usize,
    max_bytes: usize,
}

impl ResponseStore {
    /// Room for `capacity` responses of `max_bytes` in all (as JSON).
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), capacity, max_bytes }
    }

    /// Keeps a response, forgetting the oldest ones it makes room for; one larger than the whole
    /// budget is not kept.
    pub fn insert(&self, id: &str, conversation: Vec<ChatMessage>, input_items: Vec<Value>, response: Value) {
        let bytes = serde_json::to_string(&conversation).map_or(0, |c| c.len()) + serde_json::to_string(&input_items).map_or(0, |i| i.len()) + response.to_string().len();
        if bytes > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().expect("response store");
        while inner.map.len() >= self.capacity || inner.bytes + bytes > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else { break };
            if let Some(gone) = inner.map.remove(&oldest) {
                inner.bytes -= gone.bytes;
            }
        }
        inner.map.insert(id.to_string(), Stored { conversation, input_items, response, bytes });
        inner.order.push_back(id.to_string());
        inner.bytes += bytes;
    }

    /// The conversation response `id` ended (its input and output, without instructions).
    pub fn conversation(&self, id: &str) -> Option<Vec<ChatMessage>> {
        self.inner.lock().expect("response store").map.get(id).map(|s| s.conversation.clone())
    }

    pub fn response(&self, id: &str) -> Option<Value> {
        self.inner.lock().expect("response store").map.get(id).map(|s| s.response.clone())
    }

    /// The items response `id` was given as its `input`.
    pub fn input_items(&self, id: &str) -> Option<Vec<Value>> {
        self.inner.lock().expect("response store").map.get(id).map(|s| s.input_items.clone())
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.inner.lock().expect("response store");
        let Some(gone) = inner.map.remove(id) else { return false };
        inner.bytes -= gone.bytes;
        inner.order.retain(|k| k != id);
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_oldest_are_forgotten_by_count_and_by_bytes() {
        let store = ResponseStore::new(2, 10_000);
        for id in ["a", "b", "c"] {
            store.insert(id, vec![], vec![], json!({"id": id}));
        }
        assert!(store.response("a").is_none() && store.response("b").is_some() && store.response("c").is_some());
        assert!(store.remove("b") && !store.remove("b"));
        store.insert("d", vec![], vec![], json!({"id": "d"}));
        assert!(store.response("c").is_some() && store.response("d").is_some());

        let store = ResponseStore::new(100, 250);
        let big = json!({"text": "x".repeat(100)});
        store.insert("a", vec![], vec![], big.clone());
        store.insert("b", vec![], vec![], big.clone());
        store.insert("c", vec![], vec![], big.clone());
        assert!(store.response("a").is_none() && store.response("b").is_some() && store.response("c").is_some());
        store.insert("huge", vec![], vec![], json!({"text": "x".repeat(300)}));
        assert!(store.response("huge").is_none() && store.response("c").is_some(), "too large to keep, and nothing forgotten for it");
    }

    #[test]
    fn input_items_are_kept_and_counted_in_the_budget() {
        let store = ResponseStore::new(100, 250);
        let items = vec![json!({"type": "message", "id": "msg_1", "content": "x".repeat(150)})];
        store.insert("a", vec![], items.clone(), json!({"id": "a"}));
        assert_eq!(store.input_items("a"), Some(items.clone()));
        store.insert("b", vec![], items.clone(), json!({"id": "b"}));
        assert!(store.input_items("a").is_none() && store.response("a").is_none(), "the items' bytes made room for b's");
        assert!(store.remove("b") && store.input_items("b").is_none());
    }
}
