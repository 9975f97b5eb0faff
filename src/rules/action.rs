//! Action templates: one per action type, compiled from a rule's `action` table and
//! rendered per event into a concrete [`Action`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::matcher::Captures;
use super::template::{Template, field_value};
use crate::config::{ActionKind, Field, Problem, RawAction};
use crate::domain::{
    Action, BuildPromotion, BuildRef, BuildTarget, BundleRef, Environment, Event, ImageRef,
    ItemRef, JobError, JobErrorCode, Op,
};

#[derive(Debug)]
pub enum ActionTemplate {
    Promote {
        from_repo: Template,
        to_repo: Template,
        to_image: Template,
        to_tag: Template,
        copy: bool,
        to_target: Option<String>,
    },
    BuildPromote {
        source_repo: Option<Template>,
        to_repo: Option<Template>,
        status: Option<Template>,
        comment: Option<Template>,
        copy: bool,
        dependencies: bool,
        properties: Vec<(String, Vec<Template>)>,
    },
    Item {
        moves: bool,
        from_repo: Template,
        to_repo: Template,
        to_path: Template,
    },
    Bundle {
        bundle: Template,
        version: Template,
        environment: Template,
        signing_key: Option<String>,
        included_repositories: Vec<String>,
    },
}

/// The keys each action type takes (besides `type` and `target`).
fn allowed(kind: ActionKind) -> &'static [&'static str] {
    match kind {
        ActionKind::Promote => &[
            "from_repo",
            "to_repo",
            "to_image",
            "to_tag",
            "copy",
            "to_target",
        ],
        ActionKind::BuildPromote => &[
            "from_repo",
            "to_repo",
            "status",
            "comment",
            "copy",
            "dependencies",
            "properties",
        ],
        ActionKind::Copy | ActionKind::Move => &["from_repo", "to_repo", "to_path"],
        ActionKind::ReleaseBundlePromote => &[
            "bundle",
            "version",
            "environment",
            "signing_key",
            "included_repositories",
        ],
    }
}

fn given(a: &RawAction) -> Vec<&'static str> {
    let set = [
        ("from_repo", a.from_repo.is_some()),
        ("to_repo", a.to_repo.is_some()),
        ("to_image", a.to_image.is_some()),
        ("to_tag", a.to_tag.is_some()),
        ("to_path", a.to_path.is_some()),
        ("to_target", a.to_target.is_some()),
        ("copy", a.copy.is_some()),
        ("status", a.status.is_some()),
        ("comment", a.comment.is_some()),
        ("dependencies", a.dependencies.is_some()),
        ("properties", a.properties.is_some()),
        ("bundle", a.bundle.is_some()),
        ("version", a.version.is_some()),
        ("environment", a.environment.is_some()),
        ("signing_key", a.signing_key.is_some()),
        ("included_repositories", a.included_repositories.is_some()),
    ];
    set.into_iter()
        .filter(|(_, s)| *s)
        .map(|(k, _)| k)
        .collect()
}

impl ActionTemplate {
    pub fn compile(
        loc: &str,
        a: &RawAction,
        groups: &HashSet<Arc<str>>,
        problems: &mut Vec<Problem>,
    ) -> Option<ActionTemplate> {
        let before = problems.len();
        for key in given(a) {
            if !allowed(a.kind).contains(&key) {
                problems.push(Problem::error(
                    format!("{loc}.action.{key}"),
                    "does not apply to this action type",
                ));
            }
        }
        let mut parse = |key: &str, text: Option<&String>| -> Option<Template> {
            let text = text?;
            Template::parse(text, groups)
                .map_err(|e| problems.push(Problem::error(format!("{loc}.action.{key}"), e)))
                .ok()
        };
        let or_field = |t: Option<Template>, f: Field| t.unwrap_or_else(|| Template::field(f));
        let template = match a.kind {
            ActionKind::Promote => ActionTemplate::Promote {
                from_repo: or_field(parse("from_repo", a.from_repo.as_ref()), Field::Repo),
                to_repo: or_field(parse("to_repo", a.to_repo.as_ref()), Field::Repo),
                to_image: or_field(parse("to_image", a.to_image.as_ref()), Field::Image),
                to_tag: or_field(parse("to_tag", a.to_tag.as_ref()), Field::Tag),
                copy: a.copy.unwrap_or(true),
                to_target: a.to_target.clone(),
            },
            ActionKind::BuildPromote => ActionTemplate::BuildPromote {
                source_repo: parse("from_repo", a.from_repo.as_ref()),
                to_repo: parse("to_repo", a.to_repo.as_ref()),
                status: parse("status", a.status.as_ref()),
                comment: parse("comment", a.comment.as_ref()),
                copy: a.copy.unwrap_or(true),
                dependencies: a.dependencies.unwrap_or(false),
                properties: a
                    .properties
                    .iter()
                    .flatten()
                    .map(|(k, v)| {
                        let values = v
                            .patterns()
                            .iter()
                            .filter_map(|p| parse(&format!("properties.{k}"), Some(p)))
                            .collect();
                        (k.clone(), values)
                    })
                    .collect(),
            },
            ActionKind::Copy | ActionKind::Move => ActionTemplate::Item {
                moves: a.kind == ActionKind::Move,
                from_repo: or_field(parse("from_repo", a.from_repo.as_ref()), Field::Repo),
                to_repo: or_field(parse("to_repo", a.to_repo.as_ref()), Field::Repo),
                to_path: or_field(parse("to_path", a.to_path.as_ref()), Field::Path),
            },
            ActionKind::ReleaseBundlePromote => ActionTemplate::Bundle {
                bundle: or_field(parse("bundle", a.bundle.as_ref()), Field::BuildName),
                version: or_field(parse("version", a.version.as_ref()), Field::BuildNumber),
                environment: or_field(parse("environment", a.environment.as_ref()), Field::Repo),
                signing_key: a.signing_key.clone(),
                included_repositories: a.included_repositories.clone().unwrap_or_default(),
            },
        };
        let required: &[(&str, bool)] = match a.kind {
            ActionKind::Promote | ActionKind::Copy | ActionKind::Move => {
                &[("to_repo", a.to_repo.is_some())]
            }
            ActionKind::BuildPromote => &[("to_repo", a.to_repo.is_some() || a.status.is_some())],
            ActionKind::ReleaseBundlePromote => &[("environment", a.environment.is_some())],
        };
        for (key, present) in required {
            if !present {
                let what = if a.kind == ActionKind::BuildPromote {
                    "a build promote needs `to_repo`, `status` or both"
                } else {
                    "is required for this action type"
                };
                problems.push(Problem::error(format!("{loc}.action.{key}"), what));
            }
        }
        (problems.len() == before).then_some(template)
    }

    /// Subject fields an event must carry for this action to apply at all, so events
    /// that cannot be promoted this way (a blob push for a docker promote, a docker
    /// event for a build promote) match no rule instead of failing as jobs.
    pub fn needs(&self) -> Vec<Field> {
        match self {
            ActionTemplate::Promote { .. } => vec![Field::Image, Field::Tag],
            ActionTemplate::BuildPromote { .. } => vec![Field::BuildName, Field::BuildNumber],
            ActionTemplate::Item { .. } => vec![Field::Path],
            ActionTemplate::Bundle {
                bundle, version, ..
            } => bundle.fields().chain(version.fields()).collect(),
        }
    }

    /// Renders for one event; a missing value fails that job (`template_error`).
    pub fn render(
        &self,
        event: &Event,
        captures: &Captures,
        dry_run: bool,
    ) -> Result<Action, JobError> {
        let fail = |e: String| JobError::new(JobErrorCode::TemplateError, e);
        let text = |t: &Template| t.render(event, captures).map_err(fail);
        let optional = |t: &Option<Template>| t.as_ref().map(text).transpose();
        let field = |f: Field| field_value(event, f).map(str::to_string).map_err(fail);
        let digest = event.subject.digest.clone().filter(|d| !d.is_empty());
        let op = match self {
            ActionTemplate::Promote {
                from_repo,
                to_repo,
                to_image,
                to_tag,
                copy,
                to_target,
            } => {
                let from = ImageRef {
                    repo: text(from_repo)?,
                    image: field(Field::Image)?,
                    tag: field(Field::Tag)?,
                    digest: digest.clone(),
                };
                let to = ImageRef {
                    repo: text(to_repo)?,
                    image: text(to_image)?,
                    tag: text(to_tag)?,
                    digest,
                };
                Op::Promote {
                    from,
                    to,
                    copy: *copy,
                    to_target: to_target.clone(),
                }
            }
            ActionTemplate::BuildPromote {
                source_repo,
                to_repo,
                status,
                comment,
                copy,
                dependencies,
                properties,
            } => Op::BuildPromote(BuildPromotion {
                from: BuildRef {
                    build_name: field(Field::BuildName)?,
                    build_number: field(Field::BuildNumber)?,
                },
                to: BuildTarget {
                    repo: optional(to_repo)?,
                    status: optional(status)?,
                },
                source_repo: optional(source_repo)?,
                copy: *copy,
                comment: optional(comment)?,
                dependencies: *dependencies,
                properties: properties
                    .iter()
                    .map(|(k, values)| {
                        Ok((
                            k.clone(),
                            values.iter().map(text).collect::<Result<_, _>>()?,
                        ))
                    })
                    .collect::<Result<BTreeMap<_, _>, JobError>>()?,
            }),
            ActionTemplate::Item {
                moves,
                from_repo,
                to_repo,
                to_path,
            } => {
                let from = ItemRef {
                    repo: text(from_repo)?,
                    path: field(Field::Path)?,
                    digest: digest.clone(),
                };
                let to = ItemRef {
                    repo: text(to_repo)?,
                    path: text(to_path)?,
                    digest,
                };
                if *moves {
                    Op::Move { from, to }
                } else {
                    Op::Copy { from, to }
                }
            }
            ActionTemplate::Bundle {
                bundle,
                version,
                environment,
                signing_key,
                included_repositories,
            } => Op::ReleaseBundlePromote {
                from: BundleRef {
                    bundle: text(bundle)?,
                    version: text(version)?,
                },
                to: Environment {
                    environment: text(environment)?,
                    included_repositories: included_repositories.clone(),
                },
                signing_key: signing_key.clone(),
            },
        };
        Ok(Action { op, dry_run })
    }

    /// What this action's output looks like as an event subject, as far as can be
    /// told without an event: a literal where the rule wrote one, unknown where the
    /// value depends on the event, absent where this kind of action has no such field
    /// (for the promotion graph).
    pub fn output(&self, field: Field) -> Output<'_> {
        fn of(t: &Template) -> Output<'_> {
            t.literal().map_or(Output::Unknown, Output::Literal)
        }
        match (self, field) {
            (ActionTemplate::Promote { to_repo, .. }, Field::Repo) => of(to_repo),
            (ActionTemplate::Promote { to_image, .. }, Field::Image) => of(to_image),
            (ActionTemplate::Promote { to_tag, .. }, Field::Tag) => of(to_tag),
            (ActionTemplate::Promote { .. }, Field::Digest) => Output::Unknown,
            (ActionTemplate::Item { to_repo, .. }, Field::Repo) => of(to_repo),
            (ActionTemplate::Item { to_path, .. }, Field::Path) => of(to_path),
            (ActionTemplate::Item { .. }, Field::Digest) => Output::Unknown,
            (ActionTemplate::BuildPromote { to_repo, .. }, Field::Repo) => {
                to_repo.as_ref().map_or(Output::Unknown, of)
            }
            (
                ActionTemplate::BuildPromote { .. } | ActionTemplate::Bundle { .. },
                Field::BuildName | Field::BuildNumber,
            ) => Output::Unknown,
            (ActionTemplate::Bundle { .. }, Field::Repo) => Output::Unknown,
            _ => Output::Absent,
        }
    }
}

/// A field of an action's output, as the promotion graph sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output<'a> {
    Literal(&'a str),
    Unknown,
    Absent,
}
