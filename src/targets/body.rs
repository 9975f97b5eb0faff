//! Upstream answers read within bounds (SPEC §13): an upstream, or whatever sits
//! between it and gantry, decides how large its answers are, so a body is read chunk
//! by chunk and the reading stops once past its bound, whatever Content-Length said.

use reqwest::Response;

use crate::net::read_up_to;

use super::{TargetError, status_error, transport_error};
use crate::domain::JobErrorCode;

/// A manifest (or index): the OCI distribution spec's own suggested limit.
pub const MANIFEST_LIMIT: usize = 4 << 20;
/// Any other JSON answer (build info, storage info, promotion records, tag lists).
pub const JSON_LIMIT: usize = 1 << 20;
/// What is kept of an error body; the rest is dropped unread.
pub const ERROR_LIMIT: usize = 64 << 10;

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{what} was larger than {}", size(*.limit))]
    TooLarge { what: String, limit: usize },
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
}

impl BodyError {
    /// As an attempt's failure; `had_effect` as for [`transport_error`]. Too large is
    /// permanent: the same upstream will answer the same way again.
    pub fn into_target_error(self, had_effect: bool) -> TargetError {
        match self {
            BodyError::TooLarge { .. } => {
                TargetError::permanent(JobErrorCode::ResponseTooLarge, self.to_string())
            }
            BodyError::Transport(e) => transport_error(e, had_effect),
        }
    }
}

/// `4 MiB`, `64 KiB`, or bytes.
fn size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// The whole body, or [`BodyError::TooLarge`] naming `what` once it is past `limit`.
pub async fn read_within(
    response: Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, BodyError> {
    match read_up_to(response, limit).await? {
        (bytes, false) => Ok(bytes),
        (_, true) => Err(BodyError::TooLarge {
            what: what.to_string(),
            limit,
        }),
    }
}

/// A failed answer classified ([`status_error`]), with the first [`ERROR_LIMIT`]
/// bytes of its body, for a closer look. A body that breaks off is kept as far as
/// it came: the status already says what matters.
pub async fn refusal(response: Response) -> (TargetError, String) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = match read_up_to(response, ERROR_LIMIT).await {
        Ok((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    (status_error(status, &headers, &text), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(MANIFEST_LIMIT), "4 MiB");
        assert_eq!(size(JSON_LIMIT), "1 MiB");
        assert_eq!(size(ERROR_LIMIT), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }

    #[test]
    fn too_large_is_permanent_and_says_what() {
        let e = BodyError::TooLarge {
            what: "the manifest dev/app:1".into(),
            limit: MANIFEST_LIMIT,
        }
        .into_target_error(false);
        assert_eq!(e.error.code, JobErrorCode::ResponseTooLarge);
        assert!(!e.retryable);
        assert_eq!(
            e.error.message,
            "the manifest dev/app:1 was larger than 4 MiB"
        );
    }
}
