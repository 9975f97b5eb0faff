//! Names as the OCI distribution spec writes them, checked once: a value of these
//! types fits its grammar, so the registry client, whose methods take nothing else,
//! cannot put a `..`, a `%2e%2e` or a `/manifests/` of the sender's into a URL
//! (SPEC §13).

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::targets::InvalidReference;

/// The longest repository name the distribution spec's grammar allows.
const MAX_REPOSITORY: usize = 255;
/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
const MAX_TAG: usize = 128;

/// A repository: lowercase path components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
/// joined by `/`, at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryName(String);

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

/// A digest `algorithm:encoded`: algorithm `[a-z0-9]+([+._-][a-z0-9]+)*`, encoded
/// `[a-zA-Z0-9=_-]+`; `sha256` and `sha512` are lowercase hex of their length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest(String);

/// What a manifest is asked for by: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

/// `[a-z0-9]+` runs joined by single separators that `separator` accepts (it
/// returns their length at the start of its input, or 0).
fn runs_joined_by(s: &str, separator: impl Fn(&[u8]) -> usize) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        let run = b[i..].iter().take_while(|c| alnum(c)).count();
        if run == 0 {
            return false;
        }
        i += run;
        if i == b.len() {
            return true;
        }
        let sep = separator(&b[i..]);
        if sep == 0 {
            return false;
        }
        i += sep;
    }
}

/// `\.|_|__|-+` at the start of `rest`.
fn component_separator(rest: &[u8]) -> usize {
    match rest {
        [b'.', ..] => 1,
        [b'_', b'_', ..] => 2,
        [b'_', ..] => 1,
        [b'-', ..] => rest.iter().take_while(|c| **c == b'-').count(),
        _ => 0,
    }
}

impl RepositoryName {
    pub fn parse(value: &str) -> Result<Self, InvalidReference> {
        let what = "the repository name";
        if value.len() > MAX_REPOSITORY {
            return Err(InvalidReference::new(
                what,
                value,
                "is longer than 255 characters",
            ));
        }
        if !value
            .split('/')
            .all(|c| runs_joined_by(c, component_separator))
        {
            return Err(InvalidReference::new(
                what,
                value,
                "is not lowercase components [a-z0-9]+((.|_|__|-+)[a-z0-9]+)* joined by /",
            ));
        }
        Ok(RepositoryName(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its components, each one URL path segment.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl Tag {
    pub fn parse(value: &str) -> Result<Self, InvalidReference> {
        let b = value.as_bytes();
        let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
        let fits = b.first().is_some_and(word)
            && b.len() <= MAX_TAG
            && b.iter().all(|c| word(c) || *c == b'.' || *c == b'-');
        if fits {
            Ok(Tag(value.to_string()))
        } else {
            Err(InvalidReference::new(
                "the tag",
                value,
                "is not [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Digest {
    pub fn parse(value: &str) -> Result<Self, InvalidReference> {
        let bad = |reason| Err(InvalidReference::new("the digest", value, reason));
        let Some((algorithm, encoded)) = value.split_once(':') else {
            return bad("is not algorithm:encoded");
        };
        let algorithm_separator =
            |rest: &[u8]| usize::from(matches!(rest.first(), Some(b'+' | b'.' | b'_' | b'-')));
        if !runs_joined_by(algorithm, algorithm_separator) {
            return bad("has an algorithm that is not [a-z0-9]+([+._-][a-z0-9]+)*");
        }
        let hex_of = |len: usize| {
            encoded.len() == len
                && encoded
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        };
        match algorithm {
            "sha256" if !hex_of(64) => bad("is not sha256: and 64 lowercase hex digits"),
            "sha512" if !hex_of(128) => bad("is not sha512: and 128 lowercase hex digits"),
            _ if encoded.is_empty()
                || !encoded
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'=' | b'_' | b'-')) =>
            {
                bad("has an encoded part that is not [a-zA-Z0-9=_-]+")
            }
            _ => Ok(Digest(value.to_string())),
        }
    }

    /// The SHA-256 digest of `bytes`: valid by construction.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Self {
        Reference::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Self {
        Reference::Digest(d)
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(RepositoryName, Tag, Digest, Reference);

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:88ac7829e0f25481abddb233aaf45c45eb9e97fa3fe6d511b7bdd41e66c345a7";

    #[test]
    fn repository_names() {
        for ok in [
            "app", "dev/app", "a/b/c", "my-app", "my--app", "my_app", "my__app", "my.app", "a0/1b",
        ] {
            assert!(RepositoryName::parse(ok).is_ok(), "{ok}");
        }
        let long = format!("{}/{}", "a".repeat(200), "b".repeat(55));
        for bad in [
            "",
            "App",
            "dev/../other",
            "app/../../other",
            "..",
            ".app",
            "app.",
            "a..b",
            "a___b",
            "a._b",
            "dev//app",
            "/app",
            "app/",
            "%2e%2e",
            "app/manifests/1 ",
            long.as_str(),
        ] {
            assert!(RepositoryName::parse(bad).is_err(), "{bad}");
        }
        assert!(RepositoryName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn tags() {
        for ok in ["1", "1.0.0", "_x", "Latest", "v1-rc_2.3", &"t".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-1",
            ".1",
            "../../x",
            "%2e%2e",
            "a/b",
            "a:b",
            "a b",
            &"t".repeat(129),
        ] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests() {
        for ok in [
            SHA,
            "sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        ] {
            assert!(Digest::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:ABC",
            "sha256:../../x",
            &SHA.to_uppercase(),
            &format!("{SHA}0"),
            "SHA256:abc",
            "sha256:abc/def",
            "+sha:abc",
            "sha:a%2e",
            ":abc",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::sha256_of(b"{}").as_str(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
