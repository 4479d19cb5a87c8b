//! Zone files: one secured zone written in TOML (what `redoubt zones apply` sends).
//!
//! ```toml
//! name = "lab"
//! description = "Building 4, second floor"
//! mode = "secure-site"
//! checkpoints = ["north-gate", "south-gate"]
//! wifi_bssids = ["02:00:00:00:01:00"]   # optional: their presence means "inside"
//! ```

use redoubt_proto::api::ZoneDefinition;

/// A zone file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ZoneFileError(pub String);

/// Parses a zone file: the fields of [`ZoneDefinition`] (no others), at least one
/// checkpoint.
pub fn parse_zone_toml(text: &str) -> Result<ZoneDefinition, ZoneFileError> {
    let def: ZoneDefinition =
        toml::from_str(text).map_err(|e| ZoneFileError(e.message().trim().to_owned()))?;
    if def.checkpoints.is_empty() {
        return Err(ZoneFileError(format!(
            "zone {} needs at least one checkpoint (checkpoints = [\"main-gate\"])",
            def.name
        )));
    }
    Ok(def)
}
