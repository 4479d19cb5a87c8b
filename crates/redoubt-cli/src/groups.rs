//! `redoubt groups create|list|show|add|remove|set-mode`: device groups (a unit, a
//! department, a site). A group may assign a mode; each of its devices gets the
//! strictest of its own mode and its groups' modes.

use clap::Subcommand;
use redoubt_proto::api::{
    CreateDeviceGroup, DeviceGroupView, GroupChange, GroupDevices, SetGroupMode,
};
use redoubt_proto::{DeviceGroupName, DeviceId, ModeName, Timestamp};

use crate::args::Global;
use crate::commands::{Answer, Api};
use crate::output::{self, Table};

/// `groups` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Create a group.
    Create {
        /// Its name: a-z, 0-9, '-' and '.', starting with a letter.
        #[arg(value_name = "GROUP")]
        name: DeviceGroupName,
        /// What it is, for people.
        #[arg(long, default_value = "")]
        description: String,
        /// The mode it assigns to its devices.
        #[arg(long, value_name = "MODE")]
        mode: Option<ModeName>,
    },
    /// List the groups with their modes and sizes.
    List,
    /// Show one group.
    Show {
        /// The group.
        #[arg(value_name = "GROUP")]
        name: DeviceGroupName,
    },
    /// Add devices to a group.
    Add {
        /// The group.
        #[arg(value_name = "GROUP")]
        name: DeviceGroupName,
        /// The devices.
        #[arg(value_name = "DEVICE", required = true)]
        devices: Vec<DeviceId>,
    },
    /// Remove devices from a group.
    Remove {
        /// The group.
        #[arg(value_name = "GROUP")]
        name: DeviceGroupName,
        /// The devices.
        #[arg(value_name = "DEVICE", required = true)]
        devices: Vec<DeviceId>,
    },
    /// Assign a mode to every device of a group (`none` takes the group's mode away).
    SetMode {
        /// The group.
        #[arg(value_name = "GROUP")]
        name: DeviceGroupName,
        /// The mode, or `none`.
        #[arg(value_name = "MODE")]
        mode: String,
    },
}

fn group_path(name: &DeviceGroupName) -> String {
    format!("groups/{name}")
}

/// Runs a `groups` subcommand.
pub async fn run(g: &Global, cmd: GroupsCommand) -> anyhow::Result<()> {
    let now = Timestamp::now();
    match cmd {
        GroupsCommand::Create {
            name,
            description,
            mode,
        } => {
            let body = CreateDeviceGroup {
                name,
                description,
                mode,
            };
            let done: Answer<DeviceGroupView> = Api::new(g)?.post("groups", &body).await?;
            done.print(g, |v| {
                format!("created group {}\n\n{}", v.name, group(v, now))
            })
        }
        GroupsCommand::List => {
            let list: Answer<Vec<DeviceGroupView>> = Api::new(g)?.get("groups").await?;
            list.print(g, |l| group_table(l, now))
        }
        GroupsCommand::Show { name } => {
            let v: Answer<DeviceGroupView> = Api::new(g)?.get(&group_path(&name)).await?;
            v.print(g, |v| group(v, now))
        }
        GroupsCommand::Add { name, devices } => {
            let path = format!("{}/devices", group_path(&name));
            let done: Answer<GroupChange> =
                Api::new(g)?.post(&path, &GroupDevices { devices }).await?;
            done.print(g, |c| change("added to", c, now))
        }
        GroupsCommand::Remove { name, devices } => {
            let path = format!("{}/devices/remove", group_path(&name));
            let done: Answer<GroupChange> =
                Api::new(g)?.post(&path, &GroupDevices { devices }).await?;
            done.print(g, |c| change("removed from", c, now))
        }
        GroupsCommand::SetMode { name, mode } => {
            let mode = match mode.as_str() {
                "none" => None,
                m => Some(m.parse::<ModeName>()?),
            };
            let path = format!("{}/mode", group_path(&name));
            let done: Answer<GroupChange> = Api::new(g)?.put(&path, &SetGroupMode { mode }).await?;
            done.print(g, |c| {
                format!(
                    "group {} now assigns {}; {} device(s) get a new bundle\n\n{}",
                    c.group.name,
                    c.group
                        .mode
                        .as_ref()
                        .map_or("no mode".into(), |m| format!("mode {m}")),
                    c.reissued,
                    group(&c.group, now)
                )
            })
        }
    }
}

fn change(what: &str, c: &GroupChange, now: Timestamp) -> String {
    format!(
        "{} device(s) {what} group {}; {} get a new bundle\n\n{}",
        c.changed,
        c.group.name,
        c.reissued,
        group(&c.group, now)
    )
}

/// One group, as `groups show` prints it.
pub fn group(v: &DeviceGroupView, now: Timestamp) -> String {
    format!(
        "group:       {}\ndescription: {}\nmode:        {}\ndevices:     {}\ncreated:     {} by {}\nchanged:     {}\n",
        v.name,
        v.description,
        v.mode.as_ref().map_or("-".into(), ToString::to_string),
        v.devices,
        output::relative(v.created_at, now),
        v.created_by,
        output::relative(v.updated_at, now),
    )
}

/// The table of `groups list`.
pub fn group_table(list: &[DeviceGroupView], now: Timestamp) -> String {
    if list.is_empty() {
        return "no device groups\n".into();
    }
    let mut t = Table::new(["GROUP", "MODE", "DEVICES", "CHANGED", "DESCRIPTION"]);
    for v in list {
        t.row([
            v.name.to_string(),
            v.mode.as_ref().map_or("-".into(), ToString::to_string),
            v.devices.to_string(),
            output::relative(v.updated_at, now),
            v.description.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_listed_with_their_modes_and_sizes() {
        let now = Timestamp(1_800_000_000);
        let v = DeviceGroupView {
            name: "unit-7".parse().unwrap(),
            description: "Seventh unit".into(),
            mode: Some("secure-site".parse().unwrap()),
            devices: 12,
            created_by: "admin:olga".into(),
            created_at: now,
            updated_at: now,
        };
        let text = group_table(std::slice::from_ref(&v), now);
        assert!(text.starts_with("GROUP "), "{text}");
        assert!(text.contains("unit-7  secure-site  12"), "{text}");
        assert!(group(&v, now).contains("by admin:olga"));
        assert!("Unit 7".parse::<DeviceGroupName>().is_err());
    }
}
