//! Fleet commands: `devices list` with filters (following the server's pages) and
//! `devices counts`.

use anyhow::bail;
use clap::{Args, Subcommand};
use redoubt_proto::api::{
    BulkAction, BulkDone, BulkRequest, CommandQuery, DeviceCount, DeviceCounts, DeviceQuery,
    DeviceView,
};
use redoubt_proto::{
    Compliance, DeviceGroupName, HardwareKind, ModeName, Timestamp, UserName, ZoneName,
};

use crate::args::Global;
use crate::commands::{Answer, Api, print_json};
use crate::output;

/// The filters every fleet command takes: each narrows; none means every live device.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Verdict: compliant, non_compliant, pending or stale.
    #[arg(long, value_name = "VERDICT", value_parser = parse_compliance)]
    pub compliance: Option<Compliance>,
    /// Effective mode of the newest bundle.
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// The operator's own assignment.
    #[arg(long, value_name = "MODE")]
    pub assigned_mode: Option<ModeName>,
    /// Owner.
    #[arg(long, value_name = "USER")]
    pub user: Option<UserName>,
    /// Hardware backend: sim, linux or sailfish.
    #[arg(long, value_name = "KIND", value_parser = parse_hardware)]
    pub hardware: Option<HardwareKind>,
    /// Members of this device group.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<DeviceGroupName>,
    /// Inside this zone, as last reported.
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<ZoneName>,
    /// No report since TIME (RFC 3339) or for an age (2h, 7days), or never.
    #[arg(long, value_name = "TIME|AGE", value_parser = crate::audit::parse_since)]
    pub seen_before: Option<Timestamp>,
    /// A report at or after TIME (RFC 3339) or within an age (2h, 7days).
    #[arg(long, value_name = "TIME|AGE", value_parser = crate::audit::parse_since)]
    pub seen_after: Option<Timestamp>,
}

impl FilterArgs {
    /// The query these filters make.
    pub fn query(&self) -> DeviceQuery {
        DeviceQuery {
            compliance: self.compliance,
            mode: self.mode.clone(),
            assigned_mode: self.assigned_mode.clone(),
            user: self.user.clone(),
            hardware: self.hardware,
            group: self.group.clone(),
            zone: self.zone.clone(),
            seen_before: self.seen_before,
            seen_after: self.seen_after,
            ..Default::default()
        }
    }
}

fn parse_compliance(s: &str) -> Result<Compliance, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "one of compliant, non_compliant, pending, stale".to_owned())
}

fn parse_hardware(s: &str) -> Result<HardwareKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "one of sim, linux, sailfish".to_owned())
}

/// `devices list` arguments.
#[derive(Debug, Clone, Default, Args)]
pub struct ListArgs {
    /// Which devices.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Revoked devices too.
    #[arg(long)]
    pub revoked: bool,
    /// Print at most this many (default: all, fetched page by page).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

/// `devices?…` for a query: its fields as query-string pairs.
pub fn devices_path(q: &DeviceQuery) -> String {
    query_path("devices", q)
}

/// `BASE?…`: a query's fields as query-string pairs.
fn query_path(base: &str, q: &impl serde::Serialize) -> String {
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(q) {
        for (k, v) in map {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            pairs.append_pair(&k, &v);
        }
    }
    let q = pairs.finish();
    if q.is_empty() {
        base.into()
    } else {
        format!("{base}?{q}")
    }
}

/// Fetches every page of a list ([`fetch_pages`]) and prints the server's JSON of the
/// items or `table` of them.
async fn print_pages<T: serde::de::DeserializeOwned>(
    g: &Global,
    field: &str,
    limit: Option<u64>,
    path: impl FnMut(Option<String>, u32) -> String,
    table: fn(&[T], Timestamp) -> String,
) -> anyhow::Result<()> {
    let (items, raw): (Vec<T>, _) = fetch_pages(&Api::new(g)?, field, limit, path).await?;
    if g.json {
        return print_json(&serde_json::Value::Array(raw));
    }
    output::emit(&table(&items, Timestamp::now()))
}

/// Fetches every page of a list (at most `limit` items): `path` makes the request for
/// a page from its cursor and size; `field` names the page's items. Returns the
/// server's JSON of each item and the items read as `T`.
async fn fetch_pages<T: serde::de::DeserializeOwned>(
    api: &Api,
    field: &str,
    limit: Option<u64>,
    mut path: impl FnMut(Option<String>, u32) -> String,
) -> anyhow::Result<(Vec<T>, Vec<serde_json::Value>)> {
    let mut raw: Vec<serde_json::Value> = Vec::new();
    let mut after = None;
    loop {
        let left = limit.map(|l| l.saturating_sub(raw.len() as u64));
        if left == Some(0) {
            break;
        }
        let size = left.map_or(DeviceQuery::MAX_LIMIT, |l| {
            u32::try_from(l)
                .unwrap_or(u32::MAX)
                .min(DeviceQuery::MAX_LIMIT)
        });
        let page: Answer<serde_json::Value> = api.get(&path(after.take(), size)).await?;
        if let Some(items) = page.raw.get(field).and_then(|d| d.as_array()) {
            raw.extend(items.iter().cloned());
        }
        match page.raw.get("next").and_then(|n| n.as_str()) {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    let items = raw
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<Result<Vec<T>, _>>()?;
    Ok((items, raw))
}

/// `devices list`.
pub async fn list(g: &Global, args: ListArgs) -> anyhow::Result<()> {
    let mut q = args.filter.query();
    q.revoked = args.revoked;
    print_pages::<DeviceView>(
        g,
        "devices",
        args.limit,
        |after, size| {
            devices_path(&DeviceQuery {
                after,
                limit: Some(size),
                ..q.clone()
            })
        },
        output::device_table,
    )
    .await
}

/// `devices bulk …`: one action on every device a filter covers.
#[derive(Debug, Subcommand)]
pub enum BulkCommand {
    /// Assign a base mode (each device gets a new bundle).
    SetMode {
        /// The mode.
        #[arg(value_name = "MODE")]
        new_mode: ModeName,
        #[command(flatten)]
        args: BulkArgs,
    },
    /// Lock each phone.
    Lock(BulkArgs),
    /// Lift each phone's lock.
    Unlock(BulkArgs),
    /// Wipe each phone (owners only; also needs --yes).
    Wipe {
        #[command(flatten)]
        args: BulkArgs,
        /// Confirms that the keys and data on every one of these phones are destroyed.
        #[arg(long)]
        yes: bool,
    },
}

/// What every bulk action takes.
#[derive(Debug, Args)]
pub struct BulkArgs {
    /// Which devices.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The number of devices the filter covers, as confirmed; without it, the command
    /// only says how many that is.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Commands: how long until each expires, e.g. 7d (server default otherwise).
    #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_ttl)]
    pub expires_in: Option<std::time::Duration>,
}

/// `devices bulk …`.
pub async fn bulk(g: &Global, cmd: BulkCommand) -> anyhow::Result<()> {
    let (action, mode, args) = match cmd {
        BulkCommand::SetMode { new_mode, args } => (BulkAction::SetMode, Some(new_mode), args),
        BulkCommand::Lock(args) => (BulkAction::Lock, None, args),
        BulkCommand::Unlock(args) => (BulkAction::Unlock, None, args),
        BulkCommand::Wipe { args, yes } => {
            if !yes && args.count.is_some() {
                bail!(
                    "a wipe destroys the keys and data on every phone the filter covers and then \
                     revokes them; it cannot be undone. Run again with --yes to confirm"
                );
            }
            (BulkAction::Wipe, None, args)
        }
    };
    let api = Api::new(g)?;
    let filter = args.filter.query();
    let Some(expected) = args.count else {
        let mut path = devices_path(&filter);
        path = path.replacen("devices", "devices/count", 1);
        let n: Answer<DeviceCount> = api.get(&path).await?;
        bail!(
            "the filter covers {} device(s) now; to {} them, run again with --count {}",
            n.value.count,
            action.name().replace('_', "-"),
            n.value.count
        );
    };
    let req = BulkRequest {
        filter,
        action,
        mode,
        expected_count: expected,
        expires_in_secs: args.expires_in.map(|d| d.as_secs()),
    };
    let done: Answer<BulkDone> = api.post("devices/bulk", &req).await?;
    done.print(g, |d| {
        format!(
            "{}: {} device(s) get their own signed {} (bulk action {})\n",
            d.action,
            d.devices,
            if d.action == "set_mode" {
                "bundle"
            } else {
                "command"
            },
            d.id
        )
    })
}

/// `commands …`.
#[derive(Debug, Subcommand)]
pub enum CommandsCommand {
    /// The fleet's commands, oldest first (every page is fetched).
    List {
        /// Only in this state: queued, delivered, acknowledged, verified, expired, failed.
        #[arg(long, value_name = "STATE", value_parser = parse_state)]
        state: Option<redoubt_proto::CommandState>,
        /// Only this action: lock, unlock, wipe, revoke, exit-zone, enter-zone.
        #[arg(long, value_name = "ACTION")]
        action: Option<String>,
        /// Only this device's.
        #[arg(long, value_name = "DEVICE")]
        device: Option<redoubt_proto::DeviceId>,
        /// Print at most this many.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

fn parse_state(s: &str) -> Result<redoubt_proto::CommandState, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "one of queued, delivered, acknowledged, verified, expired, failed".to_owned())
}

/// `commands list`.
pub async fn commands(g: &Global, cmd: CommandsCommand) -> anyhow::Result<()> {
    let CommandsCommand::List {
        state,
        action,
        device,
        limit,
    } = cmd;
    let q = CommandQuery {
        state,
        action,
        device,
        ..Default::default()
    };
    print_pages(
        g,
        "commands",
        limit,
        |after, size| {
            let page = CommandQuery {
                after,
                limit: Some(size),
                ..q.clone()
            };
            query_path("commands", &page)
        },
        output::fleet_command_table,
    )
    .await
}

/// `enroll list`.
pub async fn enrollments(
    g: &Global,
    q: redoubt_proto::api::EnrollmentQuery,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    print_pages(
        g,
        "enrollments",
        limit,
        |after, size| {
            let page = redoubt_proto::api::EnrollmentQuery {
                after,
                limit: Some(size),
                ..q.clone()
            };
            query_path("enrollments", &page)
        },
        output::enrollment_table,
    )
    .await
}

/// `devices counts`.
pub async fn counts(g: &Global) -> anyhow::Result<()> {
    let counts: Answer<DeviceCounts> = Api::new(g)?.get("devices/counts").await?;
    counts.print(g, output::device_counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_a_query_string_and_nothing_else() {
        assert_eq!(devices_path(&DeviceQuery::default()), "devices");
        let q = DeviceQuery {
            compliance: Some(Compliance::Stale),
            group: Some("unit-7".parse().unwrap()),
            revoked: true,
            after: Some("1800000000.dev_000000000000000000000001".into()),
            limit: Some(500),
            ..Default::default()
        };
        let path = devices_path(&q);
        assert!(path.starts_with("devices?"), "{path}");
        for pair in [
            "compliance=stale",
            "group=unit-7",
            "revoked=true",
            "limit=500",
            "after=1800000000.dev_",
        ] {
            assert!(path.contains(pair), "{pair} missing from {path}");
        }
        assert!(parse_compliance("stale").is_ok() && parse_compliance("bad").is_err());
        assert!(parse_hardware("sailfish").is_ok() && parse_hardware("ios").is_err());
    }
}
