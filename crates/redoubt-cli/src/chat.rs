//! `redoubt chat --state DIR ...`: the messenger whose directory is DIR (or the
//! `messenger/` directory of the agent state directory DIR). Every command first
//! applies what the server holds for the device, so what it prints is current. Needs
//! only the messenger directory: never the agent's state nor the device key.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use redoubt_messenger::{ConversationView, MessageView, Messenger, MessengerDir};
use redoubt_proto::GroupId;
use serde_json::json;

use crate::args::{ChatArgs, ChatCommand};
use crate::output::{clean, clean_multiline};

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn message_line(m: &MessageView) -> String {
    if m.notice {
        // Not written by anyone: this device noticed a change of people's devices.
        return format!("{}  * {}", m.sent_at, clean(&m.text));
    }
    let what = match &m.file {
        Some(f) => format!(
            "[file {} ({} bytes); save-file {} PATH]",
            clean(&f.name),
            f.size,
            m.id
        ),
        None => clean_multiline(&m.text),
    };
    let status = if m.outgoing {
        format!(
            "  ({}, delivered to {}, read by {})",
            m.status, m.delivered_to, m.read_by
        )
    } else {
        String::new()
    };
    format!(
        "{}  {} ({}): {what}{status}",
        m.sent_at, m.from_user, m.from_device
    )
}

fn held_note(c: &ConversationView) -> Option<String> {
    (c.held > 0).then(|| {
        format!(
            "{} message(s) held by the server: {}",
            c.held,
            clean(c.held_reason.as_deref().unwrap_or("clearance not met"))
        )
    })
}

async fn print_messages(
    m: &Messenger,
    gid: &GroupId,
    json_out: bool,
    after: Option<i64>,
) -> anyhow::Result<Option<i64>> {
    let messages = m.history(gid, after).await?;
    let last = messages.last().map(|x| x.local_id).or(after);
    if json_out {
        for msg in &messages {
            println!("{}", serde_json::to_string(msg)?);
        }
    } else {
        for msg in &messages {
            println!("{}", message_line(msg));
        }
    }
    Ok(last)
}

/// Runs a chat command.
pub async fn run(json_out: bool, args: ChatArgs) -> anyhow::Result<()> {
    let dir = MessengerDir::resolve(&args.state)?;
    let m = Messenger::open(dir.root())
        .await
        .with_context(|| format!("opening the messenger in {}", dir.root().display()))?;
    let Some(command) = args.command else {
        return crate::chat_tui::run(m).await;
    };
    match command {
        ChatCommand::Create {
            name,
            members,
            clearance,
        } => {
            let (gid, report) = m.create(&name, &members, clearance).await?;
            if json_out {
                print_json(
                    &json!({"conversation": gid, "added": report.added, "skipped": report.skipped}),
                )
            } else {
                println!(
                    "created conversation {gid} ({} device(s) added)",
                    report.added.len()
                );
                for s in &report.skipped {
                    println!("  not added: {s}");
                }
                Ok(())
            }
        }
        ChatCommand::Send { conversation, text } => {
            let id = m.send_text(&conversation, &text).await?;
            if json_out {
                print_json(&json!({"id": id, "conversation": conversation}))
            } else {
                println!("sent {id}");
                Ok(())
            }
        }
        ChatCommand::SendFile { conversation, path } => {
            let id = m.send_file(&conversation, &path).await?;
            if json_out {
                print_json(&json!({"id": id, "conversation": conversation}))
            } else {
                println!("sent {id}");
                Ok(())
            }
        }
        ChatCommand::SaveFile {
            conversation,
            message,
            path,
        } => {
            let file = m.save_file(&conversation, &message, &path).await?;
            if json_out {
                print_json(&json!({"path": path, "name": file.name, "size": file.size}))
            } else {
                println!(
                    "saved {} ({} bytes) to {}",
                    clean(&file.name),
                    file.size,
                    path.display()
                );
                Ok(())
            }
        }
        ChatCommand::Read { conversation } => {
            let report = m.sync().await?;
            let conv = m.conversation(&conversation).await?;
            if json_out {
                let messages = m.messages(&conversation, None).await?;
                let notices: Vec<MessageView> = m
                    .history(&conversation, None)
                    .await?
                    .into_iter()
                    .filter(|x| x.notice)
                    .collect();
                m.mark_read(&conversation).await?;
                print_json(&json!({
                    "conversation": conv,
                    "messages": messages,
                    "notices": notices,
                    "refused": report.refused,
                    "expired_total": report.expired_total,
                }))
            } else {
                println!(
                    "# {} ({})  members: {}",
                    clean(&conv.name),
                    conv.id,
                    conv.members
                        .iter()
                        .map(|u| u.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(note) = held_note(&conv) {
                    println!("# {note}");
                }
                if conv.status == "removed" || conv.status == "refused" {
                    println!("# this device is no longer a member ({})", conv.status);
                }
                print_messages(&m, &conversation, false, None).await?;
                m.mark_read(&conversation).await?;
                Ok(())
            }
        }
        ChatCommand::Add { conversation, user } => {
            let report = m.add(&conversation, &[user]).await?;
            if json_out {
                print_json(&json!({"added": report.added, "skipped": report.skipped}))
            } else {
                println!("added {} device(s)", report.added.len());
                for s in &report.skipped {
                    println!("  not added: {s}");
                }
                Ok(())
            }
        }
        ChatCommand::Remove { conversation, user } => {
            let removed = m.remove(&conversation, Some(&user), None).await?;
            if json_out {
                print_json(&json!({"removed": removed}))
            } else {
                println!("removed {} device(s) of {user}", removed.len());
                Ok(())
            }
        }
        ChatCommand::List => {
            m.sync().await?;
            let list = m.conversations().await?;
            if json_out {
                print_json(&serde_json::to_value(&list)?)
            } else {
                for c in &list {
                    let clearance = c
                        .clearance
                        .as_ref()
                        .map(|m| format!(" [clearance {m}]"))
                        .unwrap_or_default();
                    println!("{}  {}{clearance}  ({})", c.id, clean(&c.name), c.status);
                    if let Some(note) = held_note(c) {
                        println!("    {note}");
                    }
                }
                Ok(())
            }
        }
        ChatCommand::Sync => {
            let report = m.sync().await?;
            if json_out {
                print_json(&serde_json::to_value(&report)?)
            } else {
                println!("applied {} item(s)", report.processed);
                for r in &report.refused {
                    println!("  refused: {}", clean(&r.to_string()));
                }
                Ok(())
            }
        }
        ChatCommand::Listen => listen(&m, json_out).await,
    }
}

/// Prints new messages of every conversation as they arrive.
async fn listen(m: &Messenger, json_out: bool) -> anyhow::Result<()> {
    let mut seen: std::collections::BTreeMap<GroupId, Option<i64>> = Default::default();
    for c in m.conversations().await? {
        let last = m.history(&c.id, None).await?.last().map(|x| x.local_id);
        seen.insert(c.id, last);
    }
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let mut socket = match m.net().push_channel().await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("push channel unavailable ({e}); polling");
                None
            }
        };
        loop {
            if let Err(e) = m.sync().await {
                eprintln!("sync failed: {e:#}");
                break;
            }
            for c in m.conversations().await? {
                let after = seen.get(&c.id).copied().flatten();
                let last = print_messages(m, &c.id, json_out, after).await?;
                seen.insert(c.id, last);
            }
            let wait = async {
                match socket.as_mut() {
                    Some(s) => s.next().await.is_some_and(|f| f.is_ok()),
                    None => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        true
                    }
                }
            };
            tokio::select! {
                _ = &mut stop => return Ok(()),
                alive = wait => if !alive { break },
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use redoubt_messenger::MessageView;

    use super::message_line;

    #[test]
    fn message_text_cannot_drive_the_terminal() {
        let m = MessageView {
            local_id: 1,
            id: "00".into(),
            from_user: "mallory".parse().expect("user"),
            from_device: "dev_0123456789abcdef01234567".parse().expect("device"),
            sent_at: redoubt_proto::Timestamp(1_790_000_000),
            text: "hi\u{1b}[2J\u{202e}olleh\nsecond line".into(),
            file: None,
            outgoing: false,
            status: "received".into(),
            delivered_to: 0,
            read_by: 0,
            notice: false,
        };
        let line = message_line(&m);
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{202e}'),
            "{line:?}"
        );
        assert!(
            line.ends_with("hi\u{fffd}[2J\u{fffd}olleh\nsecond line"),
            "{line:?}"
        );
    }
}
