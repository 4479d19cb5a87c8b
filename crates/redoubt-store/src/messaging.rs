//! The MLS delivery service's state: member certificates, KeyPackages, group sequencers,
//! per-device queues, sent-message ids and blob records. Every payload is opaque bytes.

use redoubt_proto::messaging::{ItemKind, QueueItem, Unclaimable};
use redoubt_proto::{BlobId, DeviceId, GroupId, ModeName, Timestamp, UserName};
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store, StoreError, parse};

/// The window over which a device's one-time KeyPackage handouts are counted.
pub const HANDOUT_WINDOW_SECS: i64 = 3600;

/// What a device's queue fetch reports besides its items ([`Store::queue_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStatus {
    /// One-time KeyPackages left.
    pub one_time: u64,
    /// Whether it has a last-resort KeyPackage.
    pub last_resort: bool,
    /// Items that expired undelivered for it, since enrollment.
    pub expired: u64,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Id.
    pub id: GroupId,
    /// Current epoch.
    pub epoch: u64,
    /// Required mode.
    pub clearance: Option<ModeName>,
    /// Member devices.
    pub members: Vec<DeviceId>,
    /// Latest GroupInfo.
    pub group_info: Option<Vec<u8>>,
}

/// What the sequencer needs to decide on a commit before verifying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitBase {
    /// The group.
    pub group: GroupRecord,
    /// The public group state the commit is verified against (`None` for a group
    /// registered before the server verified commits).
    pub public_state: Option<Vec<u8>>,
    /// SHA-256 of the last accepted commit.
    pub last_commit_hash: Option<Vec<u8>>,
    /// Who made it.
    pub last_commit_sender: Option<DeviceId>,
}

/// A verified commit to sequence: everything but the bytes was derived from the
/// commit by the server, none of it declared by the committer.
#[derive(Debug, Clone)]
pub struct CommitInput<'a> {
    /// The group.
    pub group_id: &'a GroupId,
    /// The committing device.
    pub sender: &'a DeviceId,
    /// The epoch the commit was made in.
    pub epoch: u64,
    /// The group's public state after the commit.
    pub public_state: &'a [u8],
    /// The commit bytes.
    pub commit: &'a [u8],
    /// SHA-256 of the commit, to recognise a retry.
    pub commit_hash: [u8; 32],
    /// The Welcome, if any.
    pub welcome: Option<&'a [u8]>,
    /// Devices the Welcome is for (those of the added leaves).
    pub welcome_to: &'a [DeviceId],
    /// The new epoch's GroupInfo (`None` clears the old one).
    pub group_info: Option<&'a [u8]>,
    /// Members after the commit (from the new tree).
    pub members: &'a [DeviceId],
    /// Now.
    pub now: Timestamp,
    /// When undelivered copies expire.
    pub expires_at: Timestamp,
}

/// What happened to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Accepted; queued for these devices (old and new members but the sender).
    Accepted {
        /// The group after the commit.
        group: GroupRecord,
        /// Devices that got something queued.
        notified: Vec<DeviceId>,
    },
    /// The same commit was accepted before (a retry).
    AlreadyAccepted(GroupRecord),
    /// The group is at another epoch.
    Conflict {
        /// The current epoch.
        current_epoch: u64,
    },
}

/// What happened to an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOutcome {
    /// A retry of a message already queued.
    pub duplicate: bool,
    /// Devices it was queued for (empty for a duplicate).
    pub recipients: Vec<DeviceId>,
    /// How many devices it was queued for originally.
    pub recipient_count: u64,
}

/// A KeyPackage handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRecord {
    /// Device.
    pub device_id: DeviceId,
    /// Owner.
    pub user: UserName,
    /// Bytes.
    pub data: Vec<u8>,
    /// Whether it is the (kept) last-resort one.
    pub last_resort: bool,
    /// Whether the device had handed out its share of one-time KeyPackages for the
    /// window, so the last-resort one was handed out (or nothing, without one).
    pub throttled: bool,
    /// One-time KeyPackages the device has left.
    pub remaining: u64,
}

/// One group's items in a device's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedGroup {
    /// Group.
    pub group_id: GroupId,
    /// Its clearance.
    pub clearance: Option<ModeName>,
    /// Items waiting.
    pub count: u64,
}

/// A blob record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// Id.
    pub id: BlobId,
    /// The conversation it was uploaded into.
    pub group_id: GroupId,
    /// Size in bytes.
    pub size: u64,
    /// Expiry.
    pub expires_at: Timestamp,
}

async fn members_of(tx: &mut Transaction<'_, Any>, group: &GroupId) -> Result<Vec<DeviceId>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT device_id FROM group_members WHERE group_id = $1 ORDER BY device_id",
    )
    .bind(group.as_str())
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(|s| parse("device id", s)).collect()
}

async fn load_group(tx: &mut Transaction<'_, Any>, id: &GroupId) -> Result<Option<GroupRecord>> {
    let Some(row) = sqlx::query("SELECT epoch, clearance, group_info FROM groups WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(None);
    };
    let clearance = row
        .try_get::<Option<&str>, _>("clearance")?
        .map(|s| parse("mode name", s))
        .transpose()?;
    Ok(Some(GroupRecord {
        id: id.clone(),
        epoch: row.try_get::<i64, _>("epoch")? as u64,
        clearance,
        members: members_of(tx, id).await?,
        group_info: row.try_get("group_info")?,
    }))
}

/// Stores `payload` once and queues it for every device in `to`.
#[allow(clippy::too_many_arguments)]
async fn enqueue(
    tx: &mut Transaction<'_, Any>,
    backend: crate::Backend,
    to: &[DeviceId],
    group: &GroupId,
    kind: ItemKind,
    epoch: u64,
    sender: Option<&DeviceId>,
    payload: &[u8],
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<()> {
    if to.is_empty() {
        return Ok(());
    }
    let payload_id: i64 =
        sqlx::query_scalar("INSERT INTO payloads (data) VALUES ($1) RETURNING id")
            .bind(payload)
            .fetch_one(&mut **tx)
            .await?;
    // One statement for every recipient (not one per recipient): the device ids travel
    // as one JSON array.
    let devices = crate::json_text_elements(backend, "$9");
    let ids = serde_json::to_string(&to.iter().map(DeviceId::as_str).collect::<Vec<_>>())
        .map_err(|e| crate::corrupt("recipients", e))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO queue (device_id, group_id, kind, epoch, sender, payload_id, size, enqueued_at, expires_at)
         SELECT d.value, $1, $2, $3, $4, $5, $6, $7, $8 FROM ({devices}) AS d"
    )))
    .bind(group.as_str())
    .bind(kind.as_str())
    .bind(epoch as i64)
    .bind(sender.map(DeviceId::as_str))
    .bind(payload_id)
    .bind(payload.len() as i64)
    .bind(now.unix())
    .bind(expires_at.unix())
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes payloads no queue entry refers to any more.
async fn drop_orphan_payloads(tx: &mut Transaction<'_, Any>, ids: &[i64]) -> Result<()> {
    for chunk in ids.chunks(ID_CHUNK) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM payloads WHERE id IN ({}) AND NOT EXISTS (SELECT 1 FROM queue WHERE queue.payload_id = payloads.id)",
            integer_list(chunk.iter().copied())
        )))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Row ids or sequence numbers named in one statement at most.
const ID_CHUNK: usize = 1000;

/// `1,2,3`: integers written into a statement (only integers: nothing a caller's text
/// could turn into SQL).
fn integer_list(ids: impl Iterator<Item = i64>) -> String {
    let mut out = String::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out
}

async fn live_device_ids(tx: &mut Transaction<'_, Any>, ids: &[DeviceId]) -> Result<Vec<DeviceId>> {
    let mut live = Vec::with_capacity(ids.len());
    for id in ids {
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM devices WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        match revoked {
            None => return Err(StoreError::NotFound(format!("device {id}"))),
            Some(Some(_)) => {}
            Some(None) => live.push(id.clone()),
        }
    }
    Ok(live)
}

/// Why a device that awaits an owner's approval is not handed out.
pub const AWAITING_APPROVAL: &str = "the device is awaiting an owner's approval";

impl Store {
    /// Records the MLS key certified for a device (replacing an older one).
    pub async fn put_member_certificate(
        &self,
        device: &DeviceId,
        mls_key: &[u8],
        envelope_json: &str,
        now: Timestamp,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO member_certificates (device_id, mls_key, envelope, issued_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (device_id) DO UPDATE SET mls_key = excluded.mls_key, envelope = excluded.envelope,
             issued_at = excluded.issued_at",
        )
        .bind(device.as_str())
        .bind(mls_key)
        .bind(envelope_json)
        .bind(now.unix())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores KeyPackages for a device, refusing to hold more than `max_stock` one-time
    /// ones. Returns `(remaining, has_last_resort)`.
    pub async fn upload_key_packages(
        &self,
        device: &DeviceId,
        key_packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        max_stock: u64,
        now: Timestamp,
    ) -> Result<(u64, bool)> {
        let mut tx = self.write_tx().await?;
        let have = one_time_stock(&mut tx, device).await?;
        if have + key_packages.len() as u64 > max_stock {
            return Err(StoreError::Conflict(format!(
                "the server holds {have} KeyPackages for this device; at most {max_stock} are kept"
            )));
        }
        for kp in key_packages {
            sqlx::query("INSERT INTO key_packages (device_id, data, last_resort, uploaded_at) VALUES ($1, $2, 0, $3)")
                .bind(device.as_str())
                .bind(kp)
                .bind(now.unix())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(kp) = last_resort {
            sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort = 1")
                .bind(device.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO key_packages (device_id, data, last_resort, uploaded_at) VALUES ($1, $2, 1, $3)")
                .bind(device.as_str())
                .bind(kp)
                .bind(now.unix())
                .execute(&mut *tx)
                .await?;
        }
        let stock = stock_of(&mut tx, device).await?;
        tx.commit().await?;
        Ok(stock)
    }

    /// What a device's queue fetch reports besides its items, read in one statement:
    /// its stock of one-time KeyPackages, whether it has a last-resort one, and the
    /// items that expired undelivered since enrollment.
    pub async fn queue_status(&self, device: &DeviceId) -> Result<QueueStatus> {
        let r = sqlx::query(
            "SELECT (SELECT messages_expired FROM devices WHERE id = $1) AS expired,
                    (SELECT count(*) FROM key_packages WHERE device_id = $1 AND last_resort = 0) AS one_time,
                    (SELECT count(*) FROM key_packages WHERE device_id = $1 AND last_resort = 1) AS last_resort",
        )
        .bind(device.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStatus {
            one_time: r.try_get::<i64, _>("one_time")? as u64,
            last_resort: r.try_get::<i64, _>("last_resort")? > 0,
            expired: r.try_get::<Option<i64>, _>("expired")?.unwrap_or(0) as u64,
        })
    }

    /// Hands out one KeyPackage for each live, approved device of each person (the
    /// claimer's own device excluded; a device awaiting approval is listed as missing),
    /// atomically: a one-time KeyPackage is deleted as it is handed
    /// out, so it goes to exactly one claimer; the last-resort one is handed out when
    /// nothing else is left, and kept. A person or device named twice gets one
    /// KeyPackage. Each device hands out at most `per_window` one-time KeyPackages per
    /// [`HANDOUT_WINDOW_SECS`] to all claimers together; past that it hands out its
    /// last-resort one (`throttled`), so no claimer can drain a person's stock.
    pub async fn claim_key_packages(
        &self,
        claimer: &DeviceId,
        users: &[UserName],
        per_window: u64,
        now: Timestamp,
    ) -> Result<(Vec<ClaimedRecord>, Vec<Unclaimable>)> {
        let mut tx = self.write_tx().await?;
        let mut claimed = Vec::new();
        let mut missing = Vec::new();
        let mut seen_users = std::collections::HashSet::new();
        let mut seen_devices = std::collections::HashSet::new();
        for user in users {
            if !seen_users.insert(user) {
                continue;
            }
            let devices: Vec<(String, i64)> = sqlx::query_as(
                "SELECT id, CASE WHEN approved_at IS NOT NULL THEN 1 ELSE 0 END FROM devices WHERE user_name = $1 AND revoked_at IS NULL
                 ORDER BY enrolled_at, id",
            )
            .bind(user.as_str())
            .fetch_all(&mut *tx)
            .await?;
            if devices.is_empty() {
                missing.push(Unclaimable {
                    user: user.clone(),
                    device_id: None,
                    reason: format!("{user} has no enrolled device"),
                });
            }
            for (id, approved) in devices {
                let device: DeviceId = parse("device id", &id)?;
                if &device == claimer || !seen_devices.insert(device.clone()) {
                    continue;
                }
                if approved == 0 {
                    missing.push(Unclaimable {
                        user: user.clone(),
                        device_id: Some(device),
                        reason: AWAITING_APPROVAL.into(),
                    });
                    continue;
                }
                let throttled = handouts_in_window(&mut tx, &device, now).await? >= per_window;
                let one_time = if throttled {
                    None
                } else {
                    sqlx::query(
                        "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages WHERE device_id = $1 AND last_resort = 0
                         ORDER BY id LIMIT 1) RETURNING data",
                    )
                    .bind(device.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                };
                let (data, last_resort) = match one_time {
                    Some(row) => {
                        sqlx::query(
                            "INSERT INTO key_package_handouts (device_id, handed_at) VALUES ($1, $2)",
                        )
                        .bind(device.as_str())
                        .bind(now.unix())
                        .execute(&mut *tx)
                        .await?;
                        (row.try_get::<Vec<u8>, _>("data")?, false)
                    }
                    None => {
                        let lr: Option<Vec<u8>> = sqlx::query_scalar(
                            "SELECT data FROM key_packages WHERE device_id = $1 AND last_resort = 1",
                        )
                        .bind(device.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                        match lr {
                            Some(d) => (d, true),
                            None => {
                                let reason = if throttled {
                                    "the device handed out its hourly share of KeyPackages and has no last-resort one; try again later"
                                } else {
                                    "the device has no KeyPackage (its messenger never started)"
                                };
                                missing.push(Unclaimable {
                                    user: user.clone(),
                                    device_id: Some(device),
                                    reason: reason.into(),
                                });
                                continue;
                            }
                        }
                    }
                };
                let remaining = one_time_stock(&mut tx, &device).await?;
                claimed.push(ClaimedRecord {
                    device_id: device,
                    user: user.clone(),
                    data,
                    last_resort,
                    throttled,
                    remaining,
                });
            }
        }
        tx.commit().await?;
        Ok((claimed, missing))
    }

    /// Registers a new group with `creator` as its only member at epoch 0, with its
    /// verified public state and GroupInfo.
    pub async fn create_group(
        &self,
        id: &GroupId,
        clearance: Option<&ModeName>,
        creator: &DeviceId,
        public_state: &[u8],
        group_info: &[u8],
        now: Timestamp,
    ) -> Result<GroupRecord> {
        let mut tx = self.write_tx().await?;
        if let Some(mode) = clearance {
            let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM modes WHERE name = $1")
                .bind(mode.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("mode {mode}")));
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO groups (id, epoch, clearance, created_by, created_at, updated_at, public_state, group_info)
             VALUES ($1, 0, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.as_str())
        .bind(clearance.map(ModeName::as_str))
        .bind(creator.as_str())
        .bind(now.unix())
        .bind(now.unix())
        .bind(public_state)
        .bind(group_info)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(e)) = &inserted
            && e.is_unique_violation()
        {
            return Err(StoreError::Conflict(format!("group {id} already exists")));
        }
        inserted?;
        sqlx::query("INSERT INTO group_members (group_id, device_id) VALUES ($1, $2)")
            .bind(id.as_str())
            .bind(creator.as_str())
            .execute(&mut *tx)
            .await?;
        let group = load_group(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("group {id}")))?;
        tx.commit().await?;
        Ok(group)
    }

    /// One group.
    pub async fn get_group(&self, id: &GroupId) -> Result<Option<GroupRecord>> {
        let mut tx = self.read_tx().await?;
        load_group(&mut tx, id).await
    }

    /// A group with what deciding on a commit needs: its public state and the last
    /// accepted commit's hash and sender.
    pub async fn commit_base(&self, id: &GroupId) -> Result<Option<CommitBase>> {
        let mut tx = self.read_tx().await?;
        let Some(group) = load_group(&mut tx, id).await? else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT public_state, last_commit_hash, last_commit_sender FROM groups WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        Ok(Some(CommitBase {
            group,
            public_state: row.try_get("public_state")?,
            last_commit_hash: row.try_get("last_commit_hash")?,
            last_commit_sender: row
                .try_get::<Option<&str>, _>("last_commit_sender")?
                .map(|s| parse("device id", s))
                .transpose()?,
        }))
    }

    /// Sequences a verified commit: accepted only from a member, made in the group's
    /// current epoch (compare-and-set). On acceptance, in the same transaction: the
    /// epoch moves on, the public state, member list and GroupInfo are replaced, the
    /// commit is queued for every old member but the sender, and the Welcome (only
    /// now) for the added devices. A non-member learns nothing (`Forbidden`, before
    /// any epoch is compared); a retry of the last accepted commit by its sender is
    /// `AlreadyAccepted`.
    pub async fn accept_commit(&self, c: CommitInput<'_>) -> Result<CommitOutcome> {
        let mut tx = self.write_tx().await?;
        let group = load_group(&mut tx, c.group_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("group {}", c.group_id)))?;
        if !group.members.contains(c.sender) {
            return Err(StoreError::Forbidden(format!(
                "device {} is not a member of {}",
                c.sender, c.group_id
            )));
        }
        if c.epoch != group.epoch {
            let row = sqlx::query(
                "SELECT last_commit_hash, last_commit_sender FROM groups WHERE id = $1",
            )
            .bind(c.group_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let last_hash: Option<Vec<u8>> = row.try_get("last_commit_hash")?;
            let last_sender: Option<String> = row.try_get("last_commit_sender")?;
            if c.epoch + 1 == group.epoch
                && last_hash.as_deref() == Some(&c.commit_hash[..])
                && last_sender.as_deref() == Some(c.sender.as_str())
            {
                return Ok(CommitOutcome::AlreadyAccepted(group));
            }
            return Ok(CommitOutcome::Conflict {
                current_epoch: group.epoch,
            });
        }
        for d in c.welcome_to {
            if !c.members.contains(d) || group.members.contains(d) {
                return Err(StoreError::Conflict(format!(
                    "the Welcome names {d}, which is not a new member"
                )));
            }
        }
        let added: Vec<DeviceId> = c
            .members
            .iter()
            .filter(|d| !group.members.contains(d))
            .cloned()
            .collect();
        let live_added = live_device_ids(&mut tx, &added).await?;
        if live_added.len() != added.len() {
            return Err(StoreError::Conflict(
                "the commit adds a revoked device".into(),
            ));
        }
        sqlx::query(
            "UPDATE groups SET epoch = epoch + 1, group_info = $1, public_state = $2, last_commit_hash = $3,
             last_commit_sender = $4, updated_at = $5 WHERE id = $6 AND epoch = $7",
        )
        .bind(c.group_info)
        .bind(c.public_state)
        .bind(&c.commit_hash[..])
        .bind(c.sender.as_str())
        .bind(c.now.unix())
        .bind(c.group_id.as_str())
        .bind(c.epoch as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = $1")
            .bind(c.group_id.as_str())
            .execute(&mut *tx)
            .await?;
        for d in c.members {
            sqlx::query("INSERT INTO group_members (group_id, device_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(c.group_id.as_str())
                .bind(d.as_str())
                .execute(&mut *tx)
                .await?;
        }
        // Everyone who was a member (including those removed, so they learn it) and
        // everyone still a member who did not just join, but the sender.
        let mut commit_to: Vec<DeviceId> = group
            .members
            .iter()
            .filter(|d| *d != c.sender)
            .cloned()
            .collect();
        commit_to.sort();
        enqueue(
            &mut tx,
            self.backend,
            &commit_to,
            c.group_id,
            ItemKind::Commit,
            c.epoch,
            Some(c.sender),
            c.commit,
            c.now,
            c.expires_at,
        )
        .await?;
        if let Some(welcome) = c.welcome {
            enqueue(
                &mut tx,
                self.backend,
                c.welcome_to,
                c.group_id,
                ItemKind::Welcome,
                c.epoch + 1,
                Some(c.sender),
                welcome,
                c.now,
                c.expires_at,
            )
            .await?;
        }
        let after = load_group(&mut tx, c.group_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("group {}", c.group_id)))?;
        tx.commit().await?;
        let mut notified = commit_to;
        notified.extend(c.welcome_to.iter().cloned());
        Ok(CommitOutcome::Accepted {
            group: after,
            notified,
        })
    }

    /// Queues an application message for every member but the sender, once per
    /// `(sender, client_id)`.
    #[allow(clippy::too_many_arguments)]
    pub async fn enqueue_message(
        &self,
        group_id: &GroupId,
        sender: &DeviceId,
        epoch: u64,
        payload: &[u8],
        client_id: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<MessageOutcome> {
        let mut tx = self.write_tx().await?;
        let group = load_group(&mut tx, group_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("group {group_id}")))?;
        if !group.members.contains(sender) {
            return Err(StoreError::Forbidden(format!(
                "device {sender} is not a member of {group_id}"
            )));
        }
        let prior: Option<i64> = sqlx::query_scalar(
            "SELECT recipients FROM sent_messages WHERE device_id = $1 AND client_id = $2",
        )
        .bind(sender.as_str())
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(n) = prior {
            return Ok(MessageOutcome {
                duplicate: true,
                recipients: Vec::new(),
                recipient_count: n as u64,
            });
        }
        if epoch > group.epoch {
            return Err(StoreError::Conflict(format!(
                "the message claims epoch {epoch} but the group is at {}",
                group.epoch
            )));
        }
        let to: Vec<DeviceId> = group
            .members
            .iter()
            .filter(|d| *d != sender)
            .cloned()
            .collect();
        enqueue(
            &mut tx,
            self.backend,
            &to,
            group_id,
            ItemKind::Application,
            epoch,
            Some(sender),
            payload,
            now,
            expires_at,
        )
        .await?;
        sqlx::query(
            "INSERT INTO sent_messages (device_id, client_id, accepted_at, recipients) VALUES ($1, $2, $3, $4)",
        )
        .bind(sender.as_str())
        .bind(client_id)
        .bind(now.unix())
        .bind(to.len() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(MessageOutcome {
            duplicate: false,
            recipient_count: to.len() as u64,
            recipients: to,
        })
    }

    /// Groups with items waiting for a device, with their clearance.
    pub async fn queued_groups(&self, device: &DeviceId) -> Result<Vec<QueuedGroup>> {
        let rows = sqlx::query(
            "SELECT q.group_id AS gid, g.clearance AS clearance, count(*) AS n FROM queue q
             LEFT JOIN groups g ON g.id = q.group_id WHERE q.device_id = $1 GROUP BY q.group_id, g.clearance",
        )
        .bind(device.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedGroup {
                    group_id: parse("group id", r.try_get("gid")?)?,
                    clearance: r
                        .try_get::<Option<&str>, _>("clearance")?
                        .map(|s| parse("mode name", s))
                        .transpose()?,
                    count: r.try_get::<i64, _>("n")? as u64,
                })
            })
            .collect()
    }

    /// The oldest `limit` items of a device's queue outside the `held` groups, and
    /// whether more follow.
    pub async fn fetch_queue(
        &self,
        device: &DeviceId,
        held: &[GroupId],
        limit: u32,
    ) -> Result<(Vec<QueueItem>, bool)> {
        let held_json =
            serde_json::to_string(&held.iter().map(GroupId::as_str).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT q.seq, q.group_id, q.kind, q.epoch, q.sender, q.enqueued_at, p.data FROM queue q
             JOIN payloads p ON p.id = q.payload_id
             WHERE q.device_id = $1 AND q.group_id NOT IN ({})
             ORDER BY q.seq LIMIT $3",
            self.json_text_elements("$2")
        )))
        .bind(device.as_str())
        .bind(held_json)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let mut items = Vec::with_capacity(rows.len().min(limit as usize));
        for r in rows.iter().take(limit as usize) {
            items.push(QueueItem {
                seq: r.try_get::<i64, _>("seq")? as u64,
                group_id: parse("group id", r.try_get("group_id")?)?,
                kind: parse("item kind", r.try_get("kind")?)?,
                epoch: r.try_get::<i64, _>("epoch")? as u64,
                sender: r
                    .try_get::<Option<&str>, _>("sender")?
                    .map(|s| parse("device id", s))
                    .transpose()?,
                payload: redoubt_proto::messaging::B64(r.try_get("data")?),
                enqueued_at: Timestamp(r.try_get("enqueued_at")?),
            });
        }
        Ok((items, more))
    }

    /// Removes acknowledged items of a device's queue; returns how many went.
    pub async fn ack_queue(&self, device: &DeviceId, seqs: &[u64]) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let mut payloads = Vec::new();
        // One statement per chunk, not per item: the sequence numbers are integers the
        // caller parsed, written into the statement as such.
        for chunk in seqs.chunks(ID_CHUNK) {
            let rows: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "DELETE FROM queue WHERE device_id = $1 AND seq IN ({}) RETURNING payload_id",
                integer_list(chunk.iter().map(|s| *s as i64))
            )))
            .bind(device.as_str())
            .fetch_all(&mut *tx)
            .await?;
            payloads.extend(rows);
        }
        let removed = payloads.len() as u64;
        payloads.sort_unstable();
        payloads.dedup();
        drop_orphan_payloads(&mut tx, &payloads).await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Deletes queue items and sent-message ids past their expiry; counts expired items
    /// per device. Returns `(device, items expired)`.
    pub async fn expire_queue(&self, now: Timestamp) -> Result<Vec<(DeviceId, u64)>> {
        let mut tx = self.write_tx().await?;
        let rows =
            sqlx::query("DELETE FROM queue WHERE expires_at <= $1 RETURNING device_id, payload_id")
                .bind(now.unix())
                .fetch_all(&mut *tx)
                .await?;
        let mut per_device: std::collections::BTreeMap<String, u64> = Default::default();
        let mut payloads = Vec::new();
        for r in &rows {
            *per_device.entry(r.try_get("device_id")?).or_default() += 1;
            payloads.push(r.try_get::<i64, _>("payload_id")?);
        }
        payloads.sort_unstable();
        payloads.dedup();
        drop_orphan_payloads(&mut tx, &payloads).await?;
        let mut out = Vec::new();
        for (device, n) in per_device {
            sqlx::query(
                "UPDATE devices SET messages_expired = messages_expired + $1 WHERE id = $2",
            )
            .bind(n as i64)
            .bind(&device)
            .execute(&mut *tx)
            .await?;
            out.push((parse("device id", &device)?, n));
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Forgets sent-message ids older than `before` (retries are no longer expected).
    pub async fn prune_sent_ids(&self, before: Timestamp) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sent_messages WHERE accepted_at < $1")
            .bind(before.unix())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Marks a device revoked, drops its KeyPackages, and queues a removal request for
    /// the other members of every group it is in; `sign` makes the request's payload
    /// for a group. Returns `(group, devices notified)` per group. The entries `audit`
    /// makes from those groups are appended in the same transaction (`sign_head` signs
    /// the log's new head).
    pub async fn revoke_device(
        &self,
        id: &DeviceId,
        now: Timestamp,
        expires_at: Timestamp,
        mut sign: impl FnMut(&GroupId) -> Vec<u8>,
        audit: impl FnOnce(&[(GroupId, Vec<DeviceId>)]) -> Vec<crate::AuditDraft>,
        sign_head: crate::HeadSigner<'_>,
    ) -> Result<Vec<(GroupId, Vec<DeviceId>)>> {
        let mut tx = self.write_tx().await?;
        let r =
            sqlx::query("UPDATE devices SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2")
                .bind(now.unix())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("device {id}")));
        }
        sqlx::query("DELETE FROM key_packages WHERE device_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query("DELETE FROM queue WHERE device_id = $1 RETURNING payload_id")
            .bind(id.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let payloads: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("payload_id"))
            .collect::<Result<_, _>>()?;
        drop_orphan_payloads(&mut tx, &payloads).await?;
        let groups: Vec<String> = sqlx::query_scalar(
            "SELECT group_id FROM group_members WHERE device_id = $1 ORDER BY group_id",
        )
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::new();
        for g in groups {
            let gid: GroupId = parse("group id", &g)?;
            let group = load_group(&mut tx, &gid)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("group {gid}")))?;
            let others: Vec<DeviceId> =
                group.members.iter().filter(|d| *d != id).cloned().collect();
            let others = live_device_ids(&mut tx, &others).await?;
            let payload = sign(&gid);
            enqueue(
                &mut tx,
                self.backend,
                &others,
                &gid,
                ItemKind::RemovalRequest,
                group.epoch,
                None,
                &payload,
                now,
                expires_at,
            )
            .await?;
            out.push((gid, others));
        }
        crate::audit::append(&mut tx, &audit(&out), now, sign_head).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Every revoked device.
    pub async fn revoked_devices(&self) -> Result<Vec<DeviceId>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT id FROM devices WHERE revoked_at IS NOT NULL ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|s| parse("device id", s)).collect()
    }

    /// Records a file about to be uploaded into conversation `group`, before its bytes
    /// are written, in one transaction that checks that `uploader` is a current member
    /// of the group ([`StoreError::NotFound`] otherwise, as for a group that does not
    /// exist) and that its live (not expired) files plus this one stay within `quota`
    /// bytes ([`StoreError::QuotaExceeded`]). The caller writes the bytes next and calls
    /// [`Store::drop_blob`] if it cannot.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve_blob(
        &self,
        id: &BlobId,
        group: &GroupId,
        uploader: &DeviceId,
        size: u64,
        quota: u64,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let member: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM group_members WHERE group_id = $1 AND device_id = $2",
        )
        .bind(group.as_str())
        .bind(uploader.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if member.is_none() {
            return Err(StoreError::NotFound(format!("conversation {group}")));
        }
        let used: i64 = sqlx::query_scalar(
            "SELECT CAST(coalesce(sum(size), 0) AS BIGINT) FROM blobs WHERE uploader = $1 AND expires_at > $2",
        )
        .bind(uploader.as_str())
        .bind(now.unix())
        .fetch_one(&mut *tx)
        .await?;
        let used = used.max(0) as u64;
        if used.saturating_add(size) > quota {
            return Err(StoreError::QuotaExceeded {
                used,
                size,
                limit: quota,
            });
        }
        sqlx::query(
            "INSERT INTO blobs (id, group_id, uploader, size, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.as_str())
        .bind(group.as_str())
        .bind(uploader.as_str())
        .bind(size as i64)
        .bind(now.unix())
        .bind(expires_at.unix())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `device` is a current member of `group` (false for a group that does not
    /// exist).
    pub async fn is_group_member(&self, group: &GroupId, device: &DeviceId) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT 1 FROM group_members WHERE group_id = $1 AND device_id = $2",
        )
        .bind(group.as_str())
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// Forgets a reserved file whose bytes could not be written.
    pub async fn drop_blob(&self, id: &BlobId) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM blobs WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A file of conversation `group` that has not expired, if `device` is a current
    /// member of that conversation: `None` alike for a file that does not exist, has
    /// expired, belongs to another conversation, or a device that is not (or no
    /// longer) a member.
    pub async fn member_blob(
        &self,
        id: &BlobId,
        group: &GroupId,
        device: &DeviceId,
        now: Timestamp,
    ) -> Result<Option<BlobRecord>> {
        let row = sqlx::query(
            "SELECT b.size, b.expires_at FROM blobs b
             JOIN group_members m ON m.group_id = b.group_id AND m.device_id = $1
             WHERE b.id = $2 AND b.group_id = $3 AND b.expires_at > $4",
        )
        .bind(device.as_str())
        .bind(id.as_str())
        .bind(group.as_str())
        .bind(now.unix())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(BlobRecord {
                id: id.clone(),
                group_id: group.clone(),
                size: r.try_get::<i64, _>("size")? as u64,
                expires_at: Timestamp(r.try_get("expires_at")?),
            })
        })
        .transpose()
    }

    /// Deletes the records of expired blobs and returns their ids (the caller deletes
    /// the files).
    pub async fn expire_blobs(&self, now: Timestamp) -> Result<Vec<BlobId>> {
        let rows: Vec<String> =
            sqlx::query_scalar("DELETE FROM blobs WHERE expires_at <= $1 RETURNING id")
                .bind(now.unix())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|s| parse("blob id", s)).collect()
    }
}

/// One-time KeyPackages `device` handed out in the window ending at `now`; older
/// handouts are forgotten here.
async fn handouts_in_window(
    tx: &mut Transaction<'_, Any>,
    device: &DeviceId,
    now: Timestamp,
) -> Result<u64> {
    sqlx::query("DELETE FROM key_package_handouts WHERE device_id = $1 AND handed_at <= $2")
        .bind(device.as_str())
        .bind(now.plus_secs(-HANDOUT_WINDOW_SECS).unix())
        .execute(&mut **tx)
        .await?;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM key_package_handouts WHERE device_id = $1")
            .bind(device.as_str())
            .fetch_one(&mut **tx)
            .await?;
    Ok(n as u64)
}

async fn one_time_stock(tx: &mut Transaction<'_, Any>, device: &DeviceId) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM key_packages WHERE device_id = $1 AND last_resort = 0",
    )
    .bind(device.as_str())
    .fetch_one(&mut **tx)
    .await?;
    Ok(n as u64)
}

async fn stock_of(tx: &mut Transaction<'_, Any>, device: &DeviceId) -> Result<(u64, bool)> {
    let lr: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM key_packages WHERE device_id = $1 AND last_resort = 1",
    )
    .bind(device.as_str())
    .fetch_one(&mut **tx)
    .await?;
    Ok((one_time_stock(tx, device).await?, lr > 0))
}
