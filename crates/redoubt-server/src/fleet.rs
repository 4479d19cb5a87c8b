//! Fleet-wide views: `GET /devices/counts` (live devices counted by verdict, mode,
//! assignment, hardware and group, and those connected to this node).

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::response::IntoResponse;
use redoubt_proto::Timestamp;
use redoubt_proto::api::DeviceCounts;

use crate::app::App;
use crate::error::ServiceError;
use crate::http::{Admin, HttpState};
use crate::routes::{ANY_ADMIN, Access, Routes};

/// Routes merged into `/api/v1`.
pub fn routes() -> Routes {
    Routes::new().add(
        Method::GET,
        "/devices/counts",
        Access::Admin(ANY_ADMIN),
        counts,
    )
}

impl App {
    /// The moment before which a device's latest report makes it `stale`.
    pub fn stale_before(&self, now: Timestamp) -> Timestamp {
        now.plus_secs(
            -(i64::from(self.config.check_in_interval_secs)
                * i64::from(self.config.stale_after_intervals)),
        )
    }

    /// `GET /devices/counts`.
    pub async fn device_counts(&self) -> Result<DeviceCounts, ServiceError> {
        let by_compliance: std::collections::BTreeMap<String, u64> = self
            .store
            .compliance_counts(self.stale_before(Timestamp::now()))
            .await?
            .into_iter()
            .map(|(c, n)| (c.as_str().to_owned(), n))
            .collect();
        let b = self.store.device_breakdown().await?;
        Ok(DeviceCounts {
            total: by_compliance.values().sum(),
            connected: self.hub.len() as u64,
            by_compliance,
            by_mode: b.by_mode.into_iter().collect(),
            by_assigned_mode: b.by_assigned_mode.into_iter().collect(),
            by_hardware: b.by_hardware.into_iter().collect(),
            by_group: b.by_group.into_iter().collect(),
        })
    }
}

async fn counts(
    State(s): State<HttpState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.device_counts().await?))
}
