//! `redoubt audit list|verify|export|org-key`: read, verify and export the server's
//! tamper-evident audit log.
//!
//! Verification happens here, on the operator's machine, with
//! `redoubt_policy::verify_log`: the hash chain must be intact and the head signed by
//! the organization key. Online, the entries are fetched page by page between two
//! reads of the signed head (equal heads mean nothing was appended meanwhile);
//! offline, an export file is checked against a key obtained independently.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;
use redoubt_policy::{AuditError, VerifiedLog, verify_log};
use redoubt_proto::envelope::decode_public_key;
use redoubt_proto::{AuditEntry, AuditExport, DeviceId, SignedEnvelope, Timestamp};
use serde::Deserialize;
use serde_json::json;

use crate::args::Global;
use crate::commands::{Answer, Api, print_json};
use crate::output::{self, clean};

/// The most entries the server returns per request.
const PAGE: u64 = 10_000;
/// Times the online verification re-reads a log that grew while it was read.
const ATTEMPTS: usize = 5;

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List entries, oldest first (who, from where, what, when).
    List {
        /// Only entries about this device.
        #[arg(long, value_name = "DEVICE")]
        device: Option<DeviceId>,
        /// Only entries at or after this time: RFC 3339 (2026-01-31T08:00:00Z) or an
        /// age (30m, 2h, 7days).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<Timestamp>,
        /// Only entries after this sequence number (to see the next page).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// At most this many entries [default: 1000].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: Option<u64>,
    },
    /// Verify the whole log: the hash chain is intact and the organization signed its
    /// newest entry. Exits with status 1 and names the first bad entry otherwise.
    Verify {
        /// Verify this export file offline instead of the server's log (needs
        /// --org-key).
        #[arg(long, value_name = "EXPORT")]
        file: Option<PathBuf>,
        /// The organization's public key (base64), obtained independently of the log
        /// being verified. Online, the server's key is used when omitted.
        #[arg(long, value_name = "BASE64")]
        org_key: Option<String>,
    },
    /// Write the whole log and its signed head to FILE (JSON), after verifying it.
    Export {
        /// Where to write it.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// Verify against this organization key (base64) rather than the server's.
        #[arg(long, value_name = "BASE64")]
        org_key: Option<String>,
    },
    /// Print the organization's public key, to verify exports offline.
    OrgKey,
}

/// Runs an `audit` subcommand.
pub async fn run(g: &Global, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List {
            device,
            since,
            after,
            limit,
        } => list(g, device, since, after, limit).await,
        AuditCommand::Verify {
            file: Some(file),
            org_key,
        } => {
            let Some(key) = org_key else {
                bail!(
                    "verifying {} offline needs the organization key obtained independently \
                     (not from the file itself): pass --org-key BASE64 (`redoubt audit org-key` \
                     prints it)",
                    file.display()
                );
            };
            let export = read_export(&file)?;
            let outcome = check(&export.entries, &export.head, &key)?;
            if outcome.is_err() && export.organization_key != key.trim() {
                eprintln!(
                    "note: the export names another organization key ({}) than --org-key",
                    clean(&export.organization_key)
                );
            }
            report(g, outcome)
        }
        AuditCommand::Verify {
            file: None,
            org_key,
        } => {
            let api = Api::new(g)?;
            let key = match org_key {
                Some(k) => k,
                None => server_key(&api).await?,
            };
            let (entries, head) = fetch_consistent(&api).await?;
            report(g, check(&entries, &head, &key)?)
        }
        AuditCommand::Export {
            file,
            force,
            org_key,
        } => export(g, &file, force, org_key).await,
        AuditCommand::OrgKey => {
            let key: Answer<OrgKey> = Api::new(g)?.get("audit/key").await?;
            key.print(g, |k| format!("{}\n", clean(&k.organization_key)))
        }
    }
}

/// Body of `GET /audit/key`.
#[derive(Debug, Deserialize)]
struct OrgKey {
    organization_key: String,
}

async fn server_key(api: &Api) -> anyhow::Result<String> {
    let key: Answer<OrgKey> = api.get("audit/key").await?;
    Ok(key.value.organization_key)
}

/// Parses `--since`: an RFC 3339 time, or an age counted back from now.
pub(crate) fn parse_since(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = Timestamp::parse(s) {
        return Ok(t);
    }
    let age = humantime::parse_duration(s).map_err(|_| {
        format!("`{s}` is neither an RFC 3339 time (2026-01-31T08:00:00Z) nor an age (2h, 7days)")
    })?;
    let secs = i64::try_from(age.as_secs()).map_err(|_| "too long ago".to_owned())?;
    Ok(Timestamp::now().plus_secs(-secs))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() {
        "audit".into()
    } else {
        format!("audit?{q}")
    }
}

async fn list(
    g: &Global,
    device: Option<DeviceId>,
    since: Option<Timestamp>,
    after: Option<u64>,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let path = query(&[
        ("device", device.map(|d| d.to_string())),
        ("since", since.map(|t| t.to_string())),
        ("after", after.map(|a| a.to_string())),
        ("limit", limit.map(|l| l.to_string())),
    ]);
    let entries: Answer<Vec<AuditEntry>> = Api::new(g)?.get(&path).await?;
    let shown = entries.value.len() as u64;
    if shown > 0 && shown == limit.unwrap_or(1000) {
        let last = entries.value.last().map_or(0, |e| e.seq);
        eprintln!("showing {shown} entries; the next ones with --after {last}");
    }
    entries.print(g, |e| table(e))
}

/// The `audit list` table.
fn table(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no audit entries\n".into();
    }
    let mut t = output::Table::new([
        "SEQ", "TIME", "ACTOR", "SOURCE", "ACTION", "DEVICE", "DETAIL",
    ]);
    for e in entries {
        t.row([
            e.seq.to_string(),
            e.at.to_string(),
            clean(&e.actor),
            clean(&e.source),
            clean(&e.action),
            e.device_id
                .as_ref()
                .map_or(String::new(), |d| clean(d.as_str())),
            clean(&serde_json::to_string(&e.detail).unwrap_or_default()),
        ]);
    }
    t.render()
}

/// Verifies against `key` (base64); the outer error is a bad key, the inner the
/// verdict.
fn check(
    entries: &[AuditEntry],
    head: &SignedEnvelope,
    key: &str,
) -> anyhow::Result<Result<VerifiedLog, AuditError>> {
    let key = decode_public_key(key.trim())
        .ok_or_else(|| anyhow!("the organization key is not a base64 Ed25519 public key"))?;
    Ok(verify_log(entries, head, &key))
}

fn verified_line(v: &VerifiedLog) -> String {
    format!(
        "audit log verified: {} entries, head seq {} hash {}",
        v.entries, v.head.seq, v.head.hash
    )
}

fn tampered_line(e: &AuditError) -> String {
    clean(&format!("audit log TAMPERED: {e}"))
}

/// Prints the verdict; a tampered log is an error (exit status 1).
fn report(g: &Global, outcome: Result<VerifiedLog, AuditError>) -> anyhow::Result<()> {
    match outcome {
        Ok(v) => {
            if g.json {
                print_json(&json!({
                    "verified": true,
                    "entries": v.entries,
                    "head_seq": v.head.seq,
                    "head_hash": v.head.hash,
                    "signed_at": v.head.signed_at,
                }))
            } else {
                output::emit(&format!("{}\n", verified_line(&v)))
            }
        }
        Err(e) => {
            if g.json {
                print_json(&json!({
                    "verified": false,
                    "entry": e.seq(),
                    "error": e.to_string(),
                }))?;
            } else {
                output::emit(&format!("{}\n", tampered_line(&e)))?;
            }
            Err(anyhow!("the audit log failed verification"))
        }
    }
}

/// Every entry and the head, read so that no append fell in between: the head is read
/// before and after paging through the entries, and the reading starts over when it
/// moved.
async fn fetch_consistent(api: &Api) -> anyhow::Result<(Vec<AuditEntry>, SignedEnvelope)> {
    for _ in 0..ATTEMPTS {
        let before = fetch_head(api).await?;
        let mut entries: Vec<AuditEntry> = Vec::new();
        loop {
            let after = entries.last().map(|e| e.seq.to_string());
            let path = query(&[("after", after), ("limit", Some(PAGE.to_string()))]);
            let page: Answer<Vec<AuditEntry>> = api.get(&path).await?;
            let full = page.value.len() as u64 == PAGE;
            entries.extend(page.value);
            if !full {
                break;
            }
        }
        let after = fetch_head(api).await?;
        if after == before {
            return Ok((entries, after));
        }
    }
    bail!(
        "the audit log kept growing while it was read ({ATTEMPTS} attempts); try again, or \
         verify an export (`redoubt audit export FILE`)"
    )
}

async fn fetch_head(api: &Api) -> anyhow::Result<SignedEnvelope> {
    let head: Answer<SignedEnvelope> = api.get("audit/head").await?;
    Ok(head.value)
}

fn read_export(path: &Path) -> anyhow::Result<AuditExport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let export: AuditExport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an audit log export", path.display()))?;
    if export.format != AuditExport::FORMAT {
        bail!(
            "{} is not an audit log export of a known format (format {:?}, expected {:?})",
            path.display(),
            clean(&export.format),
            AuditExport::FORMAT
        );
    }
    Ok(export)
}

async fn export(
    g: &Global,
    file: &Path,
    force: bool,
    org_key: Option<String>,
) -> anyhow::Result<()> {
    if !force && file.exists() {
        bail!("{} exists; pass --force to replace it", file.display());
    }
    let api = Api::new(g)?;
    let answer: Answer<AuditExport> = api.get("audit/export").await?;
    let export = answer.value;
    let key = org_key.unwrap_or_else(|| export.organization_key.clone());
    let verified = match check(&export.entries, &export.head, &key)? {
        Ok(v) => v,
        Err(e) => {
            output::emit(&format!("{}\n", tampered_line(&e)))?;
            bail!(
                "the audit log failed verification; {} was not written",
                file.display()
            );
        }
    };
    let mut text = serde_json::to_string_pretty(&export).context("cannot format the export")?;
    text.push('\n');
    write_file(file, text.as_bytes(), force)?;
    if g.json {
        return print_json(&json!({
            "file": file.display().to_string(),
            "entries": verified.entries,
            "head_seq": verified.head.seq,
            "head_hash": verified.head.hash,
            "organization_key": key,
        }));
    }
    output::emit(&format!(
        "{}\nexported to {}\norganization key: {}\nverify it offline with: redoubt audit verify --file {} --org-key {}\n",
        verified_line(&verified),
        file.display(),
        clean(&key),
        file.display(),
        clean(&key),
    ))
}

/// Writes `bytes` to `path` atomically (a temporary file in the same directory, synced,
/// then moved into place), refusing to replace an existing file unless `replace`.
fn write_file(path: &Path, bytes: &[u8], replace: bool) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        if replace {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot move the export into {}", path.display()))?;
        } else {
            // A hard link never replaces an existing file, even one created just now.
            std::fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow!("{} exists; pass --force to replace it", path.display())
                } else {
                    anyhow!("cannot write {}: {e}", path.display())
                }
            })?;
            std::fs::remove_file(&tmp).ok();
        }
        Ok(())
    })();
    if written.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_not_shown() {
        assert_eq!(clean("admin:alice"), "admin:alice");
        assert_eq!(
            clean("a\u{1b}[2Jb\nc\u{202e}d\t"),
            "a\u{fffd}[2Jb\u{fffd}c\u{fffd}d\u{fffd}"
        );
        assert_eq!(clean("ünïcødé 名前"), "ünïcødé 名前");
    }

    #[test]
    fn since_takes_a_time_or_an_age() {
        assert_eq!(
            parse_since("2026-01-31T08:00:00Z"),
            Ok(Timestamp::parse("2026-01-31T08:00:00Z").expect("time"))
        );
        let before = Timestamp::now();
        let t = parse_since("2h").expect("age");
        assert!(
            t <= before.plus_secs(-7200 + 1) && t >= before.plus_secs(-7200 - 5),
            "{t}"
        );
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn list_queries_are_encoded() {
        assert_eq!(query(&[("after", None)]), "audit");
        assert_eq!(
            query(&[
                ("since", Some("2026-01-31T08:00:00+01:00".into())),
                ("limit", Some("5".into())),
            ]),
            "audit?since=2026-01-31T08%3A00%3A00%2B01%3A00&limit=5"
        );
    }

    #[test]
    fn the_table_shows_every_column_cleaned() {
        let e = AuditEntry {
            seq: 3,
            at: Timestamp(1_790_000_000),
            actor: "admin:eve\u{1b}]0;x".into(),
            source: "10.0.0.9".into(),
            action: "device.mode".into(),
            device_id: Some(DeviceId::from_random([1; 12])),
            detail: json!({"to": "lockdown\n"}),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let text = table(&[e]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("SEQ  TIME"), "{text}");
        assert!(
            lines[1].starts_with(
                "3    2026-09-21T14:13:20Z  admin:eve\u{fffd}]0;x  10.0.0.9  device.mode"
            ),
            "{text}"
        );
        assert!(lines[1].ends_with(r#"{"to":"lockdown\n"}"#), "{text}");
        assert!(!text.contains('\u{1b}'));
        assert_eq!(table(&[]), "no audit entries\n");
    }

    #[test]
    fn exports_are_written_atomically_and_not_over_existing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.json");
        write_file(&path, b"one", false).expect("new file");
        assert_eq!(std::fs::read(&path).expect("read"), b"one");
        let err = write_file(&path, b"two", false).expect_err("exists");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"one");
        write_file(&path, b"three", true).expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"three");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("log.json")],
            "no temporary file left"
        );
    }

    #[test]
    fn a_bad_key_or_file_is_an_error_not_a_verdict() {
        let head = SignedEnvelope {
            kind: "audit-head/v1".into(),
            payload: String::new(),
            signature: String::new(),
        };
        assert!(check(&[], &head, "not-a-key").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.json");
        std::fs::write(&path, "{}").expect("write");
        assert!(read_export(&path).is_err());
        assert!(read_export(&dir.path().join("missing.json")).is_err());
    }
}
