//! Retries (docs/sdk-contract.md, "Retries").
use crate::error::Error;
use std::time::Duration;
use tokio::time::Instant;

/// Bounds the retries of a call. Only connection failures before any
/// response, 429 (RATE_LIMIT_EXCEEDED) and 503 (OVERLOADED) are retried — on
/// a stream also those codes in an error frame, and only while no data frame
/// has arrived.
///
/// The wait before retry n (n = 1, 2, ...) is drawn uniformly from
/// `[0, min(max_backoff, initial_backoff * 2^(n-1))]` (full jitter), and is
/// at least the server's Retry-After. No retry is made when that wait would
/// end after `max_elapsed` from the call's start or after the call's
/// deadline; the last error is returned instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts, the first one included. 1 means no retry.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on the time from the first attempt to the start of the last
    /// one; `None` means unbounded.
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    /// 4 attempts, 200 ms, 5 s, 30 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Some(Duration::from_secs(30)),
        }
    }
}

impl RetryPolicy {
    /// Exactly one attempt.
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..Default::default() }
    }

    /// The cap of the wait after `attempts` failed attempts (1-based):
    /// `min(max_backoff, initial_backoff * 2^(attempts-1))`.
    pub fn backoff_cap(&self, attempts: u32) -> Duration {
        let max = self.max_backoff.max(self.initial_backoff);
        let shift = attempts.saturating_sub(1).min(62);
        let cap = self.initial_backoff.checked_mul(1u32.checked_shl(shift).unwrap_or(u32::MAX)).unwrap_or(max);
        cap.min(max)
    }

    /// A random wait in `[0, backoff_cap(attempts)]`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let cap = self.backoff_cap(attempts).as_nanos() as u64;
        Duration::from_nanos(fastrand::u64(0..=cap))
    }
}

/// Tracks the attempts of one call.
pub(crate) struct Retrier {
    p: RetryPolicy,
    start: Instant,
    deadline: Option<Instant>,
    attempts: u32,
}

impl Retrier {
    pub(crate) fn new(p: RetryPolicy, deadline: Option<Instant>) -> Self {
        Retrier { p, start: Instant::now(), deadline, attempts: 0 }
    }

    /// Called after a failed attempt: Ok after waiting when the call may be
    /// retried, else the error to return.
    pub(crate) async fn wait(&mut self, e: Error) -> Result<(), Error> {
        self.attempts += 1;
        if !e.retryable || self.attempts >= self.p.max_attempts {
            return Err(e);
        }
        let mut d = self.p.backoff(self.attempts);
        if let Some(ra) = e.retry_after {
            d = d.max(ra);
        }
        let end = Instant::now() + d;
        if let Some(me) = self.p.max_elapsed {
            if end.duration_since(self.start) > me {
                return Err(e);
            }
        }
        if let Some(dl) = self.deadline {
            if end > dl {
                return Err(e);
            }
        }
        tokio::time::sleep(d).await;
        Ok(())
    }
}
