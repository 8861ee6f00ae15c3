//! Stored Responses (`store: true`): the response object for `GET /v1/responses/{id}` and the
//! conversation for `previous_response_id`, in memory, bounded in count and kept for a TTL
//! (`--responses-ttl`, `--responses-store-size`). The oldest entries go first when full.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::wire::{ChatMessageIn, ResponseObject};

struct Entry {
    response: ResponseObject,
    /// The whole conversation up to and including this response's output (no instructions).
    conversation: Vec<ChatMessageIn>,
    expires: Instant,
}

pub struct ResponseStore {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Insertion order, for eviction (ids of deleted entries are skipped).
    order: VecDeque<String>,
}

impl Inner {
    fn evict(&mut self, now: Instant, capacity: usize) {
        while let Some(id) = self.order.front() {
            let expired = self.entries.get(id).is_none_or(|e| e.expires <= now);
            if !expired && self.entries.len() <= capacity {
                break;
            }
            let id = self.order.pop_front().expect("front exists");
            self.entries.remove(&id);
        }
    }
}

impl ResponseStore {
    /// `capacity` 0 stores nothing.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn put(&self, response: ResponseObject, conversation: Vec<ChatMessageIn>) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let id = response.id.clone();
        inner.order.push_back(id.clone());
        inner.entries.insert(
            id,
            Entry {
                response,
                conversation,
                expires: now + self.ttl,
            },
        );
        inner.evict(now, self.capacity);
    }

    pub fn response(&self, id: &str) -> Option<ResponseObject> {
        self.with(id, |e| e.response.clone())
    }

    pub fn conversation(&self, id: &str) -> Option<Vec<ChatMessageIn>> {
        self.with(id, |e| e.conversation.clone())
    }

    /// True if it was there.
    pub fn delete(&self, id: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.evict(Instant::now(), self.capacity);
        inner.entries.remove(id).is_some()
    }

    pub fn len(&self) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.evict(Instant::now(), self.capacity);
        inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.evict(Instant::now(), self.capacity);
        inner.entries.get(id).map(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: &str) -> ResponseObject {
        ResponseObject {
            id: id.into(),
            object: "response".into(),
            created_at: 0,
            status: "completed".into(),
            error: None,
            incomplete_details: None,
            instructions: None,
            max_output_tokens: None,
            model: "m".into(),
            output: Vec::new(),
            parallel_tool_calls: true,
            previous_response_id: None,
            reasoning: serde_json::Value::Null,
            store: true,
            temperature: None,
            top_p: None,
            text: serde_json::Value::Null,
            tool_choice: serde_json::Value::Null,
            tools: Vec::new(),
            truncation: "disabled".into(),
            usage: None,
            metadata: serde_json::Value::Null,
            user: None,
        }
    }

    #[test]
    fn bounded_by_count_and_ttl() {
        let s = ResponseStore::new(Duration::from_secs(3600), 2);
        for id in ["a", "b", "c"] {
            s.put(response(id), Vec::new());
        }
        assert!(s.response("a").is_none(), "the oldest is evicted");
        assert_eq!(s.len(), 2);
        assert!(s.delete("b"));
        assert!(!s.delete("b"));
        assert!(s.response("c").is_some());

        let s = ResponseStore::new(Duration::ZERO, 10);
        s.put(response("x"), Vec::new());
        assert!(s.response("x").is_none(), "expired at once");
        assert!(s.is_empty());
    }
}
