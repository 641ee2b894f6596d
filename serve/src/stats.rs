//! The daemon's own counters, beside the engine's metrics: messages per listener, HTTP requests and
//! messages, and recipient outcomes per event and reason (counted from the engine's event stream).
//!
//! Every label set here is bounded: listeners and routes come from the configuration and the code,
//! reasons from the classifier's vocabulary (anything past [`MAX_REASONS`] distinct values is counted
//! as `other`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use vmta::engine::DeliveryEvent;

/// Distinct (event, reason) pairs kept before further ones are counted under `other`.
pub const MAX_REASONS: usize = 256;

/// Counters shared by the listener, intake, HTTP and event threads.
#[derive(Debug, Default)]
pub struct Stats {
    /// Per listener name: messages received (durable) and refused.
    listener_messages: Mutex<BTreeMap<String, [u64; 2]>>,
    /// Per (route, status): HTTP requests answered.
    http_requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Messages taken through HTTP.
    pub http_messages_accepted: AtomicU64,
    /// Messages refused through HTTP (the request or the engine).
    pub http_messages_refused: AtomicU64,
    /// HTTP connections open now.
    pub http_connections_open: AtomicU64,
    /// HTTP connections refused because `max_connections` were open.
    pub http_connections_refused: AtomicU64,
    /// Per (event, reason): recipients.
    outcomes: Mutex<BTreeMap<(&'static str, String), u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    /// Counts messages a listener received and refused.
    pub fn listener_messages(&self, listener: &str, received: u64, refused: u64) {
        let mut m = lock(&self.listener_messages);
        match m.get_mut(listener) {
            Some(c) => {
                c[0] += received;
                c[1] += refused;
            }
            None => {
                m.insert(listener.to_string(), [received, refused]);
            }
        }
    }

    /// Per listener name: `[received, refused]`.
    pub fn listeners(&self) -> BTreeMap<String, [u64; 2]> {
        lock(&self.listener_messages).clone()
    }

    /// Counts one HTTP request answered.
    pub fn http_request(&self, route: &'static str, status: u16) {
        *lock(&self.http_requests)
            .entry((route, status))
            .or_default() += 1;
    }

    /// Per (route, status): requests.
    pub fn http_requests(&self) -> BTreeMap<(&'static str, u16), u64> {
        lock(&self.http_requests).clone()
    }

    /// Counts engine events by kind and reason.
    pub fn events(&self, events: &[DeliveryEvent]) {
        if events.is_empty() {
            return;
        }
        let mut m = lock(&self.outcomes);
        for e in events {
            // Not a recipient's outcome.
            if e.kind == vmta::engine::EventKind::Recovered {
                continue;
            }
            let kind = e.kind.as_str();
            if let Some(c) = m.get_mut(&(kind, e.reason.clone())) {
                *c += 1;
                continue;
            }
            let reason = if m.len() < MAX_REASONS {
                e.reason.clone()
            } else {
                "other".to_string()
            };
            *m.entry((kind, reason)).or_default() += 1;
        }
    }

    /// Per (event, reason): recipients.
    pub fn outcomes(&self) -> BTreeMap<(&'static str, String), u64> {
        lock(&self.outcomes).clone()
    }

    /// Messages taken and refused over HTTP.
    pub fn http_messages(&self, accepted: u64, refused: u64) {
        self.http_messages_accepted
            .fetch_add(accepted, Ordering::Relaxed);
        self.http_messages_refused
            .fetch_add(refused, Ordering::Relaxed);
    }
}
