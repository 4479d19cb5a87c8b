//! The agent core, without any network: which mode holds now, enforcing it,
//! detecting drift, accepting bundles, secured zones (checkpoint codes, Wi-Fi
//! sightings), device commands, and turning measurements into signed reports in the
//! outbox.
//!
//! The zone state (`zones.json`) is written before anything is enforced from it. An
//! unreadable zone state means `lockdown` until it is repaired, never "outside".
//!
//! Everything here is synchronous (hardware backends may block); the run loop in
//! [`crate::connection`] drives it and carries its reports to the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use redoubt_policy::{
    CommandEffect, Decision, PhoneTime, ZoneChange, ZoneState, decide_with, effective, lockdown,
    verify_bundle,
};
use redoubt_proto::{
    CheckpointName, CommandId, ComplianceReport, DeviceAction, DeviceCommand, DeviceEventKind,
    Evidence, PolicyBundle, SignedEnvelope, Timestamp, ZoneName,
};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, TimeFloor};
use crate::enforce::{Measurement, ReportExtras, Scope, apply, build_report, measure, violations};
use crate::hardware::{self, Hardware};
use crate::outbox::{Outbox, Pending};
use crate::state::{Identity, OUTBOX_DIR, StateDir};
use crate::status::RunStatus;

/// Check-in interval when no bundle says otherwise.
pub const DEFAULT_CHECK_IN: Duration = Duration::from_secs(300);
/// How many recent command ids a report names.
pub const REPORTED_COMMANDS: usize = 16;

/// A random event id: 16 bytes, lowercase hex.
pub fn new_event_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What holds, fail-closed, from what the state directory gave: the held bundle (or
/// why it is unusable) and the zone state (or why it is unreadable). Shared by the
/// agent and `status`.
pub fn decide_for(
    bundle: Option<&PolicyBundle>,
    bundle_problem: Option<&str>,
    zones: &ZoneState,
    zones_problem: Option<&str>,
    now: PhoneTime,
) -> Decision {
    if let Some(problem) = zones_problem {
        return Decision {
            mode: effective(&[lockdown()]),
            bundle_version: bundle.map_or(0, |b| b.version),
            fallback_reason: Some(format!(
                "zone state unreadable ({problem}): lockdown until it is repaired"
            )),
            zones: Vec::new(),
            locked_by: None,
        };
    }
    let mut d = decide_with(bundle, zones, now);
    if bundle.is_none()
        && let Some(problem) = bundle_problem
    {
        d.fallback_reason = Some(format!("held policy bundle unusable ({problem}): lockdown"));
    }
    d
}

/// The result of an accepted checkpoint code (the `checkpoint --json` output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointOutcome {
    /// `entered`, `checked_in_again` or `left`.
    pub change: String,
    /// The zone.
    pub zone: ZoneName,
    /// The checkpoint whose code it was.
    pub checkpoint: Option<CheckpointName>,
    /// The mode that holds now.
    pub effective_mode: String,
    /// Every zone the device is inside now.
    pub zones: Vec<ZoneName>,
    /// One line for people.
    pub message: String,
}

impl CheckpointOutcome {
    fn new(change: &ZoneChange, decision: &Decision) -> Self {
        let (kind, zone, evidence) = match change {
            ZoneChange::Entered { zone, evidence } => ("entered", zone, evidence),
            ZoneChange::Refreshed { zone, evidence } => ("checked_in_again", zone, evidence),
            ZoneChange::Left { zone, evidence } => ("left", zone, evidence),
        };
        let checkpoint = match evidence {
            Evidence::Code { checkpoint, .. } => Some(checkpoint.clone()),
            _ => None,
        };
        let at = checkpoint
            .as_ref()
            .map(|c| format!(" at checkpoint {c}"))
            .unwrap_or_default();
        let mode = &decision.mode.name;
        let message = match kind {
            "entered" => format!("entered zone {zone}{at}: mode {mode}"),
            "left" => format!("left zone {zone}: mode {mode}"),
            _ => format!("checked in again to zone {zone}{at}: mode {mode}"),
        };
        CheckpointOutcome {
            change: kind.to_owned(),
            zone: zone.clone(),
            checkpoint,
            effective_mode: mode.clone(),
            zones: decision.zones.clone(),
            message,
        }
    }
}

/// What became of a command the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The command's id (`None` when not even that could be read).
    pub id: Option<CommandId>,
    /// Whether the device carries it out (it is stored durably when accepted).
    pub accepted: bool,
    /// Why it was refused.
    pub reason: Option<String>,
    /// What it did.
    pub effect: Option<CommandEffect>,
}

impl CommandOutcome {
    /// Whether the agent must now wipe the device.
    pub fn wipe(&self) -> bool {
        self.effect == Some(CommandEffect::Wipe)
    }
}

/// Reads a command's id from an envelope whose signature did not verify, only to name
/// it in the refusal.
fn unverified_command_id(envelope: &SignedEnvelope) -> Option<CommandId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: CommandId,
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .ok()?;
    serde_json::from_slice::<IdOnly>(&payload)
        .ok()
        .map(|c| c.id)
}

/// What became of a bundle the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOutcome {
    /// Newer than the one held: stored and applied.
    Applied {
        /// Its version.
        version: u64,
    },
    /// The version already held: nothing to do.
    Unchanged,
    /// Refused; the held bundle stays.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The agent's state while it runs.
pub struct Agent {
    dir: StateDir,
    identity: Identity,
    key: Arc<SigningKey>,
    hw: Box<dyn Hardware>,
    bundle: Option<PolicyBundle>,
    /// Why the held bundle file could not be used (reported as the fallback reason).
    bundle_problem: Option<String>,
    /// Zones, lock, used codes, done commands and events to report.
    zones: ZoneState,
    /// Why `zones.json` could not be read: lockdown, and it is never overwritten.
    zones_problem: Option<String>,
    /// The zone state in memory is newer than `zones.json` (a write failed).
    zones_dirty: bool,
    outbox: Outbox,
    last_seq: u64,
    applied: Option<Decision>,
    last_reported: Option<Measurement>,
    /// The enforcement errors logged last (logged again only when they change).
    last_enforce_errors: Option<String>,
    /// What `status.json` says.
    pub status: RunStatus,
    /// Where the time comes from.
    clock: Arc<dyn Clock>,
    /// The trusted time floor.
    floor: TimeFloor,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("dir", &self.dir)
            .field("device_id", &self.identity.device_id)
            .field("key", &"<redacted>")
            .field("bundle_version", &self.bundle.as_ref().map(|b| b.version))
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Opens an enrolled state directory with the backend named in its identity.
    pub fn open(dir: StateDir, clock: Arc<dyn Clock>) -> Result<Self> {
        let identity = dir.load_identity()?;
        let hw = hardware::open(identity.hardware, dir.root())?;
        Self::open_with(dir, hw, clock)
    }

    /// Opens an enrolled state directory with the given backend and clock.
    pub fn open_with(dir: StateDir, hw: Box<dyn Hardware>, clock: Arc<dyn Clock>) -> Result<Self> {
        let identity = dir.load_identity()?;
        if let Some(id) = dir.wipe_pending()? {
            bail!(
                "a remote wipe of this device ({id}) is pending; `redoubt-agent run --state {}` finishes it",
                dir.root().display()
            );
        }
        let key = Arc::new(dir.load_key()?);
        let (bundle, bundle_problem) = match dir.load_bundle(&identity) {
            Ok(b) => (b.map(|(b, _)| b), None),
            Err(e) => {
                let problem = format!("{e:#}");
                tracing::error!(problem = %problem, "the held policy bundle is unusable; enforcing lockdown until the server sends a valid one");
                (None, Some(problem))
            }
        };
        let (zones, zones_problem) = match dir.load_zones() {
            Ok(z) => (z.unwrap_or_default(), None),
            Err(e) => {
                let problem = format!("{e:#}");
                tracing::error!(problem = %problem, "the zone state is unreadable; enforcing lockdown until it is repaired");
                (ZoneState::default(), Some(problem))
            }
        };
        let outbox = Outbox::open(&dir.path(OUTBOX_DIR))?;
        let last_seq = dir.load_seq()?.max(outbox.highest_seq()?.unwrap_or(0));
        // The held bundle's issue time is a time the server vouched for, as is that of
        // every command carried out.
        let vouched = bundle
            .as_ref()
            .map(|b| b.issued_at)
            .into_iter()
            .chain(zones.done().iter().map(|d| d.issued_at))
            .max()
            .unwrap_or(Timestamp(0));
        let floor = TimeFloor::load(&dir, vouched, &clock.boot());
        Ok(Agent {
            dir,
            identity,
            key,
            hw,
            bundle,
            bundle_problem,
            zones,
            zones_problem,
            zones_dirty: false,
            outbox,
            last_seq,
            applied: None,
            last_reported: None,
            last_enforce_errors: None,
            status: RunStatus::default(),
            clock,
            floor,
        })
    }

    /// The time as the agent judges it now: the trusted floor (advanced by the boot
    /// clock, written to `time-floor.json` when it moved on) and the wall clock.
    pub fn now(&mut self) -> PhoneTime {
        let floor = self.floor.advance(&self.clock.boot());
        self.store_floor();
        PhoneTime {
            floor,
            wall: self.clock.wall(),
        }
    }

    /// Takes a time the server vouched for (its greeting, a signed bundle's or
    /// command's issue time) into the floor; it never moves the floor back.
    pub fn observe_server_time(&mut self, t: Timestamp) {
        self.floor.observe(t, &self.clock.boot());
        self.store_floor();
    }

    fn store_floor(&mut self) {
        if self.floor.needs_store()
            && let Err(e) = self.floor.store(&self.dir)
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot store the time floor; it is kept in memory");
        }
    }

    /// Starts the backend's watcher (see [`Hardware::watch`]); `wake` is called on
    /// every change it sees. False when the backend has nothing to watch or could not
    /// start it (logged): the periodic re-check still runs.
    pub fn watch_hardware(&self, wake: crate::hardware::Wake) -> bool {
        match self.hw.watch(wake) {
            Ok(watching) => watching,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the hardware; relying on the periodic re-check");
                false
            }
        }
    }

    /// Who this device is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The state directory.
    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// The device key, for answering the server's challenge.
    pub fn key(&self) -> Arc<SigningKey> {
        self.key.clone()
    }

    /// The organization's server addresses the held bundle lists (none for a single
    /// server).
    pub fn bundle_servers(&self) -> &[url::Url] {
        self.bundle.as_ref().map_or(&[], |b| b.servers.as_slice())
    }

    /// The version of the held bundle.
    pub fn bundle_version(&self) -> Option<u64> {
        self.bundle.as_ref().map(|b| b.version)
    }

    /// The last sequence number used.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How often to check in, from the held bundle.
    pub fn check_in_interval(&self) -> Duration {
        self.bundle.as_ref().map_or(DEFAULT_CHECK_IN, |b| {
            Duration::from_secs(u64::from(b.check_in_interval_secs.max(1)))
        })
    }

    /// The zone and lock state.
    pub fn zones(&self) -> &ZoneState {
        &self.zones
    }

    /// What must hold at `now` (fail-closed: no usable or an expired bundle, or an
    /// unreadable zone state → lockdown; inside a zone its mode; locked → lockdown).
    pub fn decision(&self, now: PhoneTime) -> Decision {
        decide_for(
            self.bundle.as_ref(),
            self.bundle_problem.as_deref(),
            &self.zones,
            self.zones_problem.as_deref(),
            now,
        )
    }

    /// Makes `next` the zone state, writing it first. Refused while the file on disk
    /// is unreadable (it is kept for repair, never replaced by a fresh state).
    fn commit_zones(&mut self, next: ZoneState) -> Result<()> {
        if let Some(problem) = &self.zones_problem {
            bail!("the zone state is unreadable ({problem}); it is not overwritten");
        }
        self.dir
            .store_zones(&next)
            .context("storing the zone state")?;
        self.zones = next;
        self.zones_dirty = false;
        Ok(())
    }

    /// Reads the visible access points and lets the zone state take them into account,
    /// writing the state before anything is enforced from it. Entering a zone is
    /// stricter, so it holds in memory even if the write fails (retried next pass).
    fn observe_wifi(&mut self, now: PhoneTime) {
        if self.zones_problem.is_some() {
            return;
        }
        let visible = match self.hw.visible_bssids() {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "no Wi-Fi scan this pass");
                return;
            }
        };
        let mut next = self.zones.clone();
        let changes = next.observe_wifi(&visible, self.bundle.as_ref(), now, &mut new_event_id);
        for change in &changes {
            if let ZoneChange::Entered {
                zone,
                evidence: Evidence::Wifi { bssid },
            } = change
            {
                tracing::info!(%zone, %bssid, "entered a zone: its access point is in sight");
            }
        }
        if next != self.zones || self.zones_dirty {
            if let Err(e) = self.dir.store_zones(&next) {
                tracing::error!(error = %format!("{e:#}"), "cannot store the zone state; enforcing from memory");
                self.status.error(format!("storing the zone state: {e:#}"));
                self.zones_dirty = true;
            } else {
                self.zones_dirty = false;
            }
            self.zones = next;
        }
    }

    /// Hosts that stay reachable under an organization-only network. The organization's addresses, from the signed bundle only: the enrollment URL's
    /// host (a name the phone's resolver would answer) never opens the network.
    fn endpoints(&self) -> Vec<String> {
        self.bundle
            .as_ref()
            .map(|b| b.organization_endpoints.clone())
            .unwrap_or_default()
    }

    fn enforce(&mut self, decision: &Decision, scope: Scope) {
        let endpoints = self.endpoints();
        let errors = apply(&mut *self.hw, &decision.mode, &endpoints, scope);
        if errors.is_empty() {
            self.last_enforce_errors = None;
            return;
        }
        let joined = errors.join("; ");
        // A capability the hardware cannot switch fails at every repair; say so once
        // per change of what failed, not every re-check.
        if self.last_enforce_errors.as_deref() != Some(joined.as_str()) {
            tracing::warn!(mode = %decision.mode.name, errors = %joined, "the hardware did not accept every change; reporting what it measures");
            self.status
                .error(format!("enforcing {}: {joined}", decision.mode.name));
        } else {
            tracing::debug!(mode = %decision.mode.name, errors = %joined, "the hardware still refuses");
        }
        self.last_enforce_errors = Some(joined);
    }

    /// Signs a report of `m`, stores it in the outbox and advances the counter.
    fn report(&mut self, decision: &Decision, m: &Measurement, now: PhoneTime) -> Result<Pending> {
        let seq = self.last_seq + 1;
        let events = self.zones.unreported();
        let carried = events.len();
        let report = build_report(
            &self.identity.device_id,
            seq,
            decision,
            m,
            self.hw.kind(),
            now.wall,
            ReportExtras {
                commands_done: self.zones.recent_commands(REPORTED_COMMANDS),
                events,
                trusted_floor: Some(now.floor),
                clock_tampered: now.wall_behind(),
                inventory: Some(self.hw.inventory(self.dir.root())),
            },
        );
        let envelope = SignedEnvelope::sign(ComplianceReport::KIND, &report, &self.key);
        self.outbox
            .push(seq, &envelope)
            .context("storing a report in the outbox")?;
        // The outbox holds the report now, so the counter can never go back below it
        // even if writing the counter fails.
        self.last_seq = seq;
        // The events are in a report in the outbox now. Forgetting them is written
        // after it: a crash in between reports them twice (the server drops repeats
        // by event id), never not at all.
        if carried > 0 {
            self.zones.mark_reported(carried);
            if let Err(e) = self.dir.store_zones(&self.zones) {
                tracing::warn!(error = %format!("{e:#}"), "cannot store the zone state after reporting its events");
                self.zones_dirty = true;
            }
        }
        self.dir.store_seq(seq)?;
        self.last_reported = Some(m.clone());
        self.status.last_report_seq = Some(seq);
        if report.clock_tampered {
            tracing::warn!(floor = %now.floor, wall = %now.wall, "the wall clock is behind the trusted time floor: check-out codes are refused");
        }
        tracing::info!(
            seq,
            mode = %report.effective_mode,
            bundle_version = report.bundle_version,
            violations = violations(&decision.mode, m).len(),
            "report queued"
        );
        Ok(Pending {
            seq,
            report: envelope,
        })
    }

    /// One pass of the control loop: decides what holds; when that changed, applies
    /// it fully and reports. Otherwise measures, and when a restriction is not in
    /// force reports the true state, re-applies the restrictions and reports again;
    /// when only the measurement changed, reports it.
    ///
    /// Before deciding, the visible Wi-Fi access points are read and may enter zones.
    /// Events that no report carried yet get a report of their own.
    ///
    /// Returns the reports made (already in the outbox), in order.
    pub fn check(&mut self) -> Result<Vec<Pending>> {
        let now = self.now();
        self.observe_wifi(now);
        let decision = self.decision(now);
        let mut out = self.check_mode(&decision, now)?;
        if out.is_empty() && self.zones.unreported_len() > 0 {
            let m = measure(&*self.hw);
            out.push(self.report(&decision, &m, now)?);
        }
        Ok(out)
    }

    fn check_mode(&mut self, decision: &Decision, now: PhoneTime) -> Result<Vec<Pending>> {
        let decision = decision.clone();
        let mut out = Vec::new();
        if self.applied.as_ref() != Some(&decision) {
            match (&self.applied, &decision.fallback_reason) {
                (_, Some(reason)) => {
                    tracing::warn!(mode = %decision.mode.name, reason = %reason, "enforcing the fail-closed fallback")
                }
                (Some(old), None) => {
                    tracing::info!(from = %old.mode.name, to = %decision.mode.name, bundle_version = decision.bundle_version, "mode changes")
                }
                (None, None) => {
                    tracing::info!(mode = %decision.mode.name, bundle_version = decision.bundle_version, "enforcing mode")
                }
            }
            self.enforce(&decision, Scope::Full);
            let m = measure(&*self.hw);
            out.push(self.report(&decision, &m, now)?);
            self.applied = Some(decision);
            return Ok(out);
        }
        let m = measure(&*self.hw);
        let broken = violations(&decision.mode, &m);
        if broken.is_empty() {
            if self.last_reported.as_ref() != Some(&m) {
                out.push(self.report(&decision, &m, now)?);
            }
            return Ok(out);
        }
        if self.last_reported.as_ref() != Some(&m) {
            tracing::warn!(violations = %broken.join("; "), "restrictions drifted; reporting and re-applying");
            out.push(self.report(&decision, &m, now)?);
        }
        self.enforce(&decision, Scope::Repair(&m));
        let after = measure(&*self.hw);
        if self.last_reported.as_ref() != Some(&after) {
            out.push(self.report(&decision, &after, now)?);
        }
        Ok(out)
    }

    /// Measures and reports now, whether or not anything changed (check-in, or the
    /// server asked).
    pub fn report_now(&mut self) -> Result<Vec<Pending>> {
        let mut out = self.check()?;
        if out.is_empty() {
            let now = self.now();
            let decision = self.decision(now);
            let m = measure(&*self.hw);
            out.push(self.report(&decision, &m, now)?);
        }
        Ok(out)
    }

    /// Considers a bundle the server sent: verifies it against the organization key
    /// for this device, refuses an older or expired one (expired by the floor or the
    /// wall clock; keeping the held bundle), and applies a newer one. A genuine bundle's
    /// issue time raises the time floor. Returns what happened and the reports made.
    pub fn offer_bundle(
        &mut self,
        envelope: &SignedEnvelope,
    ) -> Result<(BundleOutcome, Vec<Pending>)> {
        if let Ok(b) =
            envelope.verify::<PolicyBundle>(PolicyBundle::KIND, &self.identity.organization_key)
            && b.device_id == self.identity.device_id
        {
            self.observe_server_time(b.issued_at);
        }
        let now = self.now();
        let held = self.bundle_version();
        let bundle = match verify_bundle(
            envelope,
            &self.identity.organization_key,
            &self.identity.device_id,
            held,
            now.latest(),
        ) {
            Ok(b) => b,
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(reason = %reason, held_version = ?held, "policy bundle refused; keeping the one held");
                self.status.bundle_refused = Some(reason.clone());
                self.status.bundle_refused_at = Some(now.wall);
                return Ok((BundleOutcome::Refused { reason }, Vec::new()));
            }
        };
        if Some(bundle.version) == held {
            return Ok((BundleOutcome::Unchanged, Vec::new()));
        }
        let version = bundle.version;
        self.dir.store_bundle(envelope)?;
        tracing::info!(version, previous = ?held, mode = %bundle.assignments.base_mode, "policy bundle accepted");
        self.bundle = Some(bundle);
        self.bundle_problem = None;
        let reports = self.check()?;
        Ok((BundleOutcome::Applied { version }, reports))
    }

    /// Applies a scanned checkpoint code: verifies it with the held bundle's checkpoint
    /// keys, updates and writes the zone state, enforces at once and queues a signed
    /// report (with the event) in the outbox.
    ///
    /// The inner `Err` is a refusal, for people: nothing changed but the `code-refused`
    /// event, which is reported too. The outer `Err` is a failure to store anything.
    pub fn checkpoint(
        &mut self,
        code: &str,
    ) -> Result<(Result<CheckpointOutcome, String>, Vec<Pending>)> {
        let now = self.now();
        let Some(bundle) = self.bundle.clone() else {
            let why = self
                .bundle_problem
                .as_ref()
                .map(|p| format!(" (the held one is unusable: {p})"))
                .unwrap_or_default();
            return Ok((
                Err(format!(
                    "no policy bundle is held{why}, so checkpoint codes cannot be verified; connect to the server first"
                )),
                Vec::new(),
            ));
        };
        if let Some(problem) = &self.zones_problem {
            return Ok((
                Err(format!(
                    "the zone state is unreadable ({problem}); the device stays in lockdown and takes no checkpoint code until it is repaired"
                )),
                Vec::new(),
            ));
        }
        let mut next = self.zones.clone();
        match next.apply_code(code, &bundle, now, new_event_id()) {
            Ok(change) => {
                self.commit_zones(next)?;
                let reports = self.check()?;
                let now = self.now();
                let outcome = CheckpointOutcome::new(&change, &self.decision(now));
                tracing::info!(zone = %outcome.zone, change = %outcome.change, mode = %outcome.effective_mode, "checkpoint code accepted");
                Ok((Ok(outcome), reports))
            }
            Err(e) => {
                tracing::info!(reason = %e, "checkpoint code refused");
                // Only the refusal event is new; report it if it can be stored.
                let reports = match self.commit_zones(next) {
                    Ok(()) => self.check()?,
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), "the refusal is not recorded");
                        Vec::new()
                    }
                };
                Ok((Err(e.to_string()), reports))
            }
        }
    }

    /// Considers a command the server sent: verifies the organization's signature,
    /// then lets the zone state carry it out (it refuses another device's, an expired
    /// one, `revoke`; a repeat has no new effect) and writes the state. Nothing is
    /// enforced here: the caller acknowledges first, then calls [`Agent::check`]. A
    /// wipe is recorded durably as pending before it is acknowledged.
    ///
    /// `Err` only when an accepted command cannot be stored: it is then not
    /// acknowledged and the server sends it again.
    pub fn command(&mut self, envelope: &SignedEnvelope) -> Result<CommandOutcome> {
        let now = self.now().wall;
        let cmd: DeviceCommand = match envelope
            .verify(DeviceCommand::KIND, &self.identity.organization_key)
        {
            Ok(c) => c,
            Err(e) => {
                let id = unverified_command_id(envelope);
                let reason = format!("command refused: {e}");
                tracing::warn!(command = ?id.as_ref().map(CommandId::as_str), reason = %reason, "device command refused");
                let mut next = self.zones.clone();
                next.push_event(
                    new_event_id(),
                    now,
                    DeviceEventKind::CommandRefused {
                        command: id.clone(),
                        reason: reason.clone(),
                    },
                );
                if let Err(err) = self.commit_zones(next) {
                    tracing::warn!(error = %format!("{err:#}"), "the refusal is not recorded");
                }
                return Ok(CommandOutcome {
                    id,
                    accepted: false,
                    reason: Some(reason),
                    effect: None,
                });
            }
        };
        let mut next = if self.zones_problem.is_some() {
            if cmd.action != DeviceAction::Wipe {
                let reason = format!(
                    "command {} ({}) refused: the zone state is unreadable, so it cannot be stored; the device stays in lockdown",
                    cmd.id,
                    cmd.action.name()
                );
                tracing::warn!(reason = %reason, "device command refused");
                return Ok(CommandOutcome {
                    id: Some(cmd.id),
                    accepted: false,
                    reason: Some(reason),
                    effect: None,
                });
            }
            // A wipe needs nothing from the zone state.
            ZoneState::default()
        } else {
            self.zones.clone()
        };
        // A genuine command's issue time is a time the server vouched for.
        self.observe_server_time(cmd.issued_at);
        let time = self.now();
        let result = next.apply_command(
            &cmd,
            &self.identity.device_id,
            self.bundle.as_ref(),
            time,
            &mut new_event_id,
        );
        match result {
            Ok(effect) => {
                if effect == CommandEffect::Wipe {
                    self.dir.mark_wipe_pending(&cmd.id)?;
                }
                if self.zones_problem.is_none() && next != self.zones {
                    self.commit_zones(next)?;
                } else if self.zones_problem.is_some() {
                    self.zones = next;
                }
                tracing::info!(command = %cmd.id, action = cmd.action.name(), effect = %effect.describe(), "device command accepted");
                Ok(CommandOutcome {
                    id: Some(cmd.id),
                    accepted: true,
                    reason: None,
                    effect: Some(effect),
                })
            }
            Err(reason) => {
                tracing::warn!(command = %cmd.id, reason = %reason, "device command refused");
                if let Err(err) = self.commit_zones(next) {
                    tracing::warn!(error = %format!("{err:#}"), "the refusal is not recorded");
                }
                Ok(CommandOutcome {
                    id: Some(cmd.id),
                    accepted: false,
                    reason: Some(reason),
                    effect: None,
                })
            }
        }
    }

    /// The last report of a wiped device, signed but not stored (the outbox is gone):
    /// `lockdown`, what the hardware still measures, and the events not reported yet
    /// (among them the wipe's `command-done`).
    pub fn final_report(&mut self) -> Pending {
        // Not stored: the local data (the floor file with it) is being destroyed.
        let now = PhoneTime {
            floor: self.floor.advance(&self.clock.boot()),
            wall: self.clock.wall(),
        };
        let seq = self.last_seq + 1;
        let mut decision = decide_with(None, &ZoneState::default(), now);
        decision.fallback_reason = Some("device wiped: keys and local data destroyed".into());
        let m = measure(&*self.hw);
        let report = build_report(
            &self.identity.device_id,
            seq,
            &decision,
            &m,
            self.hw.kind(),
            now.wall,
            ReportExtras {
                commands_done: self.zones.recent_commands(REPORTED_COMMANDS),
                events: self.zones.unreported(),
                trusted_floor: Some(now.floor),
                clock_tampered: now.wall_behind(),
                inventory: Some(self.hw.inventory(self.dir.root())),
            },
        );
        self.last_seq = seq;
        Pending {
            seq,
            report: SignedEnvelope::sign(ComplianceReport::KIND, &report, &self.key),
        }
    }

    /// The server stored every report up to `seq`: drop them from the outbox.
    pub fn ack(&mut self, seq: u64) -> Result<()> {
        self.outbox.ack(seq)?;
        self.status.last_acked_seq = Some(self.status.last_acked_seq.map_or(seq, |s| s.max(seq)));
        Ok(())
    }

    /// Every report waiting for an acknowledgement, in order.
    pub fn pending(&self) -> Result<Vec<Pending>> {
        self.outbox.pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::hardware::sim::{SimChange, SimHardware, Switch};
    use redoubt_policy::presets;
    use redoubt_proto::{
        Assignments, Capability, CapabilityState, DeviceId, Fingerprint, HardwareKind, NetworkState,
    };

    const NOW: Timestamp = Timestamp(1_800_000_000);

    fn org() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn device() -> DeviceId {
        DeviceId::from_random([1; 12])
    }

    fn bundle(version: u64, mode: &str, expires_in: i64) -> SignedEnvelope {
        let b = PolicyBundle {
            device_id: device(),
            version,
            issued_at: NOW,
            expires_at: NOW.plus_secs(expires_in),
            modes: presets(),
            assignments: Assignments {
                base_mode: mode.parse().unwrap(),
                group_modes: Vec::new(),
            },
            check_in_interval_secs: 60,
            organization_endpoints: vec!["redoubt.example".into()],
            servers: Vec::new(),
            zones: Vec::new(),
        };
        SignedEnvelope::sign(PolicyBundle::KIND, &b, &org())
    }

    /// An enrolled state directory holding `secure-site` v1 on a fresh simulated phone.
    fn enrolled() -> (tempfile::TempDir, StateDir, SimHardware) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        dir.store_identity(&Identity {
            device_id: device(),
            user: "alice".parse().unwrap(),
            server: url::Url::parse("https://127.0.0.1:8443").unwrap(),
            ca_fingerprint: Fingerprint::of_der(b"ca"),
            organization_key: org().verifying_key(),
            hardware: HardwareKind::Sim,
            enrolled_at: NOW,
        })
        .unwrap();
        dir.store_key(&SigningKey::from_bytes(&[9; 32])).unwrap();
        dir.store_bundle(&bundle(1, "secure-site", 3600)).unwrap();
        let sim = SimHardware::new(tmp.path());
        sim.reset().unwrap();
        (tmp, dir, sim)
    }

    fn open(dir: &StateDir) -> Agent {
        open_at(dir, &ManualClock::new(NOW))
    }

    /// Opens the agent on a clock the test moves.
    fn open_at(dir: &StateDir, clock: &ManualClock) -> Agent {
        Agent::open(dir.clone(), Arc::new(clock.clone())).unwrap()
    }

    fn read(p: &Pending) -> ComplianceReport {
        p.report
            .verify(
                ComplianceReport::KIND,
                &SigningKey::from_bytes(&[9; 32]).verifying_key(),
            )
            .unwrap()
    }

    fn seqs(reports: &[Pending]) -> Vec<u64> {
        reports.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn first_check_enforces_and_reports_the_measured_state() {
        let (_tmp, dir, _sim) = enrolled();
        let mut agent = open(&dir);
        let reports = agent.check().unwrap();
        assert_eq!(seqs(&reports), vec![1]);
        let r = read(&reports[0]);
        assert_eq!(
            (
                r.effective_mode.as_str(),
                r.bundle_version,
                r.fallback_reason
            ),
            ("secure-site", 1, None)
        );
        assert_eq!(r.capabilities[&Capability::Camera], CapabilityState::Off);
        assert_eq!(r.capabilities[&Capability::Wifi], CapabilityState::On);
        assert_eq!(r.network, NetworkState::OrganizationOnly);
        assert_eq!(r.hardware, HardwareKind::Sim);
        // With what the phone is; the simulated one says so.
        let inv = r.inventory.expect("an inventory");
        assert_eq!(inv.hardware_backend, "simulated");
        assert_eq!(
            inv.model.as_deref(),
            Some(crate::inventory::SIMULATED_MODEL)
        );
        assert_eq!(inv.agent_version, env!("CARGO_PKG_VERSION"));
        // Nothing changed: nothing to report.
        assert!(agent.check().unwrap().is_empty());
        assert_eq!(seqs(&agent.pending().unwrap()), vec![1]);
    }

    #[test]
    fn a_refused_change_is_reported_honestly() {
        let (_tmp, dir, sim) = enrolled();
        // The camera driver says "done" and leaves the camera on.
        sim.set(SimChange::Capability(Capability::Camera, Switch::On), true)
            .unwrap();
        let mut agent = open(&dir);
        let reports = agent.check().unwrap();
        let r = read(&reports[0]);
        assert_eq!(r.capabilities[&Capability::Camera], CapabilityState::On);
        assert_eq!(
            r.capabilities[&Capability::Microphone],
            CapabilityState::Off
        );
        // Re-applying every pass does not flood the outbox with identical reports.
        assert!(agent.check().unwrap().is_empty());
        assert!(agent.check().unwrap().is_empty());
    }

    #[test]
    fn drift_is_reported_then_repaired_then_reported() {
        let (_tmp, dir, sim) = enrolled();
        let mut agent = open(&dir);
        agent.check().unwrap();
        // Behind the agent's back.
        sim.set(SimChange::Capability(Capability::Camera, Switch::On), false)
            .unwrap();
        let reports = agent.check().unwrap();
        assert_eq!(seqs(&reports), vec![2, 3]);
        assert_eq!(
            read(&reports[0]).capabilities[&Capability::Camera],
            CapabilityState::On
        );
        assert_eq!(
            read(&reports[1]).capabilities[&Capability::Camera],
            CapabilityState::Off
        );
        // An allowed capability switched off by the user is reported, not undone.
        sim.set(SimChange::Capability(Capability::Wifi, Switch::Off), false)
            .unwrap();
        let reports = agent.check().unwrap();
        assert_eq!(seqs(&reports), vec![4]);
        assert_eq!(
            read(&reports[0]).capabilities[&Capability::Wifi],
            CapabilityState::Off
        );
        assert_eq!(
            sim.read().unwrap().capabilities[&Capability::Wifi],
            Switch::Off
        );
    }

    #[test]
    fn seq_survives_restarts_and_acks() {
        let (_tmp, dir, _sim) = enrolled();
        let mut agent = open(&dir);
        agent.check().unwrap();
        agent.report_now().unwrap();
        agent.ack(2).unwrap();
        assert!(agent.pending().unwrap().is_empty());
        drop(agent);
        let mut agent = open(&dir);
        assert_eq!(agent.last_seq(), 2);
        assert_eq!(seqs(&agent.check().unwrap()), vec![3]);
        drop(agent);
        // A crash between storing the report and the counter: the outbox wins.
        dir.store_seq(1).unwrap();
        let mut agent = open(&dir);
        assert_eq!(agent.last_seq(), 3);
        assert_eq!(seqs(&agent.report_now().unwrap()), vec![4]);
        assert_eq!(seqs(&agent.pending().unwrap()), vec![3, 4]);
    }

    #[test]
    fn bundles_are_verified_before_they_are_applied() {
        let (_tmp, dir, sim) = enrolled();
        let mut agent = open(&dir);
        agent.check().unwrap();

        let (outcome, reports) = agent.offer_bundle(&bundle(1, "secure-site", 3600)).unwrap();
        assert_eq!((outcome, reports.len()), (BundleOutcome::Unchanged, 0));

        let forged = SignedEnvelope::sign(
            PolicyBundle::KIND,
            &bundle(2, "standard", 3600)
                .verify::<PolicyBundle>(PolicyBundle::KIND, &org().verifying_key())
                .unwrap(),
            &SigningKey::from_bytes(&[8; 32]),
        );
        let (outcome, _) = agent.offer_bundle(&forged).unwrap();
        assert!(matches!(outcome, BundleOutcome::Refused { .. }));
        assert!(
            agent
                .status
                .bundle_refused
                .as_deref()
                .unwrap()
                .contains("signature")
        );
        assert_eq!(
            sim.read().unwrap().capabilities[&Capability::Camera],
            Switch::Off
        );

        let (outcome, reports) = agent.offer_bundle(&bundle(3, "standard", 3600)).unwrap();
        assert_eq!(outcome, BundleOutcome::Applied { version: 3 });
        let r = read(&reports[0]);
        assert_eq!(
            (r.effective_mode.as_str(), r.bundle_version),
            ("standard", 3)
        );
        assert_eq!(r.capabilities[&Capability::Camera], CapabilityState::On);
        assert_eq!(r.network, NetworkState::Open);

        let (outcome, _) = agent.offer_bundle(&bundle(2, "standard", 3600)).unwrap();
        assert!(matches!(outcome, BundleOutcome::Refused { reason } if reason.contains("older")));
        assert_eq!(open(&dir).bundle_version(), Some(3));
    }

    #[test]
    fn an_expiring_bundle_falls_back_to_lockdown() {
        let (_tmp, dir, sim) = enrolled();
        dir.store_bundle(&bundle(2, "standard", 60)).unwrap();
        let clock = ManualClock::new(NOW);
        let mut agent = open_at(&dir, &clock);
        assert_eq!(read(&agent.check().unwrap()[0]).effective_mode, "standard");
        clock.advance(61);
        let reports = agent.check().unwrap();
        let r = read(&reports[0]);
        assert_eq!(
            (r.effective_mode.as_str(), r.bundle_version),
            ("lockdown", 2)
        );
        assert!(r.fallback_reason.unwrap().contains("expired"));
        assert_eq!(
            sim.read().unwrap().capabilities[&Capability::Nfc],
            Switch::Off
        );
    }

    #[test]
    fn an_unusable_held_bundle_means_lockdown() {
        let (_tmp, dir, _sim) = enrolled();
        std::fs::write(dir.path(crate::state::BUNDLE_FILE), b"{}").unwrap();
        let mut agent = open(&dir);
        let r = read(&agent.check().unwrap()[0]);
        assert_eq!(
            (r.effective_mode.as_str(), r.bundle_version),
            ("lockdown", 0)
        );
        assert!(r.fallback_reason.unwrap().contains("unusable"));
    }

    // ---- zones and commands ----

    fn lab_key() -> SigningKey {
        SigningKey::from_bytes(&[11; 32])
    }

    fn ap() -> redoubt_proto::Bssid {
        "02:00:00:00:00:01".parse().unwrap()
    }

    /// `standard` at the base, zone lab in `secure-site` (checkpoint north-gate, one
    /// access point).
    fn zoned_bundle(version: u64) -> SignedEnvelope {
        let mut b: PolicyBundle = bundle(version, "standard", 3600)
            .verify(PolicyBundle::KIND, &org().verifying_key())
            .unwrap();
        b.zones = vec![redoubt_proto::ZonePolicy {
            name: "lab".parse().unwrap(),
            mode: "secure-site".parse().unwrap(),
            checkpoints: vec![redoubt_proto::CheckpointKey {
                name: "north-gate".parse().unwrap(),
                public_key: redoubt_proto::envelope::encode_public_key(&lab_key().verifying_key()),
            }],
            wifi_bssids: vec![ap()],
        }];
        SignedEnvelope::sign(PolicyBundle::KIND, &b, &org())
    }

    fn code(
        direction: redoubt_proto::Direction,
        at: Timestamp,
        nonce: &str,
        key: &SigningKey,
    ) -> String {
        redoubt_proto::CheckpointCode {
            zone: "lab".parse().unwrap(),
            checkpoint: "north-gate".parse().unwrap(),
            direction,
            not_before: at,
            not_after: at.plus_secs(30),
            nonce: nonce.into(),
        }
        .encode(key)
    }

    fn zoned() -> (tempfile::TempDir, StateDir, SimHardware) {
        let (tmp, dir, sim) = enrolled();
        dir.store_bundle(&zoned_bundle(2)).unwrap();
        (tmp, dir, sim)
    }

    fn command(action: redoubt_proto::DeviceAction, n: u8, issued_at: Timestamp) -> SignedEnvelope {
        let c = DeviceCommand {
            id: CommandId::from_random([n; 12]),
            device_id: device(),
            action,
            issued_at,
            expires_at: issued_at.plus_secs(600),
        };
        SignedEnvelope::sign(DeviceCommand::KIND, &c, &org())
    }

    #[test]
    fn a_checkpoint_code_is_stored_enforced_and_reported() {
        use redoubt_proto::Direction;
        let (_tmp, dir, sim) = zoned();
        let clock = ManualClock::new(NOW);
        let mut agent = open_at(&dir, &clock);
        let first = agent.check().unwrap();
        assert_eq!(read(&first[0]).effective_mode, "standard");

        let (result, reports) = agent
            .checkpoint(&code(Direction::In, NOW, "n1", &lab_key()))
            .unwrap();
        let outcome = result.unwrap();
        assert_eq!(
            outcome.message,
            "entered zone lab at checkpoint north-gate: mode secure-site"
        );
        assert_eq!(
            sim.read().unwrap().capabilities[&Capability::Camera],
            Switch::Off
        );
        let r = read(&reports[0]);
        assert_eq!(r.effective_mode, "secure-site");
        assert_eq!(r.zones, vec!["lab".parse::<ZoneName>().unwrap()]);
        assert!(matches!(
            r.events.as_slice(),
            [e] if matches!(e.kind, DeviceEventKind::ZoneIn { .. }) && e.id.len() == 32
        ));
        // Reported: nothing left to report, and that is on disk too.
        assert_eq!(agent.zones().unreported_len(), 0);
        let stored = dir.load_zones().unwrap().unwrap();
        assert_eq!(&stored, agent.zones());

        // A restart keeps the zone.
        drop(agent);
        let mut agent = open_at(&dir, &clock);
        assert_eq!(
            agent.decision(PhoneTime::trusted(NOW)).mode.name,
            "secure-site"
        );

        clock.advance(60);
        let (result, reports) = agent
            .checkpoint(&code(Direction::Out, NOW.plus_secs(60), "n2", &lab_key()))
            .unwrap();
        assert_eq!(result.unwrap().message, "left zone lab: mode standard");
        assert!(reports.iter().any(|p| read(p).zones.is_empty()));
        assert_eq!(
            sim.read().unwrap().capabilities[&Capability::Camera],
            Switch::On
        );
    }

    #[test]
    fn a_refused_code_changes_nothing_but_is_reported() {
        use redoubt_proto::Direction;
        let (_tmp, dir, sim) = zoned();
        let mut agent = open(&dir);
        agent.check().unwrap();
        let forged = code(Direction::In, NOW, "n1", &SigningKey::from_bytes(&[12; 32]));
        let (result, reports) = agent.checkpoint(&forged).unwrap();
        assert!(result.unwrap_err().contains("forged"));
        assert!(agent.zones().inside().is_empty());
        assert_eq!(
            sim.read().unwrap().capabilities[&Capability::Camera],
            Switch::On
        );
        let r = read(&reports[0]);
        assert_eq!(r.effective_mode, "standard");
        assert!(matches!(
            r.events.as_slice(),
            [e] if matches!(&e.kind, DeviceEventKind::CodeRefused { reason } if reason.contains("forged"))
        ));
        let expired = code(Direction::In, NOW.plus_secs(-600), "n2", &lab_key());
        let (result, _) = agent.checkpoint(&expired).unwrap();
        assert!(result.unwrap_err().contains("expired"));
        assert!(dir.load_zones().unwrap().unwrap().inside().is_empty());
    }

    #[test]
    fn without_a_bundle_codes_are_refused_clearly() {
        use redoubt_proto::Direction;
        let (_tmp, dir, _sim) = zoned();
        std::fs::remove_file(dir.path(crate::state::BUNDLE_FILE)).unwrap();
        let mut agent = open(&dir);
        let (result, reports) = agent
            .checkpoint(&code(Direction::In, NOW, "n1", &lab_key()))
            .unwrap();
        assert!(result.unwrap_err().contains("no policy bundle"));
        assert!(reports.is_empty());
    }

    #[test]
    fn a_corrupt_zone_state_means_lockdown_and_is_kept_for_repair() {
        use redoubt_proto::Direction;
        let (_tmp, dir, sim) = zoned();
        std::fs::write(dir.path(crate::state::ZONES_FILE), b"{\"inside\":").unwrap();
        let mut agent = open(&dir);
        let r = read(&agent.check().unwrap()[0]);
        assert_eq!(r.effective_mode, "lockdown");
        assert!(r.fallback_reason.unwrap().contains("zones.json"));
        assert_eq!(
            sim.read().unwrap().capabilities[&Capability::Nfc],
            Switch::Off
        );
        let (result, _) = agent
            .checkpoint(&code(Direction::Out, NOW, "n1", &lab_key()))
            .unwrap();
        assert!(result.unwrap_err().contains("unreadable"));
        let outcome = agent
            .command(&command(redoubt_proto::DeviceAction::Unlock, 1, NOW))
            .unwrap();
        assert!(!outcome.accepted);
        assert_eq!(
            std::fs::read(dir.path(crate::state::ZONES_FILE)).unwrap(),
            b"{\"inside\":"
        );
    }

    #[test]
    fn a_listed_access_point_in_sight_enters_and_its_absence_never_exits() {
        let (_tmp, dir, sim) = zoned();
        let mut agent = open(&dir);
        agent.check().unwrap();
        sim.set_visible(&[ap()]).unwrap();
        let reports = agent.check().unwrap();
        let r = read(reports.last().unwrap());
        assert_eq!(
            (r.effective_mode.as_str(), r.zones.len()),
            ("secure-site", 1)
        );
        // Written before it was enforced: a fresh agent finds it.
        assert_eq!(dir.load_zones().unwrap().unwrap().inside().len(), 1);
        sim.set_visible(&[]).unwrap();
        assert!(agent.check().unwrap().is_empty());
        assert_eq!(
            agent.decision(PhoneTime::trusted(NOW)).mode.name,
            "secure-site"
        );
        assert!(dir.load_zones().unwrap().unwrap().last_visible().is_empty());
    }

    #[test]
    fn commands_are_verified_stored_and_carried_out_once() {
        use redoubt_proto::DeviceAction;
        let (_tmp, dir, _sim) = zoned();
        let clock = ManualClock::new(NOW);
        let mut agent = open_at(&dir, &clock);
        agent.check().unwrap();
        let lock = command(DeviceAction::Lock, 1, NOW);
        let outcome = agent.command(&lock).unwrap();
        assert!(outcome.accepted && !outcome.wipe());
        let lock_id = outcome.id.clone().unwrap();
        // Stored before anything is enforced or acknowledged.
        assert_eq!(
            dir.load_zones().unwrap().unwrap().locked_by(),
            Some(&lock_id)
        );
        let r = read(&agent.check().unwrap()[0]);
        assert_eq!(r.effective_mode, "lockdown");
        assert_eq!(r.locked_by.as_ref(), Some(&lock_id));
        assert_eq!(r.commands_done, vec![lock_id.clone()]);
        // A re-delivery: accepted again, nothing new.
        clock.advance(1);
        let again = agent.command(&lock).unwrap();
        assert_eq!(again.effect, Some(CommandEffect::AlreadyDone));
        assert!(agent.check().unwrap().is_empty());
        // Forged: refused, and the id is named.
        let mut forged = command(DeviceAction::Unlock, 2, NOW);
        forged.signature = command(DeviceAction::Unlock, 3, NOW).signature;
        let outcome = agent.command(&forged).unwrap();
        assert!(!outcome.accepted);
        assert_eq!(outcome.id, Some(CommandId::from_random([2; 12])));
        assert!(outcome.reason.unwrap().contains("signature"));
        // Unlock issued later lifts it.
        clock.advance(4);
        let unlock = command(DeviceAction::Unlock, 4, NOW.plus_secs(5));
        assert!(agent.command(&unlock).unwrap().accepted);
        let r = read(&agent.check().unwrap()[0]);
        assert_eq!((r.effective_mode.as_str(), r.locked_by), ("standard", None));
        // An expired unlock (it relaxes): refused.
        let old = command(DeviceAction::Unlock, 5, NOW.plus_secs(-1000));
        let outcome = agent.command(&old).unwrap();
        assert!(outcome.reason.unwrap().contains("expired"));
        // A wipe is recorded as pending before it is acknowledged.
        let wipe = command(DeviceAction::Wipe, 6, NOW);
        assert!(agent.command(&wipe).unwrap().wipe());
        assert!(dir.wipe_pending().unwrap().is_some());
        let last = read(&agent.final_report());
        assert_eq!(last.effective_mode, "lockdown");
        assert!(
            last.commands_done
                .contains(&CommandId::from_random([6; 12]))
        );
        drop(agent);
        assert!(
            Agent::open(dir.clone(), Arc::new(ManualClock::new(NOW)))
                .unwrap_err()
                .to_string()
                .contains("wipe")
        );
    }
}
