//! Who may approve a job, and when enough people have (SPEC §9 "Approvals").
//!
//! The decision lives here, once: the stores load a job's policy and the verdicts
//! given so far, ask [`decide`], and persist what it answers in the same transaction
//! (so two approvals at two replicas count correctly). Where the job then goes is the
//! life cycle's table.

use serde::{Deserialize, Serialize};

use super::job::as_rfc3339;
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
}

impl ApprovalPolicy {
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

fn opt_rfc3339<S: serde::Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => as_rfc3339(ms, s),
        None => s.serialize_none(),
    }
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
}

/// What a ballot accepted does: record it (unless the approver already approved,
/// which counts once) and move the job by `event` when it decides the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub record: bool,
    pub event: Option<JobEvent>,
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
    let in_groups = |g: &String| policy.groups.is_empty() || policy.groups.contains(g);
    let member = policy.groups.is_empty() || ballot.groups.iter().any(in_groups);
    let as_ok = match &ballot.as_group {
        Some(g) => ballot.groups.contains(g) && in_groups(g),
        None => true,
    };
    if !member || !as_ok {
        return Err(Refusal::NotAnApprover);
    }
    if !policy.allow_self && job.approval.initiator.as_deref() == Some(ballot.by.as_str()) {
        return Err(Refusal::SelfApproval);
    }
    if ballot.verdict == Verdict::Rejected {
        return Ok(Decision {
            record: true,
            event: Some(JobEvent::Rejected),
        });
    }
    let mut approvers: Vec<&str> = job
        .given
        .iter()
        .filter(|a| a.verdict == Verdict::Approved)
        .map(|a| a.by.as_str())
        .collect();
    let again = approvers.contains(&ballot.by.as_str());
    if !again {
        approvers.push(&ballot.by);
    }
    let enough = u32::try_from(approvers.len()).unwrap_or(u32::MAX) >= policy.count;
    Ok(Decision {
        record: !again,
        event: enough.then_some(JobEvent::Approved),
    })
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
                event: None
            })
        );
        let given = [approved("alice")];
        let again = decide(awaiting(&p, &given), &b, 0);
        assert_eq!(
            again,
            Ok(Decision {
                record: false,
                event: None
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
                event: Some(JobEvent::Rejected)
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
        assert_eq!(decide(awaiting(&p, &[]), &member, 0), Ok(YES));
        let mut pretending = member.clone();
        pretending.as_group = Some("security".into());
        assert_eq!(
            decide(awaiting(&p, &[]), &pretending, 0),
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
