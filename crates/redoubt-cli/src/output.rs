//! Text output for people: aligned tables, key/value blocks, relative times, and the
//! renderings of devices, modes and enrollments. (`--json` output is the server's
//! answer verbatim and does not pass through here.)

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context as _;

use redoubt_proto::api::{
    Approval, CommandView, DeviceView, EnrollmentCreated, ModeView, WhoAmI, ZoneView,
};
use redoubt_proto::{Capability, Rule, Timestamp};

/// Writes `text` to stdout. A reader that went away (`redoubt devices list | head`)
/// is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// A table with a header row; columns are left-aligned and separated by two spaces.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are kept.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().collect());
    }

    /// The table as text, one line per row, each ending in `\n`, without trailing
    /// spaces.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{label:<width$} {value}");
    }
    out
}

/// `then` relative to `now`, coarsely: `in 15m`, `3h ago`, `just now`.
pub fn relative(then: Timestamp, now: Timestamp) -> String {
    let delta = then.unix().saturating_sub(now.unix());
    let secs = delta.unsigned_abs();
    if secs < 5 {
        return "just now".into();
    }
    let amount = match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    };
    if delta > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A timestamp followed by how far it is from `now`.
fn when(t: Timestamp, now: Timestamp) -> String {
    format!("{t} ({})", relative(t, now))
}

/// The answer to `whoami`.
pub fn whoami(me: &WhoAmI) -> String {
    let mut pairs = vec![("name", me.name.clone()), ("role", me.role.to_string())];
    if let Some(id) = &me.id {
        pairs.push(("id", id.to_string()));
    }
    if let Some(t) = me.expires_at {
        pairs.push(("expires", when(t, Timestamp::now())));
    }
    fields(&pairs)
}

/// A new enrollment: its URL and expiry (the QR code is printed separately).
pub fn enrollment(created: &EnrollmentCreated, now: Timestamp) -> String {
    let mut rows = vec![
        ("enrollment URL", created.url.clone()),
        ("expires", when(created.expires_at, now)),
    ];
    if let Some(id) = &created.id {
        rows.push(("code id", id.to_string()));
    }
    fields(&rows)
}

/// The `devices list` table.
/// `devices counts`: the total, then each breakdown as `key: n` lines.
pub fn device_counts(c: &redoubt_proto::api::DeviceCounts) -> String {
    let mut out = format!("devices:   {}\nconnected: {}\n", c.total, c.connected);
    for (title, map) in [
        ("compliance", &c.by_compliance),
        ("effective mode", &c.by_mode),
        ("assigned mode", &c.by_assigned_mode),
        ("hardware", &c.by_hardware),
        ("group", &c.by_group),
        ("zone", &c.by_zone),
    ] {
        out.push_str(&format!("\nby {title}:\n"));
        if map.is_empty() {
            out.push_str("  none\n");
        }
        for (k, n) in map {
            out.push_str(&format!("  {k}: {n}\n"));
        }
    }
    out
}

pub fn device_table(devices: &[DeviceView], now: Timestamp) -> String {
    if devices.is_empty() {
        return "no devices enrolled\n".into();
    }
    let mut table = Table::new([
        "ID",
        "USER",
        "MODE",
        "ASSIGNED",
        "COMPLIANCE",
        "LAST REPORT",
        "APPROVAL",
    ]);
    for d in devices {
        table.row([
            d.id.to_string(),
            d.user.to_string(),
            d.mode.clone(),
            d.assigned_mode.to_string(),
            d.compliance.to_string(),
            d.last_report_at
                .map_or_else(|| "never".into(), |t| relative(t, now)),
            match d.approval {
                Approval::Approved => "approved".into(),
                Approval::Pending => "PENDING".into(),
            },
        ]);
    }
    table.render()
}

/// A device's approval state, with who and when, or what is awaited.
fn approval(d: &DeviceView, now: Timestamp) -> String {
    match d.approval {
        Approval::Pending => format!(
            "PENDING: awaiting an owner's approval (redoubt devices approve {})",
            d.id
        ),
        Approval::Approved => {
            let by = d.approved_by.as_deref().unwrap_or("unknown");
            match d.approved_at {
                Some(t) => format!("approved by {by}, {}", when(t, now)),
                None => format!("approved by {by}"),
            }
        }
    }
}

/// Every field of one device, capabilities one per line.
pub fn device(d: &DeviceView, now: Timestamp) -> String {
    let reported = match d.reported_bundle_version {
        Some(v) if v == d.bundle_version => format!("{} (reported)", d.bundle_version),
        Some(v) => format!("{} (device reports {v})", d.bundle_version),
        None => format!("{} (not reported yet)", d.bundle_version),
    };
    let last_report = match (d.last_report_at, d.last_report_seq) {
        (Some(t), Some(seq)) => format!("{} #{seq}", when(t, now)),
        (Some(t), None) => when(t, now),
        (None, _) => "never".into(),
    };
    let mut out = fields(&[
        ("id", d.id.to_string()),
        ("user", d.user.to_string()),
        ("effective mode", d.mode.clone()),
        (
            "reported mode",
            d.reported_mode
                .clone()
                .unwrap_or_else(|| "not reported yet".into()),
        ),
        ("assigned mode", d.assigned_mode.to_string()),
        (
            "groups",
            if d.groups.is_empty() {
                "none".into()
            } else {
                d.groups
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "zones",
            if d.zones.is_empty() {
                "none".into()
            } else {
                d.zones
                    .iter()
                    .map(|z| z.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "locked",
            d.locked_by
                .as_ref()
                .map_or_else(|| "no".into(), |c| format!("yes ({c})")),
        ),
        (
            "revoked",
            d.revoked_at.map_or_else(|| "no".into(), |t| when(t, now)),
        ),
        ("approval", approval(d, now)),
        ("compliance", d.compliance.to_string()),
        ("hardware", d.hardware.to_string()),
        ("connected", if d.connected { "yes" } else { "no" }.into()),
        ("enrolled", when(d.enrolled_at, now)),
        ("bundle version", reported),
        ("last report", last_report),
        (
            "network",
            d.network
                .map_or_else(|| "not reported".into(), |n| n.to_string()),
        ),
    ]);
    if !d.compliance_reasons.is_empty() {
        out.push_str("\ncompliance reasons:\n");
        for reason in &d.compliance_reasons {
            let _ = writeln!(out, "  - {reason}");
        }
    }
    if d.capabilities.is_empty() {
        out.push_str("\ncapabilities: not reported yet\n");
    } else {
        out.push_str("\ncapabilities:\n");
        let width = d
            .capabilities
            .keys()
            .map(|c| c.as_str().len())
            .max()
            .unwrap_or(0);
        for (cap, state) in &d.capabilities {
            let _ = writeln!(out, "  {:<width$}  {state}", cap.as_str());
        }
    }
    out.push_str(&inventory(d, now));
    out
}

/// The device's inventory as its agent reported it (its holder writes it: every text
/// is cleaned before it reaches the terminal).
fn inventory(d: &DeviceView, now: Timestamp) -> String {
    let Some(inv) = &d.inventory else {
        return "\ninventory: not reported yet\n".into();
    };
    let text = |t: &Option<String>| t.as_deref().map_or_else(|| "unknown".into(), clean);
    let system = match (&inv.os_name, &inv.os_version) {
        (Some(name), Some(version)) => format!("{} {}", clean(name), clean(version)),
        (name, None) => text(name),
        (None, version) => format!("unknown {}", text(version)),
    };
    let storage = match (inv.storage_free_bytes, inv.storage_total_bytes) {
        (Some(free), Some(total)) => format!("{} free of {}", bytes(free), bytes(total)),
        (None, Some(total)) => bytes(total),
        (Some(free), None) => format!("{} free", bytes(free)),
        (None, None) => "unknown".into(),
    };
    let battery = match (inv.battery_percent, inv.battery_charging) {
        (Some(p), Some(true)) => format!("{p}% (charging)"),
        (Some(p), Some(false)) => format!("{p}% (not charging)"),
        (Some(p), None) => format!("{p}%"),
        (None, Some(true)) => "charging".into(),
        (None, _) => "unknown".into(),
    };
    let mut out = match d.inventory_at {
        Some(t) => format!("\ninventory (reported {}):\n", when(t, now)),
        None => "\ninventory:\n".into(),
    };
    for line in fields(&[
        ("model", text(&inv.model)),
        ("system", system),
        ("kernel", text(&inv.kernel)),
        ("agent", clean(&inv.agent_version)),
        ("backend", clean(&inv.hardware_backend)),
        ("storage", storage),
        ("battery", battery),
    ])
    .lines()
    {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// A number of bytes for people, in decimal units: `512 B`, `31.9 GB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        // 999.96 would print as 1000.0 of this unit: the next one says it better.
        if value < 999.95 {
            break;
        }
        value /= 1000.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

fn action_label(c: &CommandView) -> String {
    match &c.action {
        redoubt_proto::DeviceAction::ExitZone { zone } => format!("exit-zone {zone}"),
        redoubt_proto::DeviceAction::EnterZone { zone } => format!("enter-zone {zone}"),
        other => other.name().into(),
    }
}

/// One command and its lifecycle.
pub fn command(c: &CommandView, now: Timestamp) -> String {
    let opt = |t: Option<Timestamp>| t.map_or_else(|| "-".into(), |t| when(t, now));
    let mut out = String::new();
    if c.existing {
        out.push_str("this request matches a command already standing; nothing new was sent\n");
    }
    out.push_str(&fields(&[
        ("command", c.id.to_string()),
        ("device", c.device_id.to_string()),
        ("action", action_label(c)),
        ("state", c.state.to_string()),
        (
            "created",
            format!("{} by {}", when(c.created_at, now), c.created_by),
        ),
        ("expires", when(c.expires_at, now)),
        ("delivered", opt(c.delivered_at)),
        ("acknowledged", opt(c.acknowledged_at)),
        ("verified", opt(c.verified_at)),
        ("note", c.note.clone().unwrap_or_else(|| "-".into())),
    ]));
    out
}

/// The `devices commands` table.
pub fn command_table(list: &[CommandView], now: Timestamp) -> String {
    if list.is_empty() {
        return "no commands for this device\n".into();
    }
    let mut table = Table::new(["COMMAND", "ACTION", "STATE", "CREATED", "BY", "NOTE"]);
    for c in list {
        table.row([
            c.id.to_string(),
            action_label(c),
            c.state.to_string(),
            relative(c.created_at, now),
            c.created_by.clone(),
            c.note.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}

/// The `commands list` table: the fleet's commands with their devices.
pub fn fleet_command_table(list: &[CommandView], now: Timestamp) -> String {
    if list.is_empty() {
        return "no commands\n".into();
    }
    let mut table = Table::new(["COMMAND", "DEVICE", "ACTION", "STATE", "CREATED", "BY"]);
    for c in list {
        table.row([
            c.id.to_string(),
            c.device_id.to_string(),
            action_label(c),
            c.state.to_string(),
            relative(c.created_at, now),
            c.created_by.clone(),
        ]);
    }
    table.render()
}

/// The `enroll list` table.
pub fn enrollment_table(list: &[redoubt_proto::api::EnrollmentView], now: Timestamp) -> String {
    if list.is_empty() {
        return "no enrollment codes\n".into();
    }
    let mut table = Table::new([
        "CODE ID", "USER", "MODE", "STATE", "CREATED", "EXPIRES", "BY", "DEVICE",
    ]);
    for e in list {
        table.row([
            e.id.to_string(),
            e.user.to_string(),
            e.mode.to_string(),
            e.state.to_string(),
            relative(e.created_at, now),
            relative(e.expires_at, now),
            e.created_by.clone(),
            e.device_id
                .as_ref()
                .map_or_else(|| "-".into(), |d| d.to_string()),
        ]);
    }
    table.render()
}

/// The `zones list` table.
pub fn zone_table(zones: &[ZoneView]) -> String {
    if zones.is_empty() {
        return "no zones; define one with `redoubt zones apply FILE.toml`\n".into();
    }
    let mut table = Table::new(["ZONE", "MODE", "CHECKPOINTS", "WI-FI BSSIDS", "GATES"]);
    for z in zones {
        let d = &z.definition;
        table.row([
            d.name.to_string(),
            d.mode.to_string(),
            d.checkpoints
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            d.wifi_bssids.len().to_string(),
            z.gate_credentials.values().sum::<u64>().to_string(),
        ]);
    }
    table.render()
}

/// One zone.
pub fn zone(z: &ZoneView, now: Timestamp) -> String {
    let d = &z.definition;
    let mut out = fields(&[
        ("zone", d.name.to_string()),
        ("description", d.description.clone()),
        ("mode inside", d.mode.to_string()),
        (
            "wi-fi BSSIDs",
            if d.wifi_bssids.is_empty() {
                "none (codes only)".into()
            } else {
                d.wifi_bssids
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("updated", when(z.updated_at, now)),
    ]);
    out.push_str("\ncheckpoints:\n");
    for k in &z.checkpoint_keys {
        let gates = z
            .gate_credentials
            .get(k.name.as_str())
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "  {}  key {}  gate credentials: {gates}",
            k.name, k.public_key
        );
    }
    out
}

fn rule_str(rule: Rule) -> &'static str {
    match rule {
        Rule::Allow => "allow",
        Rule::Deny => "deny",
    }
}

fn apps(list: Option<&[String]>) -> String {
    match list {
        None => "any app".into(),
        Some([]) => "none".into(),
        Some(apps) => apps.join(", "),
    }
}

fn kind(view: &ModeView) -> &'static str {
    if view.builtin { "preset" } else { "custom" }
}

/// The `modes list` table.
pub fn mode_table(modes: &[ModeView], now: Timestamp) -> String {
    if modes.is_empty() {
        return "no modes\n".into();
    }
    let mut table = Table::new(["NAME", "KIND", "NETWORK", "DENIED", "APPS", "UPDATED"]);
    for view in modes {
        let m = &view.mode;
        let denied: Vec<&str> = Capability::ALL
            .into_iter()
            .filter(|c| m.capabilities.get(*c) == Rule::Deny)
            .map(Capability::as_str)
            .collect();
        let denied = match denied.len() {
            0 => "none".to_owned(),
            n if n == Capability::ALL.len() => "all".to_owned(),
            _ => denied.join(","),
        };
        let app_count = match &m.app_allowlist {
            None => "any".to_owned(),
            Some(list) => list.len().to_string(),
        };
        table.row([
            m.name.to_string(),
            kind(view).to_owned(),
            m.network.to_string(),
            denied,
            app_count,
            relative(view.updated_at, now),
        ]);
    }
    table.render()
}

/// One mode: its header fields and a capability → allow/deny table.
pub fn mode(view: &ModeView, now: Timestamp) -> String {
    let m = &view.mode;
    let mut pairs = vec![("mode", format!("{} ({})", m.name, kind(view)))];
    if !m.description.is_empty() {
        pairs.push(("description", m.description.clone()));
    }
    pairs.push(("network", m.network.to_string()));
    pairs.push(("apps", apps(m.app_allowlist.as_deref())));
    pairs.push(("updated", when(view.updated_at, now)));
    let mut table = Table::new(["CAPABILITY", "RULE"]);
    for cap in Capability::ALL {
        table.row([
            cap.to_string(),
            rule_str(m.capabilities.get(cap)).to_owned(),
        ]);
    }
    format!("{}\n{}", fields(&pairs), table.render())
}

/// Whether `c` must not reach a terminal as it is: a control character (escape
/// sequences, cursor moves) or a bidirectional override (reorders what is shown).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text from the network or the log with every unsafe character replaced by U+FFFD,
/// so that it cannot move the cursor, recolor the terminal or reorder what is shown.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if unsafe_char(c) { '\u{fffd}' } else { c })
        .collect()
}

/// Like [`clean`], but keeps line breaks and turns tabs into spaces.
pub(crate) fn clean_multiline(s: &str) -> String {
    s.chars()
        .filter(|&c| c != '\r')
        .map(|c| match c {
            '\n' => '\n',
            '\t' => ' ',
            c if unsafe_char(c) => '\u{fffd}',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use redoubt_proto::{
        CapabilityRules, CapabilityState, Compliance, HardwareKind, Mode, NetworkReach,
        NetworkState,
    };

    use super::*;

    const NOW: Timestamp = Timestamp(1_790_000_000);

    fn check(got: &str, expect: &str) {
        assert_eq!(
            got, expect,
            "\n--- got ---\n{got}\n--- expected ---\n{expect}"
        );
    }

    #[test]
    fn table_aligns_columns_and_trims_trailing_spaces() {
        let mut t = Table::new(["ID", "NAME", "X"]);
        t.row(["1".into(), "alice".into(), String::new()]);
        t.row(["22222".into(), "bö".into(), "y".into()]);
        check(
            &t.render(),
            "ID     NAME   X\n\
             1      alice\n\
             22222  bö     y\n",
        );
    }

    #[test]
    fn table_with_ragged_rows() {
        let mut t = Table::new(["A"]);
        t.row(["x".into(), "extra".into()]);
        t.row([]);
        check(&t.render(), "A\nx  extra\n\n");
    }

    #[test]
    fn relative_times() {
        let at = |d| relative(Timestamp(NOW.0 + d), NOW);
        assert_eq!(at(0), "just now");
        assert_eq!(at(900), "in 15m");
        assert_eq!(at(-30), "30s ago");
        assert_eq!(at(-7_200), "2h ago");
        assert_eq!(at(3 * 86_400), "in 3d");
    }

    fn device_view() -> DeviceView {
        DeviceView {
            id: "dev_0123456789abcdef01234567".parse().expect("id"),
            user: "alice".parse().expect("user"),
            mode: "secure-site".into(),
            assigned_mode: "standard".parse().expect("mode"),
            compliance: Compliance::NonCompliant,
            compliance_reasons: vec!["camera is on but secure-site denies it".into()],
            capabilities: BTreeMap::from([
                (Capability::Camera, CapabilityState::On),
                (Capability::CellularData, CapabilityState::Off),
            ]),
            network: Some(NetworkState::OrganizationOnly),
            bundle_version: 3,
            reported_bundle_version: Some(2),
            last_report_at: Some(Timestamp(NOW.0 - 120)),
            last_report_seq: Some(7),
            hardware: HardwareKind::Sim,
            connected: true,
            enrolled_at: Timestamp(NOW.0 - 3 * 86_400),
            reported_mode: Some("secure-site".into()),
            zones: vec!["lab".parse().expect("zone")],
            locked_by: None,
            revoked_at: None,
            approval: Approval::Approved,
            approved_by: Some("first-device".into()),
            approved_at: Some(Timestamp(NOW.0 - 3 * 86_400)),
            enrolled_by: Some("admin:op".into()),
            groups: vec!["unit-7".parse().unwrap()],
            inventory: Some(redoubt_proto::Inventory {
                model: Some("Simulated phone (SIMULATED)".into()),
                os_name: Some("Debian GNU/Linux".into()),
                os_version: Some("13".into()),
                kernel: Some("6.12.38+deb13-amd64".into()),
                agent_version: "0.1.0".into(),
                hardware_backend: "simulated".into(),
                storage_total_bytes: Some(31_900_000_000),
                storage_free_bytes: Some(12_345_678_901),
                battery_percent: None,
                battery_charging: None,
            }),
            inventory_at: Some(Timestamp(NOW.0 - 120)),
        }
    }

    #[test]
    fn device_list() {
        let mut pending = device_view();
        pending.id = "dev_ffffffffffffffffffffffff".parse().expect("id");
        pending.user = "bob".parse().expect("user");
        pending.mode = "standard".into();
        pending.compliance = Compliance::Pending;
        pending.last_report_at = None;
        pending.approval = Approval::Pending;
        check(
            &device_table(&[device_view(), pending], NOW),
            "ID                            USER   MODE         ASSIGNED  COMPLIANCE     LAST REPORT  APPROVAL\n\
             dev_0123456789abcdef01234567  alice  secure-site  standard  non_compliant  2m ago       approved\n\
             dev_ffffffffffffffffffffffff  bob    standard     standard  pending        never        PENDING\n",
        );
        check(&device_table(&[], NOW), "no devices enrolled\n");
    }

    #[test]
    fn counts_list_every_breakdown() {
        let mut c = redoubt_proto::api::DeviceCounts {
            total: 3,
            connected: 2,
            ..Default::default()
        };
        c.by_compliance.insert("compliant".into(), 3);
        c.by_group.insert("unit-7".into(), 1);
        let text = device_counts(&c);
        assert!(text.starts_with("devices:   3\nconnected: 2\n"), "{text}");
        assert!(text.contains("by compliance:\n  compliant: 3\n"), "{text}");
        assert!(text.contains("by group:\n  unit-7: 1\n"), "{text}");
        assert!(text.contains("by hardware:\n  none\n"), "{text}");
    }

    #[test]
    fn device_details() {
        check(
            &device(&device_view(), NOW),
            "id:             dev_0123456789abcdef01234567\n\
             user:           alice\n\
             effective mode: secure-site\n\
             reported mode:  secure-site\n\
             assigned mode:  standard\n\
             groups:         unit-7\n\
             zones:          lab\n\
             locked:         no\n\
             revoked:        no\n\
             approval:       approved by first-device, 2026-09-18T14:13:20Z (3d ago)\n\
             compliance:     non_compliant\n\
             hardware:       sim (SIMULATED)\n\
             connected:      yes\n\
             enrolled:       2026-09-18T14:13:20Z (3d ago)\n\
             bundle version: 3 (device reports 2)\n\
             last report:    2026-09-21T14:11:20Z (2m ago) #7\n\
             network:        organization-only\n\
             \n\
             compliance reasons:\n  \
             - camera is on but secure-site denies it\n\
             \n\
             capabilities:\n  \
             camera         on\n  \
             cellular_data  off\n\
             \n\
             inventory (reported 2026-09-21T14:11:20Z (2m ago)):\n  \
             model:   Simulated phone (SIMULATED)\n  \
             system:  Debian GNU/Linux 13\n  \
             kernel:  6.12.38+deb13-amd64\n  \
             agent:   0.1.0\n  \
             backend: simulated\n  \
             storage: 12.3 GB free of 31.9 GB\n  \
             battery: unknown\n",
        );
    }

    #[test]
    fn an_inventory_is_shown_as_far_as_it_is_known_and_cleaned() {
        let mut d = device_view();
        d.inventory = None;
        d.inventory_at = None;
        assert!(
            device(&d, NOW).ends_with("\ninventory: not reported yet\n"),
            "{}",
            device(&d, NOW)
        );
        let mut d = device_view();
        if let Some(inv) = d.inventory.as_mut() {
            inv.model = Some("Evil\u{202e}phone".into());
            inv.os_version = None;
            inv.kernel = None;
            inv.storage_free_bytes = None;
            inv.storage_total_bytes = Some(512);
            inv.battery_percent = Some(81);
            inv.battery_charging = Some(true);
        }
        let out = device(&d, NOW);
        for line in [
            "  model:   Evil\u{fffd}phone\n",
            "  system:  Debian GNU/Linux\n",
            "  kernel:  unknown\n",
            "  storage: 512 B\n",
            "  battery: 81% (charging)\n",
        ] {
            assert!(out.contains(line), "{line:?} in {out}");
        }
        assert_eq!(bytes(999_999), "1.0 MB");
        assert_eq!(bytes(999_949), "999.9 kB");
        assert_eq!(bytes(1_000_000), "1.0 MB");
        assert_eq!(bytes(u64::MAX), "18446.7 PB");
    }

    #[test]
    fn a_pending_device_says_what_it_awaits() {
        let mut d = device_view();
        d.approval = Approval::Pending;
        d.approved_by = None;
        d.approved_at = None;
        let out = device(&d, NOW);
        assert!(
            out.contains(
                "approval:       PENDING: awaiting an owner's approval (redoubt devices approve dev_0123456789abcdef01234567)\n"
            ),
            "{out}"
        );
    }

    fn mode_view() -> ModeView {
        let mut capabilities = CapabilityRules::all(Rule::Allow);
        capabilities.set(Capability::Camera, Rule::Deny);
        capabilities.set(Capability::Location, Rule::Deny);
        ModeView {
            mode: Mode {
                name: "night-shift".parse().expect("name"),
                description: "Guards at night".into(),
                network: NetworkReach::OrganizationOnly,
                capabilities,
                app_allowlist: Some(vec!["org.redoubt.messenger".into()]),
            },
            builtin: false,
            updated_at: Timestamp(NOW.0 - 60),
        }
    }

    #[test]
    fn mode_details() {
        check(
            &mode(&mode_view(), NOW),
            "mode:        night-shift (custom)\n\
             description: Guards at night\n\
             network:     organization-only\n\
             apps:        org.redoubt.messenger\n\
             updated:     2026-09-21T14:12:20Z (1m ago)\n\
             \n\
             CAPABILITY     RULE\n\
             camera         deny\n\
             microphone     allow\n\
             bluetooth      allow\n\
             wifi           allow\n\
             cellular_data  allow\n\
             location       deny\n\
             nfc            allow\n\
             usb_data       allow\n\
             screenshots    allow\n",
        );
    }

    #[test]
    fn mode_list() {
        let mut open = mode_view();
        open.mode.name = "standard".parse().expect("name");
        open.mode.network = NetworkReach::Open;
        open.mode.capabilities = CapabilityRules::all(Rule::Allow);
        open.mode.app_allowlist = None;
        open.builtin = true;
        check(
            &mode_table(&[open, mode_view()], NOW),
            "NAME         KIND    NETWORK            DENIED           APPS  UPDATED\n\
             standard     preset  open               none             any   1m ago\n\
             night-shift  custom  organization-only  camera,location  1     1m ago\n",
        );
    }

    #[test]
    fn whoami_and_enrollment() {
        let me = WhoAmI {
            name: "ops".into(),
            role: redoubt_proto::api::Role::Operator,
            id: None,
            expires_at: None,
        };
        check(&whoami(&me), "name: ops\nrole: operator\n");
        let created = EnrollmentCreated {
            url: "redoubt://enroll?x".into(),
            expires_at: Timestamp(NOW.0 + 900),
            id: Some(redoubt_proto::api::CredentialId::from_hash(&[0xab; 32])),
        };
        check(
            &enrollment(&created, NOW),
            "enrollment URL: redoubt://enroll?x\n\
             expires:        2026-09-21T14:28:20Z (in 15m)\n\
             code id:        abababababababab\n",
        );
    }
}
