//! Where an escalation is delivered beyond the people connected right now:
//! the [`Hook`] trait, and the back-off between failed attempts.
//!
//! A hook only carries bytes to one target and says whether the target took
//! them. Retrying, dead-lettering and remembering what was delivered belong
//! to the escalation service, so a pager or an SMS gateway is one more
//! `Hook` and nothing in the pipeline changes.

use std::time::Duration;

use futures_util::future::BoxFuture;

/// One delivery: the same bytes for every attempt of one round.
pub struct Outgoing {
    pub escalation: String,
    /// Stable across retries of one delivery, so the receiver can drop
    /// repeats (delivery is at least once).
    pub idempotency_key: String,
    /// The escalation as JSON.
    pub body: bytes::Bytes,
}

/// Why one attempt failed. The text is shown to staff (dead letters), so it
/// names the target's answer, never a secret or a URL's credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookError {
    #[error("the target answered HTTP {0}")]
    Status(u16),
    #[error("the target could not be reached: {0}")]
    Transport(String),
    #[error("the target did not answer within {0} ms")]
    Timeout(u64),
}

/// A place escalations are sent to, at least once.
pub trait Hook: Send + Sync {
    /// A label for staff and logs, such as `webhook example.org`.
    fn name(&self) -> &str;

    /// One attempt. `Ok` only when the target has taken the escalation.
    fn deliver<'a>(&'a self, out: &'a Outgoing) -> BoxFuture<'a, Result<(), HookError>>;
}

/// The wait before attempt `attempt + 1` (`attempt` ≥ 1 failed so far):
/// exponential from `min`, capped at `max`, with "equal jitter" (between
/// half and all of the step) so that a burst of failures does not retry in
/// lock-step, yet the wait never collapses to nothing.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let shift = attempt.saturating_sub(1).min(20);
    let step = min.saturating_mul(1u32 << shift).min(max);
    let half = step / 2;
    let jitter = rand::random::<f64>();
    half + half.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..200 {
            let first = backoff(1, min, max);
            assert!(first >= min / 2 && first <= min, "{first:?}");
            let third = backoff(3, min, max);
            assert!(third >= min * 2 && third <= min * 4, "{third:?}");
            let late = backoff(40, min, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
        let spread: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(5, min, max).as_micros()).collect();
        assert!(spread.len() > 10, "no jitter: {spread:?}");
    }
}
