//! Item copy and move (`POST /artifactory/api/copy|move/{repo}/{path}?to=/{repo}/{path}`)
//! for npm, Maven and generic artifacts; `dry=1` for a rehearsal.

use reqwest::Method;
use serde_json::Value;

use super::{Artifactory, done};
use crate::domain::{ItemRef, Outcome};
use crate::targets::{Effect, TargetError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Copy,
    Move,
}

/// The SHA-256 of a file, or `None` when there is no such item (folders have none).
async fn sha256_of(a: &Artifactory, item: &ItemRef) -> Result<Option<String>, TargetError> {
    let url = a.url(
        ["artifactory", "api", "storage", &item.repo]
            .into_iter()
            .chain(item.path.split('/').filter(|s| !s.is_empty())),
    );
    Ok(a.read_json(url).await?.and_then(|info| {
        info.pointer("/checksums/sha256")
            .and_then(Value::as_str)
            .map(|s| format!("sha256:{s}"))
    }))
}

pub async fn transfer(
    a: &Artifactory,
    mode: Mode,
    from: &ItemRef,
    to: &ItemRef,
    dry_run: bool,
) -> Result<Effect, TargetError> {
    let source = sha256_of(a, from).await?;
    TargetError::unless_pinned(
        from,
        from.digest.as_deref(),
        source.as_deref(),
        "has checksum",
    )?;
    let expected = from.digest.as_deref().or(source.as_deref());
    let target = sha256_of(a, to).await?;
    let moved_away = mode == Mode::Copy || source.as_deref() != expected;
    if expected.is_some() && target.as_deref() == expected && moved_away {
        return Ok(done(Outcome::Noop, None));
    }
    let verb = match mode {
        Mode::Copy => "copy",
        Mode::Move => "move",
    };
    let mut url = a.url(
        ["artifactory", "api", verb, &from.repo]
            .into_iter()
            .chain(from.path.split('/').filter(|s| !s.is_empty())),
    );
    {
        let mut query = url.query_pairs_mut();
        query.append_pair(
            "to",
            &format!("/{}/{}", to.repo, to.path.trim_start_matches('/')),
        );
        query.append_pair("failFast", "1");
        if dry_run {
            query.append_pair("dry", "1");
        }
    }
    let (status, _) = a.write(a.request(Method::POST, url)).await?;
    let outcome = if dry_run {
        Outcome::DryRun
    } else {
        Outcome::Promoted
    };
    Ok(done(outcome, Some(status)))
}
