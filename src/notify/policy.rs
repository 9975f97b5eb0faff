//! What one try's answer means for a notification (SPEC §10), decided here once for
//! both stores: 2xx is delivered; 410 Gone disables the sink; every other status, a
//! redirect (never followed) and a network error are retried on the sink's
//! schedule, with jitter and never before the receiver's `Retry-After`, until the
//! schedule runs out.

use std::time::Duration;

use crate::domain::{Millis, bounded};

/// How a try ended, as the deliverer saw it.
#[derive(Debug, Clone)]
pub enum Answer {
    Status {
        status: u16,
        retry_after: Option<Duration>,
        /// The start of the receiver's body, for the record.
        said: String,
    },
    /// No answer: refused, reset, timed out. Never names the URL.
    Transport(String),
}

/// Where the notification goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Tried again at `at`.
    Retry {
        at: Millis,
    },
    /// Past its schedule: `notification.failed`.
    Failed,
    /// The receiver answered 410 Gone: the sink is disabled (and this notification
    /// waits, pending, for it to be enabled).
    Gone,
}

/// A verdict with what the record keeps of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub verdict: Verdict,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// `Retry-After` is honoured up to this long; a receiver cannot park a sink for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// What is kept of a receiver's body in the record.
const MAX_SAID: usize = 200;

/// Judges try number `try_n` (from 1) of a notification whose sink retries after
/// the delays of `schedule`.
pub fn judge(answer: Answer, try_n: u32, schedule: &[Duration], now: Millis) -> Judged {
    let (status, retry_after, error) = match answer {
        Answer::Status { status, .. } if (200..300).contains(&status) => {
            return Judged {
                verdict: Verdict::Delivered,
                status: Some(status),
                error: None,
            };
        }
        Answer::Status { status: 410, .. } => {
            return Judged {
                verdict: Verdict::Gone,
                status: Some(410),
                error: Some("410 Gone: the sink is disabled until it is enabled".into()),
            };
        }
        Answer::Status {
            status,
            retry_after,
            said,
        } => {
            let error = match said.trim() {
                "" => format!("HTTP {status}"),
                said => format!("HTTP {status}: {}", bounded(said, MAX_SAID)),
            };
            (Some(status), retry_after, error)
        }
        Answer::Transport(why) => (None, None, why),
    };
    let delay = usize::try_from(try_n)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| schedule.get(i));
    let verdict = match delay {
        Some(delay) => {
            let wait = jittered(*delay).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
            Verdict::Retry {
                at: now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
            }
        }
        None => Verdict::Failed,
    };
    Judged {
        verdict,
        status,
        error: Some(error),
    }
}

/// `delay` ± 20 %, so the notifications a sink's outage held do not all come back
/// at the same instant.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(300)];

    fn status(status: u16) -> Answer {
        Answer::Status {
            status,
            retry_after: None,
            said: String::new(),
        }
    }

    #[test]
    fn success_is_delivered_and_gone_disables() {
        assert_eq!(judge(status(204), 1, &S, 0).verdict, Verdict::Delivered);
        assert_eq!(judge(status(410), 1, &S, 0).verdict, Verdict::Gone);
    }

    #[test]
    fn every_other_answer_is_retried_on_the_schedule_then_fails() {
        for answer in [
            status(400),
            status(302),
            status(503),
            Answer::Transport("refused".into()),
        ] {
            let first = judge(answer.clone(), 1, &S, 1_000).verdict;
            assert!(
                matches!(first, Verdict::Retry { at } if (5_000..=7_000).contains(&at)),
                "{first:?}"
            );
            let second = judge(answer.clone(), 2, &S, 0).verdict;
            assert!(
                matches!(second, Verdict::Retry { at } if (240_000..=360_000).contains(&at)),
                "{second:?}"
            );
            assert_eq!(judge(answer, 3, &S, 0).verdict, Verdict::Failed);
        }
    }

    #[test]
    fn retry_after_is_honoured_within_a_day() {
        let asked = |secs| Answer::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
            said: "slow down".into(),
        };
        let j = judge(asked(3600), 1, &S, 0);
        assert!(
            matches!(j.verdict, Verdict::Retry { at } if at == 3_600_000),
            "{j:?}"
        );
        assert_eq!(j.error.as_deref(), Some("HTTP 429: slow down"));
        let j = judge(asked(10 * 86_400), 1, &S, 0);
        assert!(
            matches!(j.verdict, Verdict::Retry { at } if at == 86_400_000),
            "{j:?}"
        );
    }

    #[test]
    fn an_empty_schedule_tries_once() {
        assert_eq!(judge(status(500), 1, &[], 0).verdict, Verdict::Failed);
    }
}
