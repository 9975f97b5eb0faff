//! The values that travel between the stages of the pipeline: events from ingest,
//! jobs from the rules, their attempts and results from the workers.

mod action;
pub mod approval;
pub mod destinations;
mod event;
pub mod freeze;
pub mod gate;
mod job;
pub mod lifecycle;
pub mod protection;

pub use action::{
    Action, BuildPromotion, BuildRef, BuildTarget, BundleRef, Environment, ImageRef, ItemRef, Op,
};
pub use event::{Event, Subject};
pub use job::{
    AttemptRecord, Job, JobError, JobErrorCode, JobState, NewJob, Outcome, as_rfc3339, opt_rfc3339,
};
pub use lifecycle::{Forbidden, JobEvent, Step};

/// The key a promotion's result is known by, shared by a job's output and an
/// event's subject so that an upstream's echo of a promotion can be found: a docker
/// tag, a repository item, or a build.
pub fn subject_key(subject: &Subject) -> Option<String> {
    let s = subject;
    match (&s.image, &s.tag, &s.path, &s.build_name, &s.build_number) {
        (Some(image), Some(tag), ..) => Some(format!(
            "docker:{}/{image}:{tag}",
            s.repo.as_deref().unwrap_or("")
        )),
        (_, _, Some(path), ..) => Some(format!(
            "item:{}/{}",
            s.repo.as_deref().unwrap_or(""),
            path.trim_start_matches('/')
        )),
        (_, _, _, Some(name), Some(number)) => Some(format!("build:{name}#{number}")),
        _ => None,
    }
}

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
