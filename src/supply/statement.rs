//! What gantry attests after a promotion: an in-toto Statement v1 whose subject is
//! the promoted image in the destination and whose predicate
//! (`urn:gantry:promotion:v1`) says which job promoted it, by which rule, on which
//! events and approvals, and where that stands on the audit trail (SPEC §15).

use serde::{Deserialize, Serialize};

/// The predicate type of gantry's promotion attestations.
pub const PREDICATE_TYPE: &str = "urn:gantry:promotion:v1";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// An in-toto Statement v1 about one promoted image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Promotion,
}

/// The promoted image: its name where it now is, and its digest by algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: std::collections::BTreeMap<String, String>,
}

/// `urn:gantry:promotion:v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub job_id: String,
    pub rule: String,
    pub from: String,
    pub to: String,
    /// RFC 3339.
    pub promoted_at: String,
    /// The trigger and each gate condition's event, by id.
    pub events: Vec<EventRef>,
    pub approvals: Vec<Approved>,
    /// The last audit record of the job before the statement was signed: the
    /// statement extends the trail from there.
    pub audit: AuditRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    /// `trigger`, or the name of the gate condition the event met.
    pub role: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    pub by: String,
    /// RFC 3339.
    pub at: String,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRef {
    pub seq: i64,
    pub hash: String,
}

impl Statement {
    /// The statement that `subject` (a name, without tag or digest) at `digest`
    /// (`algorithm:hex`) was promoted as `predicate` says.
    pub fn new(subject: &str, digest: &str, predicate: Promotion) -> Statement {
        let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        Statement {
            statement_type: STATEMENT_TYPE.to_string(),
            subject: vec![Subject {
                name: subject.to_string(),
                digest: [(algorithm.to_string(), hex.to_string())].into(),
            }],
            predicate_type: PREDICATE_TYPE.to_string(),
            predicate,
        }
    }

    /// Whether this is gantry's statement about `digest`.
    pub fn is_about(&self, digest: &str) -> bool {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return false;
        };
        self.statement_type == STATEMENT_TYPE
            && self.predicate_type == PREDICATE_TYPE
            && self
                .subject
                .iter()
                .any(|s| s.digest.get(algorithm).is_some_and(|h| h == hex))
    }
}
