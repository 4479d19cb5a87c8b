//! Mode files: a custom mode written in TOML, parsed with errors that name the line
//! and the field.
//!
//! ```toml
//! name = "night-shift"
//! description = "Guards on the night shift"
//! network = "organization-only"       # or "open"
//! app_allowlist = ["org.redoubt.messenger"]  # optional; omitted = any app
//!
//! [capabilities]                       # every capability must be named
//! camera = "deny"
//! microphone = "allow"
//! # ... bluetooth, wifi, cellular_data, location, nfc, usb_data, screenshots
//! ```

use redoubt_proto::Mode;

/// A mode file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", .line.map(|l| format!("line {l}")).unwrap_or_else(|| "mode file".into()), .field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
pub struct ModeFileError {
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// The field concerned, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Parses a mode file.
pub fn parse_mode_toml(text: &str) -> Result<Mode, ModeFileError> {
    let mode: Mode = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let field = if e.message().contains("missing field") {
            backticked(e.message())
        } else {
            e.span().and_then(|s| field_at(text, s.start))
        };
        ModeFileError {
            line,
            field,
            message: e.message().trim().to_owned(),
        }
    })?;
    if let Some(apps) = &mode.app_allowlist
        && let Some(bad) = apps.iter().find(|a| a.trim().is_empty() || a.len() > 255)
    {
        return Err(ModeFileError {
            line: line_of(text, "app_allowlist"),
            field: Some("app_allowlist".into()),
            message: format!("app id {bad:?} must be 1-255 characters"),
        });
    }
    Ok(mode)
}

/// The key of the `key = value` line containing byte `pos`, or the table header there.
fn field_at(text: &str, pos: usize) -> Option<String> {
    let start = text[..pos.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?.trim();
    if let Some((key, _)) = line.split_once('=') {
        return Some(key.trim().trim_matches('"').to_owned());
    }
    line.strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .map(|t| t.trim().to_owned())
}

fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(key))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name = "night-shift"
description = "Night"
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

    fn check(text: &str, expect: &str) {
        match parse_mode_toml(text) {
            Ok(m) => assert_eq!(format!("ok {}", m.name), expect),
            Err(e) => assert_eq!(e.to_string(), expect),
        }
    }

    #[test]
    fn good_file() {
        check(GOOD, "ok night-shift");
    }

    #[test]
    fn bad_value_names_line_and_field() {
        check(
            &GOOD.replace("camera = \"deny\"", "camera = \"maybe\""),
            "line 6, field `camera`: unknown variant `maybe`, expected `allow` or `deny`",
        );
    }

    #[test]
    fn missing_and_unknown_fields() {
        let e = parse_mode_toml(&GOOD.replace("nfc = \"allow\"\n", "")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("nfc"), "{e}");
        let e =
            parse_mode_toml(&GOOD.replace("nfc = \"allow\"", "nfc = \"allow\"\nlaser = \"deny\""))
                .unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(13), Some("laser")),
            "{e}"
        );
        let e = parse_mode_toml(&GOOD.replace("night-shift", "Night Shift")).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("name")), "{e}");
    }
}
