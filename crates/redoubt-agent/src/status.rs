//! The run status file (`status.json`) that `run` keeps up to date, and the
//! `status` view that combines it with the identity, the held bundle, the zone state
//! and a fresh measurement of the hardware.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;

use anyhow::{Context, Result};
use redoubt_proto::{
    Capability, CapabilityState, CommandId, DeviceId, Evidence, HardwareKind, NetworkState,
    Timestamp, UserName, ZoneName,
};
use serde::{Deserialize, Serialize};

use crate::agent::decide_for;
use crate::enforce::{measure, violations};
use crate::hardware;
use crate::outbox::Outbox;
use crate::state::{LockProbe, OUTBOX_DIR, STATUS_FILE, StateDir, write_json};

/// Whether the running agent holds an authenticated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// Authenticated WebSocket session open.
    Connected,
    /// No session (connecting, backing off, or refused).
    #[default]
    Disconnected,
}

/// `status.json`: what only the running agent knows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunStatus {
    /// The agent's process id.
    pub pid: u32,
    /// Connection state.
    pub connection: Connection,
    /// When the connection state last changed.
    pub connection_since: Option<Timestamp>,
    /// The most recent error (connection, hardware, disk, server).
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<Timestamp>,
    /// Why the most recently refused bundle was refused.
    pub bundle_refused: Option<String>,
    /// When it was refused.
    pub bundle_refused_at: Option<Timestamp>,
    /// The sequence number of the latest report made.
    pub last_report_seq: Option<u64>,
    /// The highest sequence number the server acknowledged.
    pub last_acked_seq: Option<u64>,
}

impl RunStatus {
    /// Records an error.
    pub fn error(&mut self, message: impl Into<String>) {
        self.last_error = Some(message.into());
        self.last_error_at = Some(Timestamp::now());
    }

    /// Records a connection state change.
    pub fn set_connection(&mut self, c: Connection) {
        if self.connection != c || self.connection_since.is_none() {
            self.connection = c;
            self.connection_since = Some(Timestamp::now());
        }
    }

    /// Reads `status.json` (`None` when `run` never wrote one).
    pub fn load(dir: &StateDir) -> Result<Option<Self>> {
        let path = dir.path(STATUS_FILE);
        match fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .with_context(|| format!("{} is corrupt", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `status.json`.
    pub fn store(&self, dir: &StateDir) -> Result<()> {
        write_json(&dir.path(STATUS_FILE), self)
    }
}

/// What `status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionView {
    /// The agent runs and holds an authenticated session.
    Connected,
    /// The agent runs without a session.
    Disconnected,
    /// No agent holds the state directory's lock.
    NotRunning,
}

/// A zone the device is inside, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneView {
    /// The zone.
    pub zone: ZoneName,
    /// Since when.
    pub since: Timestamp,
    /// How the device knows.
    pub evidence: Evidence,
}

impl ZoneView {
    fn describe(&self) -> String {
        let how = match &self.evidence {
            Evidence::Code { checkpoint, .. } => format!("code of checkpoint {checkpoint}"),
            Evidence::Wifi { bssid } => format!("Wi-Fi access point {bssid}"),
            Evidence::Command { command } => format!("command {command}"),
        };
        format!("{} (since {}, via {how})", self.zone, self.since)
    }
}

/// The answer of `status`; its JSON form is the `status --json` output.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Device id.
    pub device_id: DeviceId,
    /// Owner.
    pub user: UserName,
    /// Server base URL.
    pub server: String,
    /// Hardware backend.
    pub hardware: HardwareKind,
    /// True for the SIMULATED backend.
    pub simulated: bool,
    /// Connection state.
    pub connection: ConnectionView,
    /// Process id of the running agent.
    pub pid: Option<u32>,
    /// The mode that holds now (decided from the held bundle, fail-closed).
    pub effective_mode: String,
    /// Why the effective mode is the fallback rather than the bundle's.
    pub fallback_reason: Option<String>,
    /// The trusted time floor (a lower bound on real time the server vouched for).
    pub trusted_floor: Timestamp,
    /// The phone's wall clock.
    pub wall_clock: Timestamp,
    /// The wall clock is behind the floor: it was set back (check-outs are refused).
    pub clock_behind: bool,
    /// The secured zones the device is inside.
    pub zones: Vec<ZoneView>,
    /// The lock command in force.
    pub locked_by: Option<CommandId>,
    /// When that lock was issued.
    pub locked_at: Option<Timestamp>,
    /// Why the zone state cannot be read (then the device is in lockdown).
    pub zone_state_error: Option<String>,
    /// Zone, code and command events not yet carried by a report.
    pub pending_events: usize,
    /// Version of the held bundle.
    pub bundle_version: Option<u64>,
    /// Expiry of the held bundle.
    pub bundle_expires_at: Option<Timestamp>,
    /// Why the held bundle file cannot be used, if it cannot.
    pub bundle_error: Option<String>,
    /// Why the last refused bundle was refused.
    pub bundle_refused: Option<String>,
    /// When.
    pub bundle_refused_at: Option<Timestamp>,
    /// Every capability, measured now.
    pub capabilities: BTreeMap<Capability, CapabilityState>,
    /// Network reach, measured now.
    pub network: NetworkState,
    /// Restrictions of the effective mode that the measurement shows are not in force.
    pub violations: Vec<String>,
    /// Reports waiting for the server's acknowledgement.
    pub pending_reports: usize,
    /// Sequence number of the latest report.
    pub last_report_seq: Option<u64>,
    /// Highest acknowledged sequence number.
    pub last_acked_seq: Option<u64>,
    /// Most recent error of the running agent.
    pub last_error: Option<String>,
    /// When.
    pub last_error_at: Option<Timestamp>,
}

/// Builds the status of a state directory without changing anything in it.
pub fn collect(dir: &StateDir, clock: &dyn crate::clock::Clock) -> Result<StatusView> {
    let identity = dir.load_identity()?;
    let (bundle, bundle_error) = match dir.load_bundle(&identity) {
        Ok(b) => (b.map(|(b, _)| b), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let vouched = bundle.as_ref().map_or(Timestamp(0), |b| b.issued_at);
    let now = crate::clock::peek(dir, vouched, clock);
    let (zones, zone_state_error) = match dir.load_zones() {
        Ok(z) => (z.unwrap_or_default(), None),
        Err(e) => (Default::default(), Some(format!("{e:#}"))),
    };
    let decision = decide_for(
        bundle.as_ref(),
        bundle_error.as_deref(),
        &zones,
        zone_state_error.as_deref(),
        now,
    );
    let hw = hardware::open(identity.hardware, dir.root())?;
    let m = measure(&*hw);
    let running = dir.probe_lock()? == LockProbe::Held;
    let run = RunStatus::load(dir)?.unwrap_or_default();
    let connection = match (running, run.connection) {
        (false, _) => ConnectionView::NotRunning,
        (true, Connection::Connected) => ConnectionView::Connected,
        (true, Connection::Disconnected) => ConnectionView::Disconnected,
    };
    let pending_reports = if dir.path(OUTBOX_DIR).is_dir() {
        Outbox::peek(&dir.path(OUTBOX_DIR)).len()?
    } else {
        0
    };
    let last_report_seq = run.last_report_seq.or(match dir.load_seq()? {
        0 => None,
        n => Some(n),
    });
    Ok(StatusView {
        device_id: identity.device_id,
        user: identity.user,
        server: identity.server.as_str().trim_end_matches('/').to_owned(),
        hardware: identity.hardware,
        simulated: identity.hardware.is_simulated(),
        connection,
        pid: running.then_some(run.pid),
        violations: violations(&decision.mode, &m),
        effective_mode: decision.mode.name,
        fallback_reason: decision.fallback_reason,
        trusted_floor: now.floor,
        wall_clock: now.wall,
        clock_behind: now.wall_behind(),
        zones: zones
            .inside()
            .iter()
            .map(|(zone, p)| ZoneView {
                zone: zone.clone(),
                since: p.since,
                evidence: p.evidence.clone(),
            })
            .collect(),
        locked_by: zones.lock().map(|l| l.id.clone()),
        locked_at: zones.lock().map(|l| l.issued_at),
        zone_state_error,
        pending_events: zones.unreported_len(),
        bundle_version: bundle.as_ref().map(|b| b.version),
        bundle_expires_at: bundle.as_ref().map(|b| b.expires_at),
        bundle_error,
        bundle_refused: run.bundle_refused,
        bundle_refused_at: run.bundle_refused_at,
        capabilities: m.capabilities,
        network: m.network,
        pending_reports,
        last_report_seq,
        last_acked_seq: run.last_acked_seq,
        last_error: run.last_error,
        last_error_at: run.last_error_at,
    })
}

fn or_dash<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

impl StatusView {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let connection = match self.connection {
            ConnectionView::Connected => "connected",
            ConnectionView::Disconnected => "disconnected",
            ConnectionView::NotRunning => "not_running (no agent holds the state directory)",
        };
        let _ = writeln!(s, "device:          {}", self.device_id);
        let _ = writeln!(s, "user:            {}", self.user);
        let _ = writeln!(s, "server:          {}", self.server);
        let _ = writeln!(s, "hardware:        {}", self.hardware);
        let _ = writeln!(s, "connection:      {connection}");
        let _ = writeln!(s, "effective mode:  {}", self.effective_mode);
        let _ = writeln!(s, "fallback reason: {}", or_dash(&self.fallback_reason));
        let _ = writeln!(
            s,
            "time:            trusted floor {}, wall clock {}{}",
            self.trusted_floor,
            self.wall_clock,
            if self.clock_behind {
                " (set back: check-out codes are refused)"
            } else {
                ""
            }
        );
        if self.zones.is_empty() {
            let _ = writeln!(s, "zones:           none");
        }
        for (i, z) in self.zones.iter().enumerate() {
            let label = if i == 0 { "zones:" } else { "" };
            let _ = writeln!(s, "{label:<17}{}", z.describe());
        }
        match (&self.locked_by, self.locked_at) {
            (Some(id), Some(at)) => {
                let _ = writeln!(s, "lock:            locked by {id} (issued {at})");
            }
            _ => {
                let _ = writeln!(s, "lock:            none");
            }
        }
        if let Some(e) = &self.zone_state_error {
            let _ = writeln!(s, "zone state:      {e}");
        }
        match (self.bundle_version, self.bundle_expires_at) {
            (Some(v), Some(exp)) => {
                let _ = writeln!(s, "bundle:          version {v}, expires {exp}");
            }
            _ => {
                let _ = writeln!(s, "bundle:          none");
            }
        }
        if let Some(e) = &self.bundle_error {
            let _ = writeln!(s, "bundle error:    {e}");
        }
        if let Some(r) = &self.bundle_refused {
            let _ = writeln!(
                s,
                "bundle refused:  {r} (at {})",
                or_dash(&self.bundle_refused_at)
            );
        }
        let sim = if self.simulated { ", SIMULATED" } else { "" };
        let _ = writeln!(s, "capabilities (measured now{sim}):");
        for (cap, state) in &self.capabilities {
            let _ = writeln!(s, "  {:<14} {state}", cap.as_str());
        }
        let _ = writeln!(s, "  {:<14} {}", "network", self.network);
        if self.violations.is_empty() {
            let _ = writeln!(s, "violations:      none");
        } else {
            let _ = writeln!(s, "violations:      {}", self.violations.join("; "));
        }
        let _ = writeln!(s, "pending reports: {}", self.pending_reports);
        let _ = writeln!(s, "pending events:  {}", self.pending_events);
        let _ = writeln!(
            s,
            "last report:     seq {} (acknowledged up to {})",
            or_dash(&self.last_report_seq),
            or_dash(&self.last_acked_seq)
        );
        match &self.last_error {
            Some(e) => {
                let _ = writeln!(
                    s,
                    "last error:      {e} (at {})",
                    or_dash(&self.last_error_at)
                );
            }
            None => {
                let _ = writeln!(s, "last error:      -");
            }
        }
        s
    }
}
