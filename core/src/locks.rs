//! The per-volume in-flight guard: a second operation on a volume that is
//! already being worked on fails at once with `Aborted` instead of queueing
//! behind the first (the sidecars retry it with backoff).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The set of keys (volume IDs, snapshot names, ...) with an operation in flight.
#[derive(Debug, Default, Clone)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation runs; releases its key when dropped, also on
/// panic or cancellation, so a key can never stay locked.
#[derive(Debug)]
pub struct InFlightGuard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims `key`, or returns `None` when an operation already holds it.
    pub fn try_acquire(&self, key: &str) -> Option<InFlightGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.insert(key.to_owned()) {
            return None;
        }
        Some(InFlightGuard {
            keys: self.keys.clone(),
            key: key.to_owned(),
        })
    }

    /// Number of operations in flight.
    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_until_its_guard_drops() {
        let inflight = InFlight::default();
        let guard = inflight.try_acquire("v1.a.b").unwrap();
        assert!(inflight.try_acquire("v1.a.b").is_none());
        assert!(inflight.try_acquire("v1.a.c").is_some());
        assert_eq!(inflight.len(), 1);
        drop(guard);
        assert!(inflight.try_acquire("v1.a.b").is_some());
        assert!(inflight.is_empty());
    }
}
