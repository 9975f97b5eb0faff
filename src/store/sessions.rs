//! Console sessions (SPEC §11) as both stores keep them: one table, the same
//! statements (`$n` parameters, as SQLite reads them too through
//! `outbox::sqlite_params`). Only a hash of a session's id is stored, so a copy of
//! the database signs no one in.

use super::rows::{Columns, corrupt};
use super::{ConsoleSession, StoreError};
use crate::config::Role;

pub(super) const SESSIONS_MIGRATION: &str = r#"
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    who TEXT NOT NULL,
    person BIGINT NOT NULL,
    role TEXT NOT NULL,
    groups TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);
"#;

pub(super) const INSERT_SESSION: &str = "INSERT INTO sessions (id_hash, who, person, role,
    groups, csrf, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Sessions past their end, removed whenever one starts.
pub(super) const DROP_EXPIRED: &str = "DELETE FROM sessions WHERE expires_at <= $1";

/// A session in force (`$2` is now).
pub(super) const SESSION: &str = "SELECT who, role, groups, csrf, expires_at, person
    FROM sessions WHERE id_hash = $1 AND expires_at > $2";

pub(super) const END_SESSION: &str = "DELETE FROM sessions WHERE id_hash = $1";

pub(super) fn role_text(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Operate => "operate",
    }
}

pub(super) fn groups_text(groups: &[String]) -> String {
    serde_json::to_string(groups).unwrap_or_else(|_| "[]".into())
}

pub(super) fn read_session(id_hash: &str, r: &impl Columns) -> Result<ConsoleSession, StoreError> {
    let role = r.text(1)?;
    let groups = r.text(2)?;
    Ok(ConsoleSession {
        id_hash: id_hash.to_string(),
        who: r.text(0)?,
        role: match role.as_str() {
            "read" => Role::Read,
            "operate" => Role::Operate,
            other => return Err(corrupt("session role", other)),
        },
        groups: serde_json::from_str(&groups).map_err(|_| corrupt("session groups", &groups))?,
        csrf: r.text(3)?,
        expires_at: r.int(4)?,
        person: r.int(5)? != 0,
    })
}
