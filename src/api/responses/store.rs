//! Stored responses: each one's object (for `GET /v1/responses/{id}`) and its conversation
//! (for a later request's `previous_response_id`), in memory, the oldest forgotten first once
//! there are too many or they take too many bytes (a chain of responses repeats its
//! conversation in each).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

use crate::api::types::ChatMessage;

struct Stored {
    conversation: Vec<ChatMessage>,
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
    pub fn insert(&self, id: &str, conversation: Vec<ChatMessage>, response: Value) {
        let bytes = serde_json::to_string(&conversation).map_or(0, |c| c.len()) + response.to_string().len();
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
        inner.map.insert(id.to_string(), Stored { conversation, response, bytes });
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
            store.insert(id, vec![], json!({"id": id}));
        }
        assert!(store.response("a").is_none() && store.response("b").is_some() && store.response("c").is_some());
        assert!(store.remove("b") && !store.remove("b"));
        store.insert("d", vec![], json!({"id": "d"}));
        assert!(store.response("c").is_some() && store.response("d").is_some());

        let store = ResponseStore::new(100, 250);
        let big = json!({"text": "x".repeat(100)});
        store.insert("a", vec![], big.clone());
        store.insert("b", vec![], big.clone());
        store.insert("c", vec![], big.clone());
        assert!(store.response("a").is_none() && store.response("b").is_some() && store.response("c").is_some());
        store.insert("huge", vec![], json!({"text": "x".repeat(300)}));
        assert!(store.response("huge").is_none() && store.response("c").is_some(), "too large to keep, and nothing forgotten for it");
    }
}
