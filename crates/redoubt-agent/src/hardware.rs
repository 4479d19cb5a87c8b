//! The hardware backend contract: [`Hardware`], where enforcing and verifying are
//! separate operations and verification answers `off`, `on` or `unknown`.
//!
//! Backends: [`sim`] (SIMULATED, a file in the state directory), [`linux`] (mainline
//! kernel interfaces: rfkill, sysfs driver bindings, ALSA, nftables). They talk to the
//! kernel or to slow services, so the methods are synchronous and the run loop calls
//! them off the async executor's hot path.

pub mod linux;
pub mod probe;
pub mod record;
pub mod sailfish;
pub mod sim;

use std::collections::BTreeMap;
use std::path::Path;

use redoubt_proto::{
    Bssid, Capability, CapabilityState, HardwareKind, Inventory, NetworkReach, NetworkState, Rule,
};

/// Why an enforcement call failed. Whatever it says, the caller verifies afterwards:
/// a success is not a measurement either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HardwareError {
    /// The control interface is missing or unreadable (device absent, file corrupt, service down).
    #[error("hardware control unavailable: {0}")]
    Unavailable(String),
    /// The interface exists but refused the change.
    #[error("hardware refused to set {what}: {reason}")]
    Refused {
        /// The capability or `network`.
        what: String,
        /// What the backend said.
        reason: String,
    },
}

/// [`HardwareError::Unavailable`] saying `what`.
pub(crate) fn unavailable(what: impl std::fmt::Display) -> HardwareError {
    HardwareError::Unavailable(what.to_string())
}

/// [`HardwareError::Refused`] for `what` (a capability, `network`), saying `reason`.
pub(crate) fn refused(
    what: impl std::fmt::Display,
    reason: impl std::fmt::Display,
) -> HardwareError {
    HardwareError::Refused {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// `Ok` when nothing failed, otherwise one refusal for `what` naming every failure.
pub(crate) fn refused_if(
    what: impl std::fmt::Display,
    errors: &[String],
) -> Result<(), HardwareError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(refused(what, errors.join("; ")))
    }
}

/// What a hardware watcher calls when something changed: cheap, callable from any
/// thread, any number of times (the run loop coalesces wake-ups).
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

/// One way of switching capabilities on the phone and reading their real state back.
pub trait Hardware: Send {
    /// Which backend this is (reports carry it; `sim` is labelled SIMULATED everywhere).
    fn kind(&self) -> HardwareKind;

    /// Asks the hardware to switch `cap` off (`Deny`) or on (`Allow`).
    /// `Ok` means the request was accepted, not that the state changed.
    fn enforce(&mut self, cap: Capability, rule: Rule) -> Result<(), HardwareError>;

    /// Reads the real state of `cap`. Anything that cannot be read is `Unknown`, never `Off`.
    fn verify(&self, cap: Capability) -> CapabilityState;

    /// Restricts (or opens) network reach; under `OrganizationOnly` only `endpoints`
    /// (host names or addresses) stay reachable.
    fn enforce_network(
        &mut self,
        reach: NetworkReach,
        endpoints: &[String],
    ) -> Result<(), HardwareError>;

    /// Reads the real network reach.
    fn verify_network(&self) -> NetworkState;

    /// The Wi-Fi access points visible now (for zones that are entered by sighting).
    /// `Ok` with an empty list means none was seen; `Err` means the scan could not be
    /// read (then nothing is concluded). The default sees nothing.
    fn visible_bssids(&self) -> Result<Vec<Bssid>, HardwareError> {
        Ok(Vec::new())
    }

    /// Starts watching the hardware for changes made behind the agent's back (a radio
    /// switched on, a device plugged in) and calls `wake` after each, so that the run
    /// loop re-checks at once instead of at its next periodic re-check. Returns false
    /// when this backend has nothing to watch (the periodic re-check still runs).
    fn watch(&self, wake: Wake) -> Result<bool, HardwareError> {
        let _ = wake;
        Ok(false)
    }

    /// What this phone is, for the inventory every report carries (see
    /// [`crate::inventory`]): read under the backend's roots, with the storage of the
    /// file system holding `state_dir`. What cannot be read is `None`.
    fn inventory(&self, state_dir: &Path) -> Inventory;

    /// Reads every capability.
    fn verify_all(&self) -> BTreeMap<Capability, CapabilityState> {
        Capability::ALL
            .into_iter()
            .map(|c| (c, self.verify(c)))
            .collect()
    }
}

/// Opens the backend of `kind` for a state directory.
pub fn open(kind: HardwareKind, state_dir: &Path) -> anyhow::Result<Box<dyn Hardware>> {
    match kind {
        HardwareKind::Sim => Ok(Box::new(sim::SimHardware::new(state_dir))),
        HardwareKind::Linux => Ok(Box::new(linux::LinuxHardware::new(state_dir))),
        HardwareKind::Sailfish => sailfish::open(state_dir),
    }
}
