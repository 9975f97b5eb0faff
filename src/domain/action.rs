//! Rendered actions: what a job does, with every template already applied, so a
//! worker only has to carry it out and an operator can read exactly what it will do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Subject;

/// A docker image tag inside an Artifactory repository or a registry namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageRef {
    pub repo: String,
    pub image: String,
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// An item (file or folder) inside a repository: npm, Maven, generic artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemRef {
    pub repo: String,
    pub path: String,
    /// The checksum the event named (`sha256:…`), when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildRef {
    pub build_name: String,
    pub build_number: String,
}

/// Where a build promotion goes: a repository and/or a new status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BundleRef {
    pub bundle: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Environment {
    pub environment: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_repositories: Vec<String>,
}

/// A build promotion: a new status and/or the build's artifacts copied or moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildPromotion {
    pub from: BuildRef,
    pub to: BuildTarget,
    /// The repository the build's artifacts are taken from, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_repo: Option<String>,
    pub copy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub dependencies: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, Vec<String>>,
}

/// The operation of an action, tagged by `type` as in the rule that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Op {
    /// Docker tag promotion (`copy = false` moves).
    Promote {
        from: ImageRef,
        to: ImageRef,
        copy: bool,
        /// Another OCI target to promote into (another registry); unset means the
        /// same target.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_target: Option<String>,
    },
    BuildPromote(BuildPromotion),
    Copy {
        from: ItemRef,
        to: ItemRef,
    },
    Move {
        from: ItemRef,
        to: ItemRef,
    },
    ReleaseBundlePromote {
        from: BundleRef,
        to: Environment,
        /// The key pair name sent as `X-JFrog-Signing-Key-Name` (a name, not a secret).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signing_key: Option<String>,
    },
}

/// An operation and whether it is only a rehearsal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Action {
    #[serde(flatten)]
    pub op: Op,
    /// Planned and audited, the upstream asked with its own dry-run switch where it
    /// has one; nothing changes.
    #[serde(default)]
    pub dry_run: bool,
}

impl ImageRef {
    /// `{repo}/{image}`, or the image alone when the repo is empty (a repository at
    /// a registry's root): the repository a registry knows the image by.
    pub fn repository(&self) -> String {
        if self.repo.is_empty() {
            self.image.clone()
        } else {
            format!("{}/{}", self.repo, self.image)
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.repo, self.image, self.tag)?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for ItemRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.repo, self.path)
    }
}

impl Action {
    /// Human form of both sides, for tables, logs and audit records.
    pub fn describe(&self) -> (String, String) {
        match &self.op {
            Op::Promote { from, to, .. } => (from.to_string(), to.to_string()),
            Op::Copy { from, to } | Op::Move { from, to } => (from.to_string(), to.to_string()),
            Op::BuildPromote(BuildPromotion { from, to, .. }) => (
                format!("build {} #{}", from.build_name, from.build_number),
                match (&to.repo, &to.status) {
                    (Some(r), Some(s)) => format!("{r} (status {s})"),
                    (Some(r), None) => r.clone(),
                    (None, Some(s)) => format!("status {s}"),
                    (None, None) => "-".into(),
                },
            ),
            Op::ReleaseBundlePromote { from, to, .. } => (
                format!("release bundle {} {}", from.bundle, from.version),
                format!("environment {}", to.environment),
            ),
        }
    }

    /// What the promotion produced, as the subject of the `gantry.promoted` event it
    /// emits: the target side.
    pub fn output_subject(&self) -> Subject {
        match &self.op {
            Op::Promote { to, .. } => Subject {
                repo: Some(to.repo.clone()),
                image: Some(to.image.clone()),
                tag: Some(to.tag.clone()),
                digest: to.digest.clone(),
                ..Subject::default()
            },
            Op::Copy { to, .. } | Op::Move { to, .. } => Subject {
                repo: Some(to.repo.clone()),
                path: Some(to.path.clone()),
                digest: to.digest.clone(),
                ..Subject::default()
            },
            Op::BuildPromote(p) => Subject {
                repo: p.to.repo.clone(),
                build_name: Some(p.from.build_name.clone()),
                build_number: Some(p.from.build_number.clone()),
                ..Subject::default()
            },
            Op::ReleaseBundlePromote { from, .. } => Subject {
                build_name: Some(from.bundle.clone()),
                build_number: Some(from.version.clone()),
                ..Subject::default()
            },
        }
    }

    /// The action's `type`, as rules and answers name it.
    pub fn kind(&self) -> &'static str {
        match &self.op {
            Op::Promote { .. } => "promote",
            Op::BuildPromote(_) => "build-promote",
            Op::Copy { .. } => "copy",
            Op::Move { .. } => "move",
            Op::ReleaseBundlePromote { .. } => "release-bundle-promote",
        }
    }

    /// `copy`, or `move` for actions that take the source away.
    pub fn mode(&self) -> &'static str {
        match &self.op {
            Op::Promote { copy: false, .. }
            | Op::BuildPromote(BuildPromotion { copy: false, .. })
            | Op::Move { .. } => "move",
            _ => "copy",
        }
    }
}
