//! The console's policy pages: modes and zones, each edited through a form whose
//! mistakes are shown at their field, then previewed (what changes, how many phones it
//! touches) before it is applied; gate credentials of a zone's checkpoints (created with
//! a printable sheet for the gate's tablet, listed, revoked); device groups.
//!
//! An edit travels as the form's fields: the preview page carries them again in hidden
//! fields with its own CSRF token, and applying parses them again: nothing the preview
//! decided is trusted from the browser.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redoubt_proto::api::{
    CreateDeviceGroup, CredentialId, ModeView, Role, ZoneDefinition, ZoneView,
};
use redoubt_proto::{Capability, CheckpointName, DeviceGroupName, Mode, ModeName, ZoneName};

use super::auth::Officer;
use super::i18n::Tr;
use super::pages::{failed, field, names, notice, pairs, see, who};
use super::{Frame, error_page, html};
use crate::error::ServiceError;
use crate::http::HttpState;

/// Roles that may see a zone's gate credentials (as in the API).
const GATE_READERS: &[Role] = crate::routes::GATE_READERS;

/// One row of a preview: a field, before and after.
pub struct Change {
    /// The field (already in the reader's words).
    pub what: String,
    /// Its value now (empty for a new mode or zone).
    pub before: String,
    /// Its value after applying.
    pub after: String,
}

impl Change {
    /// Whether applying changes it.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// The rows of a preview: each (field, value) after, beside the same field's value now
/// (nothing for a new mode or zone).
fn compare(before: Option<Vec<(String, String)>>, after: Vec<(String, String)>) -> Vec<Change> {
    after
        .into_iter()
        .enumerate()
        .map(|(i, (what, after))| Change {
            before: before
                .as_ref()
                .and_then(|r| r.get(i))
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            what,
            after,
        })
        .collect()
}

/// A form's fields as hidden inputs, for the preview to carry them.
pub type Hidden = Vec<(String, String)>;

fn hidden(p: &[(String, String)]) -> Hidden {
    p.iter().filter(|(k, _)| k != "csrf").cloned().collect()
}

// ---------------------------------------------------------------- modes

/// A mode as the editor holds it (raw text, so a wrong value is shown as typed).
#[derive(Default)]
pub struct ModeForm {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// `open` or `organization-only`.
    pub network: String,
    /// `allow` or `deny` per capability, in [`Capability::ALL`] order.
    pub rules: Vec<(String, String)>,
    /// Whether only listed apps may run.
    pub restrict_apps: bool,
    /// The listed apps, one per line.
    pub apps: String,
}

impl ModeForm {
    fn of(m: &Mode) -> ModeForm {
        let caps = serde_json::to_value(m.capabilities).unwrap_or_default();
        ModeForm {
            name: m.name.to_string(),
            description: m.description.clone(),
            network: serde_json::to_value(m.network)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            rules: Capability::ALL
                .iter()
                .map(|c| {
                    let rule = caps[c.to_string()].as_str().unwrap_or("deny").to_owned();
                    (c.to_string(), rule)
                })
                .collect(),
            restrict_apps: m.app_allowlist.is_some(),
            apps: m.app_allowlist.clone().unwrap_or_default().join("\n"),
        }
    }

    fn read(p: &[(String, String)]) -> ModeForm {
        ModeForm {
            name: field(p, "name").unwrap_or("").to_owned(),
            description: field(p, "description").unwrap_or("").to_owned(),
            network: field(p, "network").unwrap_or("").to_owned(),
            rules: Capability::ALL
                .iter()
                .map(|c| {
                    let v = field(p, &format!("cap_{c}")).unwrap_or("").to_owned();
                    (c.to_string(), v)
                })
                .collect(),
            restrict_apps: field(p, "restrict_apps").is_some(),
            apps: field(p, "apps").unwrap_or("").to_owned(),
        }
    }

    /// The mode, or the fields that are wrong (field, message key).
    fn mode(&self) -> Result<Mode, Vec<(String, &'static str)>> {
        let mut errors = Vec::new();
        if self.name.parse::<ModeName>().is_err() {
            errors.push(("name".to_owned(), "modes.bad_name"));
        }
        if self.description.chars().count() > 500
            || self
                .description
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\r')
        {
            errors.push(("description".to_owned(), "modes.bad_description"));
        }
        if !matches!(self.network.as_str(), "open" | "organization-only") {
            errors.push(("network".to_owned(), "modes.bad_network"));
        }
        for (cap, rule) in &self.rules {
            if !matches!(rule.as_str(), "allow" | "deny") {
                errors.push((format!("cap_{cap}"), "modes.bad_rule"));
            }
        }
        let apps: Vec<String> = self
            .apps
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if apps
            .iter()
            .any(|a| a.len() > 255 || a.chars().any(char::is_control))
            || apps.len() > 500
        {
            errors.push(("apps".to_owned(), "modes.bad_apps"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let caps: serde_json::Map<String, serde_json::Value> = self
            .rules
            .iter()
            .map(|(c, r)| (c.clone(), serde_json::Value::String(r.clone())))
            .collect();
        let value = serde_json::json!({
            "name": self.name,
            "description": self.description.replace('\r', ""),
            "network": self.network,
            "capabilities": caps,
            "app_allowlist": self.restrict_apps.then_some(apps),
        });
        serde_json::from_value(value).map_err(|_| vec![("name".to_owned(), "modes.bad_name")])
    }
}

#[derive(Template)]
#[template(path = "console/modes.html")]
struct ModesPage {
    f: Frame,
    modes: Vec<ModeView>,
    assigned: std::collections::BTreeMap<String, u64>,
    effective: std::collections::BTreeMap<String, u64>,
    notice: Option<String>,
}

/// `GET /console/modes`.
pub async fn modes(State(s): State<HttpState>, o: Officer, RawQuery(q): RawQuery) -> Response {
    let t = o.tr();
    let modes = match s.app.list_modes().await {
        Ok(m) => m,
        Err(e) => return failed(t, e),
    };
    let counts = match s.app.device_counts().await {
        Ok(c) => c,
        Err(e) => return failed(t, e),
    };
    html(&ModesPage {
        modes,
        assigned: counts.by_assigned_mode,
        effective: counts.by_mode,
        notice: notice(t, &pairs(q.unwrap_or_default().as_bytes())),
        f: Frame::of(&o, "modes"),
    })
}

#[derive(Template)]
#[template(path = "console/mode.html")]
struct ModePage {
    f: Frame,
    form: ModeForm,
    builtin: bool,
    existing: bool,
    errors: super::FieldErrors,
    notice: Option<String>,
}

/// `GET /console/modes/{name}`: the mode, and its editor for those who may change it
/// (`/console/modes/new` starts a new one).
pub async fn mode(
    State(s): State<HttpState>,
    o: Officer,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let t = o.tr();
    let p = pairs(q.unwrap_or_default().as_bytes());
    let (form, builtin, existing) = if name == "new" {
        let template = redoubt_policy::presets()
            .into_iter()
            .find(|m| m.name.as_str() == "secure-site");
        let mut form = template.as_ref().map(ModeForm::of).unwrap_or_default();
        form.name = String::new();
        form.description = String::new();
        (form, false, false)
    } else {
        let Ok(name) = name.parse::<ModeName>() else {
            return error_page(t, StatusCode::NOT_FOUND, "modes.no_mode");
        };
        match s.app.mode(&name).await {
            Ok(v) => (ModeForm::of(&v.mode), v.builtin, true),
            Err(ServiceError::NotFound(_)) => {
                return error_page(t, StatusCode::NOT_FOUND, "modes.no_mode");
            }
            Err(e) => return failed(t, e),
        }
    };
    html(&ModePage {
        form,
        builtin,
        existing,
        errors: super::FieldErrors::default(),
        notice: notice(t, &p),
        f: Frame::of(&o, "modes"),
    })
}

#[derive(Template)]
#[template(path = "console/preview.html")]
struct PreviewPage {
    f: Frame,
    title: String,
    changes: Vec<Change>,
    impact: Vec<String>,
    apply: &'static str,
    back: String,
    hidden: Hidden,
}

fn rule_text(t: &Tr, rule: &str) -> String {
    t.sub("rule", rule)
}

fn mode_rows(t: &Tr, f: &ModeForm) -> Vec<(String, String)> {
    let mut rows = vec![
        (t.get("modes.description").to_owned(), f.description.clone()),
        (
            t.get("modes.network").to_owned(),
            t.sub("network", &f.network),
        ),
    ];
    for (cap, rule) in &f.rules {
        rows.push((t.sub("cap", cap), rule_text(t, rule)));
    }
    rows.push((
        t.get("modes.apps").to_owned(),
        if f.restrict_apps {
            f.apps
                .lines()
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            t.get("modes.any_app").to_owned()
        },
    ));
    rows
}

/// `POST /console/modes/preview`: the edit checked; wrong fields back in the editor,
/// else what changes and how many phones it touches, with the button that applies it.
pub async fn mode_preview(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let form = ModeForm::read(&p);
    let mode = match form.mode() {
        Ok(m) => m,
        Err(errors) => {
            let page = ModePage {
                errors: super::FieldErrors::of(&t, errors),
                builtin: false,
                existing: field(&p, "existing").is_some(),
                form,
                notice: None,
                f: Frame::of(&o, "modes"),
            };
            return (StatusCode::BAD_REQUEST, html(&page)).into_response();
        }
    };
    if redoubt_policy::is_preset(mode.name.as_str()) {
        return error_page(t, StatusCode::CONFLICT, "modes.builtin");
    }
    let before = match s.app.mode(&mode.name).await {
        Ok(v) => Some(ModeForm::of(&v.mode)),
        Err(ServiceError::NotFound(_)) => None,
        Err(e) => return failed(t, e),
    };
    let counts = match s.app.device_counts().await {
        Ok(c) => c,
        Err(e) => return failed(t, e),
    };
    let changes = compare(
        before.as_ref().map(|b| mode_rows(&t, b)),
        mode_rows(&t, &ModeForm::of(&mode)),
    );
    let assigned = counts
        .by_assigned_mode
        .get(mode.name.as_str())
        .copied()
        .unwrap_or(0);
    let effective = counts.by_mode.get(mode.name.as_str()).copied().unwrap_or(0);
    let impact = vec![
        if before.is_none() {
            t.with("modes.new_mode", "name", &mode.name)
        } else {
            t.with("modes.changed_mode", "name", &mode.name)
        },
        t.n("modes.assigned_phones", assigned),
        t.n("modes.effective_phones", effective),
    ];
    html(&PreviewPage {
        title: t.with("modes.preview_title", "name", &mode.name),
        changes,
        impact,
        apply: "/console/modes/apply",
        back: format!(
            "/console/modes/{}",
            if before.is_some() {
                mode.name.as_str()
            } else {
                "new"
            }
        ),
        hidden: hidden(&p),
        f: Frame::of(&o, "modes"),
    })
}

/// `POST /console/modes/apply`: parses the edit again and saves it (the phones assigned
/// to it get new bundles at once).
pub async fn mode_apply(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let mode = match ModeForm::read(&p).mode() {
        Ok(m) => m,
        Err(errors) => return error_page(t, StatusCode::BAD_REQUEST, errors[0].1),
    };
    let name = mode.name.clone();
    match s.app.put_mode(&who(&o), &name, mode).await {
        Ok(_) => see(&format!("/console/modes/{name}?done=mode_saved")),
        Err(e) => failed(t, e),
    }
}

// ---------------------------------------------------------------- zones

/// A zone as the editor holds it.
#[derive(Default)]
pub struct ZoneForm {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The mode inside.
    pub mode: String,
    /// Checkpoints, one per line.
    pub checkpoints: String,
    /// BSSIDs, one per line.
    pub wifi: String,
}

impl ZoneForm {
    fn of(z: &ZoneDefinition) -> ZoneForm {
        ZoneForm {
            name: z.name.to_string(),
            description: z.description.clone(),
            mode: z.mode.to_string(),
            checkpoints: z
                .checkpoints
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            wifi: z
                .wifi_bssids
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn read(p: &[(String, String)]) -> ZoneForm {
        let g = |k: &str| field(p, k).unwrap_or("").to_owned();
        ZoneForm {
            name: g("name"),
            description: g("description"),
            mode: g("mode"),
            checkpoints: g("checkpoints"),
            wifi: g("wifi"),
        }
    }

    fn lines(text: &str) -> impl Iterator<Item = &str> {
        text.lines().map(str::trim).filter(|l| !l.is_empty())
    }

    fn zone(&self) -> Result<ZoneDefinition, Vec<(String, &'static str)>> {
        let mut errors = Vec::new();
        let name = self.name.parse::<ZoneName>();
        if name.is_err() {
            errors.push(("name".to_owned(), "zones.bad_name"));
        }
        let mode = self.mode.parse::<ModeName>();
        if mode.is_err() {
            errors.push(("mode".to_owned(), "bulk.bad_mode"));
        }
        let checkpoints: Result<Vec<CheckpointName>, _> =
            Self::lines(&self.checkpoints).map(str::parse).collect();
        match &checkpoints {
            Err(_) => errors.push(("checkpoints".to_owned(), "zones.bad_checkpoint")),
            Ok(c) if c.is_empty() => {
                errors.push(("checkpoints".to_owned(), "zones.need_checkpoint"))
            }
            Ok(_) => {}
        }
        let wifi: Result<Vec<redoubt_proto::Bssid>, _> =
            Self::lines(&self.wifi).map(str::parse).collect();
        if wifi.is_err() {
            errors.push(("wifi".to_owned(), "zones.bad_bssid"));
        }
        if self.description.chars().count() > 1000 {
            errors.push(("description".to_owned(), "modes.bad_description"));
        }
        match (name, mode, checkpoints, wifi) {
            (Ok(name), Ok(mode), Ok(checkpoints), Ok(wifi_bssids)) if errors.is_empty() => {
                Ok(ZoneDefinition {
                    name,
                    description: self.description.replace('\r', ""),
                    mode,
                    checkpoints,
                    wifi_bssids,
                })
            }
            _ => Err(errors),
        }
    }
}

#[derive(Template)]
#[template(path = "console/zones.html")]
struct ZonesPage {
    f: Frame,
    zones: Vec<ZoneView>,
    inside: std::collections::BTreeMap<String, u64>,
}

/// `GET /console/zones`.
pub async fn zones(State(s): State<HttpState>, o: Officer) -> Response {
    let t = o.tr();
    let zones = match s.app.list_zones().await {
        Ok(z) => z,
        Err(e) => return failed(t, e),
    };
    let counts = match s.app.device_counts().await {
        Ok(c) => c,
        Err(e) => return failed(t, e),
    };
    html(&ZonesPage {
        zones,
        inside: counts.by_zone,
        f: Frame::of(&o, "zones"),
    })
}

#[derive(Template)]
#[template(path = "console/zone.html")]
struct ZonePage {
    f: Frame,
    form: ZoneForm,
    existing: bool,
    modes: Vec<String>,
    checkpoints: Vec<String>,
    credentials: Option<Vec<redoubt_proto::api::GateCredentialView>>,
    errors: super::FieldErrors,
    notice: Option<String>,
}

/// `GET /console/zones/{name}`: the zone, its editor, its gate credentials
/// (`/console/zones/new` starts a new zone).
pub async fn zone(
    State(s): State<HttpState>,
    o: Officer,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let t = o.tr();
    let p = pairs(q.unwrap_or_default().as_bytes());
    let (modes, _, _) = match names(&s).await {
        Ok(n) => n,
        Err(e) => return failed(t, e),
    };
    let (form, existing, checkpoints, credentials) = if name == "new" {
        (
            ZoneForm {
                mode: "secure-site".into(),
                ..Default::default()
            },
            false,
            Vec::new(),
            None,
        )
    } else {
        let Ok(name) = name.parse::<ZoneName>() else {
            return error_page(t, StatusCode::NOT_FOUND, "zones.no_zone");
        };
        let z = match s.app.zone(&name).await {
            Ok(z) => z,
            Err(ServiceError::NotFound(_)) => {
                return error_page(t, StatusCode::NOT_FOUND, "zones.no_zone");
            }
            Err(e) => return failed(t, e),
        };
        let credentials = if GATE_READERS.contains(&o.account.role) {
            match s.app.list_gate_credentials(&name).await {
                Ok(c) => Some(c),
                Err(e) => return failed(t, e),
            }
        } else {
            None
        };
        let checkpoints = z
            .definition
            .checkpoints
            .iter()
            .map(|c| c.to_string())
            .collect();
        (ZoneForm::of(&z.definition), true, checkpoints, credentials)
    };
    html(&ZonePage {
        form,
        existing,
        modes,
        checkpoints,
        credentials,
        errors: super::FieldErrors::default(),
        notice: notice(t, &p),
        f: Frame::of(&o, "zones"),
    })
}

fn zone_rows(t: &Tr, f: &ZoneForm) -> Vec<(String, String)> {
    let list = |text: &str| ZoneForm::lines(text).collect::<Vec<_>>().join(", ");
    vec![
        (t.get("modes.description").to_owned(), f.description.clone()),
        (t.get("zones.mode").to_owned(), f.mode.clone()),
        (t.get("zones.checkpoints").to_owned(), list(&f.checkpoints)),
        (t.get("zones.wifi").to_owned(), list(&f.wifi)),
    ]
}

/// `POST /console/zones/preview`.
pub async fn zone_preview(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let form = ZoneForm::read(&p);
    let def = match form.zone() {
        Ok(d) => d,
        Err(errors) => {
            let (modes, _, _) = match names(&s).await {
                Ok(n) => n,
                Err(e) => return failed(t, e),
            };
            let page = ZonePage {
                errors: super::FieldErrors::of(&t, errors),
                existing: field(&p, "existing").is_some(),
                form,
                modes,
                checkpoints: Vec::new(),
                credentials: None,
                notice: None,
                f: Frame::of(&o, "zones"),
            };
            return (StatusCode::BAD_REQUEST, html(&page)).into_response();
        }
    };
    let before = match s.app.zone(&def.name).await {
        Ok(z) => Some(ZoneForm::of(&z.definition)),
        Err(ServiceError::NotFound(_)) => None,
        Err(e) => return failed(t, e),
    };
    let counts = match s.app.device_counts().await {
        Ok(c) => c,
        Err(e) => return failed(t, e),
    };
    let changes = compare(
        before.as_ref().map(|b| zone_rows(&t, b)),
        zone_rows(&t, &ZoneForm::of(&def)),
    );
    let inside = counts.by_zone.get(def.name.as_str()).copied().unwrap_or(0);
    let impact = vec![
        t.n("zones.inside_phones", inside),
        t.n("zones.all_phones", counts.total),
    ];
    html(&PreviewPage {
        title: t.with("zones.preview_title", "name", &def.name),
        changes,
        impact,
        apply: "/console/zones/apply",
        back: format!(
            "/console/zones/{}",
            if before.is_some() {
                def.name.as_str()
            } else {
                "new"
            }
        ),
        hidden: hidden(&p),
        f: Frame::of(&o, "zones"),
    })
}

/// `POST /console/zones/apply`.
pub async fn zone_apply(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let def = match ZoneForm::read(&pairs(&body)).zone() {
        Ok(d) => d,
        Err(errors) => return error_page(t, StatusCode::BAD_REQUEST, errors[0].1),
    };
    let name = def.name.clone();
    match s.app.put_zone(&o.admin(), &name, def).await {
        Ok(_) => see(&format!("/console/zones/{name}?done=zone_saved")),
        Err(e) => failed(t, e),
    }
}

#[derive(Template)]
#[template(path = "console/gate_sheet.html")]
struct GateSheet {
    f: Frame,
    zone: String,
    checkpoint: String,
    url: String,
    qr: String,
    expires_at: Option<redoubt_proto::Timestamp>,
}

/// `POST /console/zones/{name}/gate-credentials`: a credential for a checkpoint's
/// tablet, shown once as a printable sheet with the link as a QR code.
pub async fn create_gate(
    State(s): State<HttpState>,
    o: Officer,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let (Ok(zone), Some(Ok(checkpoint))) = (
        name.parse::<ZoneName>(),
        field(&p, "checkpoint").map(str::parse::<CheckpointName>),
    ) else {
        return error_page(t, StatusCode::BAD_REQUEST, "zones.bad_checkpoint");
    };
    let ttl = match field(&p, "days").map(str::parse::<u64>) {
        None => None,
        Some(Ok(d)) if (1..=365 * 5).contains(&d) => Some(d * 86400),
        Some(_) => return error_page(t, StatusCode::BAD_REQUEST, "zones.bad_days"),
    };
    let made = match s
        .app
        .create_gate_credential(&o.admin(), &zone, &checkpoint, ttl)
        .await
    {
        Ok(m) => m,
        Err(e) => return failed(t, e),
    };
    let qr = match crate::gate::qr_svg(&made.url) {
        Ok(q) => q,
        Err(e) => return failed(t, e),
    };
    html(&GateSheet {
        zone: zone.to_string(),
        checkpoint: checkpoint.to_string(),
        url: made.url,
        qr,
        expires_at: made.expires_at,
        f: Frame::of(&o, "zones"),
    })
}

/// `POST /console/zones/{name}/gate-credentials/{id}/revoke`.
pub async fn revoke_gate(
    State(s): State<HttpState>,
    o: Officer,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let t = o.tr();
    let (Ok(zone), Ok(id)) = (name.parse::<ZoneName>(), id.parse::<CredentialId>()) else {
        return error_page(t, StatusCode::NOT_FOUND, "zones.no_zone");
    };
    match s.app.revoke_gate_credential(&o.admin(), &zone, &id).await {
        Ok(_) => see(&format!("/console/zones/{zone}?done=gate_revoked")),
        Err(e) => failed(t, e),
    }
}

// ---------------------------------------------------------------- groups

#[derive(Template)]
#[template(path = "console/groups.html")]
struct GroupsPage {
    f: Frame,
    groups: Vec<redoubt_store::DeviceGroupRecord>,
    modes: Vec<String>,
    notice: Option<String>,
}

/// `GET /console/groups`.
pub async fn groups(State(s): State<HttpState>, o: Officer, RawQuery(q): RawQuery) -> Response {
    let t = o.tr();
    let groups = match s.app.store.list_device_groups().await {
        Ok(g) => g,
        Err(e) => return failed(t, e.into()),
    };
    let (modes, _, _) = match names(&s).await {
        Ok(n) => n,
        Err(e) => return failed(t, e),
    };
    html(&GroupsPage {
        groups,
        modes,
        notice: notice(t, &pairs(q.unwrap_or_default().as_bytes())),
        f: Frame::of(&o, "groups"),
    })
}

/// `POST /console/groups`.
pub async fn create_group(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let Some(Ok(name)) = field(&p, "name").map(str::parse::<DeviceGroupName>) else {
        return error_page(t, StatusCode::BAD_REQUEST, "filter.bad_group");
    };
    let mode = match field(&p, "mode").map(str::parse::<ModeName>) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(_)) => return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_mode"),
    };
    let req = CreateDeviceGroup {
        name,
        description: field(&p, "description").unwrap_or("").to_owned(),
        mode,
    };
    match s.app.create_device_group(&who(&o), req).await {
        Ok(_) => see("/console/groups?done=group_saved"),
        Err(e) => failed(t, e),
    }
}

/// `POST /console/groups/{name}/mode` (an empty mode clears it).
pub async fn group_mode(
    State(s): State<HttpState>,
    o: Officer,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let Ok(name) = name.parse::<DeviceGroupName>() else {
        return error_page(t, StatusCode::BAD_REQUEST, "filter.bad_group");
    };
    let mode = match field(&p, "mode").map(str::parse::<ModeName>) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(_)) => return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_mode"),
    };
    match s.app.set_group_mode(&who(&o), &name, mode.as_ref()).await {
        Ok(_) => see("/console/groups?done=group_saved"),
        Err(e) => failed(t, e),
    }
}
