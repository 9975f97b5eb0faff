//! What a sink is sent (SPEC §10): the Standard Webhooks body (`standard-webhooks`
//! and `generic`) or Slack's incoming-webhook body, each under [`MAX_BODY`] bytes.
//!
//! Everything in a body but its shape comes from events and upstreams, so in Slack's
//! text every value is escaped (`&`, `<`, `>`): an image named `<!channel>` is shown,
//! not obeyed.

use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{AuditEntry, AuditKind};
use crate::config::NotificationFormat;
use crate::domain::{Job, bounded, rfc3339};

/// A body stays under this many bytes (SPEC §10: under 20 KB).
pub const MAX_BODY: usize = 20_000;
/// Strings are cut to this many bytes when a body would be too large.
const CUT_STRINGS_TO: usize = 512;
/// Attempts and approvals kept (the most recent) when a body would still be too large.
const KEEP_RECENT: usize = 3;

/// The body of one notification for a sink of `format`: about the audit record
/// `seq` (`entry`; none when retention pruned it before the notification went out)
/// of kind `kind`, and its job as it is now (`job`, when the record is about one).
pub fn body(
    format: NotificationFormat,
    seq: i64,
    kind: AuditKind,
    entry: Option<&AuditEntry>,
    job: Option<&Job>,
    public_url: Option<&str>,
) -> String {
    match format {
        NotificationFormat::StandardWebhooks | NotificationFormat::Generic => {
            standard(seq, kind, entry, job)
        }
        NotificationFormat::Slack => slack(seq, kind, entry, job, public_url),
    }
}

/// `{"type", "timestamp", "sequence", "data": {"job", "audit"}}`: the job as the
/// API shows it and the audit record that caused the notification.
#[derive(Serialize)]
struct Standard<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    sequence: i64,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a Job>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<&'a AuditEntry>,
}

/// Written straight to text; only a body too large goes through [`fit`].
fn standard(seq: i64, kind: AuditKind, entry: Option<&AuditEntry>, job: Option<&Job>) -> String {
    let body = Standard {
        kind: kind.as_str(),
        timestamp: rfc3339(entry.map_or_else(crate::domain::now_millis, |e| e.at)),
        sequence: seq,
        data: Data { job, audit: entry },
    };
    match serde_json::to_string(&body) {
        Ok(text) if text.len() <= MAX_BODY => text,
        _ => fit(serde_json::to_value(&body).unwrap_or(Value::Null)),
    }
}

/// The body as text, made smaller step by step until it fits: long strings cut,
/// then only the most recent attempts and approvals, then the job's summary only.
/// Each step marks `data.truncated`.
fn fit(mut body: Value) -> String {
    cut_strings(&mut body);
    mark_truncated(&mut body);
    let text = body.to_string();
    if text.len() <= MAX_BODY {
        return text;
    }
    if let Some(job) = body.pointer_mut("/data/job").and_then(Value::as_object_mut) {
        for list in ["attempts", "approvals"] {
            if let Some(Value::Array(items)) = job.get_mut(list) {
                let drop = items.len().saturating_sub(KEEP_RECENT);
                items.drain(..drop);
            }
        }
    }
    let text = body.to_string();
    if text.len() <= MAX_BODY {
        return text;
    }
    if let Some(job) = body.pointer_mut("/data/job").and_then(Value::as_object_mut) {
        job.retain(|k, _| matches!(k.as_str(), "id" | "rule" | "state" | "target" | "event_id"));
    }
    body.to_string()
}

fn cut_strings(v: &mut Value) {
    match v {
        Value::String(s) if s.len() > CUT_STRINGS_TO => *s = bounded(s, CUT_STRINGS_TO),
        Value::Array(items) => items.iter_mut().for_each(cut_strings),
        Value::Object(map) => map.values_mut().for_each(cut_strings),
        _ => {}
    }
}

fn mark_truncated(body: &mut Value) {
    if let Some(data) = body.get_mut("data").and_then(Value::as_object_mut) {
        data.insert("truncated".into(), Value::Bool(true));
    }
}

/// Slack's incoming-webhook body: `text` is the one line a person reads at a glance
/// (and what notifications on phones show); `blocks` lays the same out, with the
/// rule, job and sequence in a context line.
fn slack(
    seq: i64,
    kind: AuditKind,
    entry: Option<&AuditEntry>,
    job: Option<&Job>,
    public_url: Option<&str>,
) -> String {
    let text = bounded(&headline(kind, entry, job, public_url), 2900);
    let mut context = Vec::new();
    if let Some(rule) = entry.and_then(|e| e.rule.as_ref()).or(job.map(|j| &j.rule)) {
        context.push(format!("rule `{}`", escape(rule)));
    }
    if let Some(job) = job {
        context.push(format!(
            "job `{}` ({} now)",
            escape(&job.id),
            job.state.as_str()
        ));
    }
    if let Some(e) = entry {
        context.push(format!("by {}", escape(&e.actor)));
        context.push(format!("#{seq} · {}", rfc3339(e.at)));
    }
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": bounded(&context.join(" · "), 2900)}]},
        ],
    })
    .to_string()
}

/// What happened, to which artifact from where to where, why, and a link to the
/// job in the console when `public_url` is set.
fn headline(
    kind: AuditKind,
    entry: Option<&AuditEntry>,
    job: Option<&Job>,
    public_url: Option<&str>,
) -> String {
    let mut line = format!("{} {}", mark(kind), what(kind));
    let from_to = entry
        .and_then(|e| e.from.clone().zip(e.to.clone()))
        .or_else(|| {
            job.and_then(|j| j.action.as_ref())
                .map(crate::domain::Action::describe)
        });
    match from_to {
        Some((from, to)) => line.push_str(&format!(": {} → {}", escape(&from), escape(&to))),
        None => {
            if let Some(artifact) = entry.and_then(artifact) {
                line.push_str(&format!(": {}", escape(&artifact)));
            }
        }
    }
    if let Some(rule) = entry.and_then(|e| e.rule.as_ref()).or(job.map(|j| &j.rule)) {
        line.push_str(&format!(" (rule {})", escape(rule)));
    }
    let why = entry.and_then(|e| e.message.as_deref()).or_else(|| {
        job.and_then(|j| j.last_error.as_ref())
            .map(|e| e.message.as_str())
    });
    if let Some(why) = why.filter(|w| !w.is_empty()) {
        line.push_str(&format!(": {}", escape(&bounded(why, 300))));
    }
    let job_id = entry.and_then(|e| e.job_id.as_ref()).or(job.map(|j| &j.id));
    if let (Some(base), Some(id)) = (public_url, job_id) {
        // The id is gantry's own (a ULID), and the base was checked as a URL.
        line.push_str(&format!(" <{base}/ui/jobs/{id}|view job>"));
    }
    line
}

/// `repo/image:tag@digest`, as far as the record knows it.
fn artifact(entry: &AuditEntry) -> Option<String> {
    let image = entry.image.as_ref()?;
    let mut s = match &entry.repo {
        Some(r) => format!("{r}/{image}"),
        None => image.clone(),
    };
    if let Some(tag) = &entry.tag {
        s.push_str(&format!(":{tag}"));
    }
    if let Some(d) = &entry.digest {
        s.push_str(&format!("@{}", bounded(d, 19)));
    }
    Some(s)
}

fn mark(kind: AuditKind) -> &'static str {
    match kind {
        AuditKind::JobSucceeded => "✅",
        AuditKind::JobFailed
        | AuditKind::JobExpired
        | AuditKind::JobRejected
        | AuditKind::GateBlocked
        | AuditKind::ChainRefused
        | AuditKind::TargetCircuitOpened => "❌",
        AuditKind::JobAwaitingApproval | AuditKind::JobFrozen | AuditKind::FreezeStarted => "⏸️",
        _ => "ℹ️",
    }
}

fn what(kind: AuditKind) -> &'static str {
    match kind {
        AuditKind::JobSucceeded => "Promoted",
        AuditKind::JobFailed => "Promotion failed",
        AuditKind::JobAwaitingApproval => "Awaiting approval",
        AuditKind::JobApproved => "Approved",
        AuditKind::JobRejected => "Rejected",
        AuditKind::JobExpired => "Expired",
        AuditKind::JobCreated => "Promotion planned",
        AuditKind::JobRetrying => "Promotion will be retried",
        AuditKind::JobRetried => "Retried by an operator",
        AuditKind::JobCancelled => "Cancelled",
        AuditKind::JobFrozen => "Held by a freeze",
        AuditKind::JobUnfrozen => "Freeze over, promotion resumes",
        AuditKind::JobWaiting => "Waiting on its gate",
        AuditKind::GateConditionMet => "Gate condition met",
        AuditKind::GateBlocked => "Blocked by its gate",
        AuditKind::FreezeStarted => "Freeze started",
        AuditKind::FreezeEnded => "Freeze ended",
        AuditKind::TargetCircuitOpened => "Target unreachable, circuit opened",
        AuditKind::TargetCircuitClosed => "Target back, circuit closed",
        other => other.as_str(),
    }
}

/// Slack's three control characters in text, escaped as its docs ask.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> AuditEntry {
        let mut e = AuditEntry::notification(AuditKind::JobFailed, "worker", Some("01JOB"), "");
        e.message = Some("upstream_rejected: 403 <b>forbidden</b>".into());
        e.rule = Some("staging-to-prod".into());
        e.from = Some("docker-staging/api:1.4.2".into());
        e.to = Some("docker-prod/api:1.4.2".into());
        e
    }

    #[test]
    fn the_slack_line_says_what_from_where_to_where_why_and_links_the_job() {
        let body: Value = serde_json::from_str(&slack(
            7,
            AuditKind::JobFailed,
            Some(&failed()),
            None,
            Some("https://gantry.example"),
        ))
        .unwrap();
        assert_eq!(
            body["text"],
            "❌ Promotion failed: docker-staging/api:1.4.2 → docker-prod/api:1.4.2 \
             (rule staging-to-prod): upstream_rejected: 403 &lt;b&gt;forbidden&lt;/b&gt; \
             <https://gantry.example/ui/jobs/01JOB|view job>"
        );
        assert_eq!(body["blocks"][0]["type"], "section");
        assert_eq!(body["blocks"][0]["text"]["type"], "mrkdwn");
        assert_eq!(body["blocks"][1]["type"], "context");
    }

    #[test]
    fn a_slack_line_without_public_url_has_no_link() {
        let body: Value =
            serde_json::from_str(&slack(7, AuditKind::JobFailed, Some(&failed()), None, None))
                .unwrap();
        assert!(!body["text"].as_str().unwrap().contains('<'));
    }

    #[test]
    fn a_huge_record_is_cut_under_the_limit_and_marked() {
        let mut e = failed();
        e.message = Some("x".repeat(MAX_BODY * 2));
        e.image = Some("y".repeat(MAX_BODY));
        let text = standard(1, e.kind, Some(&e), None);
        assert!(text.len() <= MAX_BODY, "{}", text.len());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["data"]["truncated"], true);
        assert_eq!(v["type"], "job.failed");
        assert_eq!(v["sequence"], 1);
    }

    #[test]
    fn a_small_record_is_sent_whole() {
        let text = standard(3, AuditKind::JobFailed, Some(&failed()), None);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["data"]["audit"]["message"],
            "upstream_rejected: 403 <b>forbidden</b>"
        );
        assert!(v["data"].get("truncated").is_none());
    }
}
