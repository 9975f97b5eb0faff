//! Item copy and move (`POST /artifactory/api/copy|move/{repo}/{path}?to=/{repo}/{path}`)
//! for npm, Maven and generic artifacts; `dry=1` for a rehearsal.

use reqwest::Method;
use serde_json::Value;

use super::{Artifactory, Endpoint, Part, done, path_segments, segment};
use crate::domain::{ItemRef, Outcome};
use crate::targets::{Effect, Fence, InvalidReference, TargetError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Copy,
    Move,
}

/// The storage info URL of an item (checked, SPEC §13).
fn storage_url(a: &Artifactory, item: &ItemRef) -> Result<Endpoint, InvalidReference> {
    a.url(&[
        Part::Fixed("artifactory"),
        Part::Fixed("api"),
        Part::Fixed("storage"),
        Part::Name("the repo key", &item.repo),
        Part::Path("the path", &item.path),
    ])
}

/// The SHA-256 of a file, or `None` when there is no such item (folders have none).
async fn sha256_of(a: &Artifactory, url: Endpoint) -> Result<Option<String>, TargetError> {
    Ok(a.read_json(url, "the storage info")
        .await?
        .and_then(|info| {
            info.pointer("/checksums/sha256")
                .and_then(Value::as_str)
                .map(|s| format!("sha256:{s}"))
        }))
}

pub async fn transfer(
    a: &Artifactory,
    fence: &dyn Fence,
    mode: Mode,
    from: &ItemRef,
    to: &ItemRef,
    dry_run: bool,
) -> Result<Effect, TargetError> {
    let verb = match mode {
        Mode::Copy => "copy",
        Mode::Move => "move",
    };
    // Every URL before any request; the destination travels in the query as
    // `/{repo}/{path}`, made of the same checked segments.
    let from_url = storage_url(a, from)?;
    let to_url = storage_url(a, to)?;
    let mut url = a.url(&[
        Part::Fixed("artifactory"),
        Part::Fixed("api"),
        Part::Fixed(verb),
        Part::Name("the repo key", &from.repo),
        Part::Path("the path", &from.path),
    ])?;
    let destination = format!(
        "/{}/{}",
        segment("the repo key", &to.repo, &to.repo)?,
        path_segments("the path", &to.path)?.join("/")
    );
    let source = sha256_of(a, from_url).await?;
    TargetError::unless_pinned(
        from,
        from.digest.as_deref(),
        source.as_deref(),
        "has checksum",
    )?;
    let expected = from.digest.as_deref().or(source.as_deref());
    let target = sha256_of(a, to_url).await?;
    let moved_away = mode == Mode::Copy || source.as_deref() != expected;
    if expected.is_some() && target.as_deref() == expected && moved_away {
        return Ok(done(Outcome::Noop, None));
    }
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("to", &destination);
        query.append_pair("failFast", "1");
        if dry_run {
            query.append_pair("dry", "1");
        }
    }
    let (status, _) = a.write(fence, a.request(Method::POST, url)).await?;
    let outcome = if dry_run {
        Outcome::DryRun
    } else {
        Outcome::Promoted
    };
    Ok(done(outcome, Some(status)))
}
