//! The MLS delivery and authentication service: device sessions (challenge signed with
//! the device key), member certificates, the revocation list, KeyPackages, the per-group
//! sequencer, per-device queues with clearance holds, encrypted blobs, and revocation
//! (removal requests). The server never holds a key that decrypts a message: it checks
//! commits against openmls' secret-free public group state ([`public_group`]).

pub mod public_group;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Verifier, VerifyingKey};
use rand_core::RngCore;
use redoubt_proto::api::DeviceView;
use redoubt_proto::envelope::decode_signature;
use redoubt_proto::messaging::{
    Ack, AckResult, B64, BlobStored, CertificateIssued, CertificateRequest, Challenge,
    ClaimKeyPackages, ClaimedKeyPackage, ClaimedKeyPackages, CreateGroup, GroupState, HeldGroup,
    KeyPackageStock, MemberCertificate, MessageAccepted, MessengerDelegation, MessengerLimits,
    MessengerPush, PostCommit, PostMessage, QueueBatch, RemovalRequest, RevocationList,
    SessionGranted, SessionRequest, UploadKeyPackages, certificate_proof_message, session_message,
};
use redoubt_proto::{BlobId, DeviceId, GroupId, PolicyBundle, SignedEnvelope, Timestamp, UserName};
use redoubt_store::{CommitInput, CommitOutcome, GroupRecord};

use self::public_group::Refused;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::app::{App, hash_token, new_token};
use crate::error::ServiceError;

/// Largest number of items one queue fetch returns.
pub const MAX_FETCH: u32 = 500;
/// How long a challenge nonce is valid.
const CHALLENGE_TTL_SECS: i64 = 60;
/// Most outstanding challenges kept (older ones are dropped first when over).
const MAX_CHALLENGES: usize = 100_000;
/// Most outstanding challenges per source (its own oldest is dropped when over).
const MAX_CHALLENGES_PER_SOURCE: usize = 1024;

/// An authenticated device session.
#[derive(Debug, Clone)]
pub struct DeviceSession {
    /// The device.
    pub device: DeviceId,
    /// Its owner.
    pub user: UserName,
    expires_at: Timestamp,
}

/// Outstanding challenges and open device sessions, in memory only: a restart ends
/// every session and devices simply sign a new challenge.
#[derive(Debug)]
pub struct DeviceSessions {
    challenges: crate::app::ChallengeTable,
    sessions: Mutex<HashMap<[u8; 32], DeviceSession>>,
}

impl Default for DeviceSessions {
    fn default() -> Self {
        DeviceSessions {
            challenges: crate::app::ChallengeTable::new(MAX_CHALLENGES, MAX_CHALLENGES_PER_SOURCE),
            sessions: Mutex::default(),
        }
    }
}

impl DeviceSessions {
    fn new_challenge(&self, source: crate::app::Source, now: Timestamp) -> String {
        let mut nonce = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let expires = now.plus_secs(CHALLENGE_TTL_SECS);
        self.challenges.insert(source, nonce.clone(), now, expires);
        nonce
    }

    /// Consumes a challenge; false when unknown, used, evicted or expired.
    fn take_challenge(&self, nonce: &str, now: Timestamp) -> bool {
        self.challenges.take(nonce, now)
    }

    fn open(&self, device: DeviceId, user: UserName, expires_at: Timestamp) -> String {
        let token = new_token("dst_");
        let mut s = lock(&self.sessions);
        if s.len() > 1_000_000 {
            let now = Timestamp::now();
            s.retain(|_, v| v.expires_at > now);
        }
        s.insert(
            hash_token(&token),
            DeviceSession {
                device,
                user,
                expires_at,
            },
        );
        token
    }

    /// The session a token opens, if it is still valid.
    pub fn check(&self, token: &str, now: Timestamp) -> Option<DeviceSession> {
        let mut s = lock(&self.sessions);
        let key = hash_token(token);
        match s.get(&key) {
            Some(v) if v.expires_at > now => Some(v.clone()),
            Some(_) => {
                s.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends every session of a device.
    pub fn end_device(&self, device: &DeviceId) {
        lock(&self.sessions).retain(|_, v| &v.device != device);
    }

    /// The devices holding a session.
    pub fn devices(&self) -> Vec<DeviceId> {
        lock(&self.sessions)
            .values()
            .map(|v| v.device.clone())
            .collect()
    }
}

/// Push channels of connected messengers, by device (several processes per device may
/// listen: `listen`, the terminal chat).
#[derive(Debug, Default)]
pub struct Doorbells {
    map: Mutex<HashMap<DeviceId, broadcast::Sender<MessengerPush>>>,
}

impl Doorbells {
    /// Subscribes to a device's pushes.
    pub fn subscribe(&self, device: &DeviceId) -> broadcast::Receiver<MessengerPush> {
        lock(&self.map)
            .entry(device.clone())
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe()
    }

    /// Drops the channel of a device nobody listens to any more.
    pub fn tidy(&self, device: &DeviceId) {
        let mut m = lock(&self.map);
        if m.get(device).is_some_and(|tx| tx.receiver_count() == 0) {
            m.remove(device);
        }
    }

    /// Pushes to a device's listeners, if any.
    pub fn ring(&self, device: &DeviceId, push: MessengerPush) {
        if let Some(tx) = lock(&self.map).get(device) {
            let _ = tx.send(push);
        }
    }

    /// Number of devices with a listener.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// The devices with a listener.
    pub fn devices(&self) -> Vec<DeviceId> {
        lock(&self.map).keys().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The data dir's folder of encrypted files.
pub fn blob_dir(data: &Path) -> PathBuf {
    data.join("blobs")
}

/// The answer to a refused group start or commit.
fn refusal(e: Refused) -> ServiceError {
    match e {
        Refused::Invalid(m) => ServiceError::BadRequest(m),
        Refused::WrongEpoch { sent, current } => ServiceError::EpochConflict { sent, current },
        Refused::Corrupt(m) => ServiceError::Internal(m),
    }
}

/// The same answer for a group that does not exist and one the device is not a member
/// of: a non-member learns nothing about a group.
pub fn not_a_member(id: &GroupId) -> ServiceError {
    ServiceError::NotFound(format!(
        "no conversation {id} that this device is a member of"
    ))
}

fn group_state(g: GroupRecord) -> GroupState {
    GroupState {
        group_id: g.id,
        epoch: g.epoch,
        clearance: g.clearance,
        members: g.members,
        group_info: g.group_info.map(B64),
    }
}

impl App {
    fn limits(&self) -> MessengerLimits {
        MessengerLimits {
            max_file_bytes: self.config.max_file_bytes,
            max_message_bytes: self.config.max_message_bytes as u64,
            message_ttl_secs: self.config.message_ttl_secs,
        }
    }

    fn message_expiry(&self, now: Timestamp) -> Timestamp {
        now.plus_secs(self.config.message_ttl_secs as i64)
    }

    /// `POST /device/challenge`.
    pub fn device_challenge(&self, source: crate::app::Source) -> Challenge {
        Challenge {
            nonce: self.sessions.new_challenge(source, Timestamp::now()),
        }
    }

    /// `POST /device/session`: a challenge signed by the device's messenger key, with
    /// the device key's delegation of that key, opens a short session. The device key
    /// itself does not: the request must carry a delegation, the delegation must be
    /// signed by the device's registered key, for this device, naming a key other than
    /// the device key, and the challenge must be signed by the key it names.
    pub async fn open_device_session(
        &self,
        req: SessionRequest,
    ) -> Result<SessionGranted, ServiceError> {
        let now = Timestamp::now();
        let fresh = self.sessions.take_challenge(&req.nonce, now);
        let device = self.store.get_device(&req.device_id).await?;
        let refuse = |why: &str| {
            metrics::counter!("redoubt_device_auth_failures_total").increment(1);
            ServiceError::Unauthorized(format!("device authentication failed: {why}"))
        };
        let (Some(device), true) = (device, fresh) else {
            return Err(refuse(
                "unknown or revoked device, or a bad or used challenge",
            ));
        };
        let device_key = match VerifyingKey::from_bytes(&device.public_key) {
            Ok(k) if device.revoked_at.is_none() => k,
            _ => {
                return Err(refuse(
                    "unknown or revoked device, or a bad or used challenge",
                ));
            }
        };
        let Ok(delegation) = req
            .delegation
            .verify::<MessengerDelegation>(MessengerDelegation::KIND, &device_key)
        else {
            return Err(refuse(
                "the messenger delegation is not signed by this device's key",
            ));
        };
        if delegation.device_id != req.device_id {
            return Err(refuse("the messenger delegation is for another device"));
        }
        let messenger_key = <[u8; 32]>::try_from(delegation.messenger_key.0.as_slice())
            .ok()
            .and_then(|b| VerifyingKey::from_bytes(&b).ok());
        let Some(messenger_key) = messenger_key.filter(|k| *k != device_key) else {
            return Err(refuse(
                "the messenger delegation must name an Ed25519 key other than the device key",
            ));
        };
        let signed = decode_signature(&req.signature).is_some_and(|s| {
            messenger_key
                .verify_strict(&session_message(&req.nonce, &req.device_id), &s)
                .is_ok()
        });
        if !signed {
            return Err(refuse(
                "the challenge is not signed by the delegated messenger key",
            ));
        }
        let expires_at = now.plus_secs(self.config.device_session_ttl_secs as i64);
        let token = self
            .sessions
            .open(device.id.clone(), device.user.clone(), expires_at);
        Ok(SessionGranted {
            token,
            expires_at,
            user: device.user,
            limits: self.limits(),
            servers: self.config.servers.clone(),
        })
    }

    /// Fails with `awaiting_approval` unless the device is approved: a person's
    /// additional device takes no part in conversations before an owner approves it.
    pub async fn require_approved(&self, device: &DeviceId) -> Result<(), ServiceError> {
        let rec = self
            .store
            .get_device(device)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no device {device}")))?;
        if rec.is_approved() {
            return Ok(());
        }
        metrics::counter!("redoubt_unapproved_device_refusals_total").increment(1);
        Err(ServiceError::AwaitingApproval(format!(
            "device {device} is awaiting an owner's approval: {} already has a device, so this additional one takes part in conversations only once an owner approves it (redoubt devices approve {device})",
            rec.user
        )))
    }

    /// `POST /messenger/certificate`: certifies the device's MLS signature key (an
    /// approved device only).
    pub async fn certify_mls_key(
        &self,
        s: &DeviceSession,
        req: CertificateRequest,
    ) -> Result<CertificateIssued, ServiceError> {
        self.require_approved(&s.device).await?;
        let key_bytes: [u8; 32] = req.mls_key.0.as_slice().try_into().map_err(|_| {
            ServiceError::BadRequest("mls_key must be a 32-byte Ed25519 public key".into())
        })?;
        let key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| ServiceError::BadRequest("mls_key is not a valid Ed25519 key".into()))?;
        let sig: [u8; 64] =
            req.proof.0.as_slice().try_into().map_err(|_| {
                ServiceError::BadRequest("proof must be a 64-byte signature".into())
            })?;
        key.verify(
            &certificate_proof_message(&s.device, &key_bytes),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| {
            ServiceError::BadRequest("proof was not made with the key to certify".into())
        })?;
        let now = Timestamp::now();
        let cert = MemberCertificate {
            device_id: s.device.clone(),
            user: s.user.clone(),
            mls_key: B64(key_bytes.to_vec()),
            issued_at: now,
        };
        let envelope = SignedEnvelope::sign(MemberCertificate::KIND, &cert, &self.keys.org_signing);
        self.store
            .put_member_certificate(
                &s.device,
                &key_bytes,
                &serde_json::to_string(&envelope).unwrap_or_default(),
                now,
            )
            .await?;
        tracing::info!(device = %s.device, "MLS key certified");
        Ok(CertificateIssued {
            certificate: envelope,
        })
    }

    /// `GET /messenger/revocations`: the signed list of revoked devices.
    pub async fn revocation_list(&self) -> Result<SignedEnvelope, ServiceError> {
        let list = RevocationList {
            issued_at: Timestamp::now(),
            revoked: self.store.revoked_devices().await?,
        };
        Ok(SignedEnvelope::sign(
            RevocationList::KIND,
            &list,
            &self.keys.org_signing,
        ))
    }

    fn stock(&self, (remaining, last_resort): (u64, bool)) -> KeyPackageStock {
        KeyPackageStock {
            remaining,
            last_resort,
            low_watermark: self.config.key_package_low_watermark,
        }
    }

    /// `POST /messenger/key-packages` (an approved device only).
    pub async fn upload_key_packages(
        &self,
        s: &DeviceSession,
        req: UploadKeyPackages,
    ) -> Result<KeyPackageStock, ServiceError> {
        self.require_approved(&s.device).await?;
        let max = self.config.max_message_bytes;
        let all = req.key_packages.iter().chain(req.last_resort.iter());
        if all.clone().any(|k| k.0.is_empty() || k.0.len() > max) {
            return Err(ServiceError::BadRequest(format!(
                "each KeyPackage must be 1-{max} bytes"
            )));
        }
        let kps: Vec<Vec<u8>> = req.key_packages.into_iter().map(|k| k.0).collect();
        let stock = self
            .store
            .upload_key_packages(
                &s.device,
                &kps,
                req.last_resort.as_ref().map(|k| k.0.as_slice()),
                self.config.key_package_max_stock,
                Timestamp::now(),
            )
            .await?;
        Ok(self.stock(stock))
    }

    /// `POST /messenger/key-packages/claim`: one KeyPackage per approved device of each
    /// person (a device awaiting approval is listed in `missing`). A device awaiting
    /// approval may not claim: it would drain others' KeyPackages for nothing.
    pub async fn claim_key_packages(
        &self,
        s: &DeviceSession,
        req: ClaimKeyPackages,
    ) -> Result<ClaimedKeyPackages, ServiceError> {
        self.require_approved(&s.device).await?;
        if req.users.is_empty() || req.users.len() > 1000 {
            return Err(ServiceError::BadRequest(
                "claim for 1-1000 people at a time".into(),
            ));
        }
        // One KeyPackage per device per claim: a person named twice is a client bug or
        // an attempt to drain their stock.
        let mut names: Vec<&UserName> = req.users.iter().collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            metrics::counter!("redoubt_key_package_claims_refused_total", "reason" => "duplicate")
                .increment(1);
            return Err(ServiceError::BadRequest(format!(
                "{} is named more than once; a claim names each person once (one KeyPackage per device)",
                w[0]
            )));
        }
        let now = Timestamp::now();
        for _ in 0..req.users.len() {
            if !self.claim_limiter.allow(s.device.clone(), now) {
                metrics::counter!("redoubt_key_package_claims_rate_limited_total").increment(1);
                return Err(ServiceError::RateLimited);
            }
        }
        let (claimed, missing) = self
            .store
            .claim_key_packages(
                &s.device,
                &req.users,
                self.config.key_package_handouts_per_hour,
                now,
            )
            .await?;
        let mut out = Vec::with_capacity(claimed.len());
        for c in claimed {
            metrics::counter!("redoubt_key_packages_claimed_total", "kind" => if c.last_resort { "last_resort" } else { "one_time" }).increment(1);
            if c.throttled {
                // The target handed out its hourly share of one-time KeyPackages.
                metrics::counter!("redoubt_key_package_handouts_limited_total").increment(1);
            }
            if c.remaining < self.config.key_package_low_watermark {
                self.ring(
                    &c.device_id,
                    MessengerPush::KeyPackagesLow {
                        remaining: c.remaining,
                    },
                );
            }
            out.push(ClaimedKeyPackage {
                device_id: c.device_id,
                user: c.user,
                key_package: B64(c.data),
                last_resort: c.last_resort,
            });
        }
        Ok(ClaimedKeyPackages {
            key_packages: out,
            missing,
        })
    }

    /// `POST /messenger/groups`: registers a group from its creator's verified
    /// GroupInfo and ratchet tree (epoch 0, the calling device its only member).
    pub async fn create_group(
        &self,
        s: &DeviceSession,
        req: CreateGroup,
    ) -> Result<GroupState, ServiceError> {
        let max = self.config.max_message_bytes;
        if [&req.group_info, &req.ratchet_tree]
            .iter()
            .any(|b| b.0.is_empty() || b.0.len() > max)
        {
            return Err(ServiceError::BadRequest(format!(
                "group_info and ratchet_tree must each be 1-{max} bytes"
            )));
        }
        let org = self.keys.org_signing.verifying_key();
        let (id, device) = (req.group_id.clone(), s.device.clone());
        let started = tokio::task::spawn_blocking(move || {
            public_group::start(&id, &req.group_info.0, &req.ratchet_tree.0, &device, &org)
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
        .map_err(refusal)?;
        let g = self
            .store
            .create_group(
                &req.group_id,
                req.clearance.as_ref(),
                &s.device,
                &started.state,
                &started.group_info,
                Timestamp::now(),
            )
            .await?;
        metrics::counter!("redoubt_groups_created_total").increment(1);
        Ok(group_state(g))
    }

    async fn member_group(
        &self,
        s: &DeviceSession,
        id: &GroupId,
    ) -> Result<GroupRecord, ServiceError> {
        match self.store.get_group(id).await? {
            Some(g) if g.members.contains(&s.device) => Ok(g),
            _ => Err(not_a_member(id)),
        }
    }

    /// `GET /messenger/groups/{id}`.
    pub async fn group(&self, s: &DeviceSession, id: &GroupId) -> Result<GroupState, ServiceError> {
        Ok(group_state(self.member_group(s, id).await?))
    }

    /// `POST /messenger/groups/{id}/commit`: the sequencer. Only a member is
    /// answered (anyone else gets the 404 of a group that does not exist); the commit
    /// is verified against the group's public state, and the new member list and the
    /// Welcome's recipients are derived from it.
    pub async fn post_commit(
        &self,
        s: &DeviceSession,
        id: &GroupId,
        req: PostCommit,
    ) -> Result<GroupState, ServiceError> {
        let max = self.config.max_message_bytes;
        let sizes = [
            req.commit.0.len(),
            req.welcome.as_ref().map_or(0, |w| w.0.len()),
            req.group_info.as_ref().map_or(0, |g| g.0.len()),
        ];
        if req.commit.0.is_empty() || sizes.iter().any(|n| *n > max) {
            return Err(ServiceError::BadRequest(format!(
                "commit, Welcome and GroupInfo must each be at most {max} bytes"
            )));
        }
        let base = match self.store.commit_base(id).await? {
            Some(b) if b.group.members.contains(&s.device) => b,
            _ => return Err(not_a_member(id)),
        };
        let commit_hash: [u8; 32] = Sha256::digest(&req.commit.0).into();
        if base.last_commit_hash.as_deref() == Some(&commit_hash[..])
            && base.last_commit_sender.as_ref() == Some(&s.device)
        {
            metrics::counter!("redoubt_commits_total", "outcome" => "retry").increment(1);
            return Ok(group_state(base.group));
        }
        let Some(state) = base.public_state else {
            return Err(ServiceError::Conflict(format!(
                "conversation {id} was registered before the server verified commits; start a new conversation"
            )));
        };
        let org = self.keys.org_signing.verifying_key();
        let (gid, device) = (id.clone(), s.device.clone());
        let commit = req.commit.0.clone();
        let (welcome, group_info) = (req.welcome.clone(), req.group_info.clone());
        let verified = tokio::task::spawn_blocking(move || {
            public_group::verify_commit(
                &state,
                &gid,
                &device,
                &commit,
                welcome.as_ref().map(|w| w.0.as_slice()),
                group_info.as_ref().map(|g| g.0.as_slice()),
                &org,
            )
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                metrics::counter!("redoubt_commits_total", "outcome" => "refused").increment(1);
                tracing::info!(group = %id, device = %s.device, reason = %e, "commit refused");
                return Err(refusal(e));
            }
        };
        let now = Timestamp::now();
        let outcome = self
            .store
            .accept_commit(CommitInput {
                group_id: id,
                sender: &s.device,
                epoch: verified.epoch,
                public_state: &verified.state,
                commit: &req.commit.0,
                commit_hash,
                welcome: req.welcome.as_ref().map(|w| w.0.as_slice()),
                welcome_to: &verified.added,
                group_info: verified.group_info.as_deref(),
                members: &verified.members,
                now,
                expires_at: self.message_expiry(now),
            })
            .await
            .map_err(|e| match e {
                redoubt_store::StoreError::Forbidden(_)
                | redoubt_store::StoreError::NotFound(_) => not_a_member(id),
                other => other.into(),
            })?;
        match outcome {
            CommitOutcome::Accepted { group, notified } => {
                metrics::counter!("redoubt_commits_total", "outcome" => "accepted").increment(1);
                tracing::info!(group = %id, epoch = group.epoch, members = group.members.len(), "commit accepted");
                for d in &notified {
                    self.ring(d, MessengerPush::QueueChanged);
                }
                Ok(group_state(group))
            }
            CommitOutcome::AlreadyAccepted(group) => {
                metrics::counter!("redoubt_commits_total", "outcome" => "retry").increment(1);
                Ok(group_state(group))
            }
            CommitOutcome::Conflict { current_epoch } => {
                metrics::counter!("redoubt_commits_total", "outcome" => "conflict").increment(1);
                Err(ServiceError::EpochConflict {
                    sent: verified.epoch,
                    current: current_epoch,
                })
            }
        }
    }

    /// `POST /messenger/groups/{id}/messages`.
    pub async fn post_message(
        &self,
        s: &DeviceSession,
        id: &GroupId,
        req: PostMessage,
    ) -> Result<MessageAccepted, ServiceError> {
        let max = self.config.max_message_bytes;
        if req.message.0.is_empty() || req.message.0.len() > max {
            return Err(ServiceError::BadRequest(format!(
                "a message must be 1-{max} bytes"
            )));
        }
        if req.client_id.is_empty()
            || req.client_id.len() > 64
            || !req
                .client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ServiceError::BadRequest(
                "client_id must be 1-64 characters of letters, digits, '-' and '_'".into(),
            ));
        }
        let epoch = public_group::check_application_message(id, &req.message.0)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        if epoch != req.epoch {
            return Err(ServiceError::BadRequest(format!(
                "the message was encrypted in epoch {epoch}, not the epoch {} it names",
                req.epoch
            )));
        }
        let now = Timestamp::now();
        let out = self
            .store
            .enqueue_message(
                id,
                &s.device,
                req.epoch,
                &req.message.0,
                &req.client_id,
                now,
                self.message_expiry(now),
            )
            .await
            .map_err(|e| match e {
                redoubt_store::StoreError::Forbidden(_)
                | redoubt_store::StoreError::NotFound(_) => not_a_member(id),
                other => other.into(),
            })?;
        metrics::counter!("redoubt_messages_total", "outcome" => if out.duplicate { "retry" } else { "accepted" }).increment(1);
        metrics::counter!("redoubt_message_bytes_total").increment(req.message.0.len() as u64);
        for d in &out.recipients {
            self.ring(d, MessengerPush::QueueChanged);
        }
        Ok(MessageAccepted {
            duplicate: out.duplicate,
            recipients: out.recipient_count,
        })
    }

    /// Groups whose items must be held for this device, with why.
    async fn held_groups(&self, s: &DeviceSession) -> Result<Vec<HeldGroup>, ServiceError> {
        let queued = self.store.queued_groups(&s.device).await?;
        let needing: Vec<_> = queued
            .into_iter()
            .filter_map(|g| g.clearance.clone().map(|c| (g, c)))
            .collect();
        if needing.is_empty() {
            return Ok(Vec::new());
        }
        let dev = self
            .store
            .get_device(&s.device)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("device {}", s.device)))?;
        let now = Timestamp::now();
        let bundle: Option<PolicyBundle> = self.bundle_of(&dev).ok();
        // What the phone last reported holds (zones and locks included) — when that
        // report is for the newest bundle; else what the bundle alone says.
        let device_mode = match (bundle.as_ref(), dev.last_report.as_ref()) {
            (Some(b), Some(r)) if r.bundle_version == b.version => {
                redoubt_policy::expected_mode(b, r, now)
            }
            (b, _) => redoubt_policy::decide(b, now).mode,
        };
        let compliance = self.device_view(dev, now).compliance;
        let mut held = Vec::new();
        for (g, clearance) in needing {
            let verdict = match self.store.get_mode(&clearance).await? {
                Some(m) => redoubt_policy::meets_clearance(&device_mode, compliance, &m.mode),
                None => Err(format!("the required mode {clearance} no longer exists")),
            };
            if let Err(reason) = verdict {
                held.push(HeldGroup {
                    group_id: g.group_id,
                    clearance,
                    count: g.count,
                    reason,
                });
            }
        }
        Ok(held)
    }

    /// `GET /messenger/queue`: the next deliverable items, in order; items of groups
    /// whose clearance the device does not meet stay in the queue.
    pub async fn fetch_queue(
        &self,
        s: &DeviceSession,
        limit: Option<u32>,
    ) -> Result<QueueBatch, ServiceError> {
        let limit = limit.unwrap_or(100).clamp(1, MAX_FETCH);
        let held = self.held_groups(s).await?;
        let held_ids: Vec<GroupId> = held.iter().map(|h| h.group_id.clone()).collect();
        let (items, more) = self.store.fetch_queue(&s.device, &held_ids, limit).await?;
        let status = self.store.queue_status(&s.device).await?;
        Ok(QueueBatch {
            items,
            more,
            held,
            expired_total: status.expired,
            key_packages: self.stock((status.one_time, status.last_resort)),
        })
    }

    /// `POST /messenger/queue/ack`.
    pub async fn ack_queue(&self, s: &DeviceSession, req: Ack) -> Result<AckResult, ServiceError> {
        if req.seqs.len() > 10_000 {
            return Err(ServiceError::BadRequest(
                "acknowledge at most 10000 items at a time".into(),
            ));
        }
        let removed = self.store.ack_queue(&s.device, &req.seqs).await?;
        metrics::counter!("redoubt_queue_acked_total").increment(removed);
        Ok(AckResult { removed })
    }

    /// `POST /messenger/groups/{id}/blobs`: stores an encrypted file for a conversation
    /// the device is a current member of (anyone else gets the 404 of a conversation
    /// that does not exist). The record is made first, in one transaction that checks
    /// membership and the device's storage quota, so a refused file never touches the
    /// disk; the bytes are then written and fsync'd before the answer.
    pub async fn store_blob(
        &self,
        s: &DeviceSession,
        group: &GroupId,
        bytes: axum::body::Bytes,
    ) -> Result<BlobStored, ServiceError> {
        if bytes.is_empty() || bytes.len() as u64 > self.config.max_file_bytes {
            return Err(ServiceError::BadRequest(format!(
                "a file must be 1-{} bytes",
                self.config.max_file_bytes
            )));
        }
        let mut raw = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut raw);
        let id = BlobId::from_random(raw);
        let size = bytes.len() as u64;
        let now = Timestamp::now();
        let expires_at = self.message_expiry(now);
        self.store
            .reserve_blob(
                &id,
                group,
                &s.device,
                size,
                self.config.max_blob_bytes_per_device,
                now,
                expires_at,
            )
            .await
            .map_err(|e| match e {
                redoubt_store::StoreError::NotFound(_) => not_a_member(group),
                e @ redoubt_store::StoreError::QuotaExceeded { .. } => {
                    metrics::counter!("redoubt_blob_quota_refusals_total").increment(1);
                    tracing::info!(device = %s.device, size, "file refused: storage quota");
                    e.into()
                }
                other => other.into(),
            })?;
        let written = if self.store.keeps_blob_bytes() {
            // Several nodes share the database, not a disk: the bytes go there.
            self.store
                .put_blob_bytes(&id, &bytes)
                .await
                .map_err(|e| ServiceError::Unavailable(format!("storing the file: {e}")))
        } else {
            self.write_blob_file(&id, bytes).await
        };
        if let Err(e) = written {
            if let Err(d) = self.store.drop_blob(&id).await {
                tracing::warn!(blob = %id, error = %d, "could not forget an unwritten file");
            }
            return Err(e);
        }
        metrics::counter!("redoubt_blob_bytes_total").increment(size);
        Ok(BlobStored {
            blob_id: id,
            size,
            expires_at,
        })
    }

    /// Writes a file's bytes into the data directory, fsync'd; nothing half-written
    /// stays behind.
    async fn write_blob_file(
        &self,
        id: &BlobId,
        bytes: axum::body::Bytes,
    ) -> Result<(), ServiceError> {
        let dir = blob_dir(&self.config.data);
        let path = dir.join(id.as_str());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let done = crate::pki::write_atomic(&path, &bytes, 0o600)
                .map_err(|e| std::io::Error::other(e.to_string()));
            if done.is_err() {
                // Nothing half-written stays behind.
                let _ = std::fs::remove_file(path.with_extension("tmp"));
            }
            done
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))
        .and_then(|r| r.map_err(|e| ServiceError::Unavailable(format!("writing the file: {e}"))))
    }

    /// `GET /messenger/groups/{id}/blobs/{blob}`: a file of a conversation, for its
    /// current members only. A file that does not exist, has expired or belongs to
    /// another conversation, and a device that is not (or no longer) a member, all get
    /// the same 404.
    pub async fn load_blob(
        &self,
        s: &DeviceSession,
        group: &GroupId,
        id: &BlobId,
    ) -> Result<Vec<u8>, ServiceError> {
        if self
            .store
            .member_blob(id, group, &s.device, Timestamp::now())
            .await?
            .is_none()
        {
            return Err(ServiceError::NotFound(format!(
                "no file {id} in a conversation {group} that this device is a member of (it may have expired)"
            )));
        }
        if self.store.keeps_blob_bytes() {
            return self.store.blob_bytes(id).await?.ok_or_else(|| {
                ServiceError::Unavailable(format!("file {id} has a record but no bytes"))
            });
        }
        let path = blob_dir(&self.config.data).join(id.as_str());
        tokio::fs::read(&path)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("reading file {id}: {e}")))
    }

    /// Revokes a device on behalf of `by`: an admin's name, recorded in the audit log
    /// as `admin:NAME` without an address, or a label starting with `server`, recorded
    /// as `server`. Prefer [`App::revoke_device_as`], which records the address too.
    pub async fn revoke_device(&self, by: &str, id: &DeviceId) -> Result<DeviceView, ServiceError> {
        let who = if by.starts_with("server") {
            crate::audit::Who::server()
        } else {
            crate::audit::Who {
                actor: format!("admin:{by}"),
                source: String::new(),
            }
        };
        self.revoke_device_as(&who, by, id).await
    }

    /// Revokes a device (the `revoke` command, or after a verified wipe): the device loses its sessions and KeyPackages, and
    /// the members of each of its groups are asked to remove it; the audit log records
    /// `who` did it, and the removal requests give `reason` (e.g. who).
    pub async fn revoke_device_as(
        &self,
        who: &crate::audit::Who,
        reason: &str,
        id: &DeviceId,
    ) -> Result<DeviceView, ServiceError> {
        let now = Timestamp::now();
        let reason = format!("device revoked by {reason}");
        let groups = self
            .store
            .revoke_device(
                id,
                now,
                self.message_expiry(now),
                |gid| {
                    let req = RemovalRequest {
                        group_id: gid.clone(),
                        device_id: id.clone(),
                        reason: reason.clone(),
                        issued_at: now,
                    };
                    let env =
                        SignedEnvelope::sign(RemovalRequest::KIND, &req, &self.keys.org_signing);
                    serde_json::to_vec(&env).unwrap_or_default()
                },
                |groups| {
                    vec![who.draft(
                        "device.revoked",
                        Some(id),
                        serde_json::json!({
                            "reason": reason,
                            "groups": groups.len(),
                        }),
                    )]
                },
                &crate::audit::signer(self),
            )
            .await?;
        self.end_messenger_sessions(id);
        self.push(id, crate::app::Push::Revoked);
        self.ring(id, MessengerPush::QueueChanged);
        for (_, members) in &groups {
            for d in members {
                self.ring(d, MessengerPush::QueueChanged);
            }
        }
        tracing::info!(device = %id, by = %who.actor, groups = groups.len(), "device revoked");
        self.device(id).await
    }

    /// Deletes expired queue items and files; counts what expired undelivered.
    pub async fn sweep(&self) -> Result<(), ServiceError> {
        let now = Timestamp::now();
        let expired = self.store.expire_queue(now).await?;
        let total: u64 = expired.iter().map(|(_, n)| n).sum();
        if total > 0 {
            metrics::counter!("redoubt_queue_expired_total").increment(total);
            tracing::warn!(
                items = total,
                devices = expired.len(),
                "undelivered messages expired"
            );
        }
        self.store
            .prune_sent_ids(now.plus_secs(-(self.config.message_ttl_secs as i64)))
            .await?;
        let dir = blob_dir(&self.config.data);
        for id in self.store.expire_blobs(now).await? {
            if let Err(e) = tokio::fs::remove_file(dir.join(id.as_str())).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(blob = %id, error = %e, "could not delete an expired file");
            }
        }
        Ok(())
    }
}
