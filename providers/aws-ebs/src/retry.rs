//! Per-call timeouts, retries of transient failures, and an adaptive pause
//! shared by all calls of one instance when EC2 throttles.
//!
//! EC2 throttles per account and region, so one throttled call means the
//! others will be throttled too: every call waits out the shared pause
//! before it is sent. The pause doubles on each `RequestLimitExceeded` and
//! halves on each success (an AIMD limiter on delay), so a burst is absorbed
//! by slowing down rather than surfacing as errors. Only the caller's
//! deadline ends a throttled call, as `DeadlineExceeded`.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::client::{ClientError, ClientResult};
use crate::errors::{is_retryable, is_throttling};

/// Attempts for server errors and transport failures (throttling is bounded
/// by the deadline alone).
const TRANSIENT_ATTEMPTS: u32 = 4;

#[derive(Debug, Default)]
struct State {
    penalty: Duration,
    throttled: u64,
    seed: u64,
}

/// Runs EC2 calls with a timeout, retries and the shared throttle pause.
#[derive(Debug)]
pub struct Retrier {
    instance: String,
    api_timeout: Duration,
    base: Duration,
    max: Duration,
    state: Mutex<State>,
}

impl Retrier {
    /// A retrier with per-call `api_timeout` and throttle pauses between
    /// `base` and `max`.
    pub fn new(api_timeout: Duration, base: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Self {
            instance: String::new(),
            api_timeout,
            base,
            max: max.max(base),
            state: Mutex::new(State {
                seed,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current shared pause, with jitter so that waiters do not all
    /// fire at once when it ends.
    fn pause(&self) -> Duration {
        let mut state = self.lock();
        if state.penalty.is_zero() {
            return Duration::ZERO;
        }
        // xorshift: cheap, good enough for spreading retries.
        state.seed ^= state.seed << 13;
        state.seed ^= state.seed >> 7;
        state.seed ^= state.seed << 17;
        let fraction = 0.5 + (state.seed % 1000) as f64 / 2000.0;
        state.penalty.mul_f64(fraction)
    }

    fn on_throttle(&self) {
        let mut state = self.lock();
        state.throttled += 1;
        state.penalty = (state.penalty * 2).max(self.base).min(self.max);
    }

    fn on_success(&self) {
        let mut state = self.lock();
        state.penalty = if state.penalty <= self.base {
            Duration::ZERO
        } else {
            state.penalty / 2
        };
    }

    /// Names the instance in the backend call reports (metrics).
    #[must_use]
    pub fn for_instance(mut self, instance: &str) -> Self {
        self.instance = instance.to_owned();
        self
    }

    /// How many throttled answers were absorbed so far.
    pub fn throttled(&self) -> u64 {
        self.lock().throttled
    }

    /// The per-call timeout.
    pub fn api_timeout(&self) -> Duration {
        self.api_timeout
    }

    /// Runs `call` until it succeeds, fails for good, or `deadline` passes.
    pub async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        deadline: Instant,
        mut call: F,
    ) -> ClientResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ClientResult<T>>,
    {
        let mut transient_failures = 0u32;
        loop {
            let pause = self.pause();
            if !pause.is_zero() {
                if Instant::now() + pause >= deadline {
                    return Err(ClientError::Timeout {
                        operation,
                        timeout: self.api_timeout,
                    });
                }
                tokio::time::sleep(pause).await;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClientError::Timeout {
                    operation,
                    timeout: self.api_timeout,
                });
            }
            let limit = remaining.min(self.api_timeout);
            let started = std::time::Instant::now();
            let result = match tokio::time::timeout(limit, call()).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout {
                    operation,
                    timeout: limit,
                }),
            };
            let outcome = match &result {
                Ok(_) => "ok",
                Err(err) if is_throttling(err) => "throttled",
                Err(_) => "error",
            };
            omnidisk_provider_api::observe::api_call(
                &self.instance,
                operation,
                outcome,
                started.elapsed(),
            );
            match result {
                Ok(value) => {
                    self.on_success();
                    return Ok(value);
                }
                Err(err) if is_throttling(&err) => {
                    tracing::debug!(operation, "EC2 throttled the request; slowing down");
                    self.on_throttle();
                }
                Err(err) if is_retryable(&err) && transient_failures + 1 < TRANSIENT_ATTEMPTS => {
                    transient_failures += 1;
                    let wait = self.base * 2u32.pow(transient_failures);
                    if Instant::now() + wait >= deadline {
                        return Err(err);
                    }
                    tracing::debug!(operation, error = %err, "transient EC2 failure; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn err(code: &str) -> ClientError {
        ClientError::Service {
            operation: "DescribeVolumes",
            code: code.into(),
            message: String::new(),
        }
    }

    fn retrier() -> Retrier {
        Retrier::new(
            Duration::from_secs(5),
            Duration::from_millis(100),
            Duration::from_secs(5),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_absorbed_until_success() {
        let r = retrier();
        let calls = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&calls);
        let out = r
            .run(
                "DescribeVolumes",
                Instant::now() + Duration::from_secs(60),
                || {
                    let c = Arc::clone(&c);
                    async move {
                        if c.fetch_add(1, Ordering::SeqCst) < 5 {
                            Err(err("RequestLimitExceeded"))
                        } else {
                            Ok(42)
                        }
                    }
                },
            )
            .await
            .unwrap();
        assert_eq!(out, 42);
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert_eq!(r.throttled(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn endless_throttling_ends_at_the_deadline_as_a_timeout() {
        let r = retrier();
        let start = Instant::now();
        let out: ClientResult<()> = r
            .run("AttachVolume", start + Duration::from_secs(10), || async {
                Err(err("RequestLimitExceeded"))
            })
            .await;
        assert!(matches!(out, Err(ClientError::Timeout { .. })), "{out:?}");
        assert!(Instant::now() <= start + Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_transient_ones_are_bounded() {
        let r = retrier();
        let calls = AtomicU32::new(0);
        let out: ClientResult<()> = r
            .run(
                "DeleteVolume",
                Instant::now() + Duration::from_secs(60),
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(err("VolumeInUse")) }
                },
            )
            .await;
        assert_eq!(out.unwrap_err().code(), Some("VolumeInUse"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let out: ClientResult<()> = r
            .run(
                "DeleteVolume",
                Instant::now() + Duration::from_secs(60),
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(err("InternalError")) }
                },
            )
            .await;
        assert_eq!(out.unwrap_err().code(), Some("InternalError"));
        assert_eq!(calls.load(Ordering::SeqCst), TRANSIENT_ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_call_times_out() {
        let r = retrier();
        let out: ClientResult<()> = r
            .run(
                "CreateVolume",
                Instant::now() + Duration::from_secs(60),
                || async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                },
            )
            .await;
        match out {
            Err(ClientError::Timeout { timeout, .. }) => {
                assert_eq!(timeout, Duration::from_secs(5))
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn the_pause_grows_on_throttle_and_decays_on_success() {
        let r = retrier();
        assert!(r.pause().is_zero());
        r.on_throttle();
        r.on_throttle();
        r.on_throttle();
        assert_eq!(r.lock().penalty, Duration::from_millis(400));
        let p = r.pause();
        assert!(
            p >= Duration::from_millis(200) && p <= Duration::from_millis(400),
            "{p:?}"
        );
        for _ in 0..10 {
            r.on_throttle();
        }
        assert_eq!(r.lock().penalty, Duration::from_secs(5));
        for _ in 0..20 {
            r.on_success();
        }
        assert!(r.pause().is_zero());
    }
}
