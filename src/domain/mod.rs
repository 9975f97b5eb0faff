//! The values that travel between the stages of the pipeline: events from ingest,
//! jobs from the rules, their attempts and results from the workers.

mod event;
mod job;

pub use event::{Event, Subject};
pub use job::{
    Action, AttemptRecord, ImageRef, Job, JobError, JobErrorCode, JobState, NewJob, Outcome,
};

/// A new id: a ULID, so ids sort by creation time, from one monotonic generator so
/// that ids made in the same millisecond keep their order too.
pub fn new_id() -> String {
    static GENERATOR: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
    let mut guard = GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guard
        .get_or_insert_with(ulid::Generator::new)
        .generate()
        // Overflow needs 2^80 ids in one millisecond; fall back to a random one.
        .unwrap_or_else(|_| ulid::Ulid::generate())
        .to_string()
}

/// Milliseconds since the Unix epoch: how the stores keep instants.
pub type Millis = i64;

/// The current instant in store form.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Formats a store instant as RFC 3339 for API answers and logs.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Cuts a message to at most `max` bytes on a char boundary, so upstream bodies kept
/// in errors and audit records stay bounded.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
