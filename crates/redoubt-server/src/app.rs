//! The server's services: enrollment, bundle issuance, compliance reports, device and
//! mode administration. Handlers call exactly one of these; nothing here knows HTTP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Verifier, VerifyingKey};
use rand_core::RngCore;
use redoubt_proto::api::{
    AdminTokenView, Approval, CreateEnrollment, CredentialId, CredentialState, DeviceView,
    EnrollRequest, EnrollResponse, EnrollmentCreated, ModeView, Role, enroll_proof_message,
};
use redoubt_proto::envelope::{decode_public_key, decode_signature, encode_public_key};
use redoubt_proto::{CheckpointKey, ZonePolicy};
use redoubt_proto::{
    Compliance, ComplianceReport, DeviceId, EnrollmentUrl, Mode, ModeName, PolicyBundle,
    SignedEnvelope, Timestamp,
};
use redoubt_store::{
    BundleRequest, DeviceRecord, EnrollRefusal, IssuedBundle, ModeRecord, ReportOutcome, Store,
    StoreError,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use url::Url;

use crate::audit::Who;
use crate::config::{Config, MAX_CREDENTIAL_TTL_SECS, MAX_ENROLLMENT_TTL_SECS};
use crate::error::ServiceError;
use crate::pki::Keys;

/// A message to a connected device's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Push {
    /// The device has a newer bundle.
    BundleChanged,
    /// The device has commands to be sent.
    CommandsChanged,
    /// The device was revoked: end the session.
    Revoked,
    /// Signals may have been missed: send the bundle if it is newer than the one the
    /// session sent, and any command not sent yet.
    Resync,
}

/// Connected device sessions, one per device (a new connection replaces the old one).
#[derive(Debug, Default)]
pub struct Hub {
    sessions: Mutex<HashMap<DeviceId, (u64, mpsc::Sender<Push>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Hub {
    /// Registers a session; returns its ticket and receiver.
    pub fn register(&self, id: &DeviceId) -> (u64, mpsc::Receiver<Push>) {
        let (tx, rx) = mpsc::channel(4);
        let ticket = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id.clone(), (ticket, tx));
        (ticket, rx)
    }

    /// Removes a session if it is still the current one for the device.
    pub fn unregister(&self, id: &DeviceId, ticket: u64) {
        let mut s = self.lock();
        if s.get(id).is_some_and(|(t, _)| *t == ticket) {
            s.remove(id);
        }
    }

    /// Tells a connected device something changed. A full queue already holds a
    /// notification that makes the session reload, so dropping this one loses nothing.
    pub fn notify(&self, id: &DeviceId, msg: Push) {
        if let Some((_, tx)) = self.lock().get(id) {
            let _ = tx.try_send(msg);
        }
    }

    /// Whether the device holds a session now.
    pub fn is_connected(&self, id: &DeviceId) -> bool {
        self.lock().contains_key(id)
    }

    /// Number of connected devices.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The connected devices.
    pub fn devices(&self) -> Vec<DeviceId> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, (u64, mpsc::Sender<Push>)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a request comes from, as every per-address limit counts it: an IPv4 address
/// (an IPv4-mapped IPv6 address is the IPv4 one), or the /64 network of an IPv6
/// address — one subscriber holds a whole /64, so counting single IPv6 addresses
/// would give each client 2^64 budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    /// The source a peer address counts as.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let net = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(std::net::Ipv6Addr::from(net)))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Outstanding one-time challenges (nonces), bounded in total and per source. When
/// full, the oldest challenge goes first; a source at its own cap loses its own oldest
/// challenge, so a flood from one address never evicts another client's challenge.
#[derive(Debug)]
pub struct ChallengeTable {
    capacity: usize,
    per_source: usize,
    inner: Mutex<Challenges>,
}

#[derive(Debug, Default)]
struct Challenges {
    next: u64,
    by_nonce: HashMap<String, (Source, Timestamp, u64)>,
    order: std::collections::BTreeMap<u64, String>,
    by_source: HashMap<Source, std::collections::BTreeSet<u64>>,
}

impl Challenges {
    fn remove_seq(&mut self, seq: u64) -> Option<(Source, Timestamp)> {
        let nonce = self.order.remove(&seq)?;
        let (source, expires, _) = self.by_nonce.remove(&nonce)?;
        if let Some(set) = self.by_source.get_mut(&source) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_source.remove(&source);
            }
        }
        Some((source, expires))
    }
}

impl ChallengeTable {
    /// A table of at most `capacity` challenges, `per_source` of them per source.
    pub fn new(capacity: usize, per_source: usize) -> Self {
        ChallengeTable {
            capacity: capacity.max(1),
            per_source: per_source.max(1),
            inner: Mutex::new(Challenges::default()),
        }
    }

    /// Records `nonce` for `source`, valid until `expires`.
    pub fn insert(&self, source: Source, nonce: String, now: Timestamp, expires: Timestamp) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Expired challenges first (oldest first, stop at the first live one).
        while let Some((&seq, nonce)) = t.order.first_key_value() {
            match t.by_nonce.get(nonce) {
                Some((_, exp, _)) if *exp > now => break,
                _ => {
                    t.remove_seq(seq);
                }
            }
        }
        let own_oldest = t
            .by_source
            .get(&source)
            .filter(|set| set.len() >= self.per_source)
            .and_then(|set| set.first().copied());
        if let Some(seq) = own_oldest {
            t.remove_seq(seq);
        }
        while t.by_nonce.len() >= self.capacity {
            let Some(seq) = t.order.first_key_value().map(|(s, _)| *s) else {
                break;
            };
            t.remove_seq(seq);
        }
        let seq = t.next;
        t.next += 1;
        t.order.insert(seq, nonce.clone());
        t.by_source.entry(source).or_default().insert(seq);
        t.by_nonce.insert(nonce, (source, expires, seq));
    }

    /// Consumes `nonce`; false when unknown, used, evicted or expired.
    pub fn take(&self, nonce: &str, now: Timestamp) -> bool {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&(_, _, seq)) = t.by_nonce.get(nonce) else {
            return false;
        };
        t.remove_seq(seq).is_some_and(|(_, exp)| exp > now)
    }

    /// Number of outstanding challenges.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_nonce
            .len()
    }
}

/// Refused unauthenticated enrollments, aggregated per source so that a flood cannot
/// fill the permanent audit log: the first refusal of a source in a window is recorded
/// at once, the rest of the window as one entry carrying the count, written by the
/// sweeper when the window ends. Past [`RefusalLog::MAX_SOURCES`] sources in a window,
/// further sources share one overflow entry.
#[derive(Debug)]
pub struct RefusalLog {
    window_secs: i64,
    inner: Mutex<HashMap<Option<Source>, Refusals>>,
}

/// The refusals of one source (or of the overflow) in the current window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusals {
    /// When the window began (the first refusal).
    pub since: Timestamp,
    /// Refusals after the first one, not yet in the audit log.
    pub count: u64,
    /// Those refusals by reason.
    pub reasons: std::collections::BTreeMap<&'static str, u64>,
}

impl RefusalLog {
    /// Most sources tracked one by one in a window.
    pub const MAX_SOURCES: usize = 10_000;

    /// Windows of `window_secs` seconds.
    pub fn new(window_secs: u64) -> Self {
        RefusalLog {
            window_secs: window_secs as i64,
            inner: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a refusal; true when it is the first of its source's window (to be
    /// recorded at once).
    pub fn note(&self, source: Source, reason: &'static str, now: Timestamp) -> bool {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = if m.contains_key(&Some(source)) || m.len() < Self::MAX_SOURCES {
            Some(source)
        } else {
            None
        };
        match m.get_mut(&key) {
            Some(r) => {
                r.count += 1;
                *r.reasons.entry(reason).or_insert(0) += 1;
                false
            }
            None => {
                // The overflow has no entry of its own at once: it is all counted.
                let first = key.is_some();
                let mut r = Refusals {
                    since: now,
                    count: 0,
                    reasons: Default::default(),
                };
                if !first {
                    r.count = 1;
                    r.reasons.insert(reason, 1);
                }
                m.insert(key, r);
                first
            }
        }
    }

    /// Takes the windows that ended by `now` (all of them when `all`), with their
    /// counts; a source whose window ended with no further refusal yields nothing.
    pub fn take_due(&self, now: Timestamp, all: bool) -> Vec<(Option<Source>, Refusals)> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<Option<Source>> = m
            .iter()
            .filter(|(_, r)| all || r.since.plus_secs(self.window_secs) <= now)
            .map(|(k, _)| *k)
            .collect();
        due.into_iter()
            .filter_map(|k| m.remove(&k).map(|r| (k, r)))
            .filter(|(_, r)| r.count > 0)
            .collect()
    }
}

/// A fixed-window counter per key (a client [`Source`], a device).
#[derive(Debug)]
pub struct RateLimiter<K = Source> {
    per_minute: u32,
    windows: Mutex<HashMap<K, (i64, u32)>>,
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    /// Allows `per_minute` attempts per key per minute.
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt; false when over the limit.
    pub fn allow(&self, key: K, now: Timestamp) -> bool {
        let minute = now.unix() / 60;
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, (m, _)| *m == minute);
        }
        let entry = w.entry(key).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_minute
    }
}

/// Everything the services share.
pub struct App {
    /// The store.
    pub store: Store,
    /// The organization's keys.
    pub keys: Keys,
    /// Validated configuration.
    pub config: Config,
    /// The URL phones use.
    pub public_url: Url,
    /// Connected devices.
    pub hub: Hub,
    /// Enrollment attempts per address.
    pub enroll_limiter: RateLimiter,
    /// Console sign-in attempts per address.
    pub console_limiter: RateLimiter,
    /// The fleet's counts last taken for the console's live dashboards, and when: every
    /// open dashboard shares one count per period instead of scanning the fleet itself.
    pub recent_counts:
        tokio::sync::Mutex<Option<(std::time::Instant, redoubt_proto::api::DeviceCounts)>>,
    /// Device-session challenges per address.
    pub challenge_limiter: RateLimiter,
    /// Refused enrollments waiting to be written to the audit log.
    pub refusals: RefusalLog,
    /// KeyPackage claims per device.
    pub claim_limiter: RateLimiter<DeviceId>,
    /// Device sessions of the messenger.
    pub sessions: crate::messaging::DeviceSessions,
    /// Push channels of connected messengers.
    pub doorbells: crate::messaging::Doorbells,
    /// Flips to true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Held while a device command is issued, so that issue times are strictly
    /// increasing per device (the phone orders lock and unlock by them).
    pub command_issue: tokio::sync::Mutex<()>,
    /// Stores verified reports in batches (group commit).
    pub reports: crate::reports::ReportBatcher,
    /// Issues what bulk changes left to do (bundles, commands), in batches.
    pub fleet_worker: crate::fleet::FleetWorker,
    /// The other server nodes, if any: where signals for their phones go.
    pub cluster: crate::cluster::Cluster,
    /// Device sessions starting at once (their first database reads): half the
    /// database pool, so that a fleet connecting together waits its turn here and the
    /// reports and officers' requests still find connections (see `ws::session`).
    pub session_starts: tokio::sync::Semaphore,
}

/// SHA-256 of a secret token, as stored.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token (256 bits, base64url) with a prefix saying what it is.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

impl App {
    /// Tells a device's agent session that something changed, on whichever node holds it.
    pub fn push(&self, id: &DeviceId, p: Push) {
        self.hub.notify(id, p);
        self.cluster
            .send(crate::cluster::Signal::Push { d: id.clone(), p });
    }

    /// Rings a device's messenger push channels, on whichever nodes hold them.
    pub fn ring(&self, id: &DeviceId, m: redoubt_proto::messaging::MessengerPush) {
        self.doorbells.ring(id, m.clone());
        self.cluster
            .send(crate::cluster::Signal::Ring { d: id.clone(), m });
    }

    /// Ends every messenger session of a revoked device, on every node.
    pub fn end_messenger_sessions(&self, id: &DeviceId) {
        self.sessions.end_device(id);
        self.cluster
            .send(crate::cluster::Signal::Revoked { d: id.clone() });
    }

    /// Signs a new head of the audit log with the organization key.
    pub fn sign_audit_head(&self, head: &redoubt_proto::AuditHead) -> SignedEnvelope {
        SignedEnvelope::sign(redoubt_proto::AuditHead::KIND, head, &self.keys.org_signing)
    }

    /// Signs the next bundle for a device and judges its latest report against it.
    pub fn issue_bundle(&self, req: &BundleRequest, now: Timestamp) -> IssuedBundle {
        let bundle = PolicyBundle {
            device_id: req.device_id.clone(),
            version: req.version,
            issued_at: now,
            expires_at: now.plus_secs(self.config.bundle_ttl_secs as i64),
            modes: {
                let mut modes = vec![req.base_mode.clone()];
                for m in req
                    .group_modes
                    .iter()
                    .chain(req.zones.iter().map(|(_, m)| m))
                {
                    if !modes.iter().any(|k| k.name == m.name) {
                        modes.push(m.clone());
                    }
                }
                modes
            },
            assignments: redoubt_proto::Assignments {
                base_mode: req.base_mode.name.clone(),
                group_modes: req.group_modes.iter().map(|m| m.name.clone()).collect(),
            },
            check_in_interval_secs: self.config.check_in_interval_secs,
            // Addresses, never names: the phone must not ask its network's resolver.
            organization_endpoints: self
                .config
                .organization_addresses
                .iter()
                .map(IpAddr::to_string)
                .collect(),
            zones: req
                .zones
                .iter()
                .map(|(z, _)| ZonePolicy {
                    name: z.name.clone(),
                    mode: z.mode.clone(),
                    checkpoints: z
                        .checkpoints
                        .iter()
                        .map(|cp| CheckpointKey {
                            name: cp.clone(),
                            public_key: encode_public_key(
                                &self.keys.checkpoint_key(&z.name, cp).verifying_key(),
                            ),
                        })
                        .collect(),
                    wifi_bssids: z.wifi_bssids.clone(),
                })
                .collect(),
            servers: self.config.servers.clone(),
        };
        let envelope = SignedEnvelope::sign(PolicyBundle::KIND, &bundle, &self.keys.org_signing);
        let expected = redoubt_policy::decide(Some(&bundle), now).mode;
        let (compliance, reasons) = match &req.last_report {
            None => (Compliance::Pending, Vec::new()),
            Some(r) => verdict(redoubt_policy::evaluate(&bundle, r, now)),
        };
        IssuedBundle {
            version: bundle.version,
            payload_json: serde_json::to_string(&bundle).unwrap_or_default(),
            envelope,
            issued_at: now,
            expires_at: bundle.expires_at,
            effective_mode: expected.name,
            compliance,
            reasons,
        }
    }

    /// The bundle payload of a stored device (the server's own signature, checked).
    pub fn bundle_of(&self, dev: &DeviceRecord) -> Result<PolicyBundle, ServiceError> {
        dev.bundle
            .verify(PolicyBundle::KIND, &self.keys.org_signing.verifying_key())
            .map_err(|e| {
                ServiceError::Internal(format!("stored bundle of {} unreadable: {e}", dev.id))
            })
    }

    /// `POST /enrollments`: a single-use token and its URL.
    pub async fn create_enrollment(
        &self,
        by: &Who,
        req: CreateEnrollment,
    ) -> Result<EnrollmentCreated, ServiceError> {
        let now = Timestamp::now();
        let ttl = req.ttl_secs.unwrap_or(self.config.enrollment_ttl_secs);
        if ttl == 0 || ttl > MAX_ENROLLMENT_TTL_SECS {
            return Err(ServiceError::BadRequest(format!(
                "ttl must be between 1 second and {} days",
                MAX_ENROLLMENT_TTL_SECS / 86400
            )));
        }
        let mode = req.mode.unwrap_or_else(|| {
            redoubt_policy::STANDARD
                .parse()
                .expect("preset name is valid")
        });
        let token = new_token("");
        let token_hash = hash_token(&token);
        let expires_at = now.plus_secs(ttl as i64);
        // The audit entry names who, for whom and which mode; never the token.
        let audit = by.draft(
            "enrollment.create",
            None,
            serde_json::json!({"user": req.user, "mode": mode, "groups": req.groups, "expires_at": expires_at}),
        );
        self.store
            .create_enrollment_token(
                &token_hash,
                &req.user,
                &mode,
                &req.groups,
                &by.actor,
                now,
                expires_at,
                &[audit],
                &crate::audit::signer(self),
            )
            .await?;
        let url = EnrollmentUrl {
            server: self.public_url.clone(),
            token,
            ca: self.keys.fingerprint(),
        };
        tracing::info!(user = %req.user, mode = %mode, by = %by.actor, "enrollment code created");
        Ok(EnrollmentCreated {
            url: url.to_string(),
            expires_at,
            id: Some(redoubt_proto::api::CredentialId::from_hash(&token_hash)),
        })
    }

    /// `POST /enroll`: a phone enrolls with a token and its own public key; `source` is
    /// the client's address (for the audit log).
    pub async fn enroll(
        &self,
        req: EnrollRequest,
        peer: IpAddr,
    ) -> Result<EnrollResponse, ServiceError> {
        let source = &peer.to_string();
        let now = Timestamp::now();
        let key = decode_public_key(&req.device_public_key).ok_or_else(|| {
            ServiceError::BadRequest("device_public_key is not a base64 Ed25519 public key".into())
        })?;
        let proof = decode_signature(&req.proof).ok_or_else(|| {
            ServiceError::BadRequest("proof is not a base64 Ed25519 signature".into())
        })?;
        key.verify(
            &enroll_proof_message(&req.token, &req.device_public_key),
            &proof,
        )
        .map_err(|_| ServiceError::BadRequest("proof does not match device_public_key".into()))?;
        let mut id_bytes = [0u8; 12];
        rand_core::OsRng.fill_bytes(&mut id_bytes);
        let device = redoubt_store::NewDevice {
            id: DeviceId::from_random(id_bytes),
            public_key: key.to_bytes(),
            hardware: req.hardware,
        };
        let enrolled = self
            .store
            .enroll_device(
                &hash_token(&req.token),
                device,
                now,
                |r| self.issue_bundle(r, now),
                |rec| {
                    vec![Who::device(&rec.id, source).draft(
                        "device.enroll",
                        Some(&rec.id),
                        serde_json::json!({
                            "user": rec.user,
                            "mode": rec.assigned_mode,
                            "hardware": rec.hardware,
                            "bundle_version": rec.bundle_version,
                            "approval": if rec.is_approved() { "approved" } else { "pending" },
                        }),
                    )]
                },
                &crate::audit::signer(self),
            )
            .await;
        let rec = match enrolled {
            Ok(rec) => rec,
            Err(StoreError::Enroll(refusal)) => {
                let (reason, err) = match refusal {
                    EnrollRefusal::Invalid => ("invalid", ServiceError::TokenInvalid),
                    EnrollRefusal::Used => ("used", ServiceError::TokenUsed),
                    EnrollRefusal::Expired => ("expired", ServiceError::TokenExpired),
                };
                metrics::counter!("redoubt_enroll_refused_total", "reason" => reason).increment(1);
                // The first refusal of a source in a window is recorded at once; the
                // rest are counted and recorded as one entry when the window ends.
                if self.refusals.note(Source::of(peer), reason, now) {
                    let entry = Who::anonymous(source).draft(
                        "device.enroll_refused",
                        None,
                        serde_json::json!({"reason": reason, "hardware": req.hardware, "count": 1}),
                    );
                    if let Err(e) = crate::audit::record(self, &[entry]).await {
                        tracing::error!(error = %e, "could not record a refused enrollment in the audit log");
                    }
                }
                return Err(err);
            }
            Err(other) => return Err(other.into()),
        };
        tracing::info!(device = %rec.id, user = %rec.user, approved = rec.is_approved(), "device enrolled");
        Ok(EnrollResponse {
            device_id: rec.id,
            user: rec.user,
            organization_key: encode_public_key(&self.keys.org_signing.verifying_key()),
            bundle: rec.bundle,
        })
    }

    /// Writes the refused enrollments of the windows that ended (every window when
    /// `all`, at shutdown) to the audit log: one entry per source with the count.
    pub async fn flush_refusals(&self, all: bool) -> Result<(), ServiceError> {
        let now = Timestamp::now();
        let due = self.refusals.take_due(now, all);
        if due.is_empty() {
            return Ok(());
        }
        let drafts: Vec<_> = due
            .iter()
            .map(|(source, r)| {
                let from = source
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "many sources".into());
                Who::anonymous(&from).draft(
                    "device.enroll_refused",
                    None,
                    serde_json::json!({
                        "count": r.count,
                        "reasons": r.reasons,
                        "since": r.since,
                        "until": now,
                    }),
                )
            })
            .collect();
        crate::audit::record(self, &drafts).await
    }

    /// The console's view of a device, with staleness computed now.
    pub fn device_view(&self, d: DeviceRecord, now: Timestamp) -> DeviceView {
        let stale_after = i64::from(self.config.check_in_interval_secs)
            * i64::from(self.config.stale_after_intervals);
        let stale = d
            .last_report_at
            .is_some_and(|t| t.plus_secs(stale_after) < now);
        let (compliance, mut reasons) = if stale {
            (
                Compliance::Stale,
                vec![format!("no report for more than {stale_after} s")],
            )
        } else {
            (d.compliance, d.compliance_reasons.clone())
        };
        if d.revoked_at.is_some() {
            reasons.insert(0, "device is revoked".into());
        }
        let connected = self.hub.is_connected(&d.id);
        let approval = if d.is_approved() {
            Approval::Approved
        } else {
            Approval::Pending
        };
        DeviceView {
            capabilities: d
                .last_report
                .as_ref()
                .map(|r| r.capabilities.clone())
                .unwrap_or_default(),
            network: d.last_report.as_ref().map(|r| r.network),
            reported_bundle_version: d.last_report.as_ref().map(|r| r.bundle_version),
            reported_mode: d.last_report.as_ref().map(|r| r.effective_mode.clone()),
            zones: d
                .last_report
                .as_ref()
                .map(|r| r.zones.clone())
                .unwrap_or_default(),
            locked_by: d.last_report.as_ref().and_then(|r| r.locked_by.clone()),
            revoked_at: d.revoked_at,
            id: d.id,
            user: d.user,
            mode: d.effective_mode,
            assigned_mode: d.assigned_mode,
            compliance,
            compliance_reasons: reasons,
            bundle_version: d.bundle_version,
            last_report_at: d.last_report_at,
            last_report_seq: d.last_report_seq,
            hardware: d.hardware,
            connected,
            enrolled_at: d.enrolled_at,
            approval,
            approved_by: d.approved_by,
            approved_at: d.approved_at,
            enrolled_by: d.enrolled_by,
            groups: d.groups,
            inventory: d.inventory,
            inventory_at: d.inventory_at,
        }
    }

    /// `GET /devices/{id}`.
    pub async fn device(&self, id: &DeviceId) -> Result<DeviceView, ServiceError> {
        let d = self
            .store
            .get_device(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no device {id}")))?;
        Ok(self.device_view(d, Timestamp::now()))
    }

    /// `POST /devices/{id}/approve`: an owner approves a person's additional device,
    /// audited (`device.approve`) in the same transaction. Refused when `by` created the
    /// device's enrollment code, and when the device is not pending.
    pub async fn approve_device(
        &self,
        by: &Who,
        id: &DeviceId,
    ) -> Result<DeviceView, ServiceError> {
        let now = Timestamp::now();
        let rec = self
            .store
            .approve_device(
                id,
                &by.actor,
                now,
                |rec| {
                    vec![by.draft(
                        "device.approve",
                        Some(id),
                        serde_json::json!({
                            "user": rec.user,
                            "enrolled_by": rec.enrolled_by,
                        }),
                    )]
                },
                &crate::audit::signer(self),
            )
            .await?;
        tracing::info!(device = %id, user = %rec.user, by = %by.actor, "device approved");
        Ok(self.device_view(rec, now))
    }

    /// `PUT /devices/{id}/mode`: assigns a base mode, issues a bundle, pushes it.
    pub async fn set_mode(
        &self,
        by: &Who,
        id: &DeviceId,
        mode: &ModeName,
    ) -> Result<DeviceView, ServiceError> {
        let now = Timestamp::now();
        let rec = self
            .store
            .set_device_mode(
                id,
                mode,
                now,
                |r| self.issue_bundle(r, now),
                |before, after| {
                    vec![by.draft(
                        "device.mode",
                        Some(id),
                        serde_json::json!({
                            "from": before.assigned_mode,
                            "to": after.assigned_mode,
                            "bundle_version": after.bundle_version,
                        }),
                    )]
                },
                &crate::audit::signer(self),
            )
            .await?;
        tracing::info!(device = %id, mode = %mode, by = %by.actor, version = rec.bundle_version, "mode assigned");
        self.push(id, Push::BundleChanged);
        Ok(self.device_view(rec, now))
    }

    /// `GET /modes`.
    pub async fn list_modes(&self) -> Result<Vec<ModeView>, ServiceError> {
        Ok(self
            .store
            .list_modes()
            .await?
            .into_iter()
            .map(mode_view)
            .collect())
    }

    /// `GET /modes/{name}`.
    pub async fn mode(&self, name: &ModeName) -> Result<ModeView, ServiceError> {
        self.store
            .get_mode(name)
            .await?
            .map(mode_view)
            .ok_or_else(|| ServiceError::NotFound(format!("no mode {name}")))
    }

    /// `PUT /modes/{name}`: creates or updates a custom mode and re-issues the bundles
    /// of every device assigned to it.
    pub async fn put_mode(
        &self,
        by: &Who,
        name: &ModeName,
        mode: Mode,
    ) -> Result<ModeView, ServiceError> {
        if &mode.name != name {
            return Err(ServiceError::BadRequest(format!(
                "the body names mode {} but the path names {name}",
                mode.name
            )));
        }
        if redoubt_policy::is_preset(name.as_str()) {
            return Err(ServiceError::Conflict(format!(
                "{name} is a built-in preset and cannot be changed; give your mode another name"
            )));
        }
        if let Some(apps) = &mode.app_allowlist
            && apps.iter().any(|a| a.trim().is_empty() || a.len() > 255)
        {
            return Err(ServiceError::BadRequest(
                "app ids must be 1-255 characters".into(),
            ));
        }
        let now = Timestamp::now();
        let touched = self
            .store
            .put_custom_mode(
                &mode,
                now,
                |r| self.issue_bundle(r, now),
                |created, devices| {
                    vec![by.draft(
                        if created {
                            "mode.create"
                        } else {
                            "mode.update"
                        },
                        None,
                        serde_json::json!({
                            "mode": name,
                            "created": created,
                            "definition": mode,
                            "devices_reissued": devices.len(),
                        }),
                    )]
                },
                &crate::audit::signer(self),
            )
            .await?;
        tracing::info!(mode = %name, by = %by.actor, devices = touched.len(), "mode saved");
        for id in &touched {
            self.push(id, Push::BundleChanged);
        }
        self.mode(name).await
    }

    /// Renews the device's bundle when more than half its lifetime has passed.
    pub async fn renew_if_aging(&self, dev: DeviceRecord) -> Result<DeviceRecord, ServiceError> {
        let now = Timestamp::now();
        let half = (self.config.bundle_ttl_secs / 2) as i64;
        if dev.bundle_issued_at.plus_secs(half) > now {
            return Ok(dev);
        }
        Ok(self
            .store
            .renew_bundle(&dev.id, |r| self.issue_bundle(r, now))
            .await?)
    }

    /// Verifies and stores a report from an authenticated device.
    pub async fn accept_report(
        &self,
        device: &DeviceId,
        key: &VerifyingKey,
        envelope: &SignedEnvelope,
    ) -> Result<(u64, ReportOutcome, DeviceRecord), ServiceError> {
        let report: ComplianceReport = envelope
            .verify(ComplianceReport::KIND, key)
            .map_err(|e| ServiceError::BadRequest(format!("report refused: {e}")))?;
        if &report.device_id != device {
            return Err(ServiceError::Forbidden(
                "a device may only report for itself".into(),
            ));
        }
        let seq = report.seq;
        let mode = report.effective_mode.clone();
        let stored = self.reports.store(report, envelope.clone()).await?;
        let (outcome, verified, fresh) = (stored.outcome, stored.verified, stored.device);
        self.after_verified(&verified).await?;
        metrics::counter!("redoubt_reports_total", "outcome" => match outcome {
            ReportOutcome::Stored(c) => c.as_str(),
            ReportOutcome::Duplicate => "duplicate",
        })
        .increment(1);
        if let ReportOutcome::Stored(c) = outcome {
            // Held conversations may be deliverable now (or no longer).
            self.ring(
                device,
                redoubt_proto::messaging::MessengerPush::QueueChanged,
            );
            tracing::info!(device = %device, seq, mode = %mode, compliance = %c, "report stored");
        }
        Ok((seq, outcome, fresh))
    }
}

/// Creates an admin credential in `store`, recorded in the audit log as done by `by`
/// (`sign` signs the log's new head); returns the token, which is stored hashed.
/// It stops working `ttl_secs` from now.
pub async fn create_admin_token(
    store: &Store,
    name: &str,
    role: Role,
    ttl_secs: u64,
    by: &Who,
    sign: redoubt_store::HeadSigner<'_>,
) -> Result<String, ServiceError> {
    if name.trim().is_empty() || name.len() > 64 {
        return Err(ServiceError::BadRequest(
            "name must be 1-64 characters".into(),
        ));
    }
    check_credential_ttl(ttl_secs)?;
    let token = new_token("rdt_");
    let hash = hash_token(&token);
    let now = Timestamp::now();
    let expires_at = now.plus_secs(ttl_secs as i64);
    let audit = by.draft(
        "admin_token.create",
        None,
        serde_json::json!({
            "id": CredentialId::from_hash(&hash),
            "name": name,
            "role": role,
            "expires_at": expires_at,
        }),
    );
    store
        .create_admin_token(name, role, &hash, now, expires_at, &[audit], sign)
        .await?;
    Ok(token)
}

/// A credential lifetime must be between a minute and [`MAX_CREDENTIAL_TTL_SECS`].
pub fn check_credential_ttl(ttl_secs: u64) -> Result<(), ServiceError> {
    if (60..=MAX_CREDENTIAL_TTL_SECS).contains(&ttl_secs) {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(format!(
            "a credential's lifetime must be between 60 seconds and {} days",
            MAX_CREDENTIAL_TTL_SECS / 86400
        )))
    }
}

/// The listing view of an admin credential at `now`.
pub fn admin_token_view(r: redoubt_store::AdminRecord, now: Timestamp) -> AdminTokenView {
    AdminTokenView {
        state: CredentialState::at(now, r.expires_at, r.revoked_at),
        id: r.id,
        name: r.name,
        role: r.role,
        created_at: r.created_at,
        expires_at: r.expires_at,
        revoked_at: r.revoked_at,
        revoked_by: r.revoked_by,
    }
}

impl App {
    /// `GET /admin-tokens`: every admin credential, without secrets.
    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenView>, ServiceError> {
        let now = Timestamp::now();
        Ok(self
            .store
            .list_admin_tokens()
            .await?
            .into_iter()
            .map(|r| admin_token_view(r, now))
            .collect())
    }

    /// `POST /admin-tokens/{id}/revoke`: the credential stops working at once.
    pub async fn revoke_admin_token(
        &self,
        by: &Who,
        id: &CredentialId,
    ) -> Result<AdminTokenView, ServiceError> {
        let now = Timestamp::now();
        let rec = self
            .store
            .revoke_admin_token(
                id,
                &by.actor,
                now,
                |r| {
                    vec![by.draft(
                        "admin_token.revoke",
                        None,
                        serde_json::json!({"id": r.id, "name": r.name, "role": r.role}),
                    )]
                },
                &crate::audit::signer(self),
            )
            .await?;
        tracing::info!(id = %id, name = %rec.name, by = %by.actor, "admin credential revoked");
        Ok(admin_token_view(rec, now))
    }
}

pub(crate) fn verdict(reasons: Vec<String>) -> (Compliance, Vec<String>) {
    if reasons.is_empty() {
        (Compliance::Compliant, reasons)
    } else {
        (Compliance::NonCompliant, reasons)
    }
}

fn mode_view(r: ModeRecord) -> ModeView {
    ModeView {
        mode: r.mode,
        builtin: r.builtin,
        updated_at: r.updated_at,
    }
}

/// Shared handle to the services.
pub type SharedApp = Arc<App>;

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:192.0.2.1"), src("192.0.2.1"));
        assert_ne!(src("192.0.2.1"), src("192.0.2.2"));
        assert_eq!(src("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        // The rate limiter shares one budget across a /64.
        let limiter = RateLimiter::new(2);
        let now = Timestamp(1_000_000);
        assert!(limiter.allow(src("2001:db8::1"), now));
        assert!(limiter.allow(src("2001:db8::2"), now));
        assert!(!limiter.allow(src("2001:db8::3"), now));
        assert!(limiter.allow(src("2001:db8:0:1::1"), now));
    }

    #[test]
    fn a_challenge_flood_from_one_source_does_not_evict_another_clients_challenge() {
        let t = ChallengeTable::new(100, 10);
        let now = Timestamp(1_000_000);
        let later = now.plus_secs(60);
        t.insert(src("192.0.2.1"), "victim".into(), now, later);
        for i in 0..1000 {
            t.insert(src("2001:db8::1"), format!("flood-v6-{i}"), now, later);
            t.insert(src("198.51.100.7"), format!("flood-v4-{i}"), now, later);
        }
        // Each flooding source keeps only its own newest ten.
        assert_eq!(t.len(), 21);
        assert!(t.take("victim", now));
        assert!(!t.take("victim", now), "a challenge is used once");
        assert!(
            !t.take("flood-v4-0", now),
            "the flooder lost its own oldest"
        );
        assert!(t.take("flood-v4-999", now));
        assert!(t.take("flood-v6-995", now));
    }

    #[test]
    fn refusals_are_recorded_once_per_source_and_window_then_as_a_count() {
        let log = RefusalLog::new(60);
        let now = Timestamp(1_000_000);
        assert!(log.note(src("192.0.2.1"), "invalid", now));
        assert!(log.note(src("2001:db8::1"), "used", now));
        for _ in 0..199 {
            assert!(!log.note(src("192.0.2.1"), "invalid", now.plus_secs(1)));
            assert!(!log.note(src("2001:db8::2"), "expired", now.plus_secs(1)));
        }
        assert!(log.take_due(now.plus_secs(59), false).is_empty());
        let mut due = log.take_due(now.plus_secs(60), false);
        due.sort_by_key(|(s, _)| *s);
        assert_eq!(due.len(), 2, "{due:?}");
        assert_eq!(due[0].0, Some(src("192.0.2.1")));
        assert_eq!(due[0].1.count, 199);
        assert_eq!(due[1].1.count, 199, "2001:db8::1 and ::2 are one /64");
        assert_eq!(due[1].1.reasons.get("expired"), Some(&199));
        // A new window begins with an entry at once again.
        assert!(log.note(src("192.0.2.1"), "invalid", now.plus_secs(61)));
    }

    #[test]
    fn refusals_from_too_many_sources_share_one_overflow_count() {
        let log = RefusalLog::new(60);
        let now = Timestamp(1_000_000);
        let mut prompt = 0;
        for i in 0..(RefusalLog::MAX_SOURCES as u32 + 500) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            if log.note(Source::of(ip.into()), "invalid", now) {
                prompt += 1;
            }
        }
        assert_eq!(prompt, RefusalLog::MAX_SOURCES);
        let due = log.take_due(now, true);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].0, due[0].1.count), (None, 500));
    }

    #[test]
    fn a_full_challenge_table_drops_its_oldest_first_and_expired_ones_are_refused() {
        let t = ChallengeTable::new(3, 3);
        let now = Timestamp(1_000_000);
        for (i, who) in ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
            .into_iter()
            .enumerate()
        {
            t.insert(src(who), format!("n{i}"), now, now.plus_secs(60));
        }
        assert!(!t.take("n0", now), "the oldest went first");
        assert!(t.take("n1", now) && t.take("n3", now));
        t.insert(src("192.0.2.5"), "short".into(), now, now.plus_secs(1));
        assert!(!t.take("short", now.plus_secs(2)), "expired");
    }
}
