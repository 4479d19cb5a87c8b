//! `redoubt chat --state DIR` without a subcommand: the interactive terminal chat.
//!
//! [`App`] is the pure state of the screen: the conversations with their messages,
//! the selected one, the input line, the status line. [`App::handle_key`] turns a key
//! into an [`Action`] for the messenger (a command typed in the input line is parsed
//! by [`parse_command`]) and [`draw`] renders the state. Neither does any IO, so both
//! are tested without a terminal or a server.
//!
//! [`run`] is the IO loop. It waits at once for terminal events, the push channel's
//! doorbells (each means "something changed on the server: sync") and a polling tick
//! for when the push channel is down. One messenger operation (a sync, a send, ...)
//! is in flight at a time, queued in order, while the screen keeps answering keys: a
//! slow or unreachable server never freezes it, and failures end up in the status
//! line. The terminal is restored on every way out, panics included.
//!
//! Text from the network (messages, names, reasons) is shown with its control
//! characters replaced, so a message cannot send escape sequences to the terminal.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IsTerminal as _, Stdout};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::output::{clean, clean_multiline};
use anyhow::{Context as _, bail};
use crossterm::event::{
    DisableBracketedPaste, EnableBracketedPaste, Event, EventStream, KeyCode, KeyEvent,
    KeyEventKind, KeyModifiers,
};
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use futures_util::{Stream, StreamExt as _};
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::{Frame, Terminal};
use redoubt_messenger::{ConversationView, MessageView, Messenger, Queued};
use redoubt_proto::{GroupId, ModeName, Timestamp, UserName};
use tokio::time::Instant;

/// How often to sync when the push channel is down.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// How often to sync anyway while the push channel is up (a missed doorbell).
const SAFETY_SYNC_EVERY: Duration = Duration::from_secs(60);
/// How long to wait before connecting the push channel again.
const RECONNECT_AFTER: Duration = Duration::from_secs(5);
/// How long connecting the push channel may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

const CREATE_USAGE: &str = "usage: /create NAME USER[,USER...] [--clearance MODE]";
const ADD_USAGE: &str = "usage: /add USER[,USER...]";
const REMOVE_USAGE: &str = "usage: /remove USER";
const FILE_USAGE: &str = "usage: /file PATH";
const SAVE_USAGE: &str = "usage: /save MESSAGE_ID PATH";

/// The help shown in the message pane by `/help`.
const HELP: &[&str] = &[
    "Keys",
    "  Up/Down Tab/Shift-Tab  change conversation",
    "  PageUp/PageDown        scroll the messages",
    "  Enter                  send the input line",
    "  Esc, Ctrl-C            quit (Esc first closes this help)",
    "  Left/Right Home/End Backspace/Delete Ctrl-U Ctrl-W: edit",
    "",
    "Commands",
    "  /create NAME USER[,USER...] [--clearance MODE]",
    "                         new conversation; quote a NAME",
    "                         with spaces: /create \"site ops\" bob",
    "  /add USER[,USER...]    add people (all their devices)",
    "  /remove USER           remove a person's devices",
    "  /file PATH             send a file (~/ is your home)",
    "  /save MESSAGE_ID PATH  save a received file; MESSAGE_ID",
    "                         is the id after [file ...], or",
    "                         its first characters",
    "  /help                  this help",
    "  /quit                  leave",
    "  //text                 send a text starting with '/'",
];

/// What the user asked for that the IO loop carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Leave the chat.
    Quit,
    /// Show the help.
    Help,
    /// Send a text to the selected conversation.
    SendText(String),
    /// Send a file to the selected conversation.
    SendFile(PathBuf),
    /// Save the file of a message of the selected conversation.
    SaveFile {
        /// The message's id, or (from [`parse_command`]) its first characters.
        message: String,
        /// Where to write it.
        path: PathBuf,
    },
    /// Create a conversation.
    Create {
        /// Its name.
        name: String,
        /// The other people.
        members: Vec<UserName>,
        /// The mode its recipients must comply with.
        clearance: Option<ModeName>,
    },
    /// Add people to the selected conversation.
    Add(Vec<UserName>),
    /// Remove a person's devices from the selected conversation.
    Remove(UserName),
}

/// The state of the push channel, as shown in the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Connecting the push channel.
    Connecting,
    /// The push channel is up: the server rings on every change.
    Push,
    /// The push channel is down (why); syncing every few seconds.
    Polling(String),
}

/// A line for the status bar: what just happened, or what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The text.
    pub text: String,
    /// Whether it reports a failure.
    pub error: bool,
}

impl Notice {
    fn info(text: impl Into<String>) -> Self {
        Notice {
            text: text.into(),
            error: false,
        }
    }

    fn error(text: impl Into<String>) -> Self {
        Notice {
            text: text.into(),
            error: true,
        }
    }
}

/// Everything the local store knows, read after each operation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The conversations, in the store's order.
    pub conversations: Vec<ConversationView>,
    /// The messages of each conversation, oldest first.
    pub messages: HashMap<GroupId, Vec<MessageView>>,
}

/// The state of the screen. Changed only by its methods; drawn by [`draw`].
#[derive(Debug)]
pub struct App {
    /// `user@device`.
    me: String,
    /// Today's date (`YYYY-MM-DD`, UTC): today's messages show only their time.
    today: String,
    conversations: Vec<ConversationView>,
    messages: HashMap<GroupId, Vec<MessageView>>,
    selected: usize,
    input: String,
    /// Cursor position in `input`, in characters.
    cursor: usize,
    /// The input line was submitted and its operation is running: it is kept, read
    /// only, until the operation succeeds (then cleared) or fails (then editable).
    pending: bool,
    /// Lines scrolled up from the newest message.
    scroll: usize,
    /// The message pane including its border (for paging and clamping the scroll).
    pane: Rect,
    notice: Option<Notice>,
    connection: Connection,
    /// The operation in flight, if any.
    busy: Option<String>,
    show_help: bool,
}

impl App {
    /// A screen with nothing loaded yet for `me` (`user@device`).
    pub fn new(me: String) -> Self {
        App {
            me,
            today: String::new(),
            conversations: Vec::new(),
            messages: HashMap::new(),
            selected: 0,
            input: String::new(),
            cursor: 0,
            pending: false,
            scroll: 0,
            pane: Rect::new(0, 0, 80, 20),
            notice: None,
            connection: Connection::Connecting,
            busy: None,
            show_help: false,
        }
    }

    /// The selected conversation.
    pub fn selected(&self) -> Option<&ConversationView> {
        self.conversations.get(self.selected)
    }

    fn selected_id(&self) -> Option<GroupId> {
        self.selected().map(|c| c.id.clone())
    }

    fn selected_messages(&self) -> &[MessageView] {
        self.selected()
            .and_then(|c| self.messages.get(&c.id))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Received messages of `gid` not yet marked read.
    pub fn unread(&self, gid: &GroupId) -> usize {
        self.messages
            .get(gid)
            .map(|ms| ms.iter().filter(|m| is_unread(m)).count())
            .unwrap_or(0)
    }

    /// Replaces what is known, keeping the selected conversation selected.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        let keep = self.selected_id();
        let old_len = self.selected_messages().len();
        self.conversations = snapshot.conversations;
        self.messages = snapshot.messages;
        match keep.and_then(|id| self.conversations.iter().position(|c| c.id == id)) {
            Some(i) => {
                self.selected = i;
                // Keep the lines on screen in place while scrolled up.
                let added = self.selected_messages().len().saturating_sub(old_len);
                if self.scroll > 0 && added > 0 {
                    let width = self.pane_width();
                    let new_lines: usize = self
                        .selected_messages()
                        .iter()
                        .rev()
                        .take(added)
                        .map(|m| self.lines_of(m, width).len())
                        .sum();
                    self.scroll += new_lines;
                }
            }
            None => {
                self.selected = self
                    .selected
                    .min(self.conversations.len().saturating_sub(1));
                self.scroll = 0;
            }
        }
        self.clamp_scroll();
    }

    /// Selects the conversation `gid` if it is known.
    pub fn select_id(&mut self, gid: &GroupId) {
        if let Some(i) = self.conversations.iter().position(|c| &c.id == gid) {
            self.select_index(i);
        }
    }

    fn select_index(&mut self, i: usize) {
        if i != self.selected {
            self.selected = i;
            self.scroll = 0;
        }
        self.show_help = false;
    }

    /// Sets the message pane's area (border included), as laid out by [`draw`].
    pub fn set_pane(&mut self, pane: Rect) {
        if pane != self.pane {
            self.pane = pane;
            self.clamp_scroll();
        }
    }

    /// Sets today's date as `YYYY-MM-DD` (UTC).
    pub fn set_today(&mut self, today: String) {
        self.today = today;
    }

    /// Sets the push channel's state.
    pub fn set_connection(&mut self, connection: Connection) {
        self.connection = connection;
    }

    /// Sets what operation is running (`None`: idle).
    pub fn set_busy(&mut self, busy: Option<String>) {
        self.busy = busy;
    }

    /// Shows a notice in the status line.
    pub fn set_notice(&mut self, notice: Notice) {
        self.notice = Some(notice);
    }

    /// The submitted input line's operation ended: clear the line if it succeeded,
    /// make it editable again either way.
    pub fn finish_input(&mut self, ok: bool) {
        if ok {
            self.input.clear();
            self.cursor = 0;
        }
        self.pending = false;
    }

    /// The conversation to mark read and its newest unread message, when the selected
    /// conversation (the one on screen) has unread messages.
    pub fn wants_mark_read(&self) -> Option<(GroupId, i64)> {
        let c = self.selected()?;
        let newest = self
            .selected_messages()
            .iter()
            .rev()
            .find(|m| is_unread(m))?;
        Some((c.id.clone(), newest.local_id))
    }

    /// Inserts pasted text at the cursor (line breaks become spaces: the input is one
    /// line).
    pub fn paste(&mut self, text: &str) {
        if self.pending {
            return;
        }
        for c in text.chars() {
            let c = if c == '\n' || c == '\t' { ' ' } else { c };
            if c != '\r' && !c.is_control() {
                self.insert(c);
            }
        }
    }

    /// Handles one key press. Returns what the IO loop must do, if anything; editing,
    /// moving the selection, scrolling and `/help` are done here.
    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => return Some(Action::Quit),
            KeyCode::Esc if self.show_help => self.show_help = false,
            KeyCode::Esc => return Some(Action::Quit),
            KeyCode::Up => self.move_selection(-1, false),
            KeyCode::Down => self.move_selection(1, false),
            KeyCode::BackTab => self.move_selection(-1, true),
            KeyCode::Tab => self.move_selection(1, true),
            KeyCode::PageUp => {
                self.scroll = self.scroll.saturating_add(self.page());
                self.clamp_scroll();
            }
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(self.page()),
            KeyCode::Enter => return self.submit(),
            _ if self.pending => {
                self.notice = Some(Notice::error(
                    "still working on the last line; it stays here until it is done",
                ));
            }
            KeyCode::Char('u') if ctrl => {
                self.input.clear();
                self.cursor = 0;
            }
            KeyCode::Char('w') if ctrl => self.delete_word(),
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.input.chars().count(),
            KeyCode::Char(_) if ctrl || key.modifiers.contains(KeyModifiers::ALT) => {}
            KeyCode::Char(c) => self.insert(c),
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.remove_at(self.cursor);
            }
            KeyCode::Delete => self.remove_at(self.cursor),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.input.chars().count(),
            _ => {}
        }
        None
    }

    fn submit(&mut self) -> Option<Action> {
        if self.pending {
            self.notice = Some(Notice::error("still working on the last line"));
            return None;
        }
        let line = self.input.trim();
        if line.is_empty() {
            return None;
        }
        let action = match line.strip_prefix('/') {
            Some(rest) if rest.starts_with('/') => Action::SendText(rest.to_owned()),
            Some(_) => match parse_command(line) {
                Ok(a) => a,
                Err(e) => {
                    self.notice = Some(Notice::error(e));
                    return None;
                }
            },
            None => Action::SendText(line.to_owned()),
        };
        let action = match action {
            Action::Quit => return Some(Action::Quit),
            Action::Help => {
                self.show_help = true;
                self.finish_input(true);
                return None;
            }
            Action::Create { .. } => action,
            _ if self.selected().is_none() => {
                self.notice = Some(Notice::error(
                    "no conversation selected; create one with /create NAME USER",
                ));
                return None;
            }
            _ if self.selected().is_some_and(|c| c.status == "held") => {
                self.notice = Some(Notice::error(
                    "the server holds this invitation until this device complies; \
                     nothing can be done here yet",
                ));
                return None;
            }
            Action::SaveFile { message, path } => match self.resolve_file_message(&message) {
                Ok(message) => Action::SaveFile { message, path },
                Err(e) => {
                    self.notice = Some(Notice::error(e));
                    return None;
                }
            },
            other => other,
        };
        self.pending = true;
        self.show_help = false;
        Some(action)
    }

    /// The full id of the file message of the selected conversation whose id is or
    /// starts with `prefix`.
    pub fn resolve_file_message(&self, prefix: &str) -> Result<String, String> {
        let found: Vec<&MessageView> = self
            .selected_messages()
            .iter()
            .filter(|m| m.id.starts_with(prefix))
            .collect();
        match found.as_slice() {
            [] => Err(format!("no message {prefix} in this conversation")),
            [m] if m.file.is_none() => Err(format!("message {prefix} is not a file")),
            [m] => Ok(m.id.clone()),
            _ => Err(format!(
                "{} messages start with {prefix}; type more of the id",
                found.len()
            )),
        }
    }

    fn move_selection(&mut self, by: isize, wrap: bool) {
        let n = self.conversations.len();
        if n == 0 {
            return;
        }
        let i = self.selected as isize + by;
        let i = if wrap {
            i.rem_euclid(n as isize)
        } else {
            i.clamp(0, n as isize - 1)
        };
        self.select_index(i as usize);
    }

    fn insert(&mut self, c: char) {
        let at = byte_index(&self.input, self.cursor);
        self.input.insert(at, c);
        self.cursor += 1;
    }

    fn remove_at(&mut self, chars: usize) {
        if chars < self.input.chars().count() {
            let at = byte_index(&self.input, chars);
            self.input.remove(at);
        }
    }

    fn delete_word(&mut self) {
        let chars: Vec<char> = self.input.chars().collect();
        let mut start = self.cursor.min(chars.len());
        while start > 0 && chars[start - 1] == ' ' {
            start -= 1;
        }
        while start > 0 && chars[start - 1] != ' ' {
            start -= 1;
        }
        let mut rest: String = chars[..start].iter().collect();
        rest.extend(&chars[self.cursor.min(chars.len())..]);
        self.input = rest;
        self.cursor = start;
    }

    fn pane_width(&self) -> usize {
        usize::from(self.pane.width.saturating_sub(2))
    }

    /// Rows of the message pane left for messages (below the banner).
    fn pane_height(&self) -> usize {
        let banner = self.banner(self.pane_width()).len();
        usize::from(self.pane.height.saturating_sub(2)).saturating_sub(banner)
    }

    /// What the top of the message pane says about the selected conversation: held
    /// messages, and that this device is no longer a member.
    fn banner(&self, width: usize) -> Vec<String> {
        let Some(c) = self.selected() else {
            return Vec::new();
        };
        let mut notes = Vec::new();
        match c.status.as_str() {
            "active" => {}
            "held" => notes.push(
                "You are invited; the server holds the invitation until this device \
                 complies with the conversation's clearance."
                    .to_owned(),
            ),
            "removed" => notes.push("This device was removed from this conversation.".into()),
            other => notes.push(format!(
                "This conversation cannot be used on this device ({}).",
                clean(other)
            )),
        }
        notes.extend(held_note(c));
        notes
            .iter()
            .flat_map(|n| wrap(n, width.max(1), width.max(1)))
            .collect()
    }

    fn page(&self) -> usize {
        self.pane_height().saturating_sub(1).max(1)
    }

    fn clamp_scroll(&mut self) {
        let total = self.message_lines(self.pane_width()).len();
        self.scroll = self.scroll.min(total.saturating_sub(self.pane_height()));
    }

    /// The selected conversation's messages as screen lines `width` columns wide.
    fn message_lines(&self, width: usize) -> Vec<Line<'static>> {
        self.selected_messages()
            .iter()
            .flat_map(|m| self.lines_of(m, width))
            .collect()
    }

    fn lines_of(&self, m: &MessageView, width: usize) -> Vec<Line<'static>> {
        let time = short_time(m.sent_at, &self.today);
        if m.notice {
            // Nobody wrote it: a change of people's devices, set apart in dim italics.
            let style = Style::new()
                .fg(Color::Yellow)
                .add_modifier(Modifier::ITALIC);
            let prefix = str_width(&time) + 3;
            let rest = width.saturating_sub(4).max(1);
            let first = width.saturating_sub(prefix);
            let mut rows = wrap(&clean(&m.text), if first >= 10 { first } else { 0 }, rest);
            let first_row = if rows.is_empty() {
                String::new()
            } else {
                rows.remove(0)
            };
            let mut lines = vec![Line::from(vec![
                Span::styled(time, Style::new().fg(Color::DarkGray)),
                Span::styled(" * ", style),
                Span::styled(first_row, style),
            ])];
            lines.extend(
                rows.into_iter()
                    .map(|r| Line::from(vec![Span::raw("    "), Span::styled(r, style)])),
            );
            return lines;
        }
        let who = format!("{}: ", m.from_user);
        let prefix_width = str_width(&time) + 1 + str_width(&who);
        let (body, body_style) = match &m.file {
            Some(f) => (
                format!(
                    "[file {} ({} bytes)] id {}",
                    clean(&f.name),
                    f.size,
                    m.id.get(..8).unwrap_or(&m.id)
                ),
                Style::new().fg(Color::Magenta),
            ),
            None => (clean_multiline(&m.text), Style::new()),
        };
        let suffix = m.outgoing.then(|| {
            format!(
                " ({}, delivered to {}, read by {})",
                m.status, m.delivered_to, m.read_by
            )
        });
        let indent = if prefix_width + 10 <= width {
            prefix_width
        } else {
            2
        };
        let first = width.saturating_sub(prefix_width);
        let rest = width.saturating_sub(indent).max(1);
        let mut rows = wrap(&body, if first >= 10 { first } else { 0 }, rest);
        let who_style = if m.outgoing {
            Style::new().fg(Color::Green)
        } else {
            Style::new().fg(Color::Cyan)
        };
        let mut lines: Vec<Line<'static>> = Vec::with_capacity(rows.len() + 1);
        // `wrap` always returns a first row (empty when the text starts below).
        let first_row = if rows.is_empty() {
            String::new()
        } else {
            rows.remove(0)
        };
        lines.push(Line::from(vec![
            Span::styled(time, Style::new().fg(Color::DarkGray)),
            Span::raw(" "),
            Span::styled(who, who_style.add_modifier(Modifier::BOLD)),
            Span::styled(first_row, body_style),
        ]));
        for row in rows {
            lines.push(Line::from(vec![
                Span::raw(" ".repeat(indent)),
                Span::styled(row, body_style),
            ]));
        }
        if let Some(suffix) = suffix {
            let dim = Style::new().fg(Color::DarkGray);
            let fits = lines
                .last()
                .is_some_and(|l| l.width() + str_width(&suffix) <= width);
            match lines.last_mut() {
                Some(last) if fits => last.push_span(Span::styled(suffix, dim)),
                _ => {
                    for row in wrap(suffix.trim_start(), rest, rest) {
                        lines.push(Line::from(vec![
                            Span::raw(" ".repeat(indent)),
                            Span::styled(row, dim),
                        ]));
                    }
                }
            }
        }
        lines
    }
}

fn is_unread(m: &MessageView) -> bool {
    !m.outgoing && m.status == "received"
}

fn byte_index(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i)
}

fn str_width(s: &str) -> usize {
    Span::raw(s).width()
}

fn char_width(c: char) -> usize {
    let mut buf = [0u8; 4];
    str_width(c.encode_utf8(&mut buf))
}

/// `HH:MM` for today (UTC), `YYYY-MM-DD HH:MM` otherwise.
fn short_time(t: Timestamp, today: &str) -> String {
    let s = t.to_string();
    match (s.get(..10), s.get(11..16)) {
        (Some(day), Some(hm)) if day == today => hm.to_owned(),
        (Some(day), Some(hm)) => format!("{day} {hm}"),
        _ => s,
    }
}

/// Wraps `text` at spaces (and inside words longer than a row): the first row is
/// `first` columns wide, the next ones `rest`. A `first` of 0 starts on the next row.
fn wrap(text: &str, first: usize, rest: usize) -> Vec<String> {
    let mut rows = Vec::new();
    let mut row = String::new();
    let mut row_width = 0;
    let mut limit = first;
    let mut started = first > 0;
    for (n, paragraph) in text.split('\n').enumerate() {
        if n > 0 {
            rows.push(std::mem::take(&mut row));
            row_width = 0;
            limit = rest;
        }
        for (k, word) in paragraph.split(' ').enumerate() {
            let word_width = str_width(word);
            let space = usize::from(k > 0);
            if !started {
                rows.push(String::new());
                limit = rest;
                started = true;
            }
            if row_width + space + word_width <= limit {
                if k > 0 {
                    row.push(' ');
                }
                row.push_str(word);
                row_width += space + word_width;
                continue;
            }
            if word_width <= rest && row_width > 0 {
                rows.push(std::mem::take(&mut row));
                limit = rest;
                row.push_str(word);
                row_width = word_width;
                continue;
            }
            // A word wider than a row: cut it.
            if k > 0 && row_width > 0 && row_width < limit {
                row.push(' ');
                row_width += 1;
            }
            for c in word.chars() {
                let w = char_width(c);
                if row_width + w > limit && row_width > 0 {
                    rows.push(std::mem::take(&mut row));
                    row_width = 0;
                    limit = rest;
                }
                row.push(c);
                row_width += w;
            }
        }
    }
    rows.push(row);
    rows
}

/// Splits command arguments at spaces; `"..."` groups words.
fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

fn parse_users<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Vec<UserName>, String> {
    words
        .into_iter()
        .flat_map(|w| w.split(','))
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<UserName>().map_err(|e| e.to_string()))
        .collect()
}

/// A path argument: the rest of the line, without surrounding quotes.
fn path_arg(s: &str) -> Option<PathBuf> {
    let s = s.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s);
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Parses a command typed in the input line (it starts with `/`).
pub fn parse_command(line: &str) -> Result<Action, String> {
    let line = line.trim();
    let body = line
        .strip_prefix('/')
        .ok_or_else(|| "a command starts with '/'".to_owned())?;
    let (cmd, rest) = match body.split_once(char::is_whitespace) {
        Some((cmd, rest)) => (cmd, rest.trim()),
        None => (body, ""),
    };
    match cmd {
        "quit" if rest.is_empty() => Ok(Action::Quit),
        "help" if rest.is_empty() => Ok(Action::Help),
        "quit" | "help" => Err(format!("/{cmd} takes no arguments")),
        "create" => {
            let words = split_args(rest)?;
            let mut name = None;
            let mut members = Vec::new();
            let mut clearance = None;
            let mut it = words.iter();
            while let Some(w) = it.next() {
                let mode = if w == "--clearance" {
                    Some(it.next().map(String::as_str).ok_or_else(|| {
                        "--clearance needs a mode, e.g. --clearance secure-site".to_owned()
                    })?)
                } else {
                    w.strip_prefix("--clearance=")
                };
                if let Some(mode) = mode {
                    clearance = Some(mode.parse::<ModeName>().map_err(|e| e.to_string())?);
                } else if w.starts_with("--") {
                    return Err(format!("unknown option {w}; {CREATE_USAGE}"));
                } else if name.is_none() {
                    name = Some(w.clone());
                } else {
                    members.extend(parse_users([w.as_str()])?);
                }
            }
            match name {
                Some(name) if !members.is_empty() => Ok(Action::Create {
                    name,
                    members,
                    clearance,
                }),
                _ => Err(CREATE_USAGE.into()),
            }
        }
        "add" => {
            let users = parse_users(rest.split_whitespace())?;
            if users.is_empty() {
                return Err(ADD_USAGE.into());
            }
            Ok(Action::Add(users))
        }
        "remove" => match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
            [user] => Ok(Action::Remove(user.parse().map_err(|e| format!("{e}"))?)),
            _ => Err(REMOVE_USAGE.into()),
        },
        "file" => path_arg(rest)
            .map(Action::SendFile)
            .ok_or_else(|| FILE_USAGE.into()),
        "save" => {
            let (message, path) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            match path_arg(path) {
                Some(path) if !message.is_empty() => Ok(Action::SaveFile {
                    message: message.to_owned(),
                    path,
                }),
                _ => Err(SAVE_USAGE.into()),
            }
        }
        "" => Err("a command name must follow '/'; /help lists the commands".into()),
        other => Err(format!(
            "unknown command /{}; /help lists the commands",
            clean(other)
        )),
    }
}

/// Where the parts of the screen go.
struct Areas {
    list: Rect,
    messages: Rect,
    input: Rect,
    status: Rect,
}

fn areas(area: Rect) -> Areas {
    let [main, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(2),
    ])
    .areas(area);
    let list_width = (area.width / 4).clamp(18, 36);
    let [list, messages] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(10)]).areas(main);
    Areas {
        list,
        messages,
        input,
        status,
    }
}

/// The area of the message pane (border included) on a screen of `area`.
pub fn message_pane(area: Rect) -> Rect {
    areas(area).messages
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

fn conversation_line(c: &ConversationView, unread: usize) -> Line<'static> {
    let mut name_style = Style::new();
    if unread > 0 {
        name_style = name_style.add_modifier(Modifier::BOLD);
    }
    // Most telling first: a narrow list cuts the end.
    let mut spans = vec![Span::styled(clean(&c.name), name_style)];
    if unread > 0 {
        spans.push(Span::styled(
            format!(" ({unread})"),
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    // `held` (an invitation held) shows as the held count below.
    if c.status != "active" && c.status != "held" {
        spans.push(Span::styled(
            format!(" {}", clean(&c.status)),
            Style::new().fg(Color::Red),
        ));
    }
    if c.held > 0 {
        spans.push(Span::styled(
            format!(" held {}", c.held),
            Style::new().fg(Color::Yellow),
        ));
    }
    if let Some(mode) = &c.clearance {
        spans.push(Span::styled(
            format!(" [{mode}]"),
            Style::new().fg(Color::Blue),
        ));
    }
    Line::from(spans)
}

/// Renders the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let a = areas(frame.area());

    let items: Vec<ListItem> = app
        .conversations
        .iter()
        .map(|c| ListItem::new(conversation_line(c, app.unread(&c.id))))
        .collect();
    let mut state = ListState::default().with_selected(app.selected().map(|_| app.selected));
    frame.render_stateful_widget(
        List::new(items)
            .block(Block::bordered().title(" Conversations "))
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> "),
        a.list,
        &mut state,
    );

    let mut block = Block::bordered();
    let body: Vec<Line> = if app.show_help {
        block = block.title(" Help (Esc closes) ");
        HELP.iter().map(|l| Line::raw(*l)).collect()
    } else if let Some(c) = app.selected() {
        let members: Vec<&str> = c.members.iter().map(UserName::as_str).collect();
        block = block.title(if members.is_empty() {
            format!(" {} ", clean(&c.name))
        } else {
            format!(" {} · {} ", clean(&c.name), members.join(", "))
        });
        if app.scroll > 0 {
            block = block.title_bottom(format!(
                " {} line(s) below, PageDown for newer ",
                app.scroll
            ));
        }
        let inner = block.inner(a.messages);
        let width = usize::from(inner.width);
        let mut body: Vec<Line> = app
            .banner(width)
            .into_iter()
            .map(|row| Line::styled(row, Style::new().fg(Color::Yellow)))
            .collect();
        let lines = app.message_lines(width);
        if lines.is_empty() {
            body.push(Line::styled(
                "No messages yet. Type one below and press Enter.",
                Style::new().fg(Color::DarkGray),
            ));
        } else {
            let height = usize::from(inner.height).saturating_sub(body.len());
            let end = lines.len().saturating_sub(app.scroll);
            let start = end.saturating_sub(height);
            body.extend_from_slice(&lines[start..end]);
        }
        body
    } else {
        block = block.title(" Messages ");
        vec![
            Line::raw("No conversations yet."),
            Line::raw(format!("Create one: {}", &CREATE_USAGE["usage: ".len()..])),
            Line::raw("/help lists keys and commands."),
        ]
    };
    let mut pane = Paragraph::new(body).block(block);
    if app.show_help {
        pane = pane.wrap(Wrap { trim: false });
    }
    frame.render_widget(pane, a.messages);

    let input_title = if app.pending {
        " Sending... (the line is cleared when done) "
    } else {
        " Message (Enter sends, /help) "
    };
    let input_block = Block::bordered().title(input_title);
    let inner = input_block.inner(a.input);
    let (visible, cursor_x) = input_window(&app.input, app.cursor, usize::from(inner.width));
    let input_style = if app.pending {
        Style::new().fg(Color::DarkGray)
    } else {
        Style::new()
    };
    frame.render_widget(
        Paragraph::new(Line::styled(visible, input_style)).block(input_block),
        a.input,
    );
    if !app.pending && inner.width > 0 {
        let x = inner.x + (cursor_x as u16).min(inner.width - 1);
        frame.set_cursor_position((x, inner.y));
    }

    let connection = match &app.connection {
        Connection::Connecting => "connecting the push channel".to_owned(),
        Connection::Push => "push".to_owned(),
        Connection::Polling(why) => format!("polling ({})", clean(why)),
    };
    let mut first = vec![
        Span::styled(app.me.clone(), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" │ {connection}")),
    ];
    if let Some(busy) = &app.busy {
        first.push(Span::styled(
            format!(" │ {busy}..."),
            Style::new().fg(Color::DarkGray),
        ));
    }
    if let Some(note) = app.selected().and_then(held_note) {
        first.push(Span::styled(
            format!(" │ {note}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    let second = match &app.notice {
        Some(n) if n.error => Line::styled(clean(&n.text), Style::new().fg(Color::Red)),
        Some(n) => Line::raw(clean(&n.text)),
        None => Line::styled(
            "Enter sends · Up/Down change conversation · /help · Esc quits",
            Style::new().fg(Color::DarkGray),
        ),
    };
    frame.render_widget(Paragraph::new(vec![Line::from(first), second]), a.status);
}

/// The part of `input` that fits `width` columns with the cursor (a char index) in
/// view, and the cursor's column in it.
fn input_window(input: &str, cursor: usize, width: usize) -> (String, usize) {
    let chars: Vec<char> = input.chars().collect();
    let cursor = cursor.min(chars.len());
    let room = width.saturating_sub(1);
    let mut start = 0;
    let mut before: usize = chars[..cursor].iter().map(|&c| char_width(c)).sum();
    while before > room && start < cursor {
        before -= char_width(chars[start]);
        start += 1;
    }
    let mut shown = String::new();
    let mut used = 0;
    for &c in &chars[start..] {
        let w = char_width(c);
        if used + w > width {
            break;
        }
        shown.push(c);
        used += w;
    }
    (shown, before)
}

/// Leaves raw mode and the alternate screen when dropped, and (through the panic
/// hook it installs) on a panic, whichever comes first.
struct TerminalGuard {
    active: Arc<AtomicBool>,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<(TerminalGuard, Terminal<CrosstermBackend<Stdout>>)> {
        let active = Arc::new(AtomicBool::new(true));
        let hook_active = Arc::clone(&active);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if hook_active.swap(false, Ordering::SeqCst) {
                restore_terminal();
            }
            previous(info);
        }));
        let guard = TerminalGuard { active };
        enable_raw_mode().context("switching the terminal to raw mode")?;
        crossterm::execute!(io::stdout(), EnterAlternateScreen, EnableBracketedPaste)
            .context("switching to the alternate screen")?;
        let terminal =
            Terminal::new(CrosstermBackend::new(io::stdout())).context("setting up the screen")?;
        Ok((guard, terminal))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if self.active.swap(false, Ordering::SeqCst) {
            restore_terminal();
        }
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(
        io::stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Fails unless stdin and stdout are a terminal.
fn ensure_terminal() -> anyhow::Result<()> {
    if !io::stdin().is_terminal() || !io::stdout().is_terminal() {
        bail!(
            "the interactive chat needs a terminal (stdin and stdout); without one use \
             `redoubt chat --state DIR list|read|send|send-file|save-file|create|add|remove|sync|listen`"
        );
    }
    Ok(())
}

/// A messenger operation, run one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    Sync,
    MarkRead(GroupId),
    /// A line the user submitted, for the conversation selected then.
    User(Action, Option<GroupId>),
}

impl Job {
    fn label(&self) -> &'static str {
        match self {
            Job::Sync => "syncing",
            Job::MarkRead(_) => "marking read",
            Job::User(Action::SendText(_), _) => "sending",
            Job::User(Action::SendFile(_), _) => "sending the file",
            Job::User(Action::SaveFile { .. }, _) => "saving the file",
            Job::User(Action::Create { .. }, _) => "creating the conversation",
            Job::User(Action::Add(_), _) => "adding",
            Job::User(Action::Remove(_), _) => "removing",
            Job::User(Action::Quit | Action::Help, _) => "working",
        }
    }
}

/// What a finished job tells the screen.
#[derive(Debug, Default)]
struct Outcome {
    notice: Option<Notice>,
    /// For a submitted line: whether it succeeded.
    input_ok: Option<bool>,
    /// A conversation to select (one just created).
    select: Option<GroupId>,
    /// For a sync: whether it reached the server.
    synced: Option<bool>,
}

fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

fn skipped_note(skipped: &[String]) -> String {
    if skipped.is_empty() {
        String::new()
    } else {
        format!("; not added: {}", skipped.join("; "))
    }
}

async fn perform(m: &Messenger, job: Job) -> Outcome {
    match job {
        Job::Sync => match m.sync().await {
            Ok(report) => Outcome {
                notice: report.refused.first().map(|first| {
                    Notice::error(format!("{} item(s) refused: {first}", report.refused.len()))
                }),
                synced: Some(true),
                ..Outcome::default()
            },
            Err(e) => Outcome {
                notice: Some(Notice::error(format!("sync failed: {e:#}"))),
                synced: Some(false),
                ..Outcome::default()
            },
        },
        Job::MarkRead(gid) => Outcome {
            notice: m
                .mark_read(&gid)
                .await
                .err()
                .map(|e| Notice::error(format!("marking read failed: {e:#}"))),
            ..Outcome::default()
        },
        Job::User(action, gid) => {
            let (notice, select, ok) = match user_action(m, action, gid).await {
                Ok((text, select)) => (Notice::info(text), select, true),
                Err(e) => match e.downcast_ref::<Queued>() {
                    // The message is kept: the line is done, but say it is not out.
                    Some(q) => (Notice::error(q.to_string()), None, true),
                    None => (Notice::error(format!("{e:#}")), None, false),
                },
            };
            Outcome {
                input_ok: Some(ok),
                notice: Some(notice),
                select,
                synced: None,
            }
        }
    }
}

/// Carries out a submitted line; returns what to say and what to select.
async fn user_action(
    m: &Messenger,
    action: Action,
    gid: Option<GroupId>,
) -> anyhow::Result<(String, Option<GroupId>)> {
    if let Action::Create {
        name,
        members,
        clearance,
    } = action
    {
        let (gid, report) = m.create(&name, &members, clearance).await?;
        return Ok((
            format!(
                "created {} ({} device(s) added){}",
                clean(&name),
                report.added.len(),
                skipped_note(&report.skipped)
            ),
            Some(gid),
        ));
    }
    let Some(gid) = gid else {
        bail!("no conversation selected");
    };
    let text = match action {
        Action::SendText(text) => {
            m.send_text(&gid, &text).await?;
            "sent".to_owned()
        }
        Action::SendFile(path) => {
            let path = expand_home(&path);
            m.send_file(&gid, &path)
                .await
                .with_context(|| format!("sending {}", path.display()))?;
            format!("sent the file {}", path.display())
        }
        Action::SaveFile { message, path } => {
            let path = expand_home(&path);
            let file = m
                .save_file(&gid, &message, &path)
                .await
                .with_context(|| format!("saving to {}", path.display()))?;
            format!(
                "saved {} ({} bytes) to {}",
                clean(&file.name),
                file.size,
                path.display()
            )
        }
        Action::Add(users) => {
            let report = m.add(&gid, &users).await?;
            format!(
                "added {} device(s){}",
                report.added.len(),
                skipped_note(&report.skipped)
            )
        }
        Action::Remove(user) => {
            let removed = m.remove(&gid, Some(&user), None).await?;
            format!("removed {} device(s) of {user}", removed.len())
        }
        Action::Create { .. } | Action::Quit | Action::Help => String::new(),
    };
    Ok((text, None))
}

/// Reads everything the local store knows (no network).
async fn load_snapshot(m: &Messenger) -> anyhow::Result<Snapshot> {
    let conversations = m.conversations().await?;
    let mut messages = HashMap::with_capacity(conversations.len());
    for c in &conversations {
        messages.insert(c.id.clone(), m.history(&c.id, None).await?);
    }
    Ok(Snapshot {
        conversations,
        messages,
    })
}

/// Runs a job, then reads the store again.
async fn execute(m: &Messenger, job: Job) -> (Outcome, anyhow::Result<Snapshot>) {
    let outcome = perform(m, job).await;
    (outcome, load_snapshot(m).await)
}

/// Awaits the future in `slot`, or forever when there is none.
async fn in_slot<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The next item of the stream in `slot`, or never when there is none.
async fn next_in<S: Stream + Unpin>(slot: &mut Option<S>) -> Option<S::Item> {
    match slot {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn today() -> String {
    Timestamp::now().to_string().chars().take(10).collect()
}

/// Runs the interactive chat until the user quits.
pub async fn run(m: Messenger) -> anyhow::Result<()> {
    ensure_terminal()?;
    let mut app = App::new(format!("{}@{}", m.user(), m.device_id()));
    app.set_today(today());
    match load_snapshot(&m).await {
        Ok(s) => app.set_snapshot(s),
        Err(e) => app.set_notice(Notice::error(format!("reading the local store: {e:#}"))),
    }
    let (guard, mut terminal) = TerminalGuard::enter()?;
    let result = event_loop(&m, &mut app, &mut terminal).await;
    drop(terminal);
    drop(guard);
    result
}

async fn event_loop(
    m: &Messenger,
    app: &mut App,
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
) -> anyhow::Result<()> {
    let mut events = EventStream::new();
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut running = None;
    let mut connecting = None;
    let mut push: Option<redoubt_client::DeviceSocket> = None;
    let mut reconnect_at = Instant::now();
    let mut sync_wanted = true;
    let mut last_sync = Instant::now();
    let mut sync_failing = false;
    let mut marked: Option<(GroupId, i64)> = None;
    loop {
        if let Some(wanted) = app.wants_mark_read()
            && marked.as_ref() != Some(&wanted)
        {
            queue.push_back(Job::MarkRead(wanted.0.clone()));
            marked = Some(wanted);
        }
        if running.is_none() {
            let job = queue
                .pop_front()
                .or_else(|| std::mem::take(&mut sync_wanted).then_some(Job::Sync));
            app.set_busy(job.as_ref().map(|j| j.label().to_owned()));
            if let Some(job) = job {
                if job == Job::Sync {
                    last_sync = Instant::now();
                }
                running = Some(Box::pin(execute(m, job)));
            }
        }
        if push.is_none() && connecting.is_none() && Instant::now() >= reconnect_at {
            connecting = Some(Box::pin(tokio::time::timeout(
                CONNECT_TIMEOUT,
                m.net().push_channel(),
            )));
        }

        let size = terminal.size().context("reading the terminal size")?;
        app.set_today(today());
        app.set_pane(message_pane(Rect::new(0, 0, size.width, size.height)));
        terminal
            .draw(|f| draw(f, app))
            .context("drawing the screen")?;

        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Key(key))) => match app.handle_key(key) {
                    Some(Action::Quit) => return Ok(()),
                    Some(action) => queue.push_back(Job::User(action, app.selected_id())),
                    None => {}
                },
                Some(Ok(Event::Paste(text))) => app.paste(&text),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading the terminal"),
                None => return Ok(()),
            },
            (outcome, snapshot) = in_slot(&mut running) => {
                running = None;
                match snapshot {
                    Ok(s) => app.set_snapshot(s),
                    Err(e) => app.set_notice(Notice::error(format!("reading the local store: {e:#}"))),
                }
                if let Some(ok) = outcome.input_ok {
                    app.finish_input(ok);
                }
                if let Some(gid) = &outcome.select {
                    app.select_id(gid);
                }
                match outcome.synced {
                    Some(true) if sync_failing && outcome.notice.is_none() => {
                        sync_failing = false;
                        app.set_notice(Notice::info("in touch with the server again"));
                    }
                    Some(ok) => sync_failing = !ok,
                    None => {}
                }
                if let Some(notice) = outcome.notice {
                    app.set_notice(notice);
                }
            },
            connected = in_slot(&mut connecting) => {
                connecting = None;
                match connected {
                    Ok(Ok(socket)) => {
                        push = Some(socket);
                        app.set_connection(Connection::Push);
                        // Doorbells rung while it was down are lost.
                        sync_wanted = true;
                    }
                    Ok(Err(e)) => {
                        reconnect_at = Instant::now() + RECONNECT_AFTER;
                        app.set_connection(Connection::Polling(format!("push channel: {e}")));
                    }
                    Err(_) => {
                        reconnect_at = Instant::now() + RECONNECT_AFTER;
                        app.set_connection(Connection::Polling("push channel: timed out".into()));
                    }
                }
            },
            frame = next_in(&mut push) => match frame {
                Some(Ok(frame)) if !frame.is_close() => sync_wanted = true,
                _ => {
                    push = None;
                    reconnect_at = Instant::now() + RECONNECT_AFTER;
                    app.set_connection(Connection::Polling("push channel closed".into()));
                    sync_wanted = true;
                }
            },
            _ = tick.tick() => {
                if push.is_none() || last_sync.elapsed() >= SAFETY_SYNC_EVERY {
                    sync_wanted = true;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use redoubt_messenger::messenger::FileView;

    fn gid(n: u8) -> GroupId {
        GroupId::from_random([n; 16])
    }

    fn user(s: &str) -> UserName {
        s.parse().expect("user name")
    }

    fn conversation(n: u8, name: &str) -> ConversationView {
        ConversationView {
            id: gid(n),
            name: name.to_owned(),
            clearance: None,
            status: "active".to_owned(),
            members: vec![user("alice"), user("bob")],
            held: 0,
            held_reason: None,
            epoch: 1,
        }
    }

    fn message(local_id: i64, from: &str, text: &str, outgoing: bool) -> MessageView {
        MessageView {
            id: format!("{local_id:02}{}", "ab".repeat(15)),
            from_user: user(from),
            from_device: "dev_000000000000000000000001".parse().expect("device id"),
            text: text.to_owned(),
            sent_at: Timestamp(1_700_000_000 + local_id * 60),
            file: None,
            outgoing,
            status: if outgoing { "sent" } else { "received" }.to_owned(),
            delivered_to: 0,
            read_by: 0,
            notice: false,
            local_id,
        }
    }

    /// Three conversations; the first has two messages.
    fn app() -> App {
        let mut app = App::new("alice@dev_000000000000000000000001".into());
        app.set_today("2023-11-14".into());
        let mut ops = conversation(1, "ops");
        ops.clearance = Some("secure-site".parse().expect("mode"));
        ops.held = 2;
        ops.held_reason = Some("device not compliant with secure-site".into());
        let mut messages = HashMap::new();
        messages.insert(
            gid(1),
            vec![
                message(1, "bob", "hello alice", false),
                message(2, "alice", "hi bob", true),
            ],
        );
        app.set_snapshot(Snapshot {
            conversations: vec![ops, conversation(2, "general"), conversation(3, "lunch")],
            messages,
        });
        app
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn type_text(app: &mut App, text: &str) {
        for c in text.chars() {
            assert_eq!(app.handle_key(key(KeyCode::Char(c))), None);
        }
    }

    fn screen(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
        terminal.draw(|f| draw(f, app)).expect("draw");
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[track_caller]
    fn check_command(line: &str, expect: Result<Action, &str>) {
        let got = parse_command(line);
        match expect {
            Ok(action) => assert_eq!(got, Ok(action), "{line}"),
            Err(needle) => match got {
                Err(e) => assert!(e.contains(needle), "{line}: {e:?} lacks {needle:?}"),
                Ok(a) => panic!("{line}: parsed as {a:?}"),
            },
        }
    }

    #[test]
    fn parses_commands() {
        check_command("/quit", Ok(Action::Quit));
        check_command("  /help ", Ok(Action::Help));
        check_command(
            "/create ops bob,carol",
            Ok(Action::Create {
                name: "ops".into(),
                members: vec![user("bob"), user("carol")],
                clearance: None,
            }),
        );
        check_command(
            "/create \"site ops\" bob carol --clearance secure-site",
            Ok(Action::Create {
                name: "site ops".into(),
                members: vec![user("bob"), user("carol")],
                clearance: Some("secure-site".parse().expect("mode")),
            }),
        );
        check_command(
            "/create ops --clearance=lockdown bob",
            Ok(Action::Create {
                name: "ops".into(),
                members: vec![user("bob")],
                clearance: Some("lockdown".parse().expect("mode")),
            }),
        );
        check_command(
            "/add bob,carol",
            Ok(Action::Add(vec![user("bob"), user("carol")])),
        );
        check_command("/remove bob", Ok(Action::Remove(user("bob"))));
        check_command(
            "/file ~/My Documents/plan.pdf",
            Ok(Action::SendFile("~/My Documents/plan.pdf".into())),
        );
        check_command(
            "/save 0abc \"/tmp/out file.bin\"",
            Ok(Action::SaveFile {
                message: "0abc".into(),
                path: "/tmp/out file.bin".into(),
            }),
        );
    }

    #[test]
    fn rejects_bad_commands() {
        check_command("/create", Err(CREATE_USAGE));
        check_command("/create ops", Err(CREATE_USAGE));
        check_command(
            "/create ops bob --clearance",
            Err("--clearance needs a mode"),
        );
        check_command(
            "/create ops bob --clearance Secure",
            Err("invalid mode name"),
        );
        check_command("/create ops bob --color red", Err("unknown option --color"));
        check_command("/create \"ops bob", Err("quote is not closed"));
        check_command("/create ops bob!", Err("invalid user name"));
        check_command("/add", Err(ADD_USAGE));
        check_command("/remove", Err(REMOVE_USAGE));
        check_command("/remove bob carol", Err(REMOVE_USAGE));
        check_command("/file", Err(FILE_USAGE));
        check_command("/save 0abc", Err(SAVE_USAGE));
        check_command("/quit now", Err("takes no arguments"));
        check_command("/frobnicate x", Err("unknown command /frobnicate"));
        check_command("/", Err("command name must follow"));
    }

    #[test]
    fn up_down_clamp_and_tab_wraps() {
        let mut app = app();
        assert_eq!(app.selected().map(|c| c.name.as_str()), Some("ops"));
        app.handle_key(key(KeyCode::Up));
        assert_eq!(app.selected, 0, "Up stops at the first");
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.selected, 2, "Down stops at the last");
        app.handle_key(key(KeyCode::Tab));
        assert_eq!(app.selected, 0, "Tab wraps to the first");
        app.handle_key(key(KeyCode::BackTab));
        assert_eq!(app.selected, 2, "Shift-Tab wraps to the last");
    }

    #[test]
    fn selection_follows_the_conversation_across_snapshots() {
        let mut app = app();
        app.handle_key(key(KeyCode::Down));
        let mut snapshot = Snapshot {
            conversations: vec![conversation(9, "new"), conversation(2, "general")],
            messages: HashMap::new(),
        };
        app.set_snapshot(snapshot.clone());
        assert_eq!(app.selected().map(|c| c.name.as_str()), Some("general"));
        snapshot.conversations.truncate(1);
        app.set_snapshot(snapshot);
        assert_eq!(app.selected().map(|c| c.name.as_str()), Some("new"));
    }

    #[test]
    fn enter_sends_text_and_keeps_it_until_done() {
        let mut app = app();
        type_text(&mut app, "hello there");
        assert_eq!(
            app.handle_key(key(KeyCode::Enter)),
            Some(Action::SendText("hello there".into()))
        );
        // While it is being sent the line stays and cannot be edited or sent again.
        assert_eq!(app.handle_key(key(KeyCode::Char('x'))), None);
        assert_eq!(app.handle_key(key(KeyCode::Enter)), None);
        assert_eq!(app.input, "hello there");
        // A failure gives the line back.
        app.finish_input(false);
        assert_eq!(app.input, "hello there");
        type_text(&mut app, "!");
        assert_eq!(
            app.handle_key(key(KeyCode::Enter)),
            Some(Action::SendText("hello there!".into()))
        );
        app.finish_input(true);
        assert_eq!(app.input, "");
        assert_eq!(app.handle_key(key(KeyCode::Enter)), None, "nothing to send");
    }

    #[test]
    fn enter_with_a_bad_command_keeps_the_line_and_says_why() {
        let mut app = app();
        type_text(&mut app, "/frobnicate");
        assert_eq!(app.handle_key(key(KeyCode::Enter)), None);
        assert_eq!(app.input, "/frobnicate");
        let notice = app.notice.clone().expect("a notice");
        assert!(notice.error && notice.text.contains("unknown command"));
    }

    #[test]
    fn double_slash_sends_a_slash() {
        let mut app = app();
        type_text(&mut app, "//shrug");
        assert_eq!(
            app.handle_key(key(KeyCode::Enter)),
            Some(Action::SendText("/shrug".into()))
        );
    }

    #[test]
    fn sending_needs_a_conversation_but_create_does_not() {
        let mut app = App::new("alice@dev".into());
        type_text(&mut app, "hi");
        assert_eq!(app.handle_key(key(KeyCode::Enter)), None);
        assert!(app.notice.clone().is_some_and(|n| n.error));
        app.handle_key(ctrl('u'));
        type_text(&mut app, "/create ops bob");
        assert!(matches!(
            app.handle_key(key(KeyCode::Enter)),
            Some(Action::Create { .. })
        ));
    }

    #[test]
    fn esc_and_ctrl_c_quit_but_esc_closes_help_first() {
        let mut app = app();
        assert_eq!(app.handle_key(ctrl('c')), Some(Action::Quit));
        type_text(&mut app, "/help");
        assert_eq!(app.handle_key(key(KeyCode::Enter)), None);
        assert!(app.show_help);
        assert_eq!(app.input, "");
        assert_eq!(app.handle_key(key(KeyCode::Esc)), None);
        assert!(!app.show_help);
        assert_eq!(app.handle_key(key(KeyCode::Esc)), Some(Action::Quit));
        type_text(&mut app, "/quit");
        assert_eq!(app.handle_key(key(KeyCode::Enter)), Some(Action::Quit));
    }

    #[test]
    fn edits_the_input_line() {
        let mut app = app();
        type_text(&mut app, "héllo world");
        app.handle_key(key(KeyCode::Home));
        app.handle_key(key(KeyCode::Delete));
        app.handle_key(key(KeyCode::Right));
        app.handle_key(key(KeyCode::Backspace));
        type_text(&mut app, "e");
        assert_eq!(app.input, "ello world");
        app.handle_key(key(KeyCode::End));
        app.handle_key(ctrl('w'));
        assert_eq!(app.input, "ello ");
        app.paste("two\nlines\x1b[2J");
        assert_eq!(app.input, "ello two lines[2J");
        app.handle_key(ctrl('u'));
        assert_eq!(app.input, "");
    }

    #[test]
    fn save_takes_an_id_prefix() {
        let mut app = app();
        let mut snapshot = Snapshot {
            conversations: app.conversations.clone(),
            messages: app.messages.clone(),
        };
        let mut file = message(3, "bob", "plan.pdf", false);
        file.file = Some(FileView {
            name: "plan.pdf".into(),
            size: 1234,
        });
        let full_id = file.id.clone();
        snapshot.messages.entry(gid(1)).or_default().push(file);
        app.set_snapshot(snapshot);
        assert_eq!(app.resolve_file_message("03"), Ok(full_id.clone()));
        assert!(app.resolve_file_message("0").is_err(), "ambiguous");
        assert!(app.resolve_file_message("01").is_err(), "not a file");
        assert!(app.resolve_file_message("ff").is_err(), "unknown");
        type_text(&mut app, "/save 03 /tmp/plan.pdf");
        assert_eq!(
            app.handle_key(key(KeyCode::Enter)),
            Some(Action::SaveFile {
                message: full_id,
                path: "/tmp/plan.pdf".into()
            })
        );
    }

    #[test]
    fn unread_and_mark_read() {
        let app = app();
        assert_eq!(app.unread(&gid(1)), 1);
        assert_eq!(app.unread(&gid(2)), 0);
        assert_eq!(app.wants_mark_read(), Some((gid(1), 1)));
    }

    #[test]
    fn page_up_scrolls_within_the_history() {
        let mut app = app();
        let mut snapshot = Snapshot {
            conversations: app.conversations.clone(),
            messages: HashMap::new(),
        };
        // No held note above the messages: all 9 rows are for them.
        snapshot.conversations[0].held = 0;
        snapshot.messages.insert(
            gid(1),
            (1..=50)
                .map(|i| message(i, "bob", &format!("message {i}"), false))
                .collect(),
        );
        app.set_snapshot(snapshot);
        // 80x16: the message pane shows 9 lines; a page is 8.
        app.set_pane(message_pane(Rect::new(0, 0, 80, 16)));
        let newest = screen(&app, 80, 16);
        assert!(newest.contains("message 50"), "{newest}");
        assert!(!newest.contains("message 41"), "{newest}");
        app.handle_key(key(KeyCode::PageUp));
        assert_eq!(app.scroll, 8);
        for _ in 0..10 {
            app.handle_key(key(KeyCode::PageUp));
        }
        assert_eq!(app.scroll, 41, "stops at the oldest");
        let oldest = screen(&app, 80, 16);
        assert!(oldest.contains("message 1 "), "{oldest}");
        assert!(oldest.contains("41 line(s) below"), "{oldest}");
        assert!(!oldest.contains("message 10"), "{oldest}");
        app.handle_key(key(KeyCode::PageDown));
        assert_eq!(app.scroll, 33);
        // A new message while scrolled up keeps the same lines on screen.
        let mut more = Snapshot {
            conversations: app.conversations.clone(),
            messages: app.messages.clone(),
        };
        more.messages
            .entry(gid(1))
            .or_default()
            .push(message(51, "bob", "message 51", false));
        app.set_snapshot(more);
        assert_eq!(app.scroll, 34);
    }

    #[test]
    fn wraps_long_text() {
        assert_eq!(wrap("aaa bbb ccc", 7, 7), ["aaa bbb", "ccc"]);
        assert_eq!(wrap("abcdefghij", 4, 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("one\ntwo", 10, 10), ["one", "two"]);
        assert_eq!(wrap("hi there", 0, 10), ["", "hi there"]);
    }

    #[test]
    fn draws_the_screen() {
        let mut app = app();
        type_text(&mut app, "draft reply");
        app.set_connection(Connection::Push);
        let screen = screen(&app, 160, 20);
        for needle in [
            "ops (1) held 2 [secure-site]",
            "general",
            "lunch",
            "ops · alice, bob",
            "22:14 bob: hello alice",
            "22:15 alice: hi bob (sent, delivered to 0, read by 0)",
            "draft reply",
            "alice@dev_000000000000000000000001 │ push",
            "2 message(s) held by the server: device not compliant with secure-site",
        ] {
            assert!(screen.contains(needle), "{needle:?} not in\n{screen}");
        }
        // Above the messages and in the status line.
        assert_eq!(screen.matches("2 message(s) held by the server").count(), 2);
    }

    #[test]
    fn device_notices_are_set_apart_from_what_people_wrote() {
        let mut app = app();
        let mut snapshot = Snapshot {
            conversations: app.conversations.clone(),
            messages: app.messages.clone(),
        };
        let mut notice = message(
            3,
            "bob",
            "bob added a device (dev_x) to this conversation: now 2 devices",
            false,
        );
        notice.notice = true;
        notice.status = "read".into();
        snapshot.messages.entry(gid(1)).or_default().push(notice);
        app.set_snapshot(snapshot);
        let screen = screen(&app, 160, 20);
        assert!(
            screen
                .contains("22:16 * bob added a device (dev_x) to this conversation: now 2 devices"),
            "{screen}"
        );
        assert!(!screen.contains("bob: bob added"), "{screen}");
        assert_eq!(app.unread(&gid(1)), 1, "a notice is never unread");
    }

    #[test]
    fn draws_a_removed_conversation_and_wraps_long_messages() {
        let mut app = app();
        let mut snapshot = Snapshot {
            conversations: app.conversations.clone(),
            messages: HashMap::new(),
        };
        snapshot.conversations[0].status = "removed".into();
        snapshot.conversations[0].held = 0;
        let mut mine = message(1, "alice", "one two three four five six seven eight", true);
        mine.delivered_to = 3;
        mine.read_by = 1;
        snapshot.messages.insert(gid(1), vec![mine]);
        app.set_snapshot(snapshot);
        // 60 columns: the list takes 18, the pane has 40 inside its border.
        let screen = screen(&app, 60, 16);
        for needle in [
            "ops removed",
            "This device was removed from this",
            "22:14 alice: one two three four five six",
            "             seven eight",
            "             (sent, delivered to 3, read",
            "             by 1)",
        ] {
            assert!(screen.contains(needle), "{needle:?} not in\n{screen}");
        }
        assert!(!screen.contains("held by the server"), "{screen}");
    }

    #[test]
    fn draws_at_any_size_without_panicking() {
        let mut app = app();
        type_text(&mut app, "a draft that is longer than a tiny screen");
        for width in 0..30 {
            for height in 0..12 {
                app.set_pane(message_pane(Rect::new(0, 0, width, height)));
                app.handle_key(key(KeyCode::PageUp));
                screen(&app, width, height);
            }
        }
    }

    #[test]
    fn draws_a_held_invitation() {
        let mut app = App::new("alice@dev".into());
        let mut held = conversation(4, "(invitation held)");
        held.status = "held".into();
        held.members.clear();
        held.held = 3;
        held.held_reason = Some("this conversation requires secure-site".into());
        app.set_snapshot(Snapshot {
            conversations: vec![held],
            messages: HashMap::new(),
        });
        type_text(&mut app, "hello?");
        assert_eq!(app.handle_key(key(KeyCode::Enter)), None);
        assert!(app.notice.clone().is_some_and(|n| n.error));
        assert_eq!(app.input, "hello?");
        let screen = screen(&app, 160, 20);
        for needle in [
            "> (invitation held) held 3 ",
            "┌ (invitation held) ─",
            "You are invited; the server holds the invitation",
            "3 message(s) held by the server: this conversation requires secure-site",
        ] {
            assert!(screen.contains(needle), "{needle:?} not in\n{screen}");
        }
    }

    #[test]
    fn draws_files_and_neutralizes_control_characters() {
        let mut app = app();
        let mut snapshot = Snapshot {
            conversations: app.conversations.clone(),
            messages: HashMap::new(),
        };
        let mut file = message(1, "bob", "x.bin", false);
        file.file = Some(FileView {
            name: "x\x1b]0;pwned\x07.bin".into(),
            size: 42,
        });
        snapshot.messages.insert(gid(1), vec![file]);
        app.set_snapshot(snapshot);
        let screen = screen(&app, 120, 20);
        assert!(
            screen.contains("[file x\u{fffd}]0;pwned\u{fffd}.bin (42 bytes)] id 01ababab"),
            "{screen}"
        );
        assert!(!screen.contains('\x1b'));
    }

    #[test]
    fn draws_an_empty_state_and_errors() {
        let mut app = App::new("alice@dev".into());
        app.set_notice(Notice::error("sync failed: connection refused"));
        app.set_connection(Connection::Polling("push channel closed".into()));
        let screen = screen(&app, 100, 16);
        assert!(screen.contains("No conversations yet."), "{screen}");
        assert!(screen.contains("/create NAME USER"), "{screen}");
        assert!(
            screen.contains("sync failed: connection refused"),
            "{screen}"
        );
        assert!(screen.contains("polling (push channel closed)"), "{screen}");
    }

    #[test]
    fn shows_the_end_of_a_long_input() {
        let (shown, cursor) = input_window("abcdefghij", 10, 5);
        assert_eq!((shown.as_str(), cursor), ("ghij", 4));
        let (shown, cursor) = input_window("abcdefghij", 0, 5);
        assert_eq!((shown.as_str(), cursor), ("abcde", 0));
    }
}
