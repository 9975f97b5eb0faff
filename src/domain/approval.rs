//! Who may approve a job, and when enough people have (SPEC §9 "Approvals").
//!
//! The decision lives here, once: the stores load a job's policy and the verdicts
//! given so far, ask [`decide`], and persist what it answers in the same transaction
//! (so two approvals at two replicas count correctly). Where the job then goes is the
//! life cycle's table.

use serde::{Deserialize, Serialize};

use super::job::{as_rfc3339, opt_rfc3339};
use super::{JobEvent, JobState, Millis};

/// The approval a job was created under, kept with the job so that a reload of the
/// config does not change what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalPolicy {
    /// Distinct approvers needed.
    pub count: u32,
    /// Token groups that may approve; any `operate` token when empty.
    pub groups: Vec<String>,
    /// How long the job may await approval, from the time it started awaiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Millis>,
    /// Whether the job's initiator may approve it.
    pub allow_self: bool,
    /// Per-group quorums, every one needed; when set, `count` and `groups` are not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<Quorum>,
    /// The protections whose approval this policy includes (`domain::protection`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protections: Vec<String>,
}

/// `count` distinct approvers approving as one of `groups` (any approver when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quorum {
    pub groups: Vec<String>,
    pub count: u32,
}

impl Quorum {
    /// Whether an approval given as `group` counts for this quorum.
    fn counts(&self, group: Option<&str>) -> bool {
        self.groups.is_empty() || group.is_some_and(|g| self.groups.iter().any(|q| q == g))
    }
}

impl ApprovalPolicy {
    /// The quorums the policy needs: its `all_of`, or the one its `count` of
    /// `groups` makes.
    pub fn quorums(&self) -> Vec<Quorum> {
        if self.all_of.is_empty() {
            vec![Quorum {
                groups: self.groups.clone(),
                count: self.count,
            }]
        } else {
            self.all_of.clone()
        }
    }

    /// A policy needing `first` (when there is one) and `then`, the approval of the
    /// protection `name`: every quorum of both, the shorter timeout, and the initiator
    /// allowed to approve only when both allow it.
    pub fn both(
        first: Option<ApprovalPolicy>,
        then: &ApprovalPolicy,
        name: &str,
    ) -> ApprovalPolicy {
        let Some(first) = first else {
            let mut only = then.clone();
            only.protections = vec![name.to_string()];
            return only;
        };
        let timeout_ms = match (first.timeout_ms, then.timeout_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut protections = first.protections.clone();
        protections.push(name.to_string());
        ApprovalPolicy {
            count: 1,
            groups: Vec::new(),
            timeout_ms,
            allow_self: first.allow_self && then.allow_self,
            all_of: first.quorums().into_iter().chain(then.quorums()).collect(),
            protections,
        }
    }

    /// When a job that starts awaiting approval at `now` expires.
    pub fn expires_at(&self, now: Millis) -> Option<Millis> {
        self.timeout_ms.map(|t| now.saturating_add(t))
    }
}

/// A job's approval as it shows and keeps it: the policy, when the current wait
/// ends, and who set the job off (whom the policy may refuse as an approver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobApproval {
    #[serde(flatten)]
    pub policy: ApprovalPolicy,
    #[serde(serialize_with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Millis>,
    pub initiator: Option<String>,
}

/// Yes or no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approved,
    Rejected,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        [Verdict::Approved, Verdict::Rejected]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One verdict given on a job, as the job shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Approval {
    pub by: String,
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
    pub verdict: Verdict,
    pub comment: Option<String>,
    #[serde(rename = "as")]
    pub as_group: Option<String>,
}

/// A verdict someone asks to give, with what the decision needs to know of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ballot {
    /// The approver's token name.
    pub by: String,
    /// The groups the approver's token is in.
    pub groups: Vec<String>,
    pub verdict: Verdict,
    pub comment: Option<String>,
    /// The group the approver approves as.
    pub as_group: Option<String>,
}

/// What a job needs known to decide on a ballot.
#[derive(Debug, Clone, Copy)]
pub struct Awaiting<'a> {
    pub state: JobState,
    pub approval: &'a JobApproval,
    /// The verdicts given since the job last started awaiting approval.
    pub given: &'a [Approval],
}

/// Why a ballot is refused; each is an API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the job is {}, not awaiting approval", .0.as_str())]
    InvalidState(JobState),
    #[error("a rejection needs a comment")]
    CommentRequired,
    #[error("the token is in none of the groups that may approve this job")]
    NotAnApprover,
    #[error("the job's initiator may not approve it")]
    SelfApproval,
    #[error("the token is in several of the groups this job needs; say which one with `as`")]
    AsRequired,
}

/// What a ballot accepted does: record it (unless the approver already approved,
/// which counts once) and move the job by `event` when it decides the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub record: bool,
    pub event: Option<JobEvent>,
    /// The group the verdict is given as: the one the approver named, or the only one
    /// of its groups the policy asks for.
    pub as_group: Option<String>,
}

/// Decides on `ballot` for a job at `now`: the rules of §9 in one place.
pub fn decide(job: Awaiting<'_>, ballot: &Ballot, now: Millis) -> Result<Decision, Refusal> {
    let expired = job.approval.expires_at.is_some_and(|at| now >= at);
    if job.state != JobState::AwaitingApproval || expired {
        // An expired job not yet moved by the expiry pass is as good as expired.
        let state = if expired && job.state == JobState::AwaitingApproval {
            JobState::Expired
        } else {
            job.state
        };
        return Err(Refusal::InvalidState(state));
    }
    let comment_given = ballot
        .comment
        .as_deref()
        .is_some_and(|c| !c.trim().is_empty());
    if ballot.verdict == Verdict::Rejected && !comment_given {
        return Err(Refusal::CommentRequired);
    }
    let policy = &job.approval.policy;
    let quorums = policy.quorums();
    let as_group = approving_as(&quorums, ballot)?;
    if !policy.allow_self && job.approval.initiator.as_deref() == Some(ballot.by.as_str()) {
        return Err(Refusal::SelfApproval);
    }
    if ballot.verdict == Verdict::Rejected {
        return Ok(Decision {
            record: true,
            event: Some(JobEvent::Rejected),
            as_group,
        });
    }
    let approved: Vec<&Approval> = job
        .given
        .iter()
        .filter(|a| a.verdict == Verdict::Approved)
        .collect();
    // One person counts once, for the group it first approved as.
    let again = approved.iter().any(|a| a.by == ballot.by);
    let this = Approval {
        by: ballot.by.clone(),
        at: now,
        verdict: Verdict::Approved,
        comment: None,
        as_group: as_group.clone(),
    };
    let counted: Vec<&Approval> = approved
        .into_iter()
        .chain((!again).then_some(&this))
        .collect();
    let enough = quorums.iter().all(|q| {
        let n = counted
            .iter()
            .filter(|a| q.counts(a.as_group.as_deref()))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX) >= q.count
    });
    Ok(Decision {
        record: !again,
        event: enough.then_some(JobEvent::Approved),
        as_group,
    })
}

/// The group a ballot is given as, or why its approver may not give it: the group
/// named by `as` (which the token must be in and a quorum must ask for), else the one
/// quorum's group the token is in; `None` when any approver counts.
fn approving_as(quorums: &[Quorum], ballot: &Ballot) -> Result<Option<String>, Refusal> {
    let asked = |g: &String| quorums.iter().any(|q| q.groups.contains(g));
    if let Some(g) = &ballot.as_group {
        let anyone = quorums.iter().any(|q| q.groups.is_empty());
        return if ballot.groups.contains(g) && (anyone || asked(g)) {
            Ok(Some(g.clone()))
        } else {
            Err(Refusal::NotAnApprover)
        };
    }
    // The quorums naming groups the token is in; the same groups asked twice (a
    // rule's and a protection's) are one choice.
    let mut held: Vec<&Quorum> = quorums
        .iter()
        .filter(|q| q.groups.iter().any(|g| ballot.groups.contains(g)))
        .collect();
    held.sort_by(|a, b| a.groups.cmp(&b.groups));
    held.dedup_by(|a, b| a.groups == b.groups);
    match held.as_slice() {
        // Only a quorum of anyone can count it.
        [] if quorums.iter().any(|q| q.groups.is_empty()) => Ok(None),
        [] => Err(Refusal::NotAnApprover),
        [q] => Ok(q.groups.iter().find(|g| ballot.groups.contains(g)).cloned()),
        _ => Err(Refusal::AsRequired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(count: u32, groups: &[&str], allow_self: bool) -> JobApproval {
        JobApproval {
            policy: ApprovalPolicy {
                count,
                groups: groups.iter().map(|g| g.to_string()).collect(),
                timeout_ms: None,
                allow_self,
                all_of: Vec::new(),
                protections: Vec::new(),
            },
            expires_at: None,
            initiator: Some("bob".into()),
        }
    }

    fn ballot(by: &str, groups: &[&str], verdict: Verdict, comment: Option<&str>) -> Ballot {
        Ballot {
            by: by.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            verdict,
            comment: comment.map(str::to_string),
            as_group: None,
        }
    }

    fn approved(by: &str) -> Approval {
        Approval {
            by: by.into(),
            at: 0,
            verdict: Verdict::Approved,
            comment: None,
            as_group: None,
        }
    }

    fn awaiting<'a>(approval: &'a JobApproval, given: &'a [Approval]) -> Awaiting<'a> {
        Awaiting {
            state: JobState::AwaitingApproval,
            approval,
            given,
        }
    }

    const YES: Decision = Decision {
        record: true,
        event: Some(JobEvent::Approved),
        as_group: None,
    };

    #[test]
    fn one_approval_of_one_queues_the_job() {
        let p = policy(1, &[], false);
        let b = ballot("alice", &[], Verdict::Approved, None);
        assert_eq!(decide(awaiting(&p, &[]), &b, 0), Ok(YES));
    }

    #[test]
    fn two_are_needed_and_the_same_approver_counts_once() {
        let p = policy(2, &[], false);
        let b = ballot("alice", &[], Verdict::Approved, None);
        let first = decide(awaiting(&p, &[]), &b, 0);
        assert_eq!(
            first,
            Ok(Decision {
                record: true,
                event: None,
                as_group: None
            })
        );
        let given = [approved("alice")];
        let again = decide(awaiting(&p, &given), &b, 0);
        assert_eq!(
            again,
            Ok(Decision {
                record: false,
                event: None,
                as_group: None
            })
        );
        let carol = ballot("carol", &[], Verdict::Approved, None);
        assert_eq!(decide(awaiting(&p, &given), &carol, 0), Ok(YES));
    }

    #[test]
    fn a_rejection_needs_a_comment_and_ends_the_wait() {
        let p = policy(2, &[], false);
        let bare = ballot("alice", &[], Verdict::Rejected, Some("  "));
        assert_eq!(
            decide(awaiting(&p, &[]), &bare, 0),
            Err(Refusal::CommentRequired)
        );
        let said = ballot("alice", &[], Verdict::Rejected, Some("not today"));
        assert_eq!(
            decide(awaiting(&p, &[]), &said, 0),
            Ok(Decision {
                record: true,
                event: Some(JobEvent::Rejected),
                as_group: None
            })
        );
    }

    #[test]
    fn only_members_of_the_groups_approve_and_only_as_their_own_group() {
        let p = policy(1, &["release-managers"], false);
        let outsider = ballot("eve", &["dev"], Verdict::Approved, None);
        assert_eq!(
            decide(awaiting(&p, &[]), &outsider, 0),
            Err(Refusal::NotAnApprover)
        );
        let member = ballot(
            "alice",
            &["dev", "release-managers"],
            Verdict::Approved,
            None,
        );
        assert_eq!(
            decide(awaiting(&p, &[]), &member, 0),
            Ok(Decision {
                as_group: Some("release-managers".into()),
                ..YES
            })
        );
        let mut pretending = member.clone();
        pretending.as_group = Some("security".into());
        assert_eq!(
            decide(awaiting(&p, &[]), &pretending, 0),
            Err(Refusal::NotAnApprover)
        );
    }

    /// `all_of`: every quorum needs its count, each approver counts once, for the
    /// group it approves as, and one in several of the groups must say which (bob is
    /// the initiator here, so dave plays the approver in both groups).
    #[test]
    fn per_group_quorums_count_each_approver_once_for_the_group_named() {
        let mut p = policy(1, &[], false);
        p.policy.all_of = vec![
            Quorum {
                groups: vec!["security".into()],
                count: 1,
            },
            Quorum {
                groups: vec!["release-managers".into()],
                count: 1,
            },
        ];
        let both = ballot(
            "dave",
            &["security", "release-managers"],
            Verdict::Approved,
            None,
        );
        assert_eq!(
            decide(awaiting(&p, &[]), &both, 0),
            Err(Refusal::AsRequired)
        );
        let mut as_security = both.clone();
        as_security.as_group = Some("security".into());
        let first = decide(awaiting(&p, &[]), &as_security, 0).unwrap();
        assert_eq!((first.record, first.event), (true, None));
        assert_eq!(first.as_group.as_deref(), Some("security"));

        let given = [Approval {
            as_group: Some("security".into()),
            ..approved("dave")
        }];
        // Dave again, as the other group: still one person, counted once.
        let mut as_rm = both.clone();
        as_rm.as_group = Some("release-managers".into());
        let again = decide(awaiting(&p, &given), &as_rm, 0).unwrap();
        assert_eq!((again.record, again.event), (false, None));
        // Another security approver does not make the release managers' quorum.
        let carol = ballot("carol", &["security"], Verdict::Approved, None);
        assert_eq!(decide(awaiting(&p, &given), &carol, 0).unwrap().event, None);
        let alice = ballot("alice", &["release-managers"], Verdict::Approved, None);
        let last = decide(awaiting(&p, &given), &alice, 0).unwrap();
        assert_eq!(last.event, Some(JobEvent::Approved));
        assert_eq!(last.as_group.as_deref(), Some("release-managers"));
        let outsider = ballot("eve", &["dev"], Verdict::Approved, None);
        assert_eq!(
            decide(awaiting(&p, &given), &outsider, 0),
            Err(Refusal::NotAnApprover)
        );
    }

    #[test]
    fn the_initiator_may_not_approve_unless_allowed() {
        let b = ballot("bob", &[], Verdict::Approved, None);
        let strict = policy(1, &[], false);
        assert_eq!(
            decide(awaiting(&strict, &[]), &b, 0),
            Err(Refusal::SelfApproval)
        );
        let lenient = policy(1, &[], true);
        assert_eq!(decide(awaiting(&lenient, &[]), &b, 0), Ok(YES));
    }

    #[test]
    fn a_job_not_awaiting_or_past_its_timeout_takes_no_verdict() {
        let p = policy(1, &[], false);
        let b = ballot("alice", &[], Verdict::Approved, None);
        let mut queued = awaiting(&p, &[]);
        queued.state = JobState::Queued;
        assert_eq!(
            decide(queued, &b, 0),
            Err(Refusal::InvalidState(JobState::Queued))
        );
        let mut timed = p.clone();
        timed.expires_at = Some(10);
        let late = awaiting(&timed, &[]);
        assert_eq!(
            decide(late, &b, 10),
            Err(Refusal::InvalidState(JobState::Expired))
        );
        assert_eq!(decide(late, &b, 9), Ok(YES));
    }
}
