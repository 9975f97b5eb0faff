//! Backoff between attempts: exponential with full jitter (SPEC §8), so that many
//! jobs failing together against one upstream do not retry in lockstep.

use std::time::Duration;

use crate::config::RetryPolicy;

/// The delay before the attempt after attempt `n` (1-based) failed: uniform in
/// `[0, min(max_backoff, initial_backoff · 2^(n-1))]`, then raised to the upstream's
/// `Retry-After` when it asked for more, and capped by `max_backoff` either way.
pub fn backoff(policy: &RetryPolicy, n: u32, retry_after: Option<Duration>) -> Duration {
    let exp = policy
        .initial_backoff
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)));
    let cap = exp.min(policy.max_backoff);
    let jittered = Duration::from_nanos(rand::random_range(
        0..=u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX),
    ));
    jittered
        .max(retry_after.unwrap_or_default())
        .min(policy.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
        }
    }

    proptest! {
        /// Whatever the attempt and whatever the upstream asks for, no wait is longer
        /// than `max_backoff`.
        #[test]
        fn never_waits_longer_than_the_cap(n in 1u32..200, initial in 1u64..5_000, max in 5_000u64..600_000, after_s in proptest::option::of(0u64..100_000)) {
            let p = policy(initial, max);
            let d = backoff(&p, n, after_s.map(Duration::from_secs));
            prop_assert!(d <= p.max_backoff, "{d:?}");
        }

        /// The first retry waits at most `initial_backoff` (an off-by-one in the
        /// exponent would double it).
        #[test]
        fn the_first_retry_waits_at_most_the_initial_backoff(initial in 1u64..5_000) {
            let p = policy(initial, 600_000);
            prop_assert!(backoff(&p, 1, None) <= p.initial_backoff);
        }

        /// The ceiling doubles with each attempt until the cap: among 64 draws for
        /// attempt n + 1, one lies beyond attempt n's ceiling (a chance of 2^-64 to
        /// miss if the ceiling really doubled), and none beyond twice it.
        #[test]
        fn the_ceiling_doubles_per_attempt(n in 1u32..8, initial in 1u64..1_000) {
            let p = policy(initial, 600_000);
            let mut ceiling = Duration::from_millis(initial);
            for _ in 1..n {
                ceiling += ceiling;
            }
            let draws: Vec<Duration> = (0..64).map(|_| backoff(&p, n + 1, None)).collect();
            prop_assert!(draws.iter().any(|d| *d > ceiling), "{draws:?} all within {ceiling:?}");
            prop_assert!(draws.iter().all(|d| *d <= ceiling * 2), "{draws:?} beyond {:?}", ceiling * 2);
        }

        #[test]
        fn honours_retry_after_up_to_the_cap(n in 1u32..10, after_s in 0u64..1_000) {
            let p = policy(10, 120_000);
            let after = Duration::from_secs(after_s);
            let d = backoff(&p, n, Some(after));
            prop_assert!(d >= after.min(p.max_backoff));
            prop_assert!(d <= p.max_backoff);
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let p = policy(1_000, 60_000);
        let delays: std::collections::HashSet<_> = (0..50).map(|_| backoff(&p, 4, None)).collect();
        assert!(delays.len() > 40, "{} distinct delays", delays.len());
    }
}
