//! The one mapping from failures to HTTP answers, always in the SPEC error shape
//! `{"error":{"code","message"}}`. Internal causes are logged once, here, and never
//! sent to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::ingest::{IngestError, NormalizeError, VerifyError};
use crate::store::StoreError;

/// The code of a refusal because an `oidc` source's issuer keys could not be had.
pub const KEYS_UNAVAILABLE: &str = "keys_unavailable";

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(super::ErrorBody::new(self.code, &self.message))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is unavailable; try again later",
                )
            }
            StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "store holds invalid data");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let message = e.to_string();
        match e {
            IngestError::UnknownSource(_) => ApiError::not_found("unknown_source", message),
            // Still 401 (nothing was verified), under a code of its own: the sender
            // is not at fault, and operators count these apart.
            IngestError::Signature(VerifyError::KeysUnavailable(_)) => {
                ApiError::new(StatusCode::UNAUTHORIZED, KEYS_UNAVAILABLE, message)
            }
            IngestError::Signature(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message)
            }
            IngestError::Body(NormalizeError::Json(_) | NormalizeError::TooDeep) => {
                ApiError::bad_request("malformed_json", message)
            }
            // Too much to commit as one body, however well formed: 413, like a body
            // over `server.max_body_bytes`, with its own code saying why.
            IngestError::Body(
                NormalizeError::TooManyEvents { .. } | NormalizeError::TooMuchRepeated { .. },
            ) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_events", message),
            IngestError::Body(_) => ApiError::bad_request("invalid_event", message),
            IngestError::Store(s) => s.into(),
        }
    }
}
