//! Devices: enrollment, bundles issued, compliance reports received.

use redoubt_proto::{
    Compliance, ComplianceReport, DeviceGroupName, DeviceId, HardwareKind, Inventory, Mode,
    ModeName, SignedEnvelope, Timestamp, UserName,
};
use sqlx::{Any, Row, Transaction};

use crate::tokens::EnrollRefusal;
use crate::{Result, Store, StoreError, from_json, parse, to_json};

/// A device about to be enrolled.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Its new id.
    pub id: DeviceId,
    /// Its Ed25519 public key.
    pub public_key: [u8; 32],
    /// Its hardware backend.
    pub hardware: HardwareKind,
}

/// What the store asks the caller to sign when a device needs a new bundle.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    /// The device.
    pub device_id: DeviceId,
    /// Its owner.
    pub user: UserName,
    /// The version the new bundle must carry (one more than the last).
    pub version: u64,
    /// The assigned base mode's definition.
    pub base_mode: Mode,
    /// The modes its device groups assign (each once, by name).
    pub group_modes: Vec<Mode>,
    /// Every zone with the definition of the mode that holds inside it.
    pub zones: Vec<(redoubt_proto::api::ZoneDefinition, Mode)>,
    /// The latest report, to re-evaluate compliance against the new bundle.
    pub last_report: Option<ComplianceReport>,
}

/// A bundle the caller signed, with the verdict on the latest report against it.
#[derive(Debug, Clone)]
pub struct IssuedBundle {
    /// Its version.
    pub version: u64,
    /// The signed envelope.
    pub envelope: SignedEnvelope,
    /// The payload as JSON (for the console; not trusted by devices).
    pub payload_json: String,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Name of the effective mode it yields.
    pub effective_mode: String,
    /// Compliance of the latest report against this bundle (`Pending` without one).
    pub compliance: Compliance,
    /// Reasons when not compliant.
    pub reasons: Vec<String>,
}

/// A device as stored.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    /// Id.
    pub id: DeviceId,
    /// Owner.
    pub user: UserName,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
    /// Backend.
    pub hardware: HardwareKind,
    /// The operator's base assignment.
    pub assigned_mode: ModeName,
    /// Enrollment time.
    pub enrolled_at: Timestamp,
    /// Revocation time.
    pub revoked_at: Option<Timestamp>,
    /// Newest bundle version.
    pub bundle_version: u64,
    /// Newest bundle, signed.
    pub bundle: SignedEnvelope,
    /// When the newest bundle was issued.
    pub bundle_issued_at: Timestamp,
    /// When the newest bundle expires.
    pub bundle_expires_at: Timestamp,
    /// Effective mode of the newest bundle.
    pub effective_mode: String,
    /// Compliance verdict of the latest report (never `Stale`: staleness depends on the clock).
    pub compliance: Compliance,
    /// Reasons when not compliant.
    pub compliance_reasons: Vec<String>,
    /// Latest report's sequence number.
    pub last_report_seq: Option<u64>,
    /// When the latest report arrived.
    pub last_report_at: Option<Timestamp>,
    /// The latest report.
    pub last_report: Option<ComplianceReport>,
    /// Who created the enrollment code that enrolled it (`admin:NAME`), when known.
    pub enrolled_by: Option<String>,
    /// Who approved it: `admin:NAME`, `first-device` (its person had no other live
    /// device at enrollment) or `migration`; `None` while it awaits an owner's approval.
    pub approved_by: Option<String>,
    /// When it was approved; `None` while pending.
    pub approved_at: Option<Timestamp>,
    /// The device groups it belongs to, by name (filled where a record is shown).
    pub groups: Vec<DeviceGroupName>,
    /// The newest inventory a report carried (a report without one leaves it).
    pub inventory: Option<Inventory>,
    /// When the report carrying `inventory` was received.
    pub inventory_at: Option<Timestamp>,
}

impl DeviceRecord {
    /// Whether the device may take part in conversations (certify its MLS key, publish
    /// KeyPackages, be claimed): approved, automatically or by an owner.
    pub fn is_approved(&self) -> bool {
        self.approved_at.is_some()
    }
}

/// Who approved the first live device of a person: nobody needed to.
pub const APPROVED_AS_FIRST_DEVICE: &str = "first-device";

/// What one report of a batch came to.
#[derive(Debug, Clone)]
pub struct ReportStored {
    /// Stored (with its verdict) or a duplicate.
    pub outcome: ReportOutcome,
    /// The commands it verified.
    pub verified: Vec<crate::CommandRecord>,
    /// The device as its batch left it (its newest bundle and latest report).
    pub device: DeviceRecord,
}

/// What happened to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Stored as the newest report.
    Stored(Compliance),
    /// A sequence number at or below the newest one: already stored, ignored.
    Duplicate,
}

pub(crate) const DEVICE_COLUMNS: &str = "id, user_name, public_key, hardware, assigned_mode, enrolled_at, revoked_at, \
     bundle_version, bundle_envelope, bundle_issued_at, bundle_expires_at, effective_mode, compliance, \
     compliance_reasons, last_report_seq, last_report_at, last_report, enrolled_by, approved_by, approved_at, \
     inventory, inventory_at";

/// The audit action of a device event.
fn event_action(kind: &redoubt_proto::DeviceEventKind) -> &'static str {
    use redoubt_proto::DeviceEventKind as K;
    match kind {
        K::ZoneIn { .. } => "zone.in",
        K::ZoneOut { .. } => "zone.out",
        K::CodeRefused { .. } => "zone.code_refused",
        K::CommandDone { .. } => "command.done",
        K::CommandRefused { .. } => "command.refused",
    }
}

fn compliance_str(c: Compliance) -> &'static str {
    c.as_str()
}

fn parse_compliance(s: &str) -> Result<Compliance> {
    match s {
        "pending" => Ok(Compliance::Pending),
        "compliant" => Ok(Compliance::Compliant),
        "non_compliant" => Ok(Compliance::NonCompliant),
        other => Err(crate::corrupt("compliance", other)),
    }
}

pub(crate) fn hardware_str(h: HardwareKind) -> &'static str {
    match h {
        HardwareKind::Sim => "sim",
        HardwareKind::Linux => "linux",
        HardwareKind::Sailfish => "sailfish",
    }
}

pub(crate) fn device_record(r: &sqlx::any::AnyRow) -> Result<DeviceRecord> {
    let key: Vec<u8> = r.try_get("public_key")?;
    let hardware = match r.try_get::<&str, _>("hardware")? {
        "sim" => HardwareKind::Sim,
        "linux" => HardwareKind::Linux,
        "sailfish" => HardwareKind::Sailfish,
        other => return Err(crate::corrupt("hardware", other)),
    };
    Ok(DeviceRecord {
        id: parse("device id", r.try_get("id")?)?,
        user: parse("user name", r.try_get("user_name")?)?,
        public_key: key
            .try_into()
            .map_err(|_| crate::corrupt("public key", "not 32 bytes"))?,
        hardware,
        assigned_mode: parse("mode name", r.try_get("assigned_mode")?)?,
        enrolled_at: Timestamp(r.try_get("enrolled_at")?),
        revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp),
        bundle_version: r.try_get::<i64, _>("bundle_version")? as u64,
        bundle: from_json("bundle", r.try_get("bundle_envelope")?)?,
        bundle_issued_at: Timestamp(r.try_get("bundle_issued_at")?),
        bundle_expires_at: Timestamp(r.try_get("bundle_expires_at")?),
        effective_mode: r.try_get("effective_mode")?,
        compliance: parse_compliance(r.try_get("compliance")?)?,
        compliance_reasons: from_json("compliance reasons", r.try_get("compliance_reasons")?)?,
        last_report_seq: r
            .try_get::<Option<i64>, _>("last_report_seq")?
            .map(|s| s as u64),
        last_report_at: r
            .try_get::<Option<i64>, _>("last_report_at")?
            .map(Timestamp),
        last_report: r
            .try_get::<Option<&str>, _>("last_report")?
            .map(|s| from_json("last report", s))
            .transpose()?,
        enrolled_by: r.try_get("enrolled_by")?,
        approved_by: r.try_get("approved_by")?,
        approved_at: r.try_get::<Option<i64>, _>("approved_at")?.map(Timestamp),
        groups: Vec::new(),
        inventory: r
            .try_get::<Option<&str>, _>("inventory")?
            .map(|s| from_json("inventory", s))
            .transpose()?,
        inventory_at: r.try_get::<Option<i64>, _>("inventory_at")?.map(Timestamp),
    })
}

/// Fills in the groups of each record, with one query.
pub(crate) async fn fill_groups<'e>(
    exec: impl sqlx::Executor<'e, Database = Any>,
    store: &Store,
    records: &mut [DeviceRecord],
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let ids = to_json(&records.iter().map(|d| d.id.as_str()).collect::<Vec<_>>());
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT device_id, group_name FROM device_group_members WHERE device_id IN ({})
         ORDER BY device_id, group_name",
        store.json_text_elements("$1")
    )))
    .bind(ids)
    .fetch_all(exec)
    .await?;
    let mut by_device: std::collections::HashMap<String, Vec<DeviceGroupName>> =
        std::collections::HashMap::new();
    for (d, g) in rows {
        by_device
            .entry(d)
            .or_default()
            .push(parse("group name", &g)?);
    }
    for r in records {
        r.groups = by_device.remove(r.id.as_str()).unwrap_or_default();
    }
    Ok(())
}

pub(crate) async fn load_mode(tx: &mut Transaction<'_, Any>, name: &ModeName) -> Result<Mode> {
    let def: Option<String> = sqlx::query_scalar("SELECT definition FROM modes WHERE name = $1")
        .bind(name.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    from_json(
        "mode definition",
        &def.ok_or_else(|| StoreError::NotFound(format!("mode {name}")))?,
    )
}

pub(crate) async fn load_device(
    tx: &mut Transaction<'_, Any>,
    id: &DeviceId,
) -> Result<DeviceRecord> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
    )))
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
    device_record(&row)
}

/// Issues the next bundle for `id` inside `tx`, optionally changing its base mode.
pub(crate) async fn reissue(
    tx: &mut Transaction<'_, Any>,
    id: &DeviceId,
    new_mode: Option<&ModeName>,
    issue: &mut impl FnMut(&BundleRequest) -> IssuedBundle,
) -> Result<DeviceRecord> {
    let zones = crate::zones::load_zone_grants(tx).await?;
    reissue_with(tx, id, new_mode, &zones, issue).await
}

/// [`reissue`] with the zone grants already read (a batch reads them once).
pub(crate) async fn reissue_with(
    tx: &mut Transaction<'_, Any>,
    id: &DeviceId,
    new_mode: Option<&ModeName>,
    zones: &[(redoubt_proto::api::ZoneDefinition, Mode)],
    issue: &mut impl FnMut(&BundleRequest) -> IssuedBundle,
) -> Result<DeviceRecord> {
    let dev = load_device(tx, id).await?;
    if dev.revoked_at.is_some() {
        return Err(StoreError::Conflict(format!("device {id} is revoked")));
    }
    let mode_name = new_mode.unwrap_or(&dev.assigned_mode);
    let base_mode = load_mode(tx, mode_name).await?;
    let group_modes = crate::groups::group_modes_of(tx, id).await?;
    let issued = issue(&BundleRequest {
        device_id: dev.id.clone(),
        user: dev.user.clone(),
        version: dev.bundle_version + 1,
        base_mode,
        group_modes,
        zones: zones.to_vec(),
        last_report: dev.last_report.clone(),
    });
    sqlx::query(
        "UPDATE devices SET assigned_mode = $1, bundle_version = $2, bundle_envelope = $3, bundle_payload = $4,
         bundle_issued_at = $5, bundle_expires_at = $6, effective_mode = $7, compliance = $8, compliance_reasons = $9,
         bundle_stale = 0
         WHERE id = $10",
    )
    .bind(mode_name.as_str())
    .bind(issued.version as i64)
    .bind(to_json(&issued.envelope))
    .bind(&issued.payload_json)
    .bind(issued.issued_at.unix())
    .bind(issued.expires_at.unix())
    .bind(&issued.effective_mode)
    .bind(compliance_str(issued.compliance))
    .bind(to_json(&issued.reasons))
    .bind(id.as_str())
    .execute(&mut **tx)
    .await?;
    load_device(tx, id).await
}

impl Store {
    /// Consumes an enrollment token and enrolls a device with its first bundle, all in
    /// one transaction: a token can enroll exactly one device, even under races. The
    /// device is approved at once only when its person has no other live device (a
    /// first phone, or the replacement of a revoked one); otherwise it awaits an
    /// owner's approval ([`Store::approve_device`]). The
    /// entries `audit` makes from the new device are appended in the same transaction
    /// (`sign` signs the log's new head).
    pub async fn enroll_device(
        &self,
        token_hash: &[u8; 32],
        device: NewDevice,
        now: Timestamp,
        mut issue: impl FnMut(&BundleRequest) -> IssuedBundle,
        audit: impl FnOnce(&DeviceRecord) -> Vec<crate::AuditDraft>,
        sign: crate::HeadSigner<'_>,
    ) -> Result<DeviceRecord> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE enrollment_tokens SET used_at = $1, device_id = $2
             WHERE token_hash = $3 AND used_at IS NULL AND expires_at > $4
             RETURNING user_name, mode, created_by, groups",
        )
        .bind(now.unix())
        .bind(device.id.as_str())
        .bind(&token_hash[..])
        .bind(now.unix())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let state = sqlx::query(
                "SELECT used_at, expires_at FROM enrollment_tokens WHERE token_hash = $1",
            )
            .bind(&token_hash[..])
            .fetch_optional(&mut *tx)
            .await?;
            let refusal = match state {
                None => EnrollRefusal::Invalid,
                Some(r) if r.try_get::<Option<i64>, _>("used_at")?.is_some() => EnrollRefusal::Used,
                Some(_) => EnrollRefusal::Expired,
            };
            return Err(StoreError::Enroll(refusal));
        };
        let user: UserName = parse("user name", row.try_get("user_name")?)?;
        let mode_name: ModeName = parse("mode name", row.try_get("mode")?)?;
        let created_by: String = row.try_get("created_by")?;
        let groups: Vec<DeviceGroupName> = from_json("enrollment groups", row.try_get("groups")?)?;
        // Decided inside the write transaction: two codes for one person used at once
        // cannot both count as the first device.
        let live_devices: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM devices WHERE user_name = $1 AND revoked_at IS NULL",
        )
        .bind(user.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let approved = (live_devices == 0).then_some(APPROVED_AS_FIRST_DEVICE);
        let base_mode = load_mode(&mut tx, &mode_name).await?;
        let group_modes = crate::groups::modes_of_groups(&mut tx, &groups).await?;
        let issued = issue(&BundleRequest {
            device_id: device.id.clone(),
            user: user.clone(),
            version: 1,
            base_mode,
            group_modes,
            zones: crate::zones::load_zone_grants(&mut tx).await?,
            last_report: None,
        });
        let inserted = sqlx::query(
            "INSERT INTO devices (id, user_name, public_key, hardware, assigned_mode, enrolled_at, bundle_version,
             bundle_envelope, bundle_payload, bundle_issued_at, bundle_expires_at, effective_mode, compliance,
             compliance_reasons, enrolled_by, approved_by, approved_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(device.id.as_str())
        .bind(user.as_str())
        .bind(&device.public_key[..])
        .bind(hardware_str(device.hardware))
        .bind(mode_name.as_str())
        .bind(now.unix())
        .bind(issued.version as i64)
        .bind(to_json(&issued.envelope))
        .bind(&issued.payload_json)
        .bind(issued.issued_at.unix())
        .bind(issued.expires_at.unix())
        .bind(&issued.effective_mode)
        .bind(compliance_str(issued.compliance))
        .bind(to_json(&issued.reasons))
        .bind(&created_by)
        .bind(approved)
        .bind(approved.map(|_| now.unix()))
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(e)) = &inserted
            && e.is_unique_violation()
        {
            return Err(StoreError::Conflict(
                "this device key is already enrolled".into(),
            ));
        }
        inserted?;
        for group in &groups {
            sqlx::query(
                "INSERT INTO device_group_members (group_name, device_id, added_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(group.as_str())
            .bind(device.id.as_str())
            .bind(now.unix())
            .execute(&mut *tx)
            .await?;
        }
        let mut rec = load_device(&mut tx, &device.id).await?;
        fill_groups(&mut *tx, self, std::slice::from_mut(&mut rec)).await?;
        crate::audit::append(&mut tx, &audit(&rec), now, sign).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Approves a device awaiting approval on behalf of `approver` (`admin:NAME`), and
    /// appends the entries `audit` makes from the approved device, in one transaction
    /// (`sign` signs the log's new head). Refused with `Forbidden` when `approver`
    /// created the enrollment code that enrolled the device (nobody approves a device
    /// they enrolled themselves), with `Conflict` when it is revoked or already approved.
    pub async fn approve_device(
        &self,
        id: &DeviceId,
        approver: &str,
        now: Timestamp,
        audit: impl FnOnce(&DeviceRecord) -> Vec<crate::AuditDraft>,
        sign: crate::HeadSigner<'_>,
    ) -> Result<DeviceRecord> {
        let mut tx = self.write_tx().await?;
        let dev = load_device(&mut tx, id).await?;
        if dev.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "device {id} is revoked; a revoked device cannot be approved"
            )));
        }
        if let Some(by) = &dev.approved_by {
            return Err(StoreError::Conflict(format!(
                "device {id} is already approved (by {by})"
            )));
        }
        if dev.enrolled_by.as_deref() == Some(approver) {
            return Err(StoreError::Forbidden(format!(
                "{approver} created the enrollment code of device {id} and so may not approve it; another owner must"
            )));
        }
        sqlx::query(
            "UPDATE devices SET approved_by = $1, approved_at = $2 WHERE id = $3 AND approved_at IS NULL",
        )
        .bind(approver)
        .bind(now.unix())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        let mut rec = load_device(&mut tx, id).await?;
        fill_groups(&mut *tx, self, std::slice::from_mut(&mut rec)).await?;
        crate::audit::append(&mut tx, &audit(&rec), now, sign).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// One device.
    pub async fn get_device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(mut rec) = row.as_ref().map(device_record).transpose()? else {
            return Ok(None);
        };
        fill_groups(&self.pool, self, std::slice::from_mut(&mut rec)).await?;
        Ok(Some(rec))
    }

    /// A device's newest bundle as a session sends it: `(version, envelope, issued
    /// at)`, with when the device was revoked; one light read.
    pub async fn device_bundle(
        &self,
        id: &DeviceId,
    ) -> Result<Option<(u64, SignedEnvelope, Timestamp, Option<Timestamp>)>> {
        let row = sqlx::query(
            "SELECT bundle_version, bundle_envelope, bundle_issued_at, revoked_at FROM devices WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                r.try_get::<i64, _>("bundle_version")? as u64,
                from_json("bundle envelope", r.try_get("bundle_envelope")?)?,
                Timestamp(r.try_get("bundle_issued_at")?),
                r.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp),
            ))
        })
        .transpose()
    }

    /// Every device, by enrollment time.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY enrolled_at, rowid"
        )))
        .fetch_all(&self.pool)
        .await?;
        let mut recs = rows.iter().map(device_record).collect::<Result<Vec<_>>>()?;
        fill_groups(&self.pool, self, &mut recs).await?;
        Ok(recs)
    }

    /// Assigns a new base mode and issues the next bundle, in one transaction, which
    /// also appends the entries `audit` makes from the device before and after the
    /// change (`sign` signs the log's new head).
    pub async fn set_device_mode(
        &self,
        id: &DeviceId,
        mode: &ModeName,
        now: Timestamp,
        mut issue: impl FnMut(&BundleRequest) -> IssuedBundle,
        audit: impl FnOnce(&DeviceRecord, &DeviceRecord) -> Vec<crate::AuditDraft>,
        sign: crate::HeadSigner<'_>,
    ) -> Result<DeviceRecord> {
        let mut tx = self.write_tx().await?;
        let before = load_device(&mut tx, id).await?;
        let mut rec = reissue(&mut tx, id, Some(mode), &mut issue).await?;
        crate::audit::append(&mut tx, &audit(&before, &rec), now, sign).await?;
        fill_groups(&mut *tx, self, std::slice::from_mut(&mut rec)).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Issues the next bundle with the same assignments (e.g. to renew its expiry).
    pub async fn renew_bundle(
        &self,
        id: &DeviceId,
        mut issue: impl FnMut(&BundleRequest) -> IssuedBundle,
    ) -> Result<DeviceRecord> {
        let mut tx = self.write_tx().await?;
        let rec = reissue(&mut tx, id, None, &mut issue).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Stores a verified report if its sequence number is newer than the newest one,
    /// with the verdict `evaluate` gives against the device's newest bundle, and in the
    /// same transaction: appends to the audit log the events it carries (each event once,
    /// by id), a change of effective mode or of compliance, and moves the device's
    /// commands on — acknowledged when the report lists them as done, verified when
    /// `judge` (given the verdict) says the report shows their effect. The write is
    /// durable when this returns. Returns the commands verified by this report.
    pub async fn record_report(
        &self,
        report: &ComplianceReport,
        envelope: &SignedEnvelope,
        now: Timestamp,
        evaluate: impl FnOnce(&DeviceRecord) -> (Compliance, Vec<String>),
        judge: impl Fn(&crate::CommandRecord, Compliance) -> Option<String>,
        sign: crate::HeadSigner<'_>,
    ) -> Result<(ReportOutcome, Vec<crate::CommandRecord>)> {
        let mut evaluate = Some(evaluate);
        let mut out = self
            .record_reports(
                &[(report, envelope)],
                now,
                |dev, _| match evaluate.take() {
                    Some(f) => f(dev),
                    None => (Compliance::NonCompliant, vec!["evaluated twice".into()]),
                },
                |c, _, compliance| judge(c, compliance),
                sign,
            )
            .await?;
        out.pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("no outcome for the report".into())))
            .map(|r| (r.outcome, r.verified))
    }

    /// [`Store::record_report`] for a batch of reports in one transaction (one fsync):
    /// group commit. Each report gets its own outcome (a report of a device that does
    /// not exist fails alone); a database failure fails the batch, and
    /// then nothing of it is stored. The audit entries of the whole batch are appended
    /// with one signed head. Several reports of one device are taken in order.
    pub async fn record_reports(
        &self,
        reports: &[(&ComplianceReport, &SignedEnvelope)],
        now: Timestamp,
        mut evaluate: impl FnMut(&DeviceRecord, &ComplianceReport) -> (Compliance, Vec<String>),
        judge: impl Fn(&crate::CommandRecord, &ComplianceReport, Compliance) -> Option<String>,
        sign: crate::HeadSigner<'_>,
    ) -> Result<Vec<Result<ReportStored>>> {
        let mut tx = self.write_tx().await?;
        let mut drafts = Vec::new();
        // Which of the batch's devices have commands in flight, in one query: the
        // others (nearly all, nearly always) skip the per-report command lookup.
        let ids = to_json(
            &reports
                .iter()
                .map(|(r, _)| r.device_id.as_str())
                .collect::<Vec<_>>(),
        );
        let with_commands: std::collections::HashSet<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT DISTINCT device_id FROM device_commands
                 WHERE state IN ('queued', 'delivered', 'acknowledged') AND device_id IN ({})",
                self.json_text_elements("$1")
            )))
            .bind(ids.as_str())
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        // Every device of the batch in one statement; each report is judged against
        // its device as the reports before it in the batch left it.
        let mut devices: std::collections::HashMap<String, DeviceRecord> =
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE id IN ({})",
                self.json_text_elements("$1")
            )))
            .bind(ids.as_str())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| device_record(row).map(|d| (d.id.as_str().to_owned(), d)))
            .collect::<Result<_>>()?;
        let mut rows = Vec::with_capacity(reports.len());
        let mut changed = std::collections::HashSet::new();
        let mut judged = Vec::with_capacity(reports.len());
        for (report, envelope) in reports {
            let Some(dev) = devices.get_mut(report.device_id.as_str()) else {
                judged.push(Err(StoreError::NotFound(format!(
                    "device {}",
                    report.device_id
                ))));
                continue;
            };
            let has_commands = with_commands.contains(dev.id.as_str());
            let (outcome, verified) = record_one(
                &mut tx,
                dev,
                has_commands,
                report,
                envelope,
                now,
                &mut evaluate,
                &judge,
                &mut drafts,
                sign,
                &mut rows,
            )
            .await?;
            let id = dev.id.as_str().to_owned();
            if matches!(outcome, ReportOutcome::Stored(_)) {
                changed.insert(id.clone());
            }
            judged.push(Ok((outcome, verified, id)));
        }
        // One statement for the reports and one for their devices, a chunk at a time.
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            insert_reports(&mut tx, self.backend, chunk, now).await?;
        }
        let changed: Vec<&DeviceRecord> = changed.iter().filter_map(|id| devices.get(id)).collect();
        for chunk in changed.chunks(ROWS_PER_STATEMENT) {
            update_report_state(&mut tx, self.backend, chunk, now).await?;
        }
        crate::audit::append(&mut tx, &drafts, now, sign).await?;
        tx.commit().await?;
        let outcomes = judged
            .into_iter()
            .map(|j| {
                j.and_then(|(outcome, verified, id)| {
                    let device = devices
                        .get(&id)
                        .cloned()
                        .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
                    Ok(ReportStored {
                        outcome,
                        verified,
                        device,
                    })
                })
            })
            .collect();
        Ok(outcomes)
    }

    /// The device's newest reports, newest first: sequence number, when received, and
    /// the verdict then.
    pub async fn recent_reports(
        &self,
        id: &DeviceId,
        limit: u32,
    ) -> Result<Vec<(u64, Timestamp, String)>> {
        let rows = sqlx::query(
            "SELECT seq, received_at, compliance FROM reports WHERE device_id = $1
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(id.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("seq")?.max(0) as u64,
                    Timestamp(r.try_get("received_at")?),
                    r.try_get("compliance")?,
                ))
            })
            .collect()
    }

    /// Number of reports stored for a device (the history).
    pub async fn count_reports(&self, id: &DeviceId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM reports WHERE device_id = $1")
            .bind(id.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Live devices per compliance state; a device whose latest report arrived before
    /// `stale_before` counts as `Stale`.
    pub async fn compliance_counts(
        &self,
        stale_before: Timestamp,
    ) -> Result<Vec<(Compliance, u64)>> {
        let rows = sqlx::query(
            "SELECT CASE WHEN last_report_at IS NOT NULL AND last_report_at < $1 THEN 'stale' ELSE compliance END AS c,
             count(*) AS n FROM devices WHERE revoked_at IS NULL GROUP BY c",
        )
        .bind(stale_before.unix())
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(Compliance, u64)> = Compliance::ALL.iter().map(|c| (*c, 0)).collect();
        for r in rows {
            let c = match r.try_get::<&str, _>("c")? {
                "stale" => Compliance::Stale,
                other => parse_compliance(other)?,
            };
            let n: i64 = r.try_get("n")?;
            if let Some(slot) = out.iter_mut().find(|(k, _)| *k == c) {
                slot.1 = n as u64;
            }
        }
        Ok(out)
    }
}

/// Rows a multi-row statement of a report batch takes at most (at most 8 parameters
/// each, far below SQLite's and PostgreSQL's limits).
const ROWS_PER_STATEMENT: usize = 500;

/// A report to be inserted with its batch.
struct ReportRow {
    device_id: String,
    seq: i64,
    compliance: &'static str,
    envelope: String,
}

/// `VALUES` rows of `width` parameters each, numbered in the order they are bound.
/// SQLite gets anonymous `?`: it looks a numbered parameter up by a linear scan, which
/// made binding a 3000-parameter statement cost more than executing it.
fn values_rows(backend: crate::Backend, rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * width * 6);
    for i in 0..rows {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for j in 0..width {
            if j > 0 {
                sql.push_str(", ");
            }
            match backend {
                crate::Backend::Sqlite => sql.push('?'),
                crate::Backend::Postgres => sql.push_str(&format!("${}", i * width + j + 1)),
            }
        }
        sql.push(')');
    }
    sql
}

/// Inserts reports of a batch in one statement.
async fn insert_reports(
    tx: &mut Transaction<'_, Any>,
    backend: crate::Backend,
    rows: &[ReportRow],
    now: Timestamp,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO reports (device_id, seq, received_at, compliance, envelope) VALUES {}",
        values_rows(backend, rows.len(), 5)
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for r in rows {
        q = q
            .bind(r.device_id.as_str())
            .bind(r.seq)
            .bind(now.unix())
            .bind(r.compliance)
            .bind(r.envelope.as_str());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Writes the latest report state of devices of a batch (received at `now`) in one
/// statement. The inventory is written only for the devices whose inventory a report
/// of this batch brought (`inventory_at` is `now`); for the others the statement binds
/// NULL and the stored one stays (no kilobyte rewritten per report).
async fn update_report_state(
    tx: &mut Transaction<'_, Any>,
    backend: crate::Backend,
    devices: &[&DeviceRecord],
    now: Timestamp,
) -> Result<()> {
    if devices.is_empty() {
        return Ok(());
    }
    let mut sql = format!(
        "WITH v (id, seq, at, report, compliance, reasons, inventory, inventory_at) AS (VALUES {}",
        values_rows(backend, devices.len(), 8)
    );
    sql.push_str(
        ") UPDATE devices SET last_report_seq = v.seq, last_report_at = v.at, last_report = v.report,
         compliance = v.compliance, compliance_reasons = v.reasons,
         inventory = COALESCE(v.inventory, devices.inventory),
         inventory_at = COALESCE(v.inventory_at, devices.inventory_at) FROM v WHERE devices.id = v.id",
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for d in devices {
        let new_inventory = d.inventory.as_ref().filter(|_| d.inventory_at == Some(now));
        q = q
            .bind(d.id.as_str())
            .bind(d.last_report_seq.map(|s| s as i64))
            .bind(d.last_report_at.map(|t| t.unix()))
            .bind(d.last_report.as_ref().map(to_json))
            .bind(compliance_str(d.compliance))
            .bind(to_json(&d.compliance_reasons))
            .bind(new_inventory.map(to_json))
            .bind(new_inventory.map(|_| now.unix()));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// One report of a batch, inside its transaction: judged against `dev` (as the batch's
/// earlier reports left it; updated with this one), its row added to `rows` if it is
/// newer, its events and changes drafted for the audit log (appended by the caller), its
/// commands moved on.
#[allow(clippy::too_many_arguments)]
async fn record_one(
    tx: &mut Transaction<'_, Any>,
    dev: &mut DeviceRecord,
    has_commands: bool,
    report: &ComplianceReport,
    envelope: &SignedEnvelope,
    now: Timestamp,
    evaluate: &mut impl FnMut(&DeviceRecord, &ComplianceReport) -> (Compliance, Vec<String>),
    judge: &impl Fn(&crate::CommandRecord, &ComplianceReport, Compliance) -> Option<String>,
    drafts: &mut Vec<crate::AuditDraft>,
    sign: crate::HeadSigner<'_>,
    rows: &mut Vec<ReportRow>,
) -> Result<(ReportOutcome, Vec<crate::CommandRecord>)> {
    if dev.last_report_seq.is_some_and(|s| report.seq <= s) {
        return Ok((ReportOutcome::Duplicate, Vec::new()));
    }
    let (compliance, reasons) = evaluate(dev, report);
    rows.push(ReportRow {
        device_id: dev.id.as_str().to_owned(),
        seq: report.seq as i64,
        compliance: compliance_str(compliance),
        envelope: to_json(envelope),
    });
    let previous_zones = dev.last_report.as_ref().map(|r| r.zones.as_slice());
    if previous_zones != Some(report.zones.as_slice()) {
        sqlx::query("DELETE FROM device_zones WHERE device_id = $1")
            .bind(dev.id.as_str())
            .execute(&mut **tx)
            .await?;
        // Only zones the organization defined: the phone's holder writes the report,
        // and a made-up zone must not show up in the console's lists.
        for z in &report.zones {
            sqlx::query(
                "INSERT INTO device_zones (device_id, zone) SELECT $1, name FROM zones WHERE name = $2
                 ON CONFLICT DO NOTHING",
            )
            .bind(dev.id.as_str())
            .bind(z.as_str())
            .execute(&mut **tx)
            .await?;
        }
    }
    let actor = format!("device:{}", dev.id);
    let mut audit = Vec::new();
    for e in &report.events {
        let fresh = sqlx::query(
                "INSERT INTO device_events (device_id, event_id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(dev.id.as_str())
            .bind(&e.id)
            .bind(now.unix())
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1;
        if fresh {
            audit.push(crate::AuditDraft {
                actor: actor.clone(),
                source: String::new(),
                action: event_action(&e.kind).into(),
                device_id: Some(dev.id.clone()),
                detail: serde_json::to_value(e).unwrap_or_default(),
            });
        }
    }
    let previous_mode = dev.last_report.as_ref().map(|r| r.effective_mode.as_str());
    if previous_mode != Some(report.effective_mode.as_str()) {
        audit.push(crate::AuditDraft {
            actor: actor.clone(),
            source: String::new(),
            action: "mode.changed".into(),
            device_id: Some(dev.id.clone()),
            detail: serde_json::json!({
                "from": previous_mode,
                "to": report.effective_mode,
                "zones": report.zones,
                "locked_by": report.locked_by,
                "bundle_version": report.bundle_version,
                "seq": report.seq,
            }),
        });
    }
    if dev.compliance != compliance || dev.last_report.is_none() {
        audit.push(crate::AuditDraft {
            actor: "server".into(),
            source: String::new(),
            action: "compliance.changed".into(),
            device_id: Some(dev.id.clone()),
            detail: serde_json::json!({
                "from": dev.compliance.as_str(),
                "to": compliance.as_str(),
                "reasons": reasons,
                "seq": report.seq,
            }),
        });
    }
    drafts.extend(audit);
    // What the next report of the batch for this device is judged against.
    dev.last_report_seq = Some(report.seq);
    dev.last_report_at = Some(now);
    dev.last_report = Some(report.clone());
    dev.compliance = compliance;
    dev.compliance_reasons = reasons;
    if let Some(inventory) = &report.inventory {
        dev.inventory = Some(inventory.clone());
        dev.inventory_at = Some(now);
    }
    let mut verified = Vec::new();
    let open = if has_commands {
        crate::commands::open_in(tx, &dev.id).await?
    } else {
        Vec::new()
    };
    for c in open {
        let mut c = c;
        if report.commands_done.contains(&c.id)
            && c.state != redoubt_proto::CommandState::Acknowledged
        {
            c = crate::commands::transition(
                tx,
                &c,
                redoubt_proto::CommandState::Acknowledged,
                None,
                now,
                &actor,
                sign,
            )
            .await?;
        }
        if let Some(note) = judge(&c, report, compliance) {
            c = crate::commands::transition(
                tx,
                &c,
                redoubt_proto::CommandState::Verified,
                Some(&note),
                now,
                &actor,
                sign,
            )
            .await?;
            verified.push(c);
        }
    }
    Ok((ReportOutcome::Stored(compliance), verified))
}
