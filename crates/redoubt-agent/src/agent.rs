//! The agent core, without any network: which mode holds now, enforcing it,
//! detecting drift, accepting bundles, and turning measurements into signed reports
//! in the outbox.
//!
//! Everything here is synchronous (hardware backends may block); the run loop in
//! [`crate::connection`] drives it and carries its reports to the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use redoubt_policy::{Decision, decide, verify_bundle};
use redoubt_proto::{ComplianceReport, PolicyBundle, SignedEnvelope, Timestamp};

use crate::enforce::{Measurement, Scope, apply, build_report, measure, violations};
use crate::hardware::{self, Hardware};
use crate::outbox::{Outbox, Pending};
use crate::state::{Identity, OUTBOX_DIR, StateDir};
use crate::status::RunStatus;

/// Check-in interval when no bundle says otherwise.
pub const DEFAULT_CHECK_IN: Duration = Duration::from_secs(300);

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
    outbox: Outbox,
    last_seq: u64,
    applied: Option<Decision>,
    last_reported: Option<Measurement>,
    /// What `status.json` says.
    pub status: RunStatus,
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
    pub fn open(dir: StateDir) -> Result<Self> {
        let identity = dir.load_identity()?;
        let hw = hardware::open(identity.hardware, dir.root())?;
        Self::open_with(dir, hw)
    }

    /// Opens an enrolled state directory with the given backend.
    pub fn open_with(dir: StateDir, hw: Box<dyn Hardware>) -> Result<Self> {
        let identity = dir.load_identity()?;
        let key = Arc::new(dir.load_key()?);
        let (bundle, bundle_problem) = match dir.load_bundle(&identity) {
            Ok(b) => (b.map(|(b, _)| b), None),
            Err(e) => {
                let problem = format!("{e:#}");
                tracing::error!(problem = %problem, "the held policy bundle is unusable; enforcing lockdown until the server sends a valid one");
                (None, Some(problem))
            }
        };
        let outbox = Outbox::open(&dir.path(OUTBOX_DIR))?;
        let last_seq = dir.load_seq()?.max(outbox.highest_seq()?.unwrap_or(0));
        Ok(Agent {
            dir,
            identity,
            key,
            hw,
            bundle,
            bundle_problem,
            outbox,
            last_seq,
            applied: None,
            last_reported: None,
            status: RunStatus::default(),
        })
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

    /// What must hold at `now` (fail-closed: no usable or an expired bundle → lockdown).
    pub fn decision(&self, now: Timestamp) -> Decision {
        let mut d = decide(self.bundle.as_ref(), now);
        if self.bundle.is_none()
            && let Some(problem) = &self.bundle_problem
        {
            d.fallback_reason = Some(format!("held policy bundle unusable ({problem}): lockdown"));
        }
        d
    }

    /// Hosts that stay reachable under an organization-only network: the bundle's
    /// endpoints and always the server itself.
    fn endpoints(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .bundle
            .as_ref()
            .map(|b| b.organization_endpoints.clone())
            .unwrap_or_default();
        if let Some(host) = self.identity.server.host_str() {
            let host = host.to_owned();
            if !out.contains(&host) {
                out.push(host);
            }
        }
        out
    }

    fn enforce(&mut self, decision: &Decision, scope: Scope) {
        let endpoints = self.endpoints();
        let errors = apply(&mut *self.hw, &decision.mode, &endpoints, scope);
        if !errors.is_empty() {
            let joined = errors.join("; ");
            tracing::warn!(mode = %decision.mode.name, errors = %joined, "the hardware did not accept every change; reporting what it measures");
            self.status
                .error(format!("enforcing {}: {joined}", decision.mode.name));
        }
    }

    /// Signs a report of `m`, stores it in the outbox and advances the counter.
    fn report(&mut self, decision: &Decision, m: &Measurement, now: Timestamp) -> Result<Pending> {
        let seq = self.last_seq + 1;
        let report = build_report(
            &self.identity.device_id,
            seq,
            decision,
            m,
            self.hw.kind(),
            now,
        );
        let envelope = SignedEnvelope::sign(ComplianceReport::KIND, &report, &self.key);
        self.outbox
            .push(seq, &envelope)
            .context("storing a report in the outbox")?;
        // The outbox holds the report now, so the counter can never go back below it
        // even if writing the counter fails.
        self.last_seq = seq;
        self.dir.store_seq(seq)?;
        self.last_reported = Some(m.clone());
        self.status.last_report_seq = Some(seq);
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
    /// Returns the reports made (already in the outbox), in order.
    pub fn check(&mut self, now: Timestamp) -> Result<Vec<Pending>> {
        let decision = self.decision(now);
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
        self.enforce(&decision, Scope::Restrictions);
        let after = measure(&*self.hw);
        if self.last_reported.as_ref() != Some(&after) {
            out.push(self.report(&decision, &after, now)?);
        }
        Ok(out)
    }

    /// Measures and reports now, whether or not anything changed (check-in, or the
    /// server asked).
    pub fn report_now(&mut self, now: Timestamp) -> Result<Vec<Pending>> {
        let mut out = self.check(now)?;
        if out.is_empty() {
            let decision = self.decision(now);
            let m = measure(&*self.hw);
            out.push(self.report(&decision, &m, now)?);
        }
        Ok(out)
    }

    /// Considers a bundle the server sent: verifies it against the organization key
    /// for this device, refuses an older or expired one (keeping the held bundle),
    /// and applies a newer one. Returns what happened and the reports made.
    pub fn offer_bundle(
        &mut self,
        envelope: &SignedEnvelope,
        now: Timestamp,
    ) -> Result<(BundleOutcome, Vec<Pending>)> {
        let held = self.bundle_version();
        let bundle = match verify_bundle(
            envelope,
            &self.identity.organization_key,
            &self.identity.device_id,
            held,
            now,
        ) {
            Ok(b) => b,
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(reason = %reason, held_version = ?held, "policy bundle refused; keeping the one held");
                self.status.bundle_refused = Some(reason.clone());
                self.status.bundle_refused_at = Some(now);
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
        let reports = self.check(now)?;
        Ok((BundleOutcome::Applied { version }, reports))
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
            },
            check_in_interval_secs: 60,
            organization_endpoints: vec!["redoubt.example".into()],
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
        Agent::open(dir.clone()).unwrap()
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
        let reports = agent.check(NOW).unwrap();
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
        // Nothing changed: nothing to report.
        assert!(agent.check(NOW).unwrap().is_empty());
        assert_eq!(seqs(&agent.pending().unwrap()), vec![1]);
    }

    #[test]
    fn a_refused_change_is_reported_honestly() {
        let (_tmp, dir, sim) = enrolled();
        // The camera driver says "done" and leaves the camera on.
        sim.set(SimChange::Capability(Capability::Camera, Switch::On), true)
            .unwrap();
        let mut agent = open(&dir);
        let reports = agent.check(NOW).unwrap();
        let r = read(&reports[0]);
        assert_eq!(r.capabilities[&Capability::Camera], CapabilityState::On);
        assert_eq!(
            r.capabilities[&Capability::Microphone],
            CapabilityState::Off
        );
        // Re-applying every pass does not flood the outbox with identical reports.
        assert!(agent.check(NOW).unwrap().is_empty());
        assert!(agent.check(NOW).unwrap().is_empty());
    }

    #[test]
    fn drift_is_reported_then_repaired_then_reported() {
        let (_tmp, dir, sim) = enrolled();
        let mut agent = open(&dir);
        agent.check(NOW).unwrap();
        // Behind the agent's back.
        sim.set(SimChange::Capability(Capability::Camera, Switch::On), false)
            .unwrap();
        let reports = agent.check(NOW).unwrap();
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
        let reports = agent.check(NOW).unwrap();
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
        agent.check(NOW).unwrap();
        agent.report_now(NOW).unwrap();
        agent.ack(2).unwrap();
        assert!(agent.pending().unwrap().is_empty());
        drop(agent);
        let mut agent = open(&dir);
        assert_eq!(agent.last_seq(), 2);
        assert_eq!(seqs(&agent.check(NOW).unwrap()), vec![3]);
        drop(agent);
        // A crash between storing the report and the counter: the outbox wins.
        dir.store_seq(1).unwrap();
        let mut agent = open(&dir);
        assert_eq!(agent.last_seq(), 3);
        assert_eq!(seqs(&agent.report_now(NOW).unwrap()), vec![4]);
        assert_eq!(seqs(&agent.pending().unwrap()), vec![3, 4]);
    }

    #[test]
    fn bundles_are_verified_before_they_are_applied() {
        let (_tmp, dir, sim) = enrolled();
        let mut agent = open(&dir);
        agent.check(NOW).unwrap();

        let (outcome, reports) = agent
            .offer_bundle(&bundle(1, "secure-site", 3600), NOW)
            .unwrap();
        assert_eq!((outcome, reports.len()), (BundleOutcome::Unchanged, 0));

        let forged = SignedEnvelope::sign(
            PolicyBundle::KIND,
            &bundle(2, "standard", 3600)
                .verify::<PolicyBundle>(PolicyBundle::KIND, &org().verifying_key())
                .unwrap(),
            &SigningKey::from_bytes(&[8; 32]),
        );
        let (outcome, _) = agent.offer_bundle(&forged, NOW).unwrap();
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

        let (outcome, reports) = agent
            .offer_bundle(&bundle(3, "standard", 3600), NOW)
            .unwrap();
        assert_eq!(outcome, BundleOutcome::Applied { version: 3 });
        let r = read(&reports[0]);
        assert_eq!(
            (r.effective_mode.as_str(), r.bundle_version),
            ("standard", 3)
        );
        assert_eq!(r.capabilities[&Capability::Camera], CapabilityState::On);
        assert_eq!(r.network, NetworkState::Open);

        let (outcome, _) = agent
            .offer_bundle(&bundle(2, "standard", 3600), NOW)
            .unwrap();
        assert!(matches!(outcome, BundleOutcome::Refused { reason } if reason.contains("older")));
        assert_eq!(open(&dir).bundle_version(), Some(3));
    }

    #[test]
    fn an_expiring_bundle_falls_back_to_lockdown() {
        let (_tmp, dir, sim) = enrolled();
        dir.store_bundle(&bundle(2, "standard", 60)).unwrap();
        let mut agent = open(&dir);
        assert_eq!(
            read(&agent.check(NOW).unwrap()[0]).effective_mode,
            "standard"
        );
        let reports = agent.check(NOW.plus_secs(61)).unwrap();
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
        let r = read(&agent.check(NOW).unwrap()[0]);
        assert_eq!(
            (r.effective_mode.as_str(), r.bundle_version),
            ("lockdown", 0)
        );
        assert!(r.fallback_reason.unwrap().contains("unusable"));
    }
}
