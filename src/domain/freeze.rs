//! Freeze windows (SPEC §9): when promotions to a destination must not start.
//!
//! Pure decisions over the freezes in force and an instant: whether a job (its target
//! and destination repo) is frozen, by which freezes and until when, and which windows
//! are active or come next. Config and stores build [`Freeze`] values; nothing here
//! reads a clock or a store.
//!
//! Recurring windows are computed in the freeze's IANA time zone on wall-clock time,
//! so a window from Friday 18:00 to Monday 08:00 stays so across daylight-saving
//! changes; a `duration` is wall-clock time too (`62h` from Friday 18:00 ends Monday
//! 08:00 local, whether or not the clocks changed over the weekend).

use super::destinations::{BadGlob, Destinations};
use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::{JobState, Millis, bounded};
use crate::audit::MAX_MESSAGE;

/// A window's bounds: active from `start` (inclusive) until `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// How a recurring window ends.
#[derive(Debug, Clone)]
pub enum End {
    /// A wall-clock length after each start.
    After(Duration),
    /// The first instant matching this pattern after each start.
    Cron(Box<Cron>),
}

/// When a freeze is active.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Starts at each match of `start` (read in `tz`) and ends as `end` says.
    Recurring { start: Box<Cron>, end: End, tz: Tz },
    /// One window.
    Once(Window),
}

/// One freeze: what it covers and when.
#[derive(Debug, Clone)]
pub struct Freeze {
    pub name: String,
    /// The promotions it holds.
    pub scope: Destinations,
    pub schedule: Schedule,
    /// Token groups allowed to override it (SPEC §9); any `operate` token may when
    /// empty. See [`OverrideRequest::new`].
    pub override_groups: Vec<String>,
}

/// Why a freeze cannot be built from its settings; config validation names the freeze.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FreezeError {
    #[error("invalid cron `{pattern}`: {why}")]
    Cron { pattern: String, why: String },
    #[error("unknown time zone `{0}` (an IANA name such as `Europe/Paris`)")]
    TimeZone(String),
    #[error(transparent)]
    Glob(#[from] BadGlob),
    #[error("invalid time `{0}` (RFC 3339, or a local `YYYY-MM-DDTHH:MM[:SS]` read in `timezone`)")]
    Time(String),
    #[error("a time that does not exist in `{0}` (skipped by a daylight-saving change)")]
    Nonexistent(String),
}

/// Parses a cron pattern (five fields, or six with seconds first).
///
/// `croner` rather than `cron`: it takes the usual five-field crontab syntax (the
/// `cron` crate insists on seconds), computes occurrences on a `chrono-tz` date-time
/// directly, and documents its daylight-saving behaviour (a start inside a skipped
/// hour fires right after it; a repeated hour fires once), which is what a freeze
/// window needs.
pub fn parse_cron(pattern: &str) -> Result<Cron, FreezeError> {
    pattern.parse::<Cron>().map_err(|e| FreezeError::Cron {
        pattern: pattern.to_string(),
        why: e.to_string(),
    })
}

/// Parses an IANA time zone name.
pub fn parse_tz(name: &str) -> Result<Tz, FreezeError> {
    name.parse::<Tz>()
        .map_err(|_| FreezeError::TimeZone(name.to_string()))
}

/// Reads an instant: RFC 3339, or a local date-time without offset read in `tz`.
pub fn parse_instant(s: &str, tz: Tz) -> Result<DateTime<Utc>, FreezeError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .ok_or_else(|| FreezeError::Time(s.to_string()))?;
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
        LocalResult::None => Err(FreezeError::Nonexistent(s.to_string())),
    }
}

/// A local wall-clock time as an instant: the earlier of a repeated hour, and the
/// first instant after a skipped one (as cron does for a start inside the gap).
fn resolve(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Gaps are at most a few hours; step past one a quarter hour at a time.
    (0..=16).find_map(
        |q| match tz.from_local_datetime(&(local + Duration::minutes(15 * q))) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            LocalResult::None => None,
        },
    )
}

impl Freeze {
    /// Whether the freeze covers a job to `target` whose destination repo is `repo`
    /// (a job without a destination repo is covered only by freezes without `to_repos`).
    pub fn covers(&self, target: &str, repo: Option<&str>) -> bool {
        self.scope.covers(target, repo)
    }

    /// The window that contains `now`, if the freeze is active.
    pub fn active_at(&self, now: DateTime<Utc>) -> Option<Window> {
        match &self.schedule {
            Schedule::Once(w) => (w.start <= now && now < w.end).then_some(*w),
            Schedule::Recurring { start, end, tz } => {
                // The latest start at or before `now` has the latest end: an earlier
                // start ends no later, with a fixed length or a pattern for its end.
                let local = now.with_timezone(tz);
                let started = start.find_previous_occurrence(&local, true).ok()?;
                let w = self.window_from(started.with_timezone(&Utc), end, *tz)?;
                (now < w.end).then_some(w)
            }
        }
    }

    /// The first window that starts after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<Window> {
        match &self.schedule {
            Schedule::Once(w) => (w.start > now).then_some(*w),
            Schedule::Recurring { start, end, tz } => {
                let local = now.with_timezone(tz);
                let next = start.find_next_occurrence(&local, false).ok()?;
                self.window_from(next.with_timezone(&Utc), end, *tz)
            }
        }
    }

    fn window_from(&self, start: DateTime<Utc>, end: &End, tz: Tz) -> Option<Window> {
        let local = start.with_timezone(&tz);
        let end = match end {
            End::After(d) => resolve(tz, local.naive_local() + *d)?,
            End::Cron(c) => c
                .find_next_occurrence(&local, false)
                .ok()?
                .with_timezone(&Utc),
        };
        Some(Window { start, end })
    }
}

/// A freeze an operator started at run time (`POST /api/v1/freezes`). Kept in the
/// store, so every replica honours it; it always has an end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RuntimeFreeze {
    pub name: String,
    /// Globs over the destination repo; every repo when absent.
    pub to_repos: Option<Vec<String>>,
    /// Every target when absent.
    pub targets: Option<Vec<String>>,
    #[serde(serialize_with = "super::job::as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub from: Millis,
    #[serde(serialize_with = "super::job::as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub until: Millis,
    pub reason: String,
    /// The token that started it.
    pub started_by: String,
}

impl RuntimeFreeze {
    /// The freeze to ask [`hold`] about. Its globs were checked when it was started;
    /// a stored one that no longer compiles is an error for the caller to report.
    pub fn to_freeze(&self) -> Result<Freeze, FreezeError> {
        let at = |ms: Millis| {
            DateTime::from_timestamp_millis(ms).ok_or_else(|| FreezeError::Time(ms.to_string()))
        };
        Ok(Freeze {
            name: self.name.clone(),
            scope: Destinations::new(self.to_repos.as_deref(), self.targets.as_deref())?,
            schedule: Schedule::Once(Window {
                start: at(self.from)?,
                end: at(self.until)?,
            }),
            override_groups: Vec::new(),
        })
    }
}

/// Why a job may not start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The freezes holding it, in the order they apply.
    pub names: Vec<String>,
    /// When the last of them ends: the job is due again then.
    pub until: DateTime<Utc>,
}

/// How many back-to-back windows a hold follows before giving up; a freeze whose
/// windows never leave a gap would otherwise hold the computation forever. The job
/// is looked at again when the hold found ends.
const MAX_CHAINED: usize = 64;

/// Whether a job to `target` and `repo` is frozen at `now`, skipping the freezes
/// named in `overridden` (an operator let the job run despite them). Overlapping
/// freezes hold it until the last ends, also when one starts as another ends.
pub fn hold<'a>(
    freezes: impl IntoIterator<Item = &'a Freeze>,
    target: &str,
    repo: Option<&str>,
    overridden: &[String],
    now: DateTime<Utc>,
) -> Option<Hold> {
    let applying: Vec<&Freeze> = freezes
        .into_iter()
        .filter(|f| !overridden.contains(&f.name) && f.covers(target, repo))
        .collect();
    let mut names = Vec::new();
    let mut until = now;
    for _ in 0..MAX_CHAINED {
        let mut extended = false;
        for f in &applying {
            if let Some(w) = f.active_at(until) {
                if !names.contains(&f.name) {
                    names.push(f.name.clone());
                }
                if w.end > until {
                    until = w.end;
                    extended = true;
                }
            }
        }
        if !extended {
            break;
        }
    }
    (!names.is_empty()).then_some(Hold { names, until })
}

/// The freezes active at `now` (with their current window) and the others' next
/// window, for listing; a freeze with neither (a one-off window past) is left out.
pub fn windows(freezes: &[Freeze], now: DateTime<Utc>) -> Vec<(&Freeze, Window, bool)> {
    freezes
        .iter()
        .filter_map(|f| match f.active_at(now) {
            Some(w) => Some((f, w, true)),
            None => f.next_after(now).map(|w| (f, w, false)),
        })
        .collect()
}

/// What holds a frozen job, as the job shows it while it is `frozen` (SPEC §9: "listing
/// the freeze by name and when it ends"): written when the worker gives the job back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Frozen {
    /// The freezes holding it, in the order they apply.
    pub by: Vec<String>,
    /// When the last of them ends: the job is due again then.
    #[serde(serialize_with = "super::job::as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub until: Millis,
}

/// An operator's override of the freezes holding a job (`POST
/// /api/v1/jobs/{id}/override-freeze`). Kept with the job, because the worker must
/// skip exactly these freezes for this job from then on: the override lets the job
/// through the freezes it was shown, not through one that starts later.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FreezeOverride {
    /// The token that overrode (the last one, when a job was overridden again).
    pub by: String,
    #[serde(serialize_with = "super::job::as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
    pub comment: String,
    /// Every freeze overridden for this job so far.
    pub freezes: Vec<String>,
}

/// An operator asking to let a frozen job run, with what the decision needs to know
/// of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideRequest {
    /// The operator's token name.
    pub by: String,
    pub comment: Option<String>,
    /// The freezes this operator may not override: those with `override_groups` that
    /// none of its token's groups is in. Computed from the config in force when asked,
    /// and checked against the job in the store's transaction, so the freezes checked
    /// are the ones holding the job when it moves.
    pub barred: Vec<String>,
}

impl OverrideRequest {
    /// A request by the token `by` in `groups`, against the config's `freezes`
    /// (run-time freezes have no override groups: any `operate` token may override
    /// them).
    pub fn new<'a>(
        by: String,
        groups: &[String],
        comment: Option<String>,
        freezes: impl IntoIterator<Item = &'a Freeze>,
    ) -> Self {
        let barred = freezes
            .into_iter()
            .filter(|f| {
                !f.override_groups.is_empty()
                    && !f.override_groups.iter().any(|g| groups.contains(g))
            })
            .map(|f| f.name.clone())
            .collect();
        OverrideRequest {
            by,
            comment,
            barred,
        }
    }
}

/// Why an override is refused; each is an API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideRefusal {
    #[error("the job is {}, not frozen", .0.as_str())]
    InvalidState(JobState),
    #[error("a freeze override needs a comment")]
    CommentRequired,
    #[error("the token is in none of the override groups of freeze `{0}`")]
    NotAnOverrider(String),
}

/// Decides on an override of a job in `state`, held by `frozen` (`None` for a job
/// frozen before gantry recorded what holds it: nothing to check, and nothing to
/// skip; the worker freezes it again, this time naming the freezes). Answers the
/// override to keep on the job: `previous` joined by the freezes holding it now.
pub fn decide_override(
    state: JobState,
    frozen: Option<&Frozen>,
    previous: Option<&FreezeOverride>,
    request: &OverrideRequest,
    now: Millis,
) -> Result<FreezeOverride, OverrideRefusal> {
    if state != JobState::Frozen {
        return Err(OverrideRefusal::InvalidState(state));
    }
    let comment = match request.comment.as_deref() {
        Some(c) if !c.trim().is_empty() => c,
        _ => return Err(OverrideRefusal::CommentRequired),
    };
    let holding = frozen.map_or(&[][..], |f| &f.by[..]);
    if let Some(barred) = holding.iter().find(|n| request.barred.contains(n)) {
        return Err(OverrideRefusal::NotAnOverrider(barred.clone()));
    }
    let mut freezes = previous.map_or_else(Vec::new, |p| p.freezes.clone());
    for name in holding {
        if !freezes.contains(name) {
            freezes.push(name.clone());
        }
    }
    Ok(FreezeOverride {
        by: request.by.clone(),
        at: now,
        comment: bounded(comment, MAX_MESSAGE),
        freezes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn weekend(end: End) -> Freeze {
        Freeze {
            name: "weekend".into(),
            scope: Destinations::new(Some(&["docker-prod*".into()]), Some(&["jfrog".into()]))
                .unwrap(),
            override_groups: vec![],
            schedule: Schedule::Recurring {
                start: Box::new(parse_cron("0 18 * * FRI").unwrap()),
                end,
                tz: parse_tz("Europe/Paris").unwrap(),
            },
        }
    }

    fn once(name: &str, from: &str, until: &str) -> Freeze {
        Freeze {
            name: name.into(),
            scope: Destinations::default(),
            override_groups: vec![],
            schedule: Schedule::Once(Window {
                start: utc(from),
                end: utc(until),
            }),
        }
    }

    /// Friday 18:00 → Monday 08:00 in Paris, around both 2026 changes (29 March, CEST
    /// from 02:00; 25 October, CET from 03:00), by a pattern or a wall-clock length.
    #[test]
    fn a_weekend_freeze_keeps_its_local_hours_across_daylight_saving() {
        for end in [
            End::Cron(Box::new(parse_cron("0 8 * * MON").unwrap())),
            End::After(Duration::hours(62)),
        ] {
            let f = weekend(end);
            // Spring: starts 18:00 CET (17:00Z), ends 08:00 CEST (06:00Z).
            let w = f.active_at(utc("2026-03-29T12:00:00Z")).unwrap();
            assert_eq!(w.start, utc("2026-03-27T17:00:00Z"));
            assert_eq!(w.end, utc("2026-03-30T06:00:00Z"));
            // Autumn: starts 18:00 CEST (16:00Z), ends 08:00 CET (07:00Z).
            let w = f.active_at(utc("2026-10-25T12:00:00Z")).unwrap();
            assert_eq!(w.start, utc("2026-10-23T16:00:00Z"));
            assert_eq!(w.end, utc("2026-10-26T07:00:00Z"));
            // Monday 08:00 local is the end, exclusive; midweek is open.
            assert!(f.active_at(utc("2026-10-26T07:00:00Z")).is_none());
            assert!(f.active_at(utc("2026-10-28T12:00:00Z")).is_none());
            let next = f.next_after(utc("2026-10-28T12:00:00Z")).unwrap();
            assert_eq!(next.start, utc("2026-10-30T17:00:00Z"));
            assert_eq!(next.end, utc("2026-11-02T07:00:00Z"));
        }
    }

    #[test]
    fn a_freeze_covers_only_its_targets_and_repos() {
        let f = weekend(End::After(Duration::hours(62)));
        assert!(f.covers("jfrog", Some("docker-prod")));
        assert!(f.covers("jfrog", Some("docker-prod-eu")));
        assert!(!f.covers("jfrog", Some("docker-staging")));
        assert!(!f.covers("other", Some("docker-prod")));
        assert!(!f.covers("jfrog", None));
        let all = once("all", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
        assert!(all.covers("any", None));
    }

    #[test]
    fn overlapping_freezes_hold_until_the_last_ends() {
        let a = once("a", "2026-01-01T00:00:00Z", "2026-01-01T10:00:00Z");
        let b = once("b", "2026-01-01T05:00:00Z", "2026-01-01T12:00:00Z");
        // Starts as b ends: the job is not let go in between.
        let c = once("c", "2026-01-01T12:00:00Z", "2026-01-01T13:00:00Z");
        let later = once("later", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z");
        let all = [a, b, c, later];
        let h = hold(&all, "t", Some("r"), &[], utc("2026-01-01T06:00:00Z")).unwrap();
        assert_eq!(h.names, ["a", "b", "c"]);
        assert_eq!(h.until, utc("2026-01-01T13:00:00Z"));
        let h = hold(&all, "t", Some("r"), &[], utc("2026-01-01T01:00:00Z")).unwrap();
        assert_eq!(h.names, ["a", "b", "c"]);
        assert_eq!(
            hold(&all, "t", None, &[], utc("2026-01-01T14:00:00Z")),
            None
        );
    }

    #[test]
    fn an_overridden_freeze_does_not_hold_the_job() {
        let a = once("a", "2026-01-01T00:00:00Z", "2026-01-01T10:00:00Z");
        let b = once("b", "2026-01-01T00:00:00Z", "2026-01-01T12:00:00Z");
        let now = utc("2026-01-01T01:00:00Z");
        let both = [a, b];
        let h = hold(&both, "t", None, &["b".into()], now).unwrap();
        assert_eq!(
            (h.names, h.until),
            (vec!["a".to_string()], utc("2026-01-01T10:00:00Z"))
        );
        assert_eq!(hold(&both, "t", None, &["a".into(), "b".into()], now), None);
    }

    fn request(groups: &[&str], comment: Option<&str>, freezes: &[Freeze]) -> OverrideRequest {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        OverrideRequest::new("alice".into(), &groups, comment.map(Into::into), freezes)
    }

    /// SPEC §9: a freeze override needs a comment, a frozen job, and a token in the
    /// override groups of every freeze holding the job that has some.
    #[test]
    fn an_override_is_checked_against_the_freezes_holding_the_job() {
        let mut guarded = once("release", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
        guarded.override_groups = vec!["release-managers".into()];
        let open = once("open", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
        let config = [guarded, open];
        let held = |by: &[&str]| Frozen {
            by: by.iter().map(|n| n.to_string()).collect(),
            until: 0,
        };
        let frozen = JobState::Frozen;
        let manager = request(&["release-managers"], Some("hotfix"), &config);
        let dev = request(&["dev"], Some("hotfix"), &config);
        assert_eq!(dev.barred, ["release"]);

        let by_open = held(&["open"]);
        let o = decide_override(frozen, Some(&by_open), None, &dev, 7).unwrap();
        assert_eq!(
            (o.by.as_str(), o.at, o.comment.as_str()),
            ("alice", 7, "hotfix")
        );
        assert_eq!(o.freezes, ["open"]);
        let both = held(&["open", "release"]);
        assert_eq!(
            decide_override(frozen, Some(&both), None, &dev, 7),
            Err(OverrideRefusal::NotAnOverrider("release".into()))
        );
        // A second override keeps the freezes the first one let the job through.
        let again = decide_override(frozen, Some(&held(&["release"])), Some(&o), &manager, 9);
        assert_eq!(again.unwrap().freezes, ["open", "release"]);

        for blank in [None, Some(""), Some("  ")] {
            let r = request(&["release-managers"], blank, &config);
            assert_eq!(
                decide_override(frozen, Some(&both), None, &r, 7),
                Err(OverrideRefusal::CommentRequired)
            );
        }
        assert_eq!(
            decide_override(JobState::Queued, Some(&both), None, &manager, 7),
            Err(OverrideRefusal::InvalidState(JobState::Queued))
        );
        // Frozen before gantry recorded by what: nothing to check, nothing skipped.
        let unknown = decide_override(frozen, None, None, &dev, 7).unwrap();
        assert!(unknown.freezes.is_empty());
    }

    #[test]
    fn listing_shows_active_and_upcoming_windows_only() {
        let now = utc("2026-01-05T00:00:00Z");
        let past = once("past", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
        let active = once("active", "2026-01-04T00:00:00Z", "2026-01-06T00:00:00Z");
        let next = once("next", "2026-01-07T00:00:00Z", "2026-01-08T00:00:00Z");
        let all = [past, active, next];
        let listed: Vec<(&str, bool)> = windows(&all, now)
            .into_iter()
            .map(|(f, _, on)| (f.name.as_str(), on))
            .collect();
        assert_eq!(listed, [("active", true), ("next", false)]);
    }

    #[test]
    fn times_are_rfc3339_or_local_in_the_time_zone() {
        let paris = parse_tz("Europe/Paris").unwrap();
        assert_eq!(
            parse_instant("2026-12-20T00:00:00Z", paris),
            Ok(utc("2026-12-20T00:00:00Z"))
        );
        assert_eq!(
            parse_instant("2026-07-01T10:00", paris),
            Ok(utc("2026-07-01T08:00:00Z"))
        );
        assert_eq!(
            parse_instant("2026-03-29T02:30", paris),
            Err(FreezeError::Nonexistent("2026-03-29T02:30".into()))
        );
        assert!(matches!(
            parse_instant("soon", paris),
            Err(FreezeError::Time(_))
        ));
        assert_eq!(
            parse_tz("Mars/Olympus"),
            Err(FreezeError::TimeZone("Mars/Olympus".into()))
        );
        assert!(matches!(
            parse_cron("61 * * * *"),
            Err(FreezeError::Cron { .. })
        ));
    }
}
