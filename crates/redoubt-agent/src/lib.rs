//! The Redoubt device agent: enrollment, mode enforcement through hardware backends,
//! signed compliance reports kept in a crash-safe outbox, and the authenticated
//! WebSocket session with the server.
//!
//! | module | what lives there |
//! |---|---|
//! | [`state`] | the state directory: layout, atomic writes, the run lock, identity, key, bundle, seq |
//! | [`clock`] | the clock seam and the trusted time floor (`time-floor.json`) |
//! | [`hardware`] | the [`hardware::Hardware`] trait (enforce and verify are separate) and the SIMULATED backend |
//! | [`enforce`] | applying an effective mode, measuring, honest report building |
//! | [`inventory`] | what the phone is (model, system, kernel, storage, battery), carried by every report |
//! | [`agent`] | the agent core: what to enforce now, drift detection, bundle acceptance, checkpoint codes, device commands |
//! | [`outbox`] | signed reports on disk until the server acknowledges them |
//! | [`connection`] | the device WebSocket session and the run loop (commands, wipe) |
//! | [`control`] | the running agent's control socket (`redoubt-agent checkpoint` while `run` runs) |
//! | [`status`] | the status file the run loop keeps, and the `status` view |
//! | [`enroll`] | enrollment |
//! | [`messenger_dir`] | the messenger's own key, its delegation by the device key, the messenger directory |
//! | [`cli`] | command-line parsing and dispatch |
//!
//! Invariants: "off" is always a measurement read back from the backend, never an
//! assumption; a report is on disk before it is sent and deleted only when acknowledged;
//! a bundle is applied only when it verifies against the pinned organization key;
//! the zone state is written before it is enforced, and an unreadable one means lockdown.

pub mod agent;
pub mod cli;
pub mod clock;
pub mod connection;
pub mod control;
pub mod enforce;
pub mod enroll;
pub mod hardware;
pub mod inventory;
pub mod messenger_dir;
pub mod outbox;
pub mod state;
pub mod status;
