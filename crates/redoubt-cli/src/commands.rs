//! What each subcommand does: check local input, call the server once, print the
//! answer as text or as the server's JSON.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use redoubt_client::{ClientError, ServerClient};
use redoubt_proto::api::{
    CommandView, CreateCommand, CreateEnrollment, DeviceView, EnrollmentCreated, ModeView, SetMode,
    WhoAmI,
};
use redoubt_proto::{API_PREFIX, DeviceAction, DeviceId, Mode, ModeName, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::args::{
    Cli, Command, CommandArgs, DevicesCommand, EnrollCommand, EnrollCreate, Global, ModesCommand,
};
use crate::{output, qr};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Whoami => {
            let me: Answer<WhoAmI> = Api::new(g)?.get("whoami").await?;
            me.print(g, output::whoami)
        }
        Command::Enroll(EnrollCommand::Create(args)) => enroll_create(g, args).await,
        Command::Enroll(EnrollCommand::List {
            state,
            user,
            created_by,
            limit,
        }) => {
            let q = redoubt_proto::api::EnrollmentQuery {
                state,
                user,
                created_by,
                ..Default::default()
            };
            crate::fleet::enrollments(g, q, limit).await
        }
        Command::Chat(args) => crate::chat::run(g.json, args).await,
        Command::Zones(cmd) => crate::zones::run(g, cmd).await,
        Command::Audit(cmd) => crate::audit::run(g, cmd).await,
        Command::Tokens(cmd) => crate::tokens::run(g, cmd).await,
        Command::Groups(cmd) => crate::groups::run(g, cmd).await,
        Command::Commands(cmd) => crate::fleet::commands(g, cmd).await,
        Command::Devices(DevicesCommand::List(args)) => crate::fleet::list(g, args).await,
        Command::Devices(DevicesCommand::Counts) => crate::fleet::counts(g).await,
        Command::Devices(DevicesCommand::Bulk(cmd)) => crate::fleet::bulk(g, cmd).await,
        Command::Devices(DevicesCommand::Show { device }) => {
            let view: Answer<DeviceView> = Api::new(g)?.get(&device_path(&device)).await?;
            view.print(g, |d| output::device(d, Timestamp::now()))
        }
        Command::Devices(DevicesCommand::Approve { device }) => {
            let path = format!("{}/approve", device_path(&device));
            let view: Answer<DeviceView> = Api::new(g)?.post(&path, &serde_json::json!({})).await?;
            view.print(g, |d| {
                format!(
                    "approved {} of {}\n\n{}",
                    d.id,
                    d.user,
                    output::device(d, Timestamp::now())
                )
            })
        }
        Command::Devices(DevicesCommand::Lock(a)) => send_command(g, &a, DeviceAction::Lock).await,
        Command::Devices(DevicesCommand::Unlock(a)) => {
            send_command(g, &a, DeviceAction::Unlock).await
        }
        Command::Devices(DevicesCommand::Wipe { args, yes }) => {
            if !yes {
                bail!(
                    "a wipe destroys the keys and data on {} and then revokes it; it cannot be \
                     undone. Run again with --yes to confirm",
                    args.device
                );
            }
            send_command(g, &args, DeviceAction::Wipe).await
        }
        Command::Devices(DevicesCommand::Revoke { device }) => {
            let a = CommandArgs {
                device,
                expires_in: None,
            };
            send_command(g, &a, DeviceAction::Revoke).await
        }
        Command::Devices(DevicesCommand::ExitZone { args, zone }) => {
            send_command(g, &args, DeviceAction::ExitZone { zone }).await
        }
        Command::Devices(DevicesCommand::EnterZone { args, zone }) => {
            send_command(g, &args, DeviceAction::EnterZone { zone }).await
        }
        Command::Devices(DevicesCommand::Commands { device }) => {
            let path = format!("{}/commands", device_path(&device));
            let list: Answer<Vec<CommandView>> = Api::new(g)?.get(&path).await?;
            list.print(g, |l| output::command_table(l, Timestamp::now()))
        }
        Command::Devices(DevicesCommand::SetMode { device, mode }) => {
            let path = format!("{}/mode", device_path(&device));
            let view: Answer<DeviceView> = Api::new(g)?.put(&path, &SetMode { mode }).await?;
            view.print(g, |d| {
                format!(
                    "assigned mode {} to {}\n\n{}",
                    d.assigned_mode,
                    d.id,
                    output::device(d, Timestamp::now())
                )
            })
        }
        Command::Modes(ModesCommand::List) => {
            let modes: Answer<Vec<ModeView>> = Api::new(g)?.get("modes").await?;
            modes.print(g, |m| output::mode_table(m, Timestamp::now()))
        }
        Command::Modes(ModesCommand::Show { mode }) => {
            let view: Answer<ModeView> = Api::new(g)?.get(&mode_path(&mode)).await?;
            view.print(g, |m| output::mode(m, Timestamp::now()))
        }
        Command::Modes(ModesCommand::Apply { file }) => {
            // The file is checked before the connection settings are even looked at.
            let mode = read_mode_file(&file)?;
            let api = Api::new(g)?;
            let view: Answer<ModeView> = api.put(&mode_path(&mode.name), &mode).await?;
            view.print(g, |m| {
                format!(
                    "applied {} as mode {}\n\n{}",
                    file.display(),
                    m.mode.name,
                    output::mode(m, Timestamp::now())
                )
            })
        }
    }
}

async fn enroll_create(g: &Global, args: EnrollCreate) -> anyhow::Result<()> {
    if let Some(path) = &args.png {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent
            && !dir.is_dir()
        {
            bail!(
                "cannot write {}: {} is not a directory",
                path.display(),
                dir.display()
            );
        }
    }
    let body = CreateEnrollment {
        user: args.user,
        mode: args.mode,
        ttl_secs: args.ttl.map(|d| d.as_secs()),
        groups: args.groups,
    };
    let created: Answer<EnrollmentCreated> = Api::new(g)?.post("enrollments", &body).await?;
    if let Some(path) = &args.png {
        qr::write_png(&created.value.url, path)?;
    }
    if g.json {
        return print_json(&created.raw);
    }
    let mut text = output::enrollment(&created.value, Timestamp::now());
    if let Some(path) = &args.png {
        text.push_str(&format!("QR code written to {}\n", path.display()));
    }
    text.push('\n');
    text.push_str(&qr::terminal(&created.value.url)?);
    output::emit(&text)
}

async fn send_command(g: &Global, a: &CommandArgs, action: DeviceAction) -> anyhow::Result<()> {
    let body = CreateCommand {
        action,
        expires_in_secs: a.expires_in.map(|d| d.as_secs()),
    };
    let path = format!("{}/commands", device_path(&a.device));
    let view: Answer<CommandView> = Api::new(g)?.post(&path, &body).await?;
    view.print(g, |c| output::command(c, Timestamp::now()))
}

fn device_path(id: &DeviceId) -> String {
    format!("devices/{id}")
}

fn mode_path(name: &ModeName) -> String {
    format!("modes/{name}")
}

/// Reads and checks a mode file locally; errors name the file, line and field.
fn read_mode_file(path: &Path) -> anyhow::Result<Mode> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
    let mode = redoubt_policy::parse_mode_toml(&text).map_err(|e| {
        let mut place = shown.to_string();
        if let Some(line) = e.line {
            place.push_str(&format!(" line {line}"));
        }
        if let Some(field) = &e.field {
            place.push_str(&format!(", field `{field}`"));
        }
        anyhow!("{place}: {}", e.message)
    })?;
    if redoubt_policy::is_preset(mode.name.as_str()) {
        bail!(
            "{shown}: `{}` is a built-in preset and cannot be changed; give the mode another name",
            mode.name
        );
    }
    Ok(mode)
}

/// A decoded answer together with the JSON the server sent.
pub(crate) struct Answer<T> {
    pub(crate) value: T,
    pub(crate) raw: Value,
}

impl<T> Answer<T> {
    /// Prints the raw JSON under `--json`, else the text `render` makes.
    pub(crate) fn print(
        &self,
        g: &Global,
        render: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        if g.json {
            print_json(&self.raw)
        } else {
            output::emit(&render(&self.value))
        }
    }
}

pub(crate) fn print_json(raw: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(raw).context("cannot format JSON")?;
    text.push('\n');
    output::emit(&text)
}

/// The admin API of one server, with error messages for people.
pub(crate) struct Api {
    pub(crate) client: ServerClient,
}

impl Api {
    pub(crate) fn new(g: &Global) -> anyhow::Result<Self> {
        Ok(Api {
            client: g.connection()?,
        })
    }

    fn path(rel: &str) -> String {
        // Relative, so that a server URL with a path prefix keeps it.
        format!("{}/{rel}", API_PREFIX.trim_start_matches('/'))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, rel: &str) -> anyhow::Result<Answer<T>> {
        let raw = self.client.get::<Value>(&Self::path(rel)).await;
        self.decode(raw)
    }

    pub(crate) async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        rel: &str,
        body: &B,
    ) -> anyhow::Result<Answer<T>> {
        let raw = self.client.post::<B, Value>(&Self::path(rel), body).await;
        self.decode(raw)
    }

    pub(crate) async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        rel: &str,
        body: &B,
    ) -> anyhow::Result<Answer<T>> {
        let raw = self.client.put::<B, Value>(&Self::path(rel), body).await;
        self.decode(raw)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        raw: Result<Value, ClientError>,
    ) -> anyhow::Result<Answer<T>> {
        let raw = raw.map_err(|e| explain(e, &self.client))?;
        let value =
            T::deserialize(&raw).map_err(|e| anyhow!("unexpected answer from the server: {e}"))?;
        Ok(Answer { value, raw })
    }
}

/// Turns a client error into the message a person needs.
fn explain(e: ClientError, client: &ServerClient) -> anyhow::Error {
    let server = client.base().as_str().trim_end_matches('/');
    match e {
        ClientError::Transport { detail, .. } if detail.contains("pinned organization CA") => {
            anyhow!(
                "the certificate of {server} does not match the pinned CA fingerprint \
                 (REDOUBT_CA_FINGERPRINT / --ca-fingerprint); refusing to talk to it"
            )
        }
        ClientError::Transport { detail, .. } => anyhow!("cannot reach {server}: {detail}"),
        ClientError::Api {
            status,
            code,
            message,
        } => {
            let text = if message.starts_with(&code) {
                message
            } else {
                format!("{code}: {message}")
            };
            match status {
                401 => anyhow!(
                    "{text} (HTTP 401): the server does not accept the admin token \
                     (REDOUBT_TOKEN / --token)"
                ),
                _ => anyhow!("{text} (HTTP {status})"),
            }
        }
        ClientError::Decode(detail) => anyhow!("unexpected answer from the server: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn client() -> ServerClient {
        ServerClient::new(
            "https://127.0.0.1:8443/".parse().expect("url"),
            redoubt_proto::Fingerprint::of_der(b"ca"),
            None,
        )
        .expect("client")
    }

    fn check_explain(e: ClientError, expect: &str) {
        assert_eq!(explain(e, &client()).to_string(), expect);
    }

    #[test]
    fn api_errors_show_the_servers_message() {
        check_explain(
            ClientError::Api {
                status: 403,
                code: "forbidden".into(),
                message: "role auditor may not change modes".into(),
            },
            "forbidden: role auditor may not change modes (HTTP 403)",
        );
        check_explain(
            ClientError::Api {
                status: 403,
                code: "forbidden".into(),
                message: "forbidden: role auditor may not change modes".into(),
            },
            "forbidden: role auditor may not change modes (HTTP 403)",
        );
        check_explain(
            ClientError::Api {
                status: 401,
                code: "unauthorized".into(),
                message: "unknown token".into(),
            },
            "unauthorized: unknown token (HTTP 401): the server does not accept the admin \
             token (REDOUBT_TOKEN / --token)",
        );
    }

    #[test]
    fn pin_failures_are_named() {
        check_explain(
            ClientError::Transport {
                server: "https://127.0.0.1:8443".into(),
                detail: "error sending request: invalid peer certificate: Other(the server's \
                         certificate does not chain to the pinned organization CA sha256:00)"
                    .into(),
            },
            "the certificate of https://127.0.0.1:8443 does not match the pinned CA \
             fingerprint (REDOUBT_CA_FINGERPRINT / --ca-fingerprint); refusing to talk to it",
        );
    }

    fn mode_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("night.toml");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        (dir, path)
    }

    const GOOD: &str = r#"name = "night-shift"
network = "organization-only"

[capabilities]
camera = "deny"
microphone = "allow"
bluetooth = "deny"
wifi = "allow"
cellular_data = "allow"
location = "deny"
nfc = "allow"
usb_data = "deny"
screenshots = "deny"
"#;

    #[test]
    fn mode_files() {
        let (_dir, path) = mode_file(GOOD);
        let mode = read_mode_file(&path).expect("good file");
        assert_eq!(mode.name.as_str(), "night-shift");

        let (_dir, path) = mode_file(&GOOD.replace("camera = \"deny\"", "camera = \"maybe\""));
        let err = read_mode_file(&path).expect_err("bad value");
        assert_eq!(
            err.to_string(),
            format!(
                "{} line 5, field `camera`: unknown variant `maybe`, expected `allow` or `deny`",
                path.display()
            )
        );

        let (_dir, path) = mode_file(&GOOD.replace("night-shift", "secure-site"));
        let err = read_mode_file(&path).expect_err("preset");
        assert!(err.to_string().contains("built-in preset"), "{err}");

        let err = read_mode_file(Path::new("/nonexistent/x.toml")).expect_err("missing");
        assert!(
            format!("{err:#}").starts_with("cannot read /nonexistent/x.toml: "),
            "{err:#}"
        );
    }
}
