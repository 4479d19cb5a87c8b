//! The audit log's HTTP surface (STUB: being written).

use axum::Router;

use crate::http::HttpState;

/// Routes under `/api/v1/audit`.
pub fn routes() -> Router<HttpState> {
    Router::new()
}
