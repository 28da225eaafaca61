//! Reporting backend API calls for the driver's metrics.
//!
//! Providers call [`api_call`] after each call to their backend (an EC2 or
//! ECS action, an lvm command). The driver installs an [`Observer`] that turns
//! the reports into its uniform metrics; without one, reports are dropped.

use std::sync::OnceLock;
use std::time::Duration;

/// Receives backend call reports.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// One finished call: `outcome` is `ok`, `throttled` or an error kind
    /// name (see [`crate::ErrorKind::as_str`]).
    fn api_call(&self, instance: &str, action: &str, outcome: &str, elapsed: Duration);
}

static OBSERVER: OnceLock<Box<dyn Observer>> = OnceLock::new();

/// Installs the process-wide observer (the first one wins).
pub fn install(observer: Box<dyn Observer>) {
    let _ = OBSERVER.set(observer);
}

/// Reports one backend call.
pub fn api_call(instance: &str, action: &str, outcome: &str, elapsed: Duration) {
    if let Some(o) = OBSERVER.get() {
        o.api_call(instance, action, outcome, elapsed);
    }
}

/// Outcome label for a call result.
pub fn outcome<T>(result: &crate::Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.kind().as_str(),
    }
}
