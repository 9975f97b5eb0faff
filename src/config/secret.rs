//! Secret references (`env:NAME`, `file:/path`, or a literal) and the wrapper that
//! keeps resolved values out of logs, `Debug` output and error messages.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A resolved secret. `Debug` prints `[redacted]`; the value is only reachable through
/// [`Secret::expose`], which makes every use of it easy to find.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How a secret was written, so `check` can warn about literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Env,
    File,
    Literal,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set")]
    EnvMissing(String),
    #[error("cannot read secret file `{path}`: {reason}")]
    File { path: String, reason: String },
    #[error("secret is empty")]
    Empty,
}

/// Resolves one reference. `lookup_env` is injected so tests and `check` see the same
/// environment the loader layered in.
pub fn resolve(
    reference: &str,
    lookup_env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Secret, Origin), SecretError> {
    let (value, origin) = if let Some(name) = reference.strip_prefix("env:") {
        let v = lookup_env(name).ok_or_else(|| SecretError::EnvMissing(name.to_string()))?;
        (v, Origin::Env)
    } else if let Some(path) = reference.strip_prefix("file:") {
        let v = std::fs::read_to_string(path).map_err(|e| SecretError::File {
            path: path.to_string(),
            reason: e.kind().to_string(),
        })?;
        // Files written by editors and secret managers usually end with a newline.
        (v.trim_end_matches(['\r', '\n']).to_string(), Origin::File)
    } else {
        (reference.to_string(), Origin::Literal)
    };
    if value.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok((Secret::new(value), origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
    }

    #[test]
    fn resolves_env_file_and_literal() {
        let env = |k: &str| (k == "X").then(|| "from-env".to_string());
        let (s, o) = resolve("env:X", &env).unwrap();
        assert_eq!((s.expose(), o), ("from-env", Origin::Env));
        assert!(matches!(resolve("env:Y", &env), Err(SecretError::EnvMissing(n)) if n == "Y"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "from-file\n").unwrap();
        let (s, o) = resolve(&format!("file:{}", path.display()), &env).unwrap();
        assert_eq!((s.expose(), o), ("from-file", Origin::File));

        let (s, o) = resolve("plain", &env).unwrap();
        assert_eq!((s.expose(), o), ("plain", Origin::Literal));
        assert!(matches!(resolve("", &env), Err(SecretError::Empty)));
    }
}
