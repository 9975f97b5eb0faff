//! Gates (SPEC §9): a promotion that waits for more evidence about the same artifact.
//!
//! The decisions live here, once. The rules say which events are a gated rule's
//! trigger and which are evidence for one of its conditions, and under which
//! correlation key; the stores keep the evidence and the waiting jobs, read them
//! under a lock on the rule and key (so two replicas never decide on the same gate at
//! once), and ask [`open`] and [`arrive`] what a trigger or a piece of evidence does.
//! Where the job then goes is the life cycle's table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Millis;
use super::job::as_rfc3339;

/// A job's gate, as the job keeps and shows it: what it correlates on, each of its
/// conditions and whether it is met (by which event), and when the wait ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobGate {
    /// The trigger's values of the `correlate` fields.
    pub correlate: BTreeMap<String, String>,
    pub conditions: Vec<Condition>,
    /// How long evidence counts before the trigger, and the job waits after it.
    pub within_ms: Millis,
    /// When the wait ends: the trigger's time plus `within`.
    #[serde(serialize_with = "as_rfc3339", deserialize_with = "from_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Millis,
}

/// Reads the deadline back as stored: milliseconds (what `as_rfc3339` writes for the
/// API is only for showing).
fn from_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Millis(Millis),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Millis(ms) => Ok(ms),
        Either::Text(t) => chrono::DateTime::parse_from_rfc3339(&t)
            .map(|t| t.timestamp_millis())
            .map_err(serde::de::Error::custom),
    }
}

/// One required condition of a gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Condition {
    pub name: String,
    pub met: bool,
    /// The event that met it.
    pub event_id: Option<String>,
}

/// A trigger's gate before the store has looked at the evidence: the key its
/// evidence is filed under and the gate with nothing met yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateStart {
    pub key: String,
    pub gate: JobGate,
}

impl GateStart {
    /// The gate of a trigger received at `received_at` that correlates on
    /// `correlate` (field name, value) and requires `required` conditions.
    pub fn new(
        correlate: &[(&str, &str)],
        required: &[&str],
        within_ms: Millis,
        received_at: Millis,
    ) -> GateStart {
        GateStart {
            key: key(correlate.iter().map(|(_, v)| *v)),
            gate: JobGate {
                correlate: correlate
                    .iter()
                    .map(|(f, v)| (f.to_string(), v.to_string()))
                    .collect(),
                conditions: required
                    .iter()
                    .map(|name| Condition {
                        name: name.to_string(),
                        met: false,
                        event_id: None,
                    })
                    .collect(),
                within_ms,
                expires_at: received_at.saturating_add(within_ms),
            },
        }
    }

    /// Evidence counts only when it arrived no more than `within` before the trigger.
    pub fn evidence_since(&self) -> Millis {
        self.gate.expires_at - 2 * self.gate.within_ms
    }
}

/// The key evidence and waiting jobs of one rule are filed under: the correlated
/// values in the rule's `correlate` order, as a JSON array (unambiguous whatever the
/// values contain).
pub fn key<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let values: Vec<&str> = values.into_iter().collect();
    // Serializing strings cannot fail.
    serde_json::to_string(&values).unwrap_or_default()
}

/// An event that counts as evidence for one condition of one gated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub rule: String,
    pub condition: String,
    pub key: String,
    /// Negative evidence: it fails the job instead of meeting a condition.
    pub block: bool,
    /// How long it counts for a trigger that comes after it.
    pub within_ms: Millis,
}

/// A piece of evidence as a store reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub condition: String,
    pub event_id: String,
    pub block: bool,
}

/// What a trigger finds when its job is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// Every condition is met: the job goes on at once.
    Met,
    /// A condition is missing: the job waits.
    Waiting,
    /// Negative evidence is there: the job fails at once.
    Blocked(Seen),
}

/// Opens `gate` on the evidence seen within its window (oldest first): marks the
/// conditions met, and says where the job starts. Negative evidence wins over
/// everything met.
pub fn open(gate: &mut JobGate, seen: &[Seen]) -> Opening {
    if let Some(block) = seen.iter().find(|s| s.block) {
        return Opening::Blocked(block.clone());
    }
    for s in seen {
        meet(gate, s);
    }
    if gate.conditions.iter().all(|c| c.met) {
        Opening::Met
    } else {
        Opening::Waiting
    }
}

/// What a piece of evidence does to a job waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// It met a condition; `last` when that was the last one missing.
    Met { last: bool },
    /// It blocks the job.
    Blocked,
    /// Its condition was met already (two events of one kind count once).
    Nothing,
}

/// Applies evidence that arrived at `now` while the job waits. Evidence after the
/// window ended changes nothing: the job is expired, whether or not the expiry pass
/// has moved it yet.
pub fn arrive(gate: &mut JobGate, seen: &Seen, now: Millis) -> Arrival {
    if now >= gate.expires_at {
        return Arrival::Nothing;
    }
    if seen.block {
        return Arrival::Blocked;
    }
    if !meet(gate, seen) {
        return Arrival::Nothing;
    }
    Arrival::Met {
        last: gate.conditions.iter().all(|c| c.met),
    }
}

/// Marks the condition `seen` names as met by its event; false when it was met
/// already or the gate has no such condition.
fn meet(gate: &mut JobGate, seen: &Seen) -> bool {
    match gate
        .conditions
        .iter_mut()
        .find(|c| c.name == seen.condition && !c.met)
    {
        Some(c) => {
            c.met = true;
            c.event_id = Some(seen.event_id.clone());
            true
        }
        None => false,
    }
}

/// What a job blocked by `seen` says of it (its error and its record).
pub fn blocked_by(seen: &Seen) -> String {
    format!(
        "blocked by condition {} (event {})",
        seen.condition, seen.event_id
    )
}

impl JobGate {
    /// Whether every condition is met (a revived job whose gate was met does not
    /// wait again).
    pub fn met(&self) -> bool {
        self.conditions.iter().all(|c| c.met)
    }

    /// The conditions still missing, for messages.
    pub fn missing(&self) -> Vec<&str> {
        self.conditions
            .iter()
            .filter(|c| !c.met)
            .map(|c| c.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> JobGate {
        GateStart::new(&[("digest", "sha256:a")], &["scan", "e2e"], 1000, 10_000).gate
    }

    fn seen(condition: &str, event: &str, block: bool) -> Seen {
        Seen {
            condition: condition.into(),
            event_id: event.into(),
            block,
        }
    }

    #[test]
    fn a_trigger_with_all_its_evidence_goes_on() {
        let mut g = gate();
        let found = [seen("e2e", "ev1", false), seen("scan", "ev2", false)];
        assert_eq!(open(&mut g, &found), Opening::Met);
        assert_eq!(g.conditions[0].event_id.as_deref(), Some("ev2"));
        assert_eq!(g.conditions[1].event_id.as_deref(), Some("ev1"));
    }

    #[test]
    fn a_trigger_missing_evidence_waits_and_the_last_arrival_moves_it_once() {
        let mut g = gate();
        assert_eq!(
            open(&mut g, &[seen("scan", "ev1", false)]),
            Opening::Waiting
        );
        assert_eq!(g.missing(), ["e2e"]);
        assert_eq!(
            arrive(&mut g, &seen("scan", "ev2", false), 10_500),
            Arrival::Nothing,
            "a condition met twice counts once"
        );
        assert_eq!(
            arrive(&mut g, &seen("e2e", "ev3", false), 10_500),
            Arrival::Met { last: true }
        );
        assert_eq!(
            arrive(&mut g, &seen("e2e", "ev4", false), 10_500),
            Arrival::Nothing
        );
        assert_eq!(g.conditions[0].event_id.as_deref(), Some("ev1"));
    }

    #[test]
    fn negative_evidence_blocks_whatever_else_is_met() {
        let mut g = gate();
        let found = [
            seen("e2e", "ev1", false),
            seen("criticals", "ev2", true),
            seen("scan", "ev3", false),
        ];
        assert_eq!(
            open(&mut g, &found),
            Opening::Blocked(seen("criticals", "ev2", true))
        );
        let mut g = gate();
        assert_eq!(
            arrive(&mut g, &seen("criticals", "ev9", true), 10_500),
            Arrival::Blocked
        );
    }

    #[test]
    fn evidence_after_the_window_changes_nothing() {
        let mut g = gate();
        assert_eq!(
            arrive(&mut g, &seen("scan", "ev1", false), 11_000),
            Arrival::Nothing
        );
        assert_eq!(
            arrive(&mut g, &seen("criticals", "ev2", true), 11_000),
            Arrival::Nothing
        );
        assert_eq!(g, gate());
    }

    #[test]
    fn evidence_for_a_condition_the_gate_lacks_changes_nothing() {
        let mut g = gate();
        assert_eq!(
            arrive(&mut g, &seen("other", "ev1", false), 10_500),
            Arrival::Nothing
        );
        assert_eq!(g, gate());
    }

    #[test]
    fn the_window_reaches_within_before_and_after_the_trigger() {
        let start = GateStart::new(&[("digest", "d")], &["scan"], 1000, 10_000);
        assert_eq!(start.gate.expires_at, 11_000);
        assert_eq!(start.evidence_since(), 9_000);
    }

    #[test]
    fn keys_keep_values_apart_whatever_they_contain() {
        assert_ne!(key(["a,b", "c"]), key(["a", "b,c"]));
        assert_eq!(key(["app", "1.0"]), r#"["app","1.0"]"#);
    }

    #[test]
    fn a_gate_reads_back_what_it_stored() {
        let g = gate();
        let stored = serde_json::to_string(&g).unwrap();
        assert!(stored.contains("1970-01-01T00:00:11.000Z"), "{stored}");
        let back: JobGate = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, g);
    }
}
