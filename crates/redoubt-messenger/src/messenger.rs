//! [`Messenger`]: one device's conversations. Every MLS operation runs inside a
//! [`crate::db::Tx`] together with the application rows it implies; network calls
//! happen between transactions, and what must survive a crash on the way to the
//! server sits in the outbox first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;
use rand_core::RngCore;
use redoubt_client::ClientError;
use redoubt_device::{MessengerDir, PublicIdentity as Identity};
use redoubt_proto::messaging::{
    Ack, B64, BlobStored, CertificateIssued, CertificateRequest, ClaimKeyPackages,
    ClaimedKeyPackages, CreateGroup, GroupState, ItemKind, MemberCertificate, PostCommit,
    PostMessage, QueueBatch, QueueItem, RemovalRequest, RevocationList, UploadKeyPackages,
    certificate_proof_message,
};
use redoubt_proto::{DeviceId, GroupId, ModeName, SignedEnvelope, Timestamp, UserName};
use serde::Serialize;
use sqlx::Row;
use tls_codec::{Deserialize as _, Serialize as _};

use crate::content::{AppMessage, Body, FileRef, ReceiptKind};
use crate::db::{Db, Tx};
use crate::files;
use crate::identity::{MemberRefused, credential_for, read_certificate, verify_member};
use crate::mls_store::Provider;
use crate::net::Net;
use crate::testpoint;

/// The one ciphersuite of Redoubt.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Past epochs whose secrets are kept, so messages that cross a commit still decrypt.
pub const PAST_EPOCHS: usize = 5;

/// Whether a message encrypted at `epoch` can no longer be read by the members once the
/// group is at `current` (they keep the keys of [`PAST_EPOCHS`] past epochs).
pub fn too_old_to_send(epoch: u64, current: u64) -> bool {
    current.saturating_sub(epoch) > PAST_EPOCHS as u64
}
/// One-time KeyPackages uploaded at a time.
pub const KEY_PACKAGE_BATCH: usize = 40;
/// Conversations larger than this send no delivery receipts (their cost grows with the
/// square of the size).
pub const RECEIPTS_UP_TO: usize = 32;
/// How many times a commit is retried after losing the race for an epoch.
const COMMIT_ATTEMPTS: usize = 8;

/// After joining, members take turns to fill the ratchet tree (see
/// [`Messenger::self_update`]): the member at leaf `i` checks its path at its first
/// sync [`self_update_turn_ms`]`(i)` after it joined, so that the members that joined
/// by one Welcome do not race for the same epoch. The first turn waits a minute, while
/// the others come online and join.
pub const SELF_UPDATE_AFTER_MS: i64 = 60_000;
/// Time between two leaves' turns.
pub const SELF_UPDATE_STEP_MS: i64 = 1_000;

/// When the member at `leaf` takes its turn, in milliseconds after it joined.
pub fn self_update_turn_ms(leaf: u32) -> i64 {
    SELF_UPDATE_AFTER_MS + i64::from(leaf) * SELF_UPDATE_STEP_MS
}

/// The file of the messenger's database in the messenger directory.
pub const DB_FILE: &str = redoubt_device::layout::messenger::DB_FILE;

/// A conversation as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationView {
    /// Id.
    pub id: GroupId,
    /// Name.
    pub name: String,
    /// Required mode.
    pub clearance: Option<ModeName>,
    /// `active`, `removed` (this device was removed), `refused` (a commit was refused),
    /// or `held` (invited, but the server holds the invitation until this device
    /// complies with the conversation's clearance).
    pub status: String,
    /// Member users.
    pub members: Vec<UserName>,
    /// Messages the server holds back for this device.
    pub held: u64,
    /// Why they are held.
    pub held_reason: Option<String>,
    /// Current epoch.
    pub epoch: u64,
}

/// A message as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    /// The sender's message id.
    pub id: String,
    /// Sender.
    pub from_user: UserName,
    /// Sending device.
    pub from_device: DeviceId,
    /// Text (for a file: its name).
    pub text: String,
    /// When it was written.
    pub sent_at: Timestamp,
    /// A file, if this is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileView>,
    /// Whether this device sent it.
    pub outgoing: bool,
    /// `pending` / `sent` for outgoing, `received` / `read` for incoming.
    pub status: String,
    /// Devices that confirmed delivery (outgoing only).
    pub delivered_to: u64,
    /// Devices that read it (outgoing only).
    pub read_by: u64,
    /// Written by this device, not by a person: a change of a person's devices in the
    /// conversation (`from_user` is that person, `from_device` the device concerned).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub notice: bool,
    #[serde(skip)]
    /// Local order.
    pub local_id: i64,
}

/// A file message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileView {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A message was encrypted and saved in this device's outbox, but the server did not
/// take it yet; it goes out, in order, with the next send or sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "message {id} is saved in this device's outbox and goes out with the next sync or send; not sent yet: {reason}"
)]
pub struct Queued {
    /// The message id.
    pub id: String,
    /// Why it is not out.
    pub reason: String,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Items applied.
    pub processed: u64,
    /// Items refused (with reasons in the log).
    pub refused: Vec<String>,
    /// Items that expired on the server before delivery, since enrollment.
    pub expired_total: u64,
    /// The size of each commit this sync made to fill the ratchet tree (a member's
    /// turn after joining, see [`Messenger::self_update`]).
    pub self_updates: Vec<usize>,
}

/// What adding people did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AddReport {
    /// Devices added.
    pub added: Vec<DeviceId>,
    /// Devices or people that could not be added, with why.
    pub skipped: Vec<String>,
}

fn mls_group_id(id: &GroupId) -> openmls::group::GroupId {
    openmls::group::GroupId::from_slice(id.as_str().as_bytes())
}

fn new_message_id() -> String {
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The group settings of every Redoubt conversation (the benchmark uses them too).
/// Handshake messages (commits) go out in public framing, so the server can verify
/// them against its public view of the group; application messages are always
/// encrypted (openmls' `create_message` encrypts whatever the policy).
pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    create_config().join_config().clone()
}

fn encode_group_info(gi: Option<openmls::messages::group_info::GroupInfo>) -> Result<Option<B64>> {
    gi.map(|g| MlsMessageOut::from(g).tls_serialize_detached().map(B64))
        .transpose()
        .map_err(|e| anyhow!("encoding the GroupInfo: {e:?}"))
}

/// Milliseconds since the Unix epoch, by this device's clock (it only times turns).
fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether a self-update would fill a blank inner node above this member's leaf: one
/// whose other half holds a member (a node over blank leaves only is left out of every
/// update path, and stays blank). In the array layout leaf `i` is node `2i`, and inner
/// node `p` is node `2p + 1`, covering the nodes within `2^level − 1` of itself
/// (`level`: its trailing ones); its halves meet at leaf `p + 1`.
fn path_has_blank(group: &MlsGroup) -> bool {
    let me = u64::from(group.own_leaf_index().u32());
    let mut members: Vec<u64> = group.members().map(|m| u64::from(m.index.u32())).collect();
    members.sort_unstable();
    let any_in = |lo: u64, hi: u64| {
        let at = members.partition_point(|&m| m < lo);
        members.get(at).is_some_and(|&m| m <= hi)
    };
    group.treesync().blank_parents().any(|p| {
        let node = 2 * u64::from(p.u32()) + 1;
        let half = 1u64 << (node.trailing_ones() - 1);
        let mid = u64::from(p.u32()) + 1;
        let (lo, hi) = (mid - half, mid + half - 1);
        if !(lo..=hi).contains(&me) {
            return false;
        }
        if me < mid {
            any_in(mid, hi)
        } else {
            any_in(lo, mid - 1)
        }
    })
}

/// The server could not be reached, or failed on its side (5xx): worth retrying.
fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<ClientError>() {
        Some(ClientError::Transport { .. }) => true,
        Some(ClientError::Api { status, .. }) => *status >= 500,
        _ => false,
    })
}

fn is_code(e: &anyhow::Error, code: &str) -> bool {
    e.downcast_ref::<ClientError>()
        .is_some_and(|c| c.code() == Some(code))
}

/// Each person's devices in a group.
type Roster = BTreeMap<UserName, BTreeSet<DeviceId>>;

fn roster(group: &MlsGroup) -> Roster {
    let mut r = Roster::new();
    for (_, c) in member_devices(group) {
        r.entry(c.user).or_default().insert(c.device_id);
    }
    r
}

fn device_list(devices: &BTreeSet<DeviceId>) -> String {
    devices
        .iter()
        .map(DeviceId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn count_devices(n: usize) -> String {
    if n == 1 {
        "1 device".into()
    } else {
        format!("{n} devices")
    }
}

/// What members are shown when people's devices in a conversation change: from no
/// roster (`before` = `None`: this device just joined or created it) one line per
/// person; otherwise one per device gained or lost (a person who joins or leaves with
/// all their devices gets one line). Each is `(person, device concerned, text)`.
fn roster_notices(before: Option<&Roster>, after: &Roster) -> Vec<(UserName, DeviceId, String)> {
    let mut out = Vec::new();
    let Some(before) = before else {
        for (user, devices) in after {
            if let Some(first) = devices.first() {
                out.push((
                    user.clone(),
                    first.clone(),
                    format!(
                        "{user}: {} in this conversation ({})",
                        count_devices(devices.len()),
                        device_list(devices)
                    ),
                ));
            }
        }
        return out;
    };
    let empty = BTreeSet::new();
    let users: BTreeSet<&UserName> = before.keys().chain(after.keys()).collect();
    for user in users {
        let was = before.get(user).unwrap_or(&empty);
        let now = after.get(user).unwrap_or(&empty);
        let gained: BTreeSet<DeviceId> = now.difference(was).cloned().collect();
        let lost: BTreeSet<DeviceId> = was.difference(now).cloned().collect();
        if was.is_empty() {
            if let Some(first) = gained.first() {
                out.push((
                    user.clone(),
                    first.clone(),
                    format!(
                        "{user} joined this conversation with {} ({})",
                        count_devices(gained.len()),
                        device_list(&gained)
                    ),
                ));
            }
            continue;
        }
        if now.is_empty() {
            if let Some(first) = lost.first() {
                out.push((
                    user.clone(),
                    first.clone(),
                    format!(
                        "{user} left this conversation (their {} {} left)",
                        count_devices(lost.len()),
                        device_list(&lost)
                    ),
                ));
            }
            continue;
        }
        for d in &gained {
            out.push((
                user.clone(),
                d.clone(),
                format!(
                    "{user} added a device ({d}) to this conversation: now {}",
                    count_devices(now.len())
                ),
            ));
        }
        for d in &lost {
            out.push((
                user.clone(),
                d.clone(),
                format!(
                    "{user}'s device {d} left this conversation: now {}",
                    count_devices(now.len())
                ),
            ));
        }
    }
    out
}

/// Stores the notices of a roster change in the conversation's history, inside the
/// transaction of the MLS change that caused it.
async fn record_roster_change(
    tx: &mut Tx<'_>,
    gid: &GroupId,
    before: Option<&Roster>,
    after: &Roster,
) -> Result<()> {
    let now = Timestamp::now();
    for (user, device, text) in roster_notices(before, after) {
        sqlx::query(
            "INSERT INTO messages (group_id, id, from_user, from_device, kind, text, file, sent_at, received_at, outgoing, status)
             VALUES (?, ?, ?, ?, 'notice', ?, NULL, ?, ?, 0, 'read')",
        )
        .bind(gid.as_str())
        .bind(format!("notice-{}", new_message_id()))
        .bind(user.as_str())
        .bind(device.as_str())
        .bind(text)
        .bind(now.unix())
        .bind(now.unix())
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

/// The device ids of a group's members.
fn member_devices(group: &MlsGroup) -> Vec<(LeafNodeIndex, MemberCertificate)> {
    group
        .members()
        .filter_map(|m| read_certificate(&m.credential).map(|c| (m.index, c)))
        .collect()
}

/// Writes `data` to a new file at `dest` (never over an existing one), synced to disk;
/// a partial file is removed.
fn write_new(dest: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Received files are for this person only: owner-readable, like the state dir.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    if let Err(e) = f.write_all(data).and_then(|()| f.sync_all()) {
        drop(f);
        std::fs::remove_file(dest).ok();
        return Err(anyhow::Error::new(e).context(format!("writing {}", dest.display())));
    }
    Ok(())
}

/// One device's messenger.
pub struct Messenger {
    identity: Identity,
    db: Db,
    net: Net,
    signer: SignatureKeyPair,
    certificate: SignedEnvelope,
    /// The server list as last stored in the database.
    remembered: std::sync::Mutex<Vec<url::Url>>,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("device", &self.identity.device_id)
            .finish_non_exhaustive()
    }
}

async fn setting(db: &Db, name: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
            .bind(name)
            .fetch_optional(db.pool())
            .await?,
    )
}

async fn put_setting(tx: &mut Tx<'_>, name: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(tx.conn())
    .await?;
    Ok(())
}

impl Messenger {
    /// Opens the messenger whose directory (written by the agent at enrollment) is
    /// `dir`: proves itself with the messenger key the device delegated (never the
    /// device key, which it cannot read), creates and certifies its MLS key on first
    /// use, uploads KeyPackages, and finishes what a crash interrupted.
    pub async fn open(dir: &Path) -> Result<Messenger> {
        let dir = MessengerDir::new(dir);
        let credential = dir.load_credential()?;
        let identity = credential.identity.clone();
        let db = Db::open(&dir.db_path())
            .await
            .with_context(|| format!("opening {}", dir.db_path().display()))?;
        let net = Net::new(&identity, credential.key, credential.delegation)?;
        // The organization's other addresses, as the last session grant listed them: a
        // messenger started while its enrollment server is down still finds the others.
        let remembered: Vec<url::Url> = match setting(&db, "servers").await? {
            Some(s) => serde_json::from_str(&s).context("the stored server list is corrupt")?,
            None => Vec::new(),
        };
        net.learn_servers(&remembered);
        let mut first_start = false;
        let (signer, certificate) = match (
            setting(&db, "mls_public_key").await?,
            setting(&db, "certificate").await?,
        ) {
            (Some(pk), Some(cert)) => {
                let tx = db.begin().await?;
                let pk = hex::decode(pk).context("stored MLS public key is corrupt")?;
                let signer =
                    SignatureKeyPair::read(tx.state(), &pk, CIPHERSUITE.signature_algorithm())
                        .ok_or_else(|| {
                            anyhow!("the MLS signature key is missing from the state")
                        })?;
                drop(tx);
                (signer, serde_json::from_str(&cert)?)
            }
            _ => {
                first_start = true;
                Self::certify(&db, &net, &identity).await?
            }
        };
        let m = Messenger {
            identity,
            db,
            net,
            signer,
            certificate,
            remembered: std::sync::Mutex::new(remembered),
        };
        m.recover_commits().await?;
        if first_start {
            // Others can add this device as soon as it started once; should this fail,
            // the next sync tops the stock up.
            if let Err(e) = m.top_up_key_packages(0, false, 1).await {
                tracing::warn!(error = %e, "could not upload KeyPackages yet");
            }
        }
        Ok(m)
    }

    /// First start: a new MLS key, certified by the organization.
    async fn certify(
        db: &Db,
        net: &Net,
        identity: &Identity,
    ) -> Result<(SignatureKeyPair, SignedEnvelope)> {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| anyhow!("creating the MLS key: {e:?}"))?;
        let public = signer.to_public_vec();
        let proof = signer
            .sign(&certificate_proof_message(&identity.device_id, &public))
            .map_err(|e| anyhow!("signing: {e:?}"))?;
        let issued: CertificateIssued = net
            .post(
                "/certificate",
                &CertificateRequest {
                    mls_key: B64(public.clone()),
                    proof: B64(proof),
                },
            )
            .await
            .context("asking the organization to certify this device's MLS key")?;
        let cert: MemberCertificate = issued
            .certificate
            .verify(MemberCertificate::KIND, &identity.organization_key)
            .context("the certificate the server returned is not signed by the organization")?;
        if cert.mls_key.0 != public || cert.device_id != identity.device_id {
            bail!("the certificate the server returned is for another key or device");
        }
        let mut tx = db.begin().await?;
        signer
            .store(tx.state())
            .map_err(|e| anyhow!("storing the MLS key: {e}"))?;
        put_setting(&mut tx, "mls_public_key", &hex::encode(&public)).await?;
        put_setting(
            &mut tx,
            "certificate",
            &serde_json::to_string(&issued.certificate)?,
        )
        .await?;
        tx.commit().await?;
        Ok((signer, issued.certificate))
    }

    /// Stores the organization's server list if a session grant changed it.
    async fn remember_servers(&self) -> Result<()> {
        let now = self.net.servers();
        let changed = {
            let held = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
            *held != now
        };
        if changed {
            let mut tx = self.db.begin().await?;
            put_setting(&mut tx, "servers", &serde_json::to_string(&now)?).await?;
            tx.commit().await?;
            *self.remembered.lock().unwrap_or_else(|p| p.into_inner()) = now;
        }
        Ok(())
    }

    /// The server address in use and every one known, in the order they are tried.
    pub fn servers(&self) -> (url::Url, Vec<url::Url>) {
        (self.net.server(), self.net.servers())
    }

    /// This device.
    pub fn device_id(&self) -> &DeviceId {
        &self.identity.device_id
    }

    /// This device's owner.
    pub fn user(&self) -> &UserName {
        &self.identity.user
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: credential_for(&self.certificate),
            signature_key: self.signer.to_public_vec().into(),
        }
    }

    /// Makes and uploads KeyPackages when the server's stock is below `watermark` (or
    /// there is no last-resort one).
    async fn top_up_key_packages(
        &self,
        remaining: u64,
        last_resort: bool,
        watermark: u64,
    ) -> Result<()> {
        if remaining >= watermark && last_resort {
            return Ok(());
        }
        let want = if remaining < watermark {
            KEY_PACKAGE_BATCH
        } else {
            0
        };
        let tx = self.db.begin().await?;
        let provider = Provider::new(tx.state());
        let mut kps = Vec::with_capacity(want);
        for _ in 0..want {
            let b = KeyPackage::builder()
                .build(CIPHERSUITE, &provider, &self.signer, self.credential())
                .map_err(|e| anyhow!("creating a KeyPackage: {e:?}"))?;
            kps.push(B64(b.key_package().tls_serialize_detached()?));
        }
        let lr = if last_resort {
            None
        } else {
            let b = KeyPackage::builder()
                .mark_as_last_resort()
                .leaf_node_capabilities(
                    Capabilities::builder()
                        .extensions(vec![ExtensionType::LastResort])
                        .build(),
                )
                .build(CIPHERSUITE, &provider, &self.signer, self.credential())
                .map_err(|e| anyhow!("creating the last-resort KeyPackage: {e:?}"))?;
            Some(B64(b.key_package().tls_serialize_detached()?))
        };
        // The private keys are stored before the public halves can be claimed.
        tx.commit().await?;
        let _: redoubt_proto::messaging::KeyPackageStock = self
            .net
            .post(
                "/key-packages",
                &UploadKeyPackages {
                    key_packages: kps,
                    last_resort: lr,
                },
            )
            .await
            .context("uploading KeyPackages")?;
        Ok(())
    }

    /// The organization's current revocation list.
    async fn revoked(&self) -> Result<BTreeSet<DeviceId>> {
        let env: SignedEnvelope = self.net.get("/revocations").await?;
        let list: RevocationList = env
            .verify(RevocationList::KIND, &self.identity.organization_key)
            .context("the revocation list is not signed by the organization")?;
        Ok(list.revoked.into_iter().collect())
    }

    /// Re-sends commits a crash left between "sent" and "merged".
    async fn recover_commits(&self) -> Result<()> {
        let rows = sqlx::query(
            "SELECT id, group_id, payload, extra FROM outbox WHERE kind = 'commit' ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await?;
        for r in rows {
            let id: i64 = r.try_get("id")?;
            let gid: GroupId = r.try_get::<String, _>("group_id")?.parse()?;
            // A row an older version wrote in another shape is discarded like a
            // refused commit (its pending commit is cleared).
            let outcome =
                match serde_json::from_str::<PostCommit>(&r.try_get::<String, _>("extra")?) {
                    Ok(post) => self.post_commit(&gid, &post).await,
                    Err(e) => Err(anyhow!("unreadable pending commit: {e}")),
                };
            self.finish_commit(id, &gid, outcome.map(|_| ())).await.ok();
        }
        Ok(())
    }

    async fn post_commit(&self, gid: &GroupId, post: &PostCommit) -> Result<GroupState> {
        Ok(self
            .net
            .post(&format!("/groups/{gid}/commit"), post)
            .await?)
    }

    /// Merges (accepted) or discards (refused) the pending commit of an outbox row.
    async fn finish_commit(
        &self,
        outbox_id: i64,
        gid: &GroupId,
        outcome: Result<()>,
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let provider = Provider::new(tx.state());
        if let Some(mut group) = MlsGroup::load(tx.state(), &mls_group_id(gid))? {
            match &outcome {
                Ok(()) => {
                    // The first commit of a group this device created (epoch 0, only
                    // this device) brings its members: shown as the initial roster.
                    let before = (group.epoch().as_u64() > 0).then(|| roster(&group));
                    group
                        .merge_pending_commit(&provider)
                        .map_err(|e| anyhow!("merging the commit: {e:?}"))?;
                    if group.is_active() {
                        record_roster_change(&mut tx, gid, before.as_ref(), &roster(&group))
                            .await?;
                    }
                }
                Err(_) => group
                    .clear_pending_commit(tx.state())
                    .map_err(|e| anyhow!("discarding the commit: {e:?}"))?,
            }
        }
        sqlx::query("DELETE FROM outbox WHERE id = ?")
            .bind(outbox_id)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        outcome
    }

    /// Stages a commit with `build`, sends it, and merges it once the server accepts;
    /// after losing the race for an epoch, catches up and tries again.
    async fn commit_with<F>(&self, gid: &GroupId, mut build: F) -> Result<bool>
    where
        F: FnMut(&mut MlsGroup, &Provider<'_>, &SignatureKeyPair) -> Result<Option<PostCommit>>,
    {
        for _ in 0..COMMIT_ATTEMPTS {
            Box::pin(self.sync_with(false)).await?;
            let mut tx = self.db.begin().await?;
            let provider = Provider::new(tx.state());
            let mut group = MlsGroup::load(tx.state(), &mls_group_id(gid))?
                .ok_or_else(|| anyhow!("no conversation {gid} on this device"))?;
            if !group.is_active() {
                bail!("this device is no longer a member of {gid}");
            }
            let Some(post) = build(&mut group, &provider, &self.signer)? else {
                return Ok(false);
            };
            let outbox_id: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (group_id, kind, client_id, epoch, payload, extra, created_at)
                 VALUES (?, 'commit', '', ?, ?, ?, ?) RETURNING id",
            )
            .bind(gid.as_str())
            .bind(group.epoch().as_u64() as i64)
            .bind(&post.commit.0)
            .bind(serde_json::to_string(&post)?)
            .bind(Timestamp::now().unix())
            .fetch_one(tx.conn())
            .await?;
            tx.commit().await?;
            testpoint::point("commit-before-post").await;
            match self.post_commit(gid, &post).await {
                Ok(_) => {
                    self.finish_commit(outbox_id, gid, Ok(())).await?;
                    return Ok(true);
                }
                Err(e) if is_code(&e, "epoch_conflict") => {
                    tracing::debug!(group = %gid, "commit lost the race; catching up");
                    let _ = self.finish_commit(outbox_id, gid, Err(e)).await;
                }
                Err(e) => {
                    return self
                        .finish_commit(outbox_id, gid, Err(e))
                        .await
                        .map(|_| false);
                }
            }
        }
        bail!("the conversation kept changing; the change was not made (try again)")
    }

    /// Creates a conversation with these people (all their devices, and this user's
    /// other devices); returns its id.
    pub async fn create(
        &self,
        name: &str,
        members: &[UserName],
        clearance: Option<ModeName>,
    ) -> Result<(GroupId, AddReport)> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            bail!("a conversation name must be 1-100 characters");
        }
        let mut raw = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut raw);
        let gid = GroupId::from_random(raw);
        let mut tx = self.db.begin().await?;
        let provider = Provider::new(tx.state());
        let group = MlsGroup::new_with_group_id(
            &provider,
            &self.signer,
            &create_config(),
            mls_group_id(&gid),
            self.credential(),
        )
        .map_err(|e| anyhow!("creating the MLS group: {e:?}"))?;
        // The server builds its public view of the group (no secrets) from these.
        let group_info = group
            .export_group_info(provider.crypto(), &self.signer, false)
            .map_err(|e| anyhow!("exporting the GroupInfo: {e:?}"))?;
        let ratchet_tree = group.export_ratchet_tree();
        sqlx::query(
            "INSERT INTO conversations (group_id, name, clearance, created_at, status) VALUES (?, ?, ?, ?, 'active')",
        )
        .bind(gid.as_str())
        .bind(name)
        .bind(clearance.as_ref().map(ModeName::as_str))
        .bind(Timestamp::now().unix())
        .execute(tx.conn())
        .await?;
        // Registered before the local transaction commits: should this device stop
        // in between, the server keeps a group nobody uses, and nothing local is lost.
        let _: GroupState = self
            .net
            .post(
                "/groups",
                &CreateGroup {
                    group_id: gid.clone(),
                    clearance: clearance.clone(),
                    group_info: B64(group_info.tls_serialize_detached()?),
                    ratchet_tree: B64(ratchet_tree.tls_serialize_detached()?),
                },
            )
            .await
            .context("registering the conversation")?;
        tx.commit().await?;
        let mut users: Vec<UserName> = members.to_vec();
        users.push(self.identity.user.clone());
        users.sort();
        users.dedup();
        let report = self.add(&gid, &users).await?;
        Ok((gid, report))
    }

    /// Adds every enrolled device of these people.
    pub async fn add(&self, gid: &GroupId, users: &[UserName]) -> Result<AddReport> {
        // The server refuses a claim that names a person twice.
        let mut users = users.to_vec();
        users.sort();
        users.dedup();
        let claimed: ClaimedKeyPackages = self
            .net
            .post("/key-packages/claim", &ClaimKeyPackages { users })
            .await
            .context("fetching the new members' KeyPackages")?;
        let revoked = self.revoked().await?;
        let mut report = AddReport::default();
        for m in &claimed.missing {
            report.skipped.push(m.reason.clone());
        }
        let crypto = openmls_rust_crypto::RustCrypto::default();
        let mut kps: Vec<(DeviceId, KeyPackage)> = Vec::new();
        for c in claimed.key_packages {
            let kp = KeyPackageIn::tls_deserialize_exact(&c.key_package.0)
                .map_err(|e| anyhow!("{e:?}"))
                .and_then(|k| {
                    k.validate(&crypto, ProtocolVersion::Mls10)
                        .map_err(|e| anyhow!("{e:?}"))
                });
            let kp = match kp {
                Ok(k) => k,
                Err(e) => {
                    report
                        .skipped
                        .push(format!("{}: invalid KeyPackage ({e})", c.device_id));
                    continue;
                }
            };
            match verify_member(
                kp.leaf_node().credential(),
                kp.leaf_node().signature_key().as_slice(),
                &self.identity.organization_key,
                &revoked,
            ) {
                Ok(cert) if cert.device_id == c.device_id && cert.user == c.user => {
                    kps.push((c.device_id, kp))
                }
                Ok(_) => report.skipped.push(format!(
                    "{}: its KeyPackage is certified for another device",
                    c.device_id
                )),
                Err(e) => report.skipped.push(format!("{}: {e}", c.device_id)),
            }
        }
        let name_and_clearance = self.conversation_meta(gid).await?;
        let mut added = Vec::new();
        let done = self
            .commit_with(gid, |group, provider, signer| {
                let present: BTreeSet<DeviceId> = member_devices(group)
                    .into_iter()
                    .map(|(_, c)| c.device_id)
                    .collect();
                let new: Vec<&(DeviceId, KeyPackage)> =
                    kps.iter().filter(|(d, _)| !present.contains(d)).collect();
                if new.is_empty() {
                    return Ok(None);
                }
                let packages: Vec<KeyPackage> = new.iter().map(|(_, k)| k.clone()).collect();
                let (commit, welcome, group_info) = group
                    .add_members(provider, signer, &packages)
                    .map_err(|e| anyhow!("adding members: {e:?}"))?;
                added = new.iter().map(|(d, _)| d.clone()).collect();
                let group_info = encode_group_info(group_info)?;
                Ok(Some(PostCommit {
                    commit: B64(commit.tls_serialize_detached()?),
                    welcome: Some(B64(welcome.tls_serialize_detached()?)),
                    group_info,
                }))
            })
            .await?;
        if done {
            report.added = added;
            // New members learn the name and clearance from inside the group.
            let (name, clearance) = name_and_clearance;
            self.send_body(gid, Body::Info { name, clearance }, false)
                .await?;
        }
        Ok(report)
    }

    async fn conversation_meta(&self, gid: &GroupId) -> Result<(String, Option<ModeName>)> {
        let row = sqlx::query("SELECT name, clearance FROM conversations WHERE group_id = ?")
            .bind(gid.as_str())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| anyhow!("no conversation {gid} on this device"))?;
        let clearance = row
            .try_get::<Option<String>, _>("clearance")?
            .map(|c| c.parse())
            .transpose()?;
        Ok((row.try_get("name")?, clearance))
    }

    /// Removes every device of `user` (or just `device`) from a conversation.
    pub async fn remove(
        &self,
        gid: &GroupId,
        user: Option<&UserName>,
        device: Option<&DeviceId>,
    ) -> Result<Vec<DeviceId>> {
        let mut removed = Vec::new();
        self.commit_with(gid, |group, provider, signer| {
            let targets: Vec<(LeafNodeIndex, DeviceId)> = member_devices(group)
                .into_iter()
                .filter(|(_, c)| {
                    user.is_some_and(|u| &c.user == u) || device.is_some_and(|d| &c.device_id == d)
                })
                .map(|(i, c)| (i, c.device_id))
                .collect();
            if targets.is_empty() {
                return Ok(None);
            }
            let idx: Vec<LeafNodeIndex> = targets.iter().map(|(i, _)| *i).collect();
            let (commit, _welcome, group_info) = group
                .remove_members(provider, signer, &idx)
                .map_err(|e| anyhow!("removing members: {e:?}"))?;
            let gone: BTreeSet<DeviceId> = targets.iter().map(|(_, d)| d.clone()).collect();
            removed = gone.into_iter().collect();
            let group_info = encode_group_info(group_info)?;
            Ok(Some(PostCommit {
                commit: B64(commit.tls_serialize_detached()?),
                welcome: None,
                group_info,
            }))
        })
        .await?;
        Ok(removed)
    }

    /// Sends a text message; returns its id.
    pub async fn send_text(&self, gid: &GroupId, text: &str) -> Result<String> {
        if text.is_empty() {
            bail!("the message is empty");
        }
        self.send_body(
            gid,
            Body::Text {
                text: text.to_owned(),
            },
            true,
        )
        .await
    }

    /// Encrypts `text` for the conversation at this device's current epoch and returns
    /// what `POST /groups/{id}/messages` takes, keeping it neither in the outbox nor in
    /// the message list: posting it (and retrying) is the caller's. The relay benchmark
    /// prepares its ciphertext this way, so that its timed window measures the server.
    pub async fn encrypt_text(&self, gid: &GroupId, text: &str) -> Result<PostMessage> {
        let tx = self.db.begin().await?;
        let (_, post) = self.seal(
            &tx,
            gid,
            Body::Text {
                text: text.to_owned(),
            },
        )?;
        tx.commit().await?;
        Ok(post)
    }

    /// Encrypts `body` as a new message of the conversation inside `tx` (whose commit
    /// keeps the advanced MLS state); returns the message and what the server takes.
    fn seal(&self, tx: &Tx<'_>, gid: &GroupId, body: Body) -> Result<(AppMessage, PostMessage)> {
        let msg = AppMessage {
            v: 1,
            id: new_message_id(),
            sent_at: Timestamp::now(),
            body,
        };
        let plaintext = serde_json::to_vec(&msg)?;
        let provider = Provider::new(tx.state());
        let mut group = MlsGroup::load(tx.state(), &mls_group_id(gid))?
            .ok_or_else(|| anyhow!("no conversation {gid} on this device"))?;
        if !group.is_active() {
            bail!("this device is no longer a member of {gid}");
        }
        let out = group
            .create_message(&provider, &self.signer, &plaintext)
            .map_err(|e| anyhow!("encrypting: {e:?}"))?;
        let post = PostMessage {
            epoch: group.epoch().as_u64(),
            message: B64(out.tls_serialize_detached()?),
            client_id: msg.id.clone(),
        };
        Ok((msg, post))
    }

    /// Encrypts the file at `path` on this device with a fresh key, uploads the
    /// ciphertext, and sends its reference (with the key) inside MLS; returns the
    /// message id.
    pub async fn send_file(&self, gid: &GroupId, path: &Path) -> Result<String> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| anyhow!("{} has no usable file name", path.display()))?
            .to_owned();
        let limit = self.net.limits().await?.max_file_bytes;
        let size = tokio::fs::metadata(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if size + files::TAG_BYTES > limit {
            bail!(
                "{} is {size} bytes; the server takes files up to {} bytes",
                path.display(),
                limit.saturating_sub(files::TAG_BYTES)
            );
        }
        let data = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        // Refuse before uploading when this device cannot post to the conversation.
        let conv = self.conversation(gid).await?;
        if conv.status != "active" {
            bail!(
                "this device is no longer a member of {gid} ({})",
                conv.status
            );
        }
        let sealed = files::seal(&data)?;
        let stored: BlobStored = self
            .net
            .post_bytes(&format!("/groups/{gid}/blobs"), sealed.ciphertext)
            .await
            .context("uploading the encrypted file")?;
        let body = Body::File(FileRef {
            blob_id: stored.blob_id,
            name,
            size: data.len() as u64,
            key: B64(sealed.key.to_vec()),
            nonce: B64(sealed.nonce.to_vec()),
            sha256: sealed.sha256,
        });
        self.send_body(gid, body, true).await
    }

    /// Downloads the file of message `message_id`, decrypts it, checks it against the
    /// sender's hash, and writes it to `dest` (which must not exist yet).
    pub async fn save_file(
        &self,
        gid: &GroupId,
        message_id: &str,
        dest: &Path,
    ) -> Result<FileView> {
        let file: Option<Option<String>> =
            sqlx::query_scalar("SELECT file FROM messages WHERE group_id = ? AND id = ?")
                .bind(gid.as_str())
                .bind(message_id)
                .fetch_optional(self.db.pool())
                .await?;
        let file: FileRef = match file {
            None => bail!("no message {message_id} in conversation {gid}"),
            Some(None) => bail!("message {message_id} is not a file"),
            Some(Some(f)) => serde_json::from_str(&f)?,
        };
        let ciphertext = self
            .net
            .get_bytes(&format!("/groups/{gid}/blobs/{}", file.blob_id))
            .await
            .with_context(|| format!("downloading {}", file.name))?;
        let plaintext = files::open(
            &ciphertext,
            &file.key.0,
            &file.nonce.0,
            &file.sha256,
            file.size,
        )?;
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || write_new(&dest, &plaintext)).await??;
        Ok(FileView {
            name: file.name,
            size: file.size,
        })
    }

    /// Encrypts `body` for the conversation (after catching up with it), keeps it in
    /// the outbox, and delivers it; returns the message id.
    pub async fn send_body(&self, gid: &GroupId, body: Body, catch_up: bool) -> Result<String> {
        if catch_up {
            // Catching up is best effort: with the server unreachable the message is
            // still encrypted (at the last epoch this device knows) and kept in the
            // outbox, so nothing the person wrote is lost.
            match Box::pin(self.sync()).await {
                Ok(_) => {}
                Err(e) if is_unreachable(&e) => {
                    tracing::info!(group = %gid, error = %e, "server unreachable; sending later");
                }
                // Anything else (a revocation list that does not verify, a refused
                // session) stops the send: fail closed.
                Err(e) => return Err(e),
            }
        }
        let mut tx = self.db.begin().await?;
        let (msg, post) = self.seal(&tx, gid, body)?;
        let id = msg.id.clone();
        sqlx::query(
            "INSERT INTO outbox (group_id, kind, client_id, epoch, payload, created_at) VALUES (?, 'application', ?, ?, ?, ?)",
        )
        .bind(gid.as_str())
        .bind(&id)
        .bind(post.epoch as i64)
        .bind(post.message.0)
        .bind(Timestamp::now().unix())
        .execute(tx.conn())
        .await?;
        let (kind, text, file) = match &msg.body {
            Body::Text { text } => ("text", Some(text.clone()), None),
            Body::File(f) => (
                "file",
                Some(f.name.clone()),
                Some(serde_json::to_string(f)?),
            ),
            _ => ("control", None, None),
        };
        if kind != "control" {
            sqlx::query(
                "INSERT INTO messages (group_id, id, from_user, from_device, kind, text, file, sent_at, received_at, outgoing, status)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'pending')",
            )
            .bind(gid.as_str())
            .bind(&id)
            .bind(self.identity.user.as_str())
            .bind(self.identity.device_id.as_str())
            .bind(kind)
            .bind(text)
            .bind(file)
            .bind(msg.sent_at.unix())
            .bind(Timestamp::now().unix())
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        if let Err(e) = self.flush_outbox().await {
            return Err(Queued {
                id,
                reason: format!("{e:#}"),
            }
            .into());
        }
        Ok(id)
    }

    /// Sends what the outbox holds, in order.
    pub async fn flush_outbox(&self) -> Result<()> {
        let rows = sqlx::query(
            "SELECT id, group_id, client_id, epoch, payload FROM outbox WHERE kind = 'application' ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await?;
        for r in rows {
            let id: i64 = r.try_get("id")?;
            let gid: String = r.try_get("group_id")?;
            let client_id: String = r.try_get("client_id")?;
            let post = PostMessage {
                epoch: r.try_get::<i64, _>("epoch")? as u64,
                message: B64(r.try_get("payload")?),
                client_id: client_id.clone(),
            };
            let current = {
                let group: GroupId = gid.parse()?;
                let tx = self.db.begin().await?;
                MlsGroup::load(tx.state(), &mls_group_id(&group))?.map(|g| g.epoch().as_u64())
            };
            let status = if current.is_some_and(|c| too_old_to_send(post.epoch, c)) {
                // The others keep keys for PAST_EPOCHS epochs only: posted now it could
                // not be read. Marked failed, so the person sees it and can send again.
                tracing::warn!(
                    group = %gid,
                    message = %client_id,
                    epoch = post.epoch,
                    current = current.unwrap_or_default(),
                    "a queued message is too many epochs old to be read; marked failed"
                );
                "failed"
            } else {
                let sent: Result<redoubt_proto::messaging::MessageAccepted, ClientError> = self
                    .net
                    .post(&format!("/groups/{gid}/messages"), &post)
                    .await;
                match sent {
                    Ok(_) => "sent",
                    Err(ClientError::Api { status, .. })
                        if (400..500).contains(&status) && status != 429 =>
                    {
                        "failed"
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            testpoint::point("message-after-post").await;
            let mut tx = self.db.begin().await?;
            sqlx::query("DELETE FROM outbox WHERE id = ?")
                .bind(id)
                .execute(tx.conn())
                .await?;
            sqlx::query(
                "UPDATE messages SET status = ? WHERE group_id = ? AND id = ? AND outgoing = 1",
            )
            .bind(status)
            .bind(&gid)
            .bind(&client_id)
            .execute(tx.conn())
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Fetches, applies and acknowledges everything the server holds for this device;
    /// sends receipts; performs removals the organization asked for.
    pub async fn sync(&self) -> Result<SyncReport> {
        self.sync_with(true).await
    }

    /// [`Messenger::sync`]; `removals` is false when catching up on the way to a commit
    /// (a removal is itself a commit, so it must not start another from there).
    async fn sync_with(&self, removals: bool) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let report_servers = self.remember_servers().await;
        if let Err(e) = report_servers {
            tracing::warn!(error = %format!("{e:#}"), "could not store the server list");
        }
        let mut delivered: BTreeMap<GroupId, Vec<String>> = BTreeMap::new();
        loop {
            let batch: QueueBatch = self.net.get("/queue?limit=200").await?;
            report.expired_total = batch.expired_total;
            self.record_holds(&batch).await?;
            let stock = batch.key_packages;
            if stock.remaining < stock.low_watermark || !stock.last_resort {
                self.top_up_key_packages(stock.remaining, stock.last_resort, stock.low_watermark)
                    .await?;
            }
            if batch.items.is_empty() {
                break;
            }
            let revoked = self.revoked().await?;
            let mut acks = Vec::with_capacity(batch.items.len());
            for item in &batch.items {
                match self.apply(item, &revoked, &mut delivered).await {
                    Ok(()) => report.processed += 1,
                    Err(e) => {
                        tracing::warn!(seq = item.seq, group = %item.group_id, error = %e, "item refused");
                        report
                            .refused
                            .push(format!("{} #{}: {e:#}", item.group_id, item.seq));
                        self.mark_processed(item.seq).await?;
                    }
                }
                acks.push(item.seq);
            }
            testpoint::point("sync-before-ack").await;
            let _: redoubt_proto::messaging::AckResult =
                self.net.post("/queue/ack", &Ack { seqs: acks }).await?;
            if !batch.more {
                break;
            }
        }
        if removals {
            Box::pin(self.perform_removals()).await?;
            report.self_updates = Box::pin(self.perform_self_updates()).await?;
        }
        for (gid, ids) in delivered {
            let size = self.member_count(&gid).await.unwrap_or(usize::MAX);
            if size <= RECEIPTS_UP_TO {
                let body = Body::Receipt {
                    kind: ReceiptKind::Delivered,
                    ids,
                };
                if let Err(e) = Box::pin(self.send_body(&gid, body, false)).await {
                    tracing::debug!(group = %gid, error = %e, "delivery receipt not sent");
                }
            }
        }
        self.flush_outbox().await?;
        Ok(report)
    }

    async fn member_count(&self, gid: &GroupId) -> Result<usize> {
        let tx = self.db.begin().await?;
        let n = MlsGroup::load(tx.state(), &mls_group_id(gid))?
            .map(|g| g.members().count())
            .unwrap_or(0);
        Ok(n)
    }

    async fn record_holds(&self, batch: &QueueBatch) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE conversations SET held_count = 0, held_reason = NULL")
            .execute(tx.conn())
            .await?;
        // A conversation this device was invited to but whose Welcome is held is
        // listed too (status `held`), so the person sees that something waits, and why.
        sqlx::query("DELETE FROM conversations WHERE status = 'held'")
            .execute(tx.conn())
            .await?;
        for h in &batch.held {
            sqlx::query(
                "INSERT INTO conversations (group_id, name, clearance, created_at, status, held_count, held_reason)
                 VALUES (?, '(invitation held)', ?, ?, 'held', ?, ?)
                 ON CONFLICT (group_id) DO UPDATE SET held_count = excluded.held_count, held_reason = excluded.held_reason",
            )
            .bind(h.group_id.as_str())
            .bind(h.clearance.as_str())
            .bind(Timestamp::now().unix())
            .bind(h.count as i64)
            .bind(&h.reason)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mark_processed(&self, seq: u64) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT OR IGNORE INTO processed (seq, at) VALUES (?, ?)")
            .bind(seq as i64)
            .bind(Timestamp::now().unix())
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies one queue item in one transaction (MLS state, rows, processed mark).
    async fn apply(
        &self,
        item: &QueueItem,
        revoked: &BTreeSet<DeviceId>,
        delivered: &mut BTreeMap<GroupId, Vec<String>>,
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let seen: Option<i64> = sqlx::query_scalar("SELECT 1 FROM processed WHERE seq = ?")
            .bind(item.seq as i64)
            .fetch_optional(tx.conn())
            .await?;
        if seen.is_some() {
            return Ok(());
        }
        match item.kind {
            ItemKind::Welcome => self.apply_welcome(&mut tx, item, revoked).await?,
            ItemKind::Commit | ItemKind::Application => {
                if let Some(id) = self.apply_group_message(&mut tx, item, revoked).await? {
                    delivered.entry(item.group_id.clone()).or_default().push(id);
                }
            }
            ItemKind::RemovalRequest => self.apply_removal_request(&mut tx, item).await?,
        }
        sqlx::query("INSERT OR IGNORE INTO processed (seq, at) VALUES (?, ?)")
            .bind(item.seq as i64)
            .bind(Timestamp::now().unix())
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        if item.kind == ItemKind::Commit {
            self.retry_buffered(&item.group_id, revoked, delivered)
                .await?;
        }
        Ok(())
    }

    async fn apply_welcome(
        &self,
        tx: &mut Tx<'_>,
        item: &QueueItem,
        revoked: &BTreeSet<DeviceId>,
    ) -> Result<()> {
        let welcome = match MlsMessageIn::tls_deserialize_exact(&item.payload.0)
            .map_err(|e| anyhow!("unreadable Welcome: {e:?}"))?
            .extract()
        {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => bail!("the item is not a Welcome"),
        };
        let provider = Provider::new(tx.state());
        let staged = StagedWelcome::new_from_welcome(&provider, &join_config(), welcome, None)
            .map_err(|e| anyhow!("cannot join: {e:?}"))?;
        // Every member must hold an organization certificate for its key. A member
        // revoked since it was added is tolerated here, and removed right after joining
        // (the organization asks the members to remove it in any case).
        let mut to_remove = Vec::new();
        for m in staged.members() {
            match verify_member(
                &m.credential,
                &m.signature_key,
                &self.identity.organization_key,
                revoked,
            ) {
                Ok(_) => {}
                Err(MemberRefused::Revoked(device)) => to_remove.push(device),
                Err(e) => bail!("Welcome refused: {e}"),
            }
        }
        let group = staged
            .into_group(&provider)
            .map_err(|e| anyhow!("cannot join: {e:?}"))?;
        let gid: GroupId = String::from_utf8(group.group_id().as_slice().to_vec())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("the Welcome is for a group id Redoubt does not use"))?;
        if gid != item.group_id {
            bail!("the Welcome is for another conversation than the server says");
        }
        sqlx::query(
            "INSERT INTO conversations (group_id, name, clearance, created_at, status) VALUES (?, '(unnamed)', NULL, ?, 'active')
             ON CONFLICT (group_id) DO UPDATE SET status = 'active',
               name = CASE WHEN conversations.status = 'held' THEN excluded.name ELSE conversations.name END",
        )
        .bind(gid.as_str())
        .bind(Timestamp::now().unix())
        .execute(tx.conn())
        .await?;
        for device in to_remove {
            sqlx::query(
                "INSERT INTO outbox (group_id, kind, client_id, epoch, payload, extra, created_at) VALUES (?, 'remove', ?, 0, x'', 'revoked', ?)",
            )
            .bind(gid.as_str())
            .bind(device.as_str())
            .bind(Timestamp::now().unix())
            .execute(tx.conn())
            .await?;
        }
        record_roster_change(tx, &gid, None, &roster(&group)).await?;
        // This member's turn to fill its part of the tree (kept in the outbox, so that
        // a restart does not lose it; `extra` holds when, in Unix milliseconds).
        let turn = self_update_turn_ms(group.own_leaf_index().u32());
        sqlx::query(
            "INSERT INTO outbox (group_id, kind, client_id, epoch, payload, extra, created_at) VALUES (?, 'self-update', '', 0, x'', ?, ?)",
        )
        .bind(gid.as_str())
        .bind((unix_millis() + turn).to_string())
        .bind(Timestamp::now().unix())
        .execute(tx.conn())
        .await?;
        tracing::info!(group = %gid, "joined a conversation");
        Ok(())
    }

    /// A commit or application message; returns the id of a received text/file message.
    async fn apply_group_message(
        &self,
        tx: &mut Tx<'_>,
        item: &QueueItem,
        revoked: &BTreeSet<DeviceId>,
    ) -> Result<Option<String>> {
        let msg = MlsMessageIn::tls_deserialize_exact(&item.payload.0)
            .map_err(|e| anyhow!("unreadable MLS message: {e:?}"))?;
        let protocol = msg
            .try_into_protocol_message()
            .map_err(|e| anyhow!("not a group message: {e:?}"))?;
        if protocol.group_id().as_slice() != item.group_id.as_str().as_bytes() {
            bail!("the message is for another conversation than the server says");
        }
        let provider = Provider::new(tx.state());
        let Some(mut group) = MlsGroup::load(tx.state(), &mls_group_id(&item.group_id))? else {
            bail!("no conversation {} on this device", item.group_id);
        };
        let epoch = protocol.epoch().as_u64();
        let current = group.epoch().as_u64();
        if epoch > current {
            sqlx::query(
                "INSERT OR IGNORE INTO buffered (seq, group_id, kind, epoch, sender, payload, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(item.seq as i64)
            .bind(item.group_id.as_str())
            .bind(item.kind.as_str())
            .bind(epoch as i64)
            .bind(item.sender.as_ref().map(DeviceId::as_str))
            .bind(&item.payload.0)
            .bind(item.enqueued_at.unix())
            .execute(tx.conn())
            .await?;
            return Ok(None);
        }
        if item.kind == ItemKind::Commit && epoch < current {
            bail!("a commit for epoch {epoch}, already past (at {current})");
        }
        if item.kind == ItemKind::Commit && group.pending_commit().is_some() {
            // The server sequenced another member's commit first: ours lost.
            group
                .clear_pending_commit(tx.state())
                .map_err(|e| anyhow!("{e:?}"))?;
        }
        let processed = group
            .process_message(&provider, protocol)
            .map_err(|e| anyhow!("cannot decrypt or verify: {e:?}"))?;
        let sender_cert = read_certificate(processed.credential());
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let org = &self.identity.organization_key;
                let of = |leaf: &LeafNode| {
                    (
                        leaf.credential().clone(),
                        leaf.signature_key().as_slice().to_vec(),
                    )
                };
                let mut leaves: Vec<(Credential, Vec<u8>)> = staged
                    .add_proposals()
                    .map(|a| of(a.add_proposal().key_package().leaf_node()))
                    .collect();
                leaves.extend(
                    staged
                        .update_proposals()
                        .map(|u| of(u.update_proposal().leaf_node())),
                );
                leaves.extend(staged.update_path_leaf_node().map(of));
                for (credential, key) in &leaves {
                    verify_member(credential, key, org, revoked)
                        .map_err(|e| anyhow!("commit refused: {e}"))?;
                }
                let self_removed = staged.self_removed();
                let before = roster(&group);
                group
                    .merge_staged_commit(&provider, *staged)
                    .map_err(|e| anyhow!("merging: {e:?}"))?;
                if !self_removed {
                    record_roster_change(tx, &item.group_id, Some(&before), &roster(&group))
                        .await?;
                }
                if self_removed {
                    sqlx::query("UPDATE conversations SET status = 'removed' WHERE group_id = ?")
                        .bind(item.group_id.as_str())
                        .execute(tx.conn())
                        .await?;
                }
                Ok(None)
            }
            ProcessedMessageContent::ApplicationMessage(app) => {
                let cert = sender_cert.ok_or_else(|| anyhow!("the sender has no certificate"))?;
                let msg: AppMessage = serde_json::from_slice(&app.into_bytes())
                    .map_err(|e| anyhow!("unreadable message content: {e}"))?;
                self.store_incoming(tx, &item.group_id, &cert, msg).await
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                group
                    .store_pending_proposal(tx.state(), *p)
                    .map_err(|e| anyhow!("{e:?}"))?;
                Ok(None)
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                bail!("external joins are not used by Redoubt")
            }
            ProcessedMessageContent::OwnPendingCommit
            | ProcessedMessageContent::OwnPrivateMessage => {
                bail!("the server returned this device's own message")
            }
        }
    }

    async fn store_incoming(
        &self,
        tx: &mut Tx<'_>,
        gid: &GroupId,
        cert: &MemberCertificate,
        msg: AppMessage,
    ) -> Result<Option<String>> {
        let (kind, text, file) = match msg.body {
            Body::Text { text } => ("text", text, None),
            Body::File(f) => ("file", f.name.clone(), Some(serde_json::to_string(&f)?)),
            Body::Receipt { kind, ids } => {
                for id in ids {
                    sqlx::query(
                        "INSERT OR IGNORE INTO receipts (group_id, message_id, device_id, user_name, kind, at) VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(gid.as_str())
                    .bind(&id)
                    .bind(cert.device_id.as_str())
                    .bind(cert.user.as_str())
                    .bind(kind.as_str())
                    .bind(msg.sent_at.unix())
                    .execute(tx.conn())
                    .await?;
                }
                return Ok(None);
            }
            Body::Info { name, clearance } => {
                let name: String = name.chars().take(100).collect();
                sqlx::query("UPDATE conversations SET name = ?, clearance = ? WHERE group_id = ?")
                    .bind(name)
                    .bind(clearance.as_ref().map(ModeName::as_str))
                    .bind(gid.as_str())
                    .execute(tx.conn())
                    .await?;
                return Ok(None);
            }
        };
        let r = sqlx::query(
            "INSERT OR IGNORE INTO messages (group_id, id, from_user, from_device, kind, text, file, sent_at, received_at, outgoing, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 'received')",
        )
        .bind(gid.as_str())
        .bind(&msg.id)
        .bind(cert.user.as_str())
        .bind(cert.device_id.as_str())
        .bind(kind)
        .bind(text)
        .bind(file)
        .bind(msg.sent_at.unix())
        .bind(Timestamp::now().unix())
        .execute(tx.conn())
        .await?;
        Ok((r.rows_affected() > 0).then_some(msg.id))
    }

    async fn retry_buffered(
        &self,
        gid: &GroupId,
        revoked: &BTreeSet<DeviceId>,
        delivered: &mut BTreeMap<GroupId, Vec<String>>,
    ) -> Result<()> {
        let rows = sqlx::query("SELECT seq, kind, epoch, sender, payload, enqueued_at FROM buffered WHERE group_id = ? ORDER BY seq")
            .bind(gid.as_str())
            .fetch_all(self.db.pool())
            .await?;
        for r in rows {
            let item = QueueItem {
                seq: r.try_get::<i64, _>("seq")? as u64,
                group_id: gid.clone(),
                kind: r
                    .try_get::<String, _>("kind")?
                    .parse()
                    .map_err(|e: String| anyhow!(e))?,
                epoch: r.try_get::<i64, _>("epoch")? as u64,
                sender: r
                    .try_get::<Option<String>, _>("sender")?
                    .map(|s| s.parse())
                    .transpose()?,
                payload: B64(r.try_get("payload")?),
                enqueued_at: Timestamp(r.try_get("enqueued_at")?),
            };
            let mut tx = self.db.begin().await?;
            let current =
                MlsGroup::load(tx.state(), &mls_group_id(gid))?.map(|g| g.epoch().as_u64());
            if current.is_some_and(|c| item.epoch > c) {
                continue;
            }
            sqlx::query("DELETE FROM buffered WHERE seq = ?")
                .bind(item.seq as i64)
                .execute(tx.conn())
                .await?;
            let result = self.apply_group_message(&mut tx, &item, revoked).await;
            match result {
                Ok(id) => {
                    tx.commit().await?;
                    if let Some(id) = id {
                        delivered.entry(gid.clone()).or_default().push(id);
                    }
                }
                Err(e) => {
                    drop(tx);
                    tracing::warn!(seq = item.seq, error = %e, "buffered item refused");
                    let mut tx = self.db.begin().await?;
                    sqlx::query("DELETE FROM buffered WHERE seq = ?")
                        .bind(item.seq as i64)
                        .execute(tx.conn())
                        .await?;
                    tx.commit().await?;
                }
            }
        }
        Ok(())
    }

    async fn apply_removal_request(&self, tx: &mut Tx<'_>, item: &QueueItem) -> Result<()> {
        let env: SignedEnvelope = serde_json::from_slice(&item.payload.0)
            .map_err(|_| anyhow!("unreadable removal request"))?;
        let req: RemovalRequest = env
            .verify(RemovalRequest::KIND, &self.identity.organization_key)
            .context("removal request not signed by the organization")?;
        if req.group_id != item.group_id {
            bail!("the removal request is for another conversation than the server says");
        }
        sqlx::query(
            "INSERT INTO outbox (group_id, kind, client_id, epoch, payload, extra, created_at) VALUES (?, 'remove', ?, 0, x'', ?, ?)",
        )
        .bind(req.group_id.as_str())
        .bind(req.device_id.as_str())
        .bind(&req.reason)
        .bind(Timestamp::now().unix())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Commits the removals the organization asked for (the first member to do so
    /// wins; the others find the device already gone).
    /// The self-updates whose turn has come (see [`Messenger::self_update`]); returns
    /// the size of each commit made.
    async fn perform_self_updates(&self) -> Result<Vec<usize>> {
        let rows = sqlx::query(
            "SELECT id, group_id, extra FROM outbox WHERE kind = 'self-update' ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await?;
        let now = unix_millis();
        let mut sizes = Vec::new();
        for r in rows {
            let due: i64 = r
                .try_get::<Option<String>, _>("extra")?
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            if due > now {
                continue;
            }
            let id: i64 = r.try_get("id")?;
            let gid: GroupId = r.try_get::<String, _>("group_id")?.parse()?;
            match Box::pin(self.self_update(&gid)).await {
                Ok(size) => sizes.extend(size),
                // Kept for the next sync.
                Err(e) if is_unreachable(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(group = %gid, error = %e, "self-update not committed")
                }
            }
            sqlx::query("DELETE FROM outbox WHERE id = ?")
                .bind(id)
                .execute(self.db.pool())
                .await?;
        }
        Ok(sizes)
    }

    /// Fills this member's part of the ratchet tree when it is blank: a commit with an
    /// update path from this member's leaf. A member added with many others joins a
    /// tree whose inner nodes are blank, and every commit then encrypts its path to
    /// each member under a blank node (a commit in a group of 1000 grows towards 1000
    /// encryptions); once the members have updated, a commit encrypts to about
    /// log₂(members) nodes. Members that joined together take turns
    /// ([`SELF_UPDATE_STEP_MS`]), and a member whose path a sibling already filled does
    /// nothing. Returns the size of the commit made, if one was needed.
    pub async fn self_update(&self, gid: &GroupId) -> Result<Option<usize>> {
        let mut size = None;
        let done = self
            .commit_with(gid, |group, provider, signer| {
                if !path_has_blank(group) {
                    return Ok(None);
                }
                let bundle = group
                    .self_update(provider, signer, LeafNodeParameters::default())
                    .map_err(|e| anyhow!("updating this member's path: {e:?}"))?;
                let commit = bundle.commit().tls_serialize_detached()?;
                size = Some(commit.len());
                Ok(Some(PostCommit {
                    commit: B64(commit),
                    welcome: None,
                    group_info: encode_group_info(bundle.group_info().cloned())?,
                }))
            })
            .await?;
        Ok(size.filter(|_| done))
    }

    async fn perform_removals(&self) -> Result<()> {
        let rows = sqlx::query(
            "SELECT id, group_id, client_id FROM outbox WHERE kind = 'remove' ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await?;
        for r in rows {
            let id: i64 = r.try_get("id")?;
            let gid: GroupId = r.try_get::<String, _>("group_id")?.parse()?;
            let device: DeviceId = r.try_get::<String, _>("client_id")?.parse()?;
            match Box::pin(self.remove(&gid, None, Some(&device))).await {
                Ok(_) => {}
                // Kept for the next sync: the device must not stay because of a
                // network failure.
                Err(e) if is_unreachable(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(group = %gid, device = %device, error = %e, "removal not committed")
                }
            }
            let mut tx = self.db.begin().await?;
            sqlx::query("DELETE FROM outbox WHERE id = ?")
                .bind(id)
                .execute(tx.conn())
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Conversations on this device.
    pub async fn conversations(&self) -> Result<Vec<ConversationView>> {
        let rows = sqlx::query("SELECT group_id, name, clearance, status, held_count, held_reason FROM conversations ORDER BY created_at, group_id")
            .fetch_all(self.db.pool())
            .await?;
        let tx = self.db.begin().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: GroupId = r.try_get::<String, _>("group_id")?.parse()?;
            let group = MlsGroup::load(tx.state(), &mls_group_id(&id))?;
            let mut members: Vec<UserName> = group
                .as_ref()
                .map(|g| member_devices(g).into_iter().map(|(_, c)| c.user).collect())
                .unwrap_or_default();
            members.sort();
            members.dedup();
            out.push(ConversationView {
                name: r.try_get("name")?,
                clearance: r
                    .try_get::<Option<String>, _>("clearance")?
                    .map(|c| c.parse())
                    .transpose()?,
                status: r.try_get("status")?,
                members,
                held: r.try_get::<i64, _>("held_count")? as u64,
                held_reason: r.try_get("held_reason")?,
                epoch: group.map(|g| g.epoch().as_u64()).unwrap_or(0),
                id,
            });
        }
        Ok(out)
    }

    /// One conversation.
    pub async fn conversation(&self, gid: &GroupId) -> Result<ConversationView> {
        self.conversations()
            .await?
            .into_iter()
            .find(|c| &c.id == gid)
            .ok_or_else(|| anyhow!("no conversation {gid} on this device"))
    }

    /// Messages people wrote in a conversation, in the order this device learned of
    /// them, after `after` (a local id) when given.
    pub async fn messages(&self, gid: &GroupId, after: Option<i64>) -> Result<Vec<MessageView>> {
        self.entries(gid, after, false).await
    }

    /// The conversation's history as shown to the person: the messages and, in their
    /// place, the notices of people's devices joining or leaving it (`notice`).
    pub async fn history(&self, gid: &GroupId, after: Option<i64>) -> Result<Vec<MessageView>> {
        self.entries(gid, after, true).await
    }

    async fn entries(
        &self,
        gid: &GroupId,
        after: Option<i64>,
        notices: bool,
    ) -> Result<Vec<MessageView>> {
        let rows = sqlx::query(
            "SELECT m.local_id, m.id, m.from_user, m.from_device, m.kind, m.text, m.file, m.sent_at, m.outgoing, m.status,
             (SELECT count(*) FROM receipts r WHERE r.group_id = m.group_id AND r.message_id = m.id AND r.kind = 'delivered') AS delivered,
             (SELECT count(*) FROM receipts r WHERE r.group_id = m.group_id AND r.message_id = m.id AND r.kind = 'read') AS readers
             FROM messages m WHERE m.group_id = ? AND m.local_id > ? AND (? OR m.kind != 'notice')
             ORDER BY m.local_id",
        )
        .bind(gid.as_str())
        .bind(after.unwrap_or(0))
        .bind(notices)
        .fetch_all(self.db.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let file: Option<crate::content::FileRef> = r
                .try_get::<Option<String>, _>("file")?
                .map(|f| serde_json::from_str(&f))
                .transpose()?;
            out.push(MessageView {
                local_id: r.try_get("local_id")?,
                id: r.try_get("id")?,
                from_user: r.try_get::<String, _>("from_user")?.parse()?,
                from_device: r.try_get::<String, _>("from_device")?.parse()?,
                text: r.try_get::<Option<String>, _>("text")?.unwrap_or_default(),
                sent_at: Timestamp(r.try_get("sent_at")?),
                file: file.map(|f| FileView {
                    name: f.name,
                    size: f.size,
                }),
                outgoing: r.try_get::<i64, _>("outgoing")? != 0,
                status: r.try_get("status")?,
                delivered_to: r.try_get::<i64, _>("delivered")? as u64,
                read_by: r.try_get::<i64, _>("readers")? as u64,
                notice: r.try_get::<String, _>("kind")? == "notice",
            });
        }
        Ok(out)
    }

    /// Marks the conversation's received messages read and tells their senders.
    pub async fn mark_read(&self, gid: &GroupId) -> Result<()> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM messages WHERE group_id = ? AND outgoing = 0 AND status = 'received' ORDER BY local_id",
        )
        .bind(gid.as_str())
        .fetch_all(self.db.pool())
        .await?;
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE messages SET status = 'read' WHERE group_id = ? AND outgoing = 0 AND status = 'received'")
            .bind(gid.as_str())
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        if self.member_count(gid).await? <= RECEIPTS_UP_TO {
            let body = Body::Receipt {
                kind: ReceiptKind::Read,
                ids,
            };
            if let Err(e) = self.send_body(gid, body, false).await {
                tracing::debug!(group = %gid, error = %e, "read receipt not sent");
            }
        }
        Ok(())
    }

    /// The server connection (for the push channel).
    pub fn net(&self) -> &Net {
        &self.net
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId::from_random([n; 12])
    }

    fn roster_of(entries: &[(&str, &[u8])]) -> Roster {
        entries
            .iter()
            .map(|(u, ds)| (u.parse().unwrap(), ds.iter().map(|n| dev(*n)).collect()))
            .collect()
    }

    fn texts(notices: Vec<(UserName, DeviceId, String)>) -> Vec<String> {
        notices.into_iter().map(|(_, _, t)| t).collect()
    }

    #[test]
    fn roster_changes_are_told_per_person_and_device() {
        let (a, b1, b2) = (dev(1), dev(2), dev(3));
        let start = roster_of(&[("alice", &[1]), ("bob", &[2, 3])]);
        assert_eq!(
            texts(roster_notices(None, &start)),
            vec![
                format!("alice: 1 device in this conversation ({a})"),
                format!("bob: 2 devices in this conversation ({b1}, {b2})"),
            ]
        );
        assert!(
            roster_notices(Some(&start), &start).is_empty(),
            "no change, no notice"
        );
        let gained = roster_of(&[("alice", &[1]), ("bob", &[2, 3, 4])]);
        let notices = roster_notices(Some(&start), &gained);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].0.as_str(), "bob");
        assert_eq!(notices[0].1, dev(4));
        assert_eq!(
            notices[0].2,
            format!(
                "bob added a device ({}) to this conversation: now 3 devices",
                dev(4)
            )
        );
        let lost = roster_of(&[("alice", &[1]), ("bob", &[2])]);
        assert_eq!(
            texts(roster_notices(Some(&start), &lost)),
            vec![format!(
                "bob's device {b2} left this conversation: now 1 device"
            )]
        );
        let carol = roster_of(&[("alice", &[1]), ("carol", &[5, 6])]);
        assert_eq!(
            texts(roster_notices(Some(&start), &carol)),
            vec![
                format!("bob left this conversation (their 2 devices {b1}, {b2} left)"),
                format!(
                    "carol joined this conversation with 2 devices ({}, {})",
                    dev(5),
                    dev(6)
                ),
            ]
        );
    }

    #[test]
    fn a_message_more_than_past_epochs_old_is_not_sent() {
        let past = PAST_EPOCHS as u64;
        assert!(!too_old_to_send(7, 7));
        assert!(
            !too_old_to_send(7, 7 + past),
            "the oldest epoch members still keep"
        );
        assert!(too_old_to_send(7, 8 + past));
        // A message from an epoch the device has not reached (cannot happen) is not old.
        assert!(!too_old_to_send(9, 7));
    }
}
