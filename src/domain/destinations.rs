//! Which promotions a policy on destinations applies to (SPEC §9): a freeze window
//! or a protection names targets and globs over the destination repo, and covers the
//! jobs promoting there, whatever rule made them.

use globset::{Glob, GlobMatcher};

/// Targets and destination repos; `None` on either covers all of them.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    /// Globs over the destination repo.
    pub to_repos: Option<Vec<GlobMatcher>>,
    /// Target names.
    pub targets: Option<Vec<String>>,
}

/// A glob that does not compile; config validation names where it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid glob `{pattern}`: {why}")]
pub struct BadGlob {
    pub pattern: String,
    pub why: String,
}

impl Destinations {
    /// Compiles `to_repos` globs and keeps `targets` as written.
    pub fn new(to_repos: Option<&[String]>, targets: Option<&[String]>) -> Result<Self, BadGlob> {
        Ok(Destinations {
            to_repos: to_repos.map(parse_globs).transpose()?,
            targets: targets.map(<[String]>::to_vec),
        })
    }

    /// The `to_repos` globs as written, for listings.
    pub fn to_repo_globs(&self) -> Option<Vec<String>> {
        self.to_repos
            .as_ref()
            .map(|g| g.iter().map(|m| m.glob().glob().to_string()).collect())
    }

    /// Whether a job to `target` whose destination repo is `repo` is covered (a job
    /// without a destination repo is covered only when no `to_repos` is given).
    pub fn covers(&self, target: &str, repo: Option<&str>) -> bool {
        let target_ok = self
            .targets
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| t == target));
        let repo_ok = match (&self.to_repos, repo) {
            (None, _) => true,
            (Some(globs), Some(repo)) => globs.iter().any(|g| g.is_match(repo)),
            (Some(_), None) => false,
        };
        target_ok && repo_ok
    }
}

/// Compiles globs over repo names.
pub fn parse_globs(patterns: &[String]) -> Result<Vec<GlobMatcher>, BadGlob> {
    patterns
        .iter()
        .map(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| BadGlob {
                    pattern: p.clone(),
                    why: e.kind().to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_cover_their_targets_and_repos_only() {
        let prod =
            Destinations::new(Some(&["docker-prod*".into()]), Some(&["jfrog".into()])).unwrap();
        assert!(prod.covers("jfrog", Some("docker-prod-eu")));
        assert!(!prod.covers("other", Some("docker-prod")));
        assert!(!prod.covers("jfrog", Some("docker-staging")));
        assert!(!prod.covers("jfrog", None));
        let all = Destinations::default();
        assert!(all.covers("any", None));
        assert_eq!(
            Destinations::new(Some(&["[".into()]), None)
                .unwrap_err()
                .pattern,
            "["
        );
    }
}
