//! The job life cycle in one place (SPEC §8, and §9 "States" for gates, approvals and
//! freezes): where a job starts, the events that move it, the one table of the moves
//! allowed, and what each move puts on the audit trail.
//!
//! Workers choose an event (by their retry policy), operators ask for one; the stores
//! ask [`next`] where it takes the job and write that state. No other code decides a
//! job's state (the lease statements, which write `running` as they pick a job, are
//! checked against the table), so a new state is new rows here, checked by the tests
//! below against an independent model of the SPEC.

use super::JobState;
use super::gate::Opening;
use crate::audit::AuditKind;

// The table below reads as the SPEC does: states, events and records by name (the
// events `Succeeded` and `Failed` as `Success` and `Fail`; the states keep theirs).
use AuditKind::{
    GateBlocked, GateConditionMet, JobApproved, JobAttempt, JobAwaitingApproval, JobCancelled,
    JobCreated, JobExpired, JobFailed, JobFrozen, JobInterrupted, JobRejected, JobRetried,
    JobRetrying, JobSucceeded, JobUnfrozen, JobWaiting,
};
use JobEvent::{
    Approved as Approve, Blocked as Block, ConditionMet, Expired as Expire, Failed as Fail,
    Frozen as Freeze, GateMet, Interrupted, LeaseTakenOver, Leased, OperatorCancel, OperatorRetry,
    Rejected as Reject, Released, Retry, Succeeded as Success,
};
use JobState::{
    AwaitingApproval, Cancelled, Expired, Failed, Frozen, Queued, Rejected, Retrying, Running,
    Succeeded, Waiting,
};
use Requires::{Approval as NeedsApproval, Evidence as NeedsEvidence, Nothing as NeedsNothing};

/// What a job's policy still requires before it may run, which decides where an
/// operator's retry revives it: its gate's evidence when the gate was never met,
/// else people's approval when it has an approval policy, else nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requires {
    Nothing,
    Approval,
    Evidence,
}

impl Requires {
    pub fn of(gate_met: Option<bool>, has_approval: bool) -> Requires {
        match (gate_met, has_approval) {
            (Some(false), _) => Requires::Evidence,
            (_, true) => Requires::Approval,
            (_, false) => Requires::Nothing,
        }
    }
}

/// What can happen to a job. Events carry only what decides where the job goes; the
/// values a move writes (an outcome, the next attempt's time, an error) travel with
/// the store's verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobEvent {
    /// A worker leased the due job for an attempt.
    Leased,
    /// A worker took over a job whose holder stopped renewing its lease; the lost
    /// attempt goes on the record as `lease_expired`.
    LeaseTakenOver,
    /// The attempt promoted (or found the promotion already made, or dry-ran).
    Succeeded,
    /// The attempt failed retryably and the budget allows another.
    Retry,
    /// The attempt failed permanently, or the budget ran out.
    Failed,
    /// Given back unattempted (circuit open, shutting down): no attempt is spent, so
    /// the job goes back to where it was before the lease, `queued` when this was to
    /// be its first attempt (`after_attempts` false), else `retrying`.
    Released { after_attempts: bool },
    /// Given back unattempted because a freeze window covers the job (SPEC §9): no
    /// attempt is spent; the job is due again when the freezes end.
    Frozen,
    /// The process shut down mid-attempt: the attempt is spent, the job retried.
    Interrupted,
    /// An operator's retry: the job starts over with its history kept, waiting again
    /// for what its policy still requires.
    OperatorRetry { requires: Requires },
    /// An operator's cancel.
    OperatorCancel,
    /// Enough distinct approvers said yes (`domain::approval` counts them).
    Approved,
    /// An approver said no.
    Rejected,
    /// The approval's timeout, or the gate's window, passed with the job still
    /// awaiting or waiting.
    Expired,
    /// Evidence met one more condition of the job's gate; others are still missing.
    ConditionMet,
    /// Evidence met the last missing condition: the job goes on, to approval when
    /// its policy asks for one.
    GateMet { needs_approval: bool },
    /// Negative evidence (a `block = true` condition) arrived: the job fails.
    Blocked,
    /// An operator let a frozen job run despite the freezes holding it (SPEC §9).
    FreezeOverridden,
    /// The config in force no longer has the rule of a job that waits for evidence or
    /// approval (SPEC §9 `rule_removed`).
    RuleRemoved,
    /// Given back unattempted because a protection not in force when the job was
    /// planned (a reload added it) requires approval first (SPEC §9).
    Protected,
}

impl JobEvent {
    /// The event's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            JobEvent::Leased => "leased",
            JobEvent::LeaseTakenOver => "lease_taken_over",
            JobEvent::Succeeded => "succeeded",
            JobEvent::Retry => "retry",
            JobEvent::Failed => "failed",
            JobEvent::Released { .. } => "released",
            JobEvent::Frozen => "frozen",
            JobEvent::Interrupted => "interrupted",
            JobEvent::OperatorRetry { .. } => "operator_retry",
            JobEvent::OperatorCancel => "operator_cancel",
            JobEvent::Approved => "approved",
            JobEvent::Rejected => "rejected",
            JobEvent::Expired => "expired",
            JobEvent::ConditionMet => "condition_met",
            JobEvent::GateMet { .. } => "gate_met",
            JobEvent::Blocked => "blocked",
            JobEvent::FreezeOverridden => "freeze_overridden",
            JobEvent::Protected => "protected",
            JobEvent::RuleRemoved => "rule_removed",
        }
    }

    /// Whether the move renews the attempt budget (`max_attempts` counts from here):
    /// an operator's retry gives the job a fresh start, nothing else does.
    pub fn renews_budget(self) -> bool {
        matches!(self, JobEvent::OperatorRetry { .. })
    }
}

/// One allowed move: `event` takes a `from` job to `to`, recorded as `audit` (`None`:
/// the move itself leaves no record; the attempt that follows does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub from: JobState,
    pub event: JobEvent,
    pub to: JobState,
    pub audit: Option<AuditKind>,
}

impl Step {
    const fn new(from: JobState, event: JobEvent, to: JobState, audit: Option<AuditKind>) -> Step {
        Step {
            from,
            event,
            to,
            audit,
        }
    }
}

/// Every move a job can make; any other is [`Forbidden`]. In the SPEC's words (§8):
///
/// - `queued → running → succeeded` (outcome `promoted` or `noop`);
/// - on a retryable failure `→ retrying` with the next attempt after a backoff;
/// - on a permanent failure or when attempts run out `→ failed`;
/// - a job whose lease expired is taken over by any worker (its lost attempt is
///   recorded);
/// - on SIGTERM, attempts still running past the grace period are recorded as
///   interrupted and left to be retried; jobs held back without an attempt go back
///   as they were;
/// - `cancelled` by an operator from every state that is not an end, and from
///   `failed`;
/// - an operator's retry revives a `failed` or `cancelled` job with its history
///   kept into what its policy still requires: `waiting` for a gate never met,
///   `awaiting_approval` when it has an approval, else `queued`; a `rejected` job
///   (whose gate was met) back to `awaiting_approval`, an `expired` one to whichever
///   of the two it expired in;
/// - (§9) a `waiting` job records each condition met, goes on when the last is
///   (`queued`, or `awaiting_approval`), fails on negative evidence, and `expired`
///   when its window ends;
/// - (§9) `awaiting_approval → queued` once approved, `→ rejected` on a rejection,
///   `→ expired` past the approval's timeout;
/// - (§9) a leased job that a freeze window covers is given back `frozen` without
///   spending an attempt; leased again once the freezes end (`job.unfrozen`), or
///   cancelled by an operator.
/// - (§9) an operator's freeze override makes a frozen job `queued`, due at once.
///
/// `succeeded` is final; `failed`, `cancelled`, `rejected` and `expired` only leave by
/// an operator.
#[rustfmt::skip]
pub const TRANSITIONS: [Step; 38] = [
    //        from       event                               to         audit
    Step::new(Queued,    Leased,                             Running,   None),
    Step::new(Retrying,  Leased,                             Running,   None),
    Step::new(Running,   LeaseTakenOver,                     Running,   Some(JobAttempt)),
    Step::new(Running,   Success,                            Succeeded, Some(JobSucceeded)),
    Step::new(Running,   Retry,                              Retrying,  Some(JobRetrying)),
    Step::new(Running,   Fail,                               Failed,    Some(JobFailed)),
    Step::new(Running,   Released { after_attempts: false }, Queued,    None),
    Step::new(Running,   Released { after_attempts: true },  Retrying,  None),
    Step::new(Running,   Interrupted,                        Retrying,  Some(JobInterrupted)),
    Step::new(Failed,    OperatorRetry { requires: NeedsNothing },  Queued,           Some(JobRetried)),
    Step::new(Cancelled, OperatorRetry { requires: NeedsNothing },  Queued,           Some(JobRetried)),
    Step::new(Failed,    OperatorRetry { requires: NeedsApproval }, AwaitingApproval, Some(JobRetried)),
    Step::new(Cancelled, OperatorRetry { requires: NeedsApproval }, AwaitingApproval, Some(JobRetried)),
    Step::new(Rejected,  OperatorRetry { requires: NeedsApproval }, AwaitingApproval, Some(JobRetried)),
    Step::new(Expired,   OperatorRetry { requires: NeedsApproval }, AwaitingApproval, Some(JobRetried)),
    Step::new(Failed,    OperatorRetry { requires: NeedsEvidence }, Waiting,          Some(JobRetried)),
    Step::new(Cancelled, OperatorRetry { requires: NeedsEvidence }, Waiting,          Some(JobRetried)),
    Step::new(Expired,   OperatorRetry { requires: NeedsEvidence }, Waiting,          Some(JobRetried)),
    Step::new(Queued,    OperatorCancel,                     Cancelled, Some(JobCancelled)),
    Step::new(Retrying,  OperatorCancel,                     Cancelled, Some(JobCancelled)),
    Step::new(Failed,    OperatorCancel,                     Cancelled, Some(JobCancelled)),
    Step::new(AwaitingApproval, OperatorCancel,              Cancelled, Some(JobCancelled)),
    Step::new(AwaitingApproval, Approve,                     Queued,    Some(JobApproved)),
    Step::new(AwaitingApproval, Reject,                      Rejected,  Some(JobRejected)),
    Step::new(AwaitingApproval, Expire,                      Expired,   Some(JobExpired)),
    Step::new(Running,   Freeze,                             Frozen,    Some(JobFrozen)),
    Step::new(Frozen,    Leased,                             Running,   Some(JobUnfrozen)),
    Step::new(Frozen,    OperatorCancel,                     Cancelled, Some(JobCancelled)),
    Step::new(Waiting,   ConditionMet,                       Waiting,   Some(GateConditionMet)),
    Step::new(Waiting,   GateMet { needs_approval: false },  Queued,    None),
    Step::new(Waiting,   GateMet { needs_approval: true },   AwaitingApproval, Some(JobAwaitingApproval)),
    Step::new(Waiting,   Block,                              Failed,    Some(GateBlocked)),
    Step::new(Waiting,   Expire,                             Expired,   Some(JobExpired)),
    Step::new(Waiting,   OperatorCancel,                     Cancelled, Some(JobCancelled)),
    Step::new(Frozen,    JobEvent::FreezeOverridden,         Queued,    Some(AuditKind::JobFreezeOverridden)),
    Step::new(Running,   JobEvent::Protected,                AwaitingApproval, Some(JobAwaitingApproval)),
    Step::new(Waiting,   JobEvent::RuleRemoved,              Cancelled, Some(JobCancelled)),
    Step::new(AwaitingApproval, JobEvent::RuleRemoved,       Cancelled, Some(JobCancelled)),
];

/// Where a job the rules planned starts, and its first record (SPEC §8, §9): `failed`
/// at once when its templates could not be rendered (a template error being
/// permanent: nobody waits for evidence or approval of a promotion that cannot run)
/// or its gate found negative evidence; `waiting` when its gate lacks evidence;
/// `awaiting_approval` when its policy asks for people's approval; else `queued`.
pub fn start(
    rendered: bool,
    gate: Option<&Opening>,
    needs_approval: bool,
) -> (JobState, AuditKind) {
    match (rendered, gate, needs_approval) {
        (false, ..) => (Failed, JobFailed),
        (true, Some(Opening::Blocked(_)), _) => (Failed, GateBlocked),
        (true, Some(Opening::Waiting), _) => (Waiting, JobWaiting),
        (true, _, true) => (AwaitingApproval, JobAwaitingApproval),
        (true, _, false) => (Queued, JobCreated),
    }
}

/// A move the life cycle does not allow: an operator's conflict, or a bug in the
/// caller when the state was fenced (a leased job is `running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {} job cannot be moved by `{}`", from.as_str(), event.as_str())]
pub struct Forbidden {
    pub from: JobState,
    pub event: JobEvent,
}

/// Where `event` takes a job in state `from`, and what it records.
pub fn next(from: JobState, event: JobEvent) -> Result<&'static Step, Forbidden> {
    TRANSITIONS
        .iter()
        .find(|s| s.from == from && s.event == event)
        .ok_or(Forbidden { from, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EVENTS: [JobEvent; 23] = [
        Leased,
        LeaseTakenOver,
        Success,
        Retry,
        Fail,
        Released {
            after_attempts: false,
        },
        Released {
            after_attempts: true,
        },
        Interrupted,
        OperatorRetry {
            requires: NeedsNothing,
        },
        OperatorRetry {
            requires: NeedsApproval,
        },
        OperatorRetry {
            requires: NeedsEvidence,
        },
        OperatorCancel,
        Approve,
        Reject,
        Expire,
        Freeze,
        ConditionMet,
        GateMet {
            needs_approval: false,
        },
        GateMet {
            needs_approval: true,
        },
        Block,
        JobEvent::FreezeOverridden,
        JobEvent::Protected,
        JobEvent::RuleRemoved,
    ];

    /// The SPEC's life cycle written out again, independently of the table, as
    /// which states each event may move a job from and to. A row added to, dropped
    /// from or mistyped in [`TRANSITIONS`] disagrees with it.
    fn spec(from: JobState, event: JobEvent) -> Option<JobState> {
        let due = matches!(from, Queued | Retrying);
        let ended_badly = matches!(from, Failed | Cancelled);
        let awaiting = from == AwaitingApproval;
        let gated = from == Waiting;
        match event {
            Leased if due || from == Frozen => Some(Running),
            Freeze if from == Running => Some(Frozen),
            LeaseTakenOver if from == Running => Some(Running),
            Success if from == Running => Some(Succeeded),
            Retry | Interrupted if from == Running => Some(Retrying),
            Fail if from == Running => Some(Failed),
            Released { after_attempts } if from == Running => {
                Some(if after_attempts { Retrying } else { Queued })
            }
            OperatorRetry { requires } if ended_badly => Some(match requires {
                NeedsNothing => Queued,
                NeedsApproval => AwaitingApproval,
                NeedsEvidence => Waiting,
            }),
            // A rejected job had an approval (after any gate was met); an expired one
            // expired waiting for evidence or for approval.
            OperatorRetry {
                requires: NeedsApproval,
            } if matches!(from, Rejected | Expired) => Some(AwaitingApproval),
            OperatorRetry {
                requires: NeedsEvidence,
            } if from == Expired => Some(Waiting),
            OperatorCancel if due || awaiting || gated || matches!(from, Failed | Frozen) => {
                Some(Cancelled)
            }
            Approve if awaiting => Some(Queued),
            Reject if awaiting => Some(Rejected),
            Expire if awaiting || gated => Some(Expired),
            ConditionMet if gated => Some(Waiting),
            GateMet { needs_approval } if gated => Some(if needs_approval {
                AwaitingApproval
            } else {
                Queued
            }),
            Block if gated => Some(Failed),
            JobEvent::FreezeOverridden if from == Frozen => Some(Queued),
            JobEvent::Protected if from == Running => Some(AwaitingApproval),
            JobEvent::RuleRemoved if gated || awaiting => Some(Cancelled),
            _ => None,
        }
    }

    #[test]
    fn the_table_is_the_spec() {
        for from in JobState::ALL {
            for event in EVENTS {
                assert_eq!(
                    next(from, event).ok().map(|s| s.to),
                    spec(from, event),
                    "{from:?} --{event:?}-->"
                );
            }
        }
    }

    #[test]
    fn a_planned_job_starts_where_its_policy_says() {
        let blocked = Opening::Blocked(crate::domain::gate::Seen {
            condition: "criticals".into(),
            event_id: "e".into(),
            block: true,
        });
        assert_eq!(start(true, None, false), (Queued, JobCreated));
        assert_eq!(
            start(true, None, true),
            (AwaitingApproval, JobAwaitingApproval)
        );
        assert_eq!(
            start(true, Some(&Opening::Met), false),
            (Queued, JobCreated)
        );
        assert_eq!(
            start(true, Some(&Opening::Met), true),
            (AwaitingApproval, JobAwaitingApproval)
        );
        assert_eq!(
            start(true, Some(&Opening::Waiting), true),
            (Waiting, JobWaiting)
        );
        assert_eq!(start(true, Some(&blocked), true), (Failed, GateBlocked));
        for gate in [None, Some(&Opening::Waiting), Some(&blocked)] {
            assert_eq!(start(false, gate, true), (Failed, JobFailed));
        }
    }

    /// "A revived job waits for approval again" (SPEC §9 States): retry's target is
    /// the policy's, for every state retry revives.
    #[test]
    fn a_retry_revives_into_what_the_policy_requires() {
        for from in [Failed, Cancelled, Rejected, Expired] {
            let again = OperatorRetry {
                requires: NeedsApproval,
            };
            assert_eq!(next(from, again).map(|s| s.to), Ok(AwaitingApproval));
        }
        for from in [Failed, Cancelled, Expired] {
            let gate = OperatorRetry {
                requires: NeedsEvidence,
            };
            assert_eq!(next(from, gate).map(|s| s.to), Ok(Waiting));
        }
        for from in [Failed, Cancelled] {
            let plain = OperatorRetry {
                requires: NeedsNothing,
            };
            assert_eq!(next(from, plain).map(|s| s.to), Ok(Queued));
        }
        assert_eq!(Requires::of(Some(false), true), NeedsEvidence);
        assert_eq!(Requires::of(Some(true), true), NeedsApproval);
        assert_eq!(Requires::of(None, false), NeedsNothing);
    }

    /// An awaiting job is not due: nothing but an approval, a rejection, its timeout,
    /// an operator's cancel or its rule's removal moves it, and no lease takes it.
    #[test]
    fn an_awaiting_job_moves_only_by_people_or_its_timeout() {
        let moves: Vec<(JobEvent, JobState, Option<AuditKind>)> = EVENTS
            .into_iter()
            .filter_map(|e| next(AwaitingApproval, e).ok().map(|s| (e, s.to, s.audit)))
            .collect();
        assert_eq!(
            moves,
            [
                (OperatorCancel, Cancelled, Some(JobCancelled)),
                (Approve, Queued, Some(JobApproved)),
                (Reject, Rejected, Some(JobRejected)),
                (Expire, Expired, Some(JobExpired)),
                (JobEvent::RuleRemoved, Cancelled, Some(JobCancelled)),
            ]
        );
    }

    /// A waiting job is not due either: evidence, its window, an operator's cancel or
    /// its rule's removal moves it.
    #[test]
    fn a_waiting_job_moves_only_by_evidence_its_window_or_an_operator() {
        let moves: Vec<(JobEvent, JobState)> = EVENTS
            .into_iter()
            .filter_map(|e| next(Waiting, e).ok().map(|s| (e, s.to)))
            .collect();
        assert_eq!(
            moves,
            [
                (OperatorCancel, Cancelled),
                (Expire, Expired),
                (ConditionMet, Waiting),
                (
                    GateMet {
                        needs_approval: false
                    },
                    Queued
                ),
                (
                    GateMet {
                        needs_approval: true
                    },
                    AwaitingApproval
                ),
                (Block, Failed),
                (JobEvent::RuleRemoved, Cancelled),
            ]
        );
    }

    #[test]
    fn the_table_names_each_move_once() {
        for (i, a) in TRANSITIONS.iter().enumerate() {
            for b in &TRANSITIONS[i + 1..] {
                assert!((a.from, a.event) != (b.from, b.event), "{a:?} and {b:?}");
            }
        }
    }

    /// The lease statements write `running` themselves (they pick and move a job in
    /// one statement); these are the rows they must agree with.
    #[test]
    fn leasing_runs_a_waiting_job_or_takes_over_a_running_one() {
        assert_eq!(next(Queued, Leased).map(|s| s.to), Ok(Running));
        assert_eq!(next(Retrying, Leased).map(|s| s.to), Ok(Running));
        assert_eq!(
            next(Frozen, Leased).map(|s| (s.to, s.audit)),
            Ok((Running, Some(JobUnfrozen)))
        );
        assert_eq!(next(Running, LeaseTakenOver).map(|s| s.to), Ok(Running));
        assert_eq!(
            next(Running, LeaseTakenOver).map(|s| s.audit),
            Ok(Some(JobAttempt))
        );
        assert!(next(Running, Leased).is_err());
    }

    #[test]
    fn final_states_leave_only_by_an_operator() {
        for from in [Succeeded, Failed, Cancelled, Rejected, Expired] {
            for event in EVENTS {
                let retry = matches!(event, OperatorRetry { .. });
                let allowed = match from {
                    Failed => retry || event == OperatorCancel,
                    Cancelled => retry,
                    Rejected => {
                        event
                            == OperatorRetry {
                                requires: NeedsApproval,
                            }
                    }
                    Expired => matches!(
                        event,
                        OperatorRetry {
                            requires: NeedsApproval | NeedsEvidence
                        }
                    ),
                    _ => false,
                };
                assert_eq!(
                    next(from, event).is_ok(),
                    allowed,
                    "{from:?} --{event:?}-->"
                );
            }
        }
    }

    #[test]
    fn cancel_works_on_awaiting_queued_retrying_failed_and_frozen_jobs_only() {
        let cancellable: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(|s| next(*s, OperatorCancel).is_ok())
            .collect();
        assert_eq!(
            cancellable,
            [Waiting, AwaitingApproval, Queued, Retrying, Failed, Frozen]
        );
    }

    #[test]
    fn a_held_job_goes_back_as_it_was() {
        let first = Released {
            after_attempts: false,
        };
        let again = Released {
            after_attempts: true,
        };
        assert_eq!(
            next(Running, first).map(|s| (s.to, s.audit)),
            Ok((Queued, None))
        );
        assert_eq!(
            next(Running, again).map(|s| (s.to, s.audit)),
            Ok((Retrying, None))
        );
    }

    #[test]
    fn every_move_by_an_operator_or_an_end_of_attempt_is_on_the_record() {
        for step in &TRANSITIONS {
            // Leaving a freeze is on the record (`job.unfrozen`); other leases are not.
            // A gate met goes on the record as its last condition met.
            let silent = (matches!(step.event, Leased | Released { .. }) && step.from != Frozen)
                || step.event
                    == (GateMet {
                        needs_approval: false,
                    });
            assert_eq!(step.audit.is_none(), silent, "{step:?}");
        }
    }

    #[test]
    fn only_an_operators_retry_renews_the_budget() {
        let renewing: Vec<JobEvent> = EVENTS.into_iter().filter(|e| e.renews_budget()).collect();
        assert_eq!(
            renewing,
            [
                OperatorRetry {
                    requires: NeedsNothing
                },
                OperatorRetry {
                    requires: NeedsApproval
                },
                OperatorRetry {
                    requires: NeedsEvidence
                }
            ]
        );
    }

    #[test]
    fn a_forbidden_move_says_what_was_refused() {
        let refused = next(Succeeded, OperatorCancel).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "a succeeded job cannot be moved by `operator_cancel`"
        );
    }

    proptest! {
        /// Random histories of a planned job: every move accepted is a row of the
        /// table and what the SPEC model allows, every move refused is one the model
        /// refuses too, and the job never leaves the states there are.
        #[test]
        fn random_histories_keep_to_the_life_cycle(
            rendered in any::<bool>(),
            gate in proptest::sample::select(vec![None, Some(Opening::Met), Some(Opening::Waiting)]),
            needs_approval in any::<bool>(),
            events in proptest::collection::vec(proptest::sample::select(EVENTS.to_vec()), 0..64)
        ) {
            let (mut state, _) = start(rendered, gate.as_ref(), needs_approval);
            for event in events {
                match next(state, event) {
                    Ok(step) => {
                        prop_assert!(TRANSITIONS.contains(step));
                        prop_assert_eq!((step.from, step.event), (state, event));
                        prop_assert_eq!(Some(step.to), spec(state, event));
                        state = step.to;
                    }
                    Err(refused) => {
                        prop_assert_eq!(refused, Forbidden { from: state, event });
                        prop_assert_eq!(spec(state, event), None);
                    }
                }
                prop_assert!(JobState::ALL.contains(&state));
                if state == Succeeded {
                    prop_assert!(EVENTS.iter().all(|e| next(Succeeded, *e).is_err()));
                }
            }
        }
    }
}
