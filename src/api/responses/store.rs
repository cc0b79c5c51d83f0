//! Stored responses: each one's object (for `GET /v1/responses/{id}`) and its conversation
//! (for a later request's `previous_response_id`), in memory, the oldest forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

use crate::api::types::ChatMessage;

struct Stored {
    conversation: Vec<ChatMessage>,
    response: Value,
}

pub struct ResponseStore {
    inner: Mutex<(HashMap<String, Stored>, VecDeque<String>)>,
    capacity: usize,
}

impl ResponseStore {
    /// Room for `capacity` responses.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { inner: Mutex::new((HashMap::new(), VecDeque::new())), capacity }
    }

    pub fn insert(&self, id: &str, conversation: Vec<ChatMessage>, response: Value) {
        let mut guard = self.inner.lock().expect("response store");
        let (map, order) = &mut *guard;
        while map.len() >= self.capacity {
            let Some(oldest) = order.pop_front() else { break };
            map.remove(&oldest);
        }
        map.insert(id.to_string(), Stored { conversation, response });
        order.push_back(id.to_string());
    }

    /// The conversation response `id` ended (its input and output, without instructions).
    pub fn conversation(&self, id: &str) -> Option<Vec<ChatMessage>> {
        self.inner.lock().expect("response store").0.get(id).map(|s| s.conversation.clone())
    }

    pub fn response(&self, id: &str) -> Option<Value> {
        self.inner.lock().expect("response store").0.get(id).map(|s| s.response.clone())
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut guard = self.inner.lock().expect("response store");
        let (map, order) = &mut *guard;
        order.retain(|k| k != id);
        map.remove(id).is_some()
    }
}
