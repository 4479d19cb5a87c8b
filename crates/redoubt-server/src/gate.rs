//! STUB: being written.

use axum::Router;

use crate::http::HttpState;

/// Routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
}
