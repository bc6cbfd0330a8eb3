//! Retry policies, with Kombu's knobs.

use std::time::Duration;

/// How often and how fast to retry (Kombu's `max_retries`, `interval_start`, `interval_step`,
/// `interval_max`).
///
/// The wait before retry *n* (0-based) is `interval_start + n * interval_step`, capped at
/// `interval_max`.
///
/// ```
/// use std::time::Duration;
/// use kombu::RetryPolicy;
/// let p = RetryPolicy::default().max_retries(3);
/// let waits: Vec<_> = p.intervals().collect();
/// assert_eq!(waits, [Duration::from_secs(2), Duration::from_secs(4), Duration::from_secs(6)]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; `None` retries forever (Kombu's default for
    /// `ensure_connection`).
    pub max_retries: Option<u32>,
    /// First wait.
    pub interval_start: Duration,
    /// Added to the wait after each retry.
    pub interval_step: Duration,
    /// Longest wait.
    pub interval_max: Duration,
    /// Give up after this much time in total, whatever `max_retries` says.
    pub timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Kombu's `ensure_connection` defaults: forever, 2 s, +2 s, at most 30 s.
    fn default() -> Self {
        RetryPolicy {
            max_retries: None,
            interval_start: Duration::from_secs(2),
            interval_step: Duration::from_secs(2),
            interval_max: Duration::from_secs(30),
            timeout: None,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_retries: Some(0),
            ..Default::default()
        }
    }

    /// Kombu's `ensure` (publish retry) defaults: 1 s, +1 s, at most 1 s, 3 retries.
    pub fn publish_default() -> Self {
        RetryPolicy {
            max_retries: Some(3),
            interval_start: Duration::from_secs(1),
            interval_step: Duration::from_secs(1),
            interval_max: Duration::from_secs(1),
            timeout: None,
        }
    }

    /// Set `max_retries`.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// Set `interval_start`.
    pub fn interval_start(mut self, d: Duration) -> Self {
        self.interval_start = d;
        self
    }

    /// Set `interval_step`.
    pub fn interval_step(mut self, d: Duration) -> Self {
        self.interval_step = d;
        self
    }

    /// Set `interval_max`.
    pub fn interval_max(mut self, d: Duration) -> Self {
        self.interval_max = d;
        self
    }

    /// Set a total `timeout`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// The waits between attempts (endless when `max_retries` is `None`).
    pub fn intervals(&self) -> impl Iterator<Item = Duration> + '_ {
        let limit = self.max_retries.map_or(usize::MAX, |n| n as usize);
        (0u32..)
            .take(limit)
            .map(move |n| (self.interval_start + self.interval_step.saturating_mul(n)).min(self.interval_max))
    }
}
