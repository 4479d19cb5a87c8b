//! `ServiceError`, the one error type of the services, and its mapping to the API's
//! `{code, message}` answer with an HTTP status. Logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redoubt_proto::api::ApiError;
use redoubt_store::StoreError;

/// What a service call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No or unknown credential.
    #[error("{0}")]
    Unauthorized(String),
    /// The credential may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The device awaits an owner's approval before it may take part in conversations.
    #[error("{0}")]
    AwaitingApproval(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// Unknown enrollment token.
    #[error("this enrollment code is not valid")]
    TokenInvalid,
    /// Enrollment token already used.
    #[error("this enrollment code was already used; ask an operator for a new one")]
    TokenUsed,
    /// Enrollment token expired.
    #[error("this enrollment code has expired; ask an operator for a new one")]
    TokenExpired,
    /// A commit for an epoch that is not the group's current one.
    #[error(
        "the conversation moved on: the commit was made in epoch {sent} but the conversation is at epoch {current}; catch up and retry"
    )]
    EpochConflict {
        /// The epoch the commit was made in.
        sent: u64,
        /// The group's current epoch.
        current: u64,
    },
    /// The body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The device's live files would exceed its storage quota.
    #[error(
        "storage quota exceeded: this device stores {used} bytes of files that have not expired; \
         {size} more would pass its quota of {limit} bytes (files free their space when they expire)"
    )]
    QuotaExceeded {
        /// Bytes of live files the device stores.
        used: u64,
        /// Size of the refused file.
        size: u64,
        /// The quota.
        limit: u64,
    },
    /// Too many attempts.
    #[error("too many attempts; try again in a minute")]
    RateLimited,
    /// The store is unavailable (disk full, IO).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ServiceError::NotFound(format!("no {what}")),
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            e @ StoreError::CountMismatch { .. } => ServiceError::Conflict(e.to_string()),
            StoreError::Forbidden(m) => ServiceError::Forbidden(m),
            StoreError::Enroll(_) => ServiceError::TokenInvalid,
            StoreError::QuotaExceeded { used, size, limit } => {
                ServiceError::QuotaExceeded { used, size, limit }
            }
            StoreError::Database(e) => ServiceError::Unavailable(e.to_string()),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl ServiceError {
    /// HTTP status and machine code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ServiceError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServiceError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServiceError::AwaitingApproval(_) => (StatusCode::FORBIDDEN, "awaiting_approval"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ServiceError::TokenInvalid => (StatusCode::UNAUTHORIZED, "token_invalid"),
            ServiceError::TokenUsed => (StatusCode::CONFLICT, "token_used"),
            ServiceError::TokenExpired => (StatusCode::GONE, "token_expired"),
            ServiceError::EpochConflict { .. } => (StatusCode::CONFLICT, "epoch_conflict"),
            ServiceError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ServiceError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ServiceError::QuotaExceeded { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded"),
            ServiceError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The API body.
    pub fn to_api(&self) -> ApiError {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() {
            // Details go to the log, not to the client.
            match self {
                ServiceError::Unavailable(_) => {
                    "storage is unavailable; try again later".to_owned()
                }
                _ => "internal error; see the server log".to_owned(),
            }
        } else {
            self.to_string()
        };
        ApiError {
            code: code.to_owned(),
            message,
        }
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        } else {
            tracing::debug!(code, error = %self, "request refused");
        }
        if let ServiceError::EpochConflict { current, .. } = self {
            let api = self.to_api();
            return (
                status,
                Json(redoubt_proto::messaging::EpochConflict {
                    code: api.code,
                    message: api.message,
                    current_epoch: current,
                }),
            )
                .into_response();
        }
        (status, Json(self.to_api())).into_response()
    }
}
