//! Protections (SPEC §9): policy attached to a destination, so that no rule, new or
//! chained, can promote around it. Every job whose target and destination repo a
//! protection covers needs the protection's approval and soak as well as its own
//! rule's.
//!
//! Decided twice, from the config in force: when the rules plan a job (its approval
//! and soak include the protections covering it) and when a worker is about to run
//! it (a protection added since, by a reload, still holds it).

use super::Millis;
use super::approval::ApprovalPolicy;
use super::destinations::Destinations;

/// One `[[protections]]` entry, checked.
#[derive(Debug, Clone)]
pub struct Protection {
    pub name: String,
    pub scope: Destinations,
    pub approval: Option<ApprovalPolicy>,
    pub soak_ms: Option<Millis>,
    /// The key promotions it covers are attested with (SPEC §15).
    pub attest: Option<std::sync::Arc<crate::supply::SigningKey>>,
}

/// A job's policy with the protections covering its destination folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    pub approval: Option<ApprovalPolicy>,
    /// The longest soak that applies.
    pub soak_ms: Option<Millis>,
}

/// The policy of a job to `target` whose destination repo is `repo`: its rule's
/// `approval` and `soak_ms`, and those of every protection covering it. A
/// protection whose approval the policy already includes (by name) is not added
/// twice.
pub fn guard<'a>(
    protections: impl IntoIterator<Item = &'a Protection>,
    target: &str,
    repo: Option<&str>,
    approval: Option<ApprovalPolicy>,
    soak_ms: Option<Millis>,
) -> Guarded {
    let mut guarded = Guarded { approval, soak_ms };
    for p in protections
        .into_iter()
        .filter(|p| p.scope.covers(target, repo))
    {
        guarded.soak_ms = guarded.soak_ms.max(p.soak_ms);
        if let Some(required) = &p.approval {
            let included = guarded
                .approval
                .as_ref()
                .is_some_and(|a| a.protections.contains(&p.name));
            if !included {
                guarded.approval = Some(ApprovalPolicy::both(
                    guarded.approval.take(),
                    required,
                    &p.name,
                ));
            }
        }
    }
    guarded
}

/// The keys a promotion to `target`'s `repo` is attested with by the protections
/// covering it (SPEC §15), besides its rule's own.
pub fn attestors<'a>(
    protections: impl IntoIterator<Item = &'a Protection>,
    target: &'a str,
    repo: Option<&'a str>,
) -> impl Iterator<Item = &'a std::sync::Arc<crate::supply::SigningKey>> {
    protections
        .into_iter()
        .filter(move |p| p.scope.covers(target, repo))
        .filter_map(|p| p.attest.as_ref())
}

/// The approval a job about to run must await first because a protection covering
/// it now was not in force when its policy was made; `None` when its policy already
/// includes every covering protection's approval.
pub fn missing_approval<'a>(
    protections: impl IntoIterator<Item = &'a Protection>,
    target: &str,
    repo: Option<&str>,
    approval: Option<&ApprovalPolicy>,
) -> Option<ApprovalPolicy> {
    let guarded = guard(protections, target, repo, approval.cloned(), None);
    (guarded.approval.as_ref() != approval).then_some(guarded.approval)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::approval::Quorum;

    fn policy(groups: &[&str], count: u32) -> ApprovalPolicy {
        ApprovalPolicy {
            count,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            timeout_ms: Some(1000),
            allow_self: false,
            all_of: Vec::new(),
            protections: Vec::new(),
        }
    }

    fn prod(approval: Option<ApprovalPolicy>, soak_ms: Option<Millis>) -> Protection {
        Protection {
            name: "prod".into(),
            scope: Destinations::new(Some(&["docker-prod".into()]), None).unwrap(),
            approval,
            soak_ms,
            attest: None,
        }
    }

    #[test]
    fn a_protection_adds_its_approval_and_soak_to_a_rule_that_has_none() {
        let p = [prod(Some(policy(&["security"], 1)), Some(60_000))];
        let g = guard(&p, "jfrog", Some("docker-prod"), None, None);
        let approval = g.approval.unwrap();
        assert_eq!(approval.protections, ["prod"]);
        assert_eq!(
            approval.quorums(),
            [Quorum {
                groups: vec!["security".into()],
                count: 1
            }]
        );
        assert_eq!(g.soak_ms, Some(60_000));
        // Elsewhere it adds nothing.
        let g = guard(&p, "jfrog", Some("docker-staging"), None, Some(5));
        assert_eq!(
            g,
            Guarded {
                approval: None,
                soak_ms: Some(5)
            }
        );
    }

    #[test]
    fn both_approvals_are_required_and_the_longest_soak_wins() {
        let p = [prod(Some(policy(&["security"], 1)), Some(60_000))];
        let rule = policy(&["release-managers"], 2);
        let g = guard(&p, "jfrog", Some("docker-prod"), Some(rule), Some(120_000));
        let approval = g.approval.unwrap();
        assert_eq!(
            approval.quorums(),
            [
                Quorum {
                    groups: vec!["release-managers".into()],
                    count: 2
                },
                Quorum {
                    groups: vec!["security".into()],
                    count: 1
                }
            ]
        );
        assert_eq!(g.soak_ms, Some(120_000));
    }

    #[test]
    fn a_protection_added_after_the_job_was_planned_is_missing_once() {
        let p = [prod(Some(policy(&["security"], 1)), None)];
        let missing = missing_approval(&p, "jfrog", Some("docker-prod"), None).unwrap();
        assert_eq!(missing.protections, ["prod"]);
        assert_eq!(
            missing_approval(&p, "jfrog", Some("docker-prod"), Some(&missing)),
            None
        );
        let soak_only = [prod(None, Some(1))];
        assert_eq!(
            missing_approval(&soak_only, "jfrog", Some("docker-prod"), None),
            None
        );
    }
}
