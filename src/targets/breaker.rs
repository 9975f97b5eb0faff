//! A per-target circuit breaker: after a run of retryable failures the target is
//! left alone for a cool-down, so its jobs wait instead of burning their attempts
//! against an upstream that is down; then one probe decides whether it is back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Cool-down over; one probe attempt is running.
    Probing,
}

/// Whether an attempt may go to the upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Hold the job until this long from now.
    Wait(Duration),
}

/// A change worth putting on the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Closed,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether jobs are being held (open, or waiting on a probe).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }

    pub fn admit(&self) -> Admission {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Admission::Go,
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::Probing;
                    Admission::Go
                } else {
                    Admission::Wait(until - now)
                }
            }
            // Others wait for the probe's verdict; a cool-down is a fair estimate.
            State::Probing => Admission::Wait(self.config.cool_down),
        }
    }

    /// Records how an admitted attempt went: `healthy` unless it was a retryable
    /// failure (a 4xx answer means the upstream is up, even if the job failed).
    pub fn record(&self, healthy: bool) -> Option<Change> {
        if self.config.failures == 0 {
            return None;
        }
        let mut state = self.state();
        let (next, change) = match (*state, healthy) {
            (State::Closed { .. }, true) => (State::Closed { failures: 0 }, None),
            (State::Closed { failures }, false) if failures + 1 < self.config.failures => (
                State::Closed {
                    failures: failures + 1,
                },
                None,
            ),
            (State::Closed { .. }, false) => (self.open(), Some(Change::Opened)),
            (State::Probing | State::Open { .. }, true) => {
                (State::Closed { failures: 0 }, Some(Change::Closed))
            }
            // A failed probe (or a straggler that was admitted before the circuit
            // opened) keeps it open for another cool-down.
            (State::Probing | State::Open { .. }, false) => (self.open(), None),
        };
        *state = next;
        change
    }

    fn open(&self) -> State {
        State::Open {
            until: Instant::now() + self.config.cool_down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, cool_down_ms: u64) -> Breaker {
        Breaker::new(BreakerConfig {
            failures,
            cool_down: Duration::from_millis(cool_down_ms),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let b = breaker(3, 30);
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(true), None, "a success resets the count");
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(false), Some(Change::Opened));
        assert!(matches!(b.admit(), Admission::Wait(d) if d <= Duration::from_millis(30)));
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(b.admit(), Admission::Go, "one probe after the cool-down");
        assert!(matches!(b.admit(), Admission::Wait(_)), "only one");
        assert_eq!(b.record(true), Some(Change::Closed));
        assert_eq!(b.admit(), Admission::Go);
    }

    #[test]
    fn a_failed_probe_reopens_without_a_second_record() {
        let b = breaker(1, 10);
        assert_eq!(b.record(false), Some(Change::Opened));
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(b.admit(), Admission::Go);
        assert_eq!(b.record(false), None);
        assert!(matches!(b.admit(), Admission::Wait(_)));
    }

    #[test]
    fn zero_failures_disables_it() {
        let b = breaker(0, 10);
        for _ in 0..10 {
            assert_eq!(b.record(false), None);
            assert_eq!(b.admit(), Admission::Go);
        }
    }
}
