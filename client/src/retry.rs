//! Retry policy shared by producers and consumers: exponential backoff with
//! jitter (built on `backon`), bounded by a number of consecutive retries.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// How transient failures (broker unavailable, broken stream, overload) are
/// retried. Delays grow exponentially from `min_delay` to `max_delay`, with
/// jitter; after `max_retries` consecutive failures the error is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// The first delay.
    pub min_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Consecutive retries before the error is reported.
    pub max_retries: usize,
}

#[cfg(test)]
impl RetryConfig {
    /// The tests' policy: 1 ms first, at most `max_delay_ms` between
    /// attempts, `max_retries` retries.
    pub(crate) fn fast(max_delay_ms: u64, max_retries: usize) -> Self {
        RetryConfig { min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(max_delay_ms), max_retries }
    }
}

impl Default for RetryConfig {
    /// 50 ms doubling up to 5 s, 10 retries: about 20 s of trying.
    fn default() -> Self {
        RetryConfig { min_delay: Duration::from_millis(50), max_delay: Duration::from_secs(5), max_retries: 10 }
    }
}

impl RetryConfig {
    /// No retries at all.
    pub fn none() -> Self {
        RetryConfig { max_retries: 0, ..RetryConfig::default() }
    }

    /// A fresh backoff sequence; `None` from it means "give up".
    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_max_times(self.max_retries)
            .with_jitter()
            .with_jitter_seed(jitter_seed())
            .build()
    }
}

fn jitter_seed() -> u64 {
    // backon is built without its `std` feature, so seed it ourselves to keep
    // clients that fail together from retrying in lockstep.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let cfg =
            RetryConfig { min_delay: Duration::from_millis(10), max_delay: Duration::from_millis(40), max_retries: 4 };
        let delays: Vec<Duration> = cfg.backoff().collect();
        assert_eq!(delays.len(), 4);
        // Jitter adds at most the delay itself.
        assert!(delays[0] >= Duration::from_millis(10) && delays[0] <= Duration::from_millis(20));
        assert!(delays[3] >= Duration::from_millis(40) && delays[3] <= Duration::from_millis(80));
        assert_eq!(RetryConfig::none().backoff().next(), None);
    }
}
