//! Enrollment: create the device key on the device, prove it to the server with the
//! single-use token from the enrollment URL (over TLS pinned to the CA in that URL),
//! verify the first bundle, write the state directory, and write the messenger
//! directory with a messenger key the device key delegates (see [`crate::messenger_dir`]).

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::{Signer, SigningKey};
use rand_core::OsRng;
use redoubt_client::{ClientError, ServerClient};
use redoubt_policy::{decide, verify_bundle};
use redoubt_proto::api::{EnrollRequest, EnrollResponse, enroll_proof_message};
use redoubt_proto::envelope::{decode_public_key, encode_public_key, encode_signature};
use redoubt_proto::{API_PREFIX, EnrollmentUrl, HardwareKind};
use serde::Serialize;

use crate::clock::{Clock, TIME_FLOOR_FILE, TimeFloor};
use crate::hardware::sim::SimHardware;
use crate::state::{
    Identity, MESSENGER_DIR, MessengerRecord, OUTBOX_DIR, Owner, SEQ_FILE, STATUS_FILE, StateDir,
    WIPE_MARKER, ZONES_FILE,
};

/// Where enrollment writes the messenger directory and whom it hands it to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessengerPlacement {
    /// The directory; `None`: `messenger/` inside the state directory.
    pub dir: Option<std::path::PathBuf>,
    /// The user (and group) that runs the chat; `None`: the agent's own user.
    pub owner: Option<Owner>,
}

/// The result of a successful enrollment (the `enroll --json` output).
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    /// The id the server assigned.
    pub device_id: redoubt_proto::DeviceId,
    /// The person the device belongs to.
    pub user: redoubt_proto::UserName,
    /// The server's base URL.
    pub server: String,
    /// The hardware backend.
    pub hardware: HardwareKind,
    /// True for the SIMULATED backend.
    pub simulated: bool,
    /// Version of the first bundle.
    pub bundle_version: u64,
    /// The mode that bundle puts in force.
    pub effective_mode: String,
    /// The messenger directory (give it to `redoubt chat --state`).
    pub messenger_dir: std::path::PathBuf,
}

/// Turns a refusal of `POST /enroll` into one clear sentence.
fn explain(e: ClientError) -> anyhow::Error {
    const NEW_CODE: &str = "ask an operator for a new enrollment code";
    match &e {
        ClientError::Api { code, message, .. } => match code.as_str() {
            "token_invalid" => {
                anyhow!("enrollment refused: the enrollment token is not valid; {NEW_CODE}")
            }
            "token_used" => anyhow!(
                "enrollment refused: this enrollment token has already been used; {NEW_CODE}"
            ),
            "token_expired" => {
                anyhow!("enrollment refused: this enrollment token has expired; {NEW_CODE}")
            }
            "rate_limited" => anyhow!(
                "enrollment refused: too many enrollment attempts; wait a minute and try again"
            ),
            "bad_request" => {
                anyhow!("enrollment refused: the server rejected the request: {message}")
            }
            _ => anyhow!("enrollment failed: {e}"),
        },
        ClientError::Transport { .. } | ClientError::Decode(_) => anyhow!("enrollment failed: {e}"),
    }
}

/// Enrolls the device into `dir` using `url`.
pub async fn enroll(
    url: &EnrollmentUrl,
    dir: &StateDir,
    hardware: HardwareKind,
    messenger: &MessengerPlacement,
    clock: &dyn Clock,
) -> Result<Enrolled> {
    refuse_if_enrolled(dir)?;
    dir.create()?;
    let record = MessengerRecord {
        dir: crate::messenger_dir::resolve_target(
            &messenger
                .dir
                .clone()
                .unwrap_or_else(|| dir.path(MESSENGER_DIR)),
        )
        .context("enrollment not attempted: the messenger directory cannot be used")?,
        owner: messenger.owner,
    };
    crate::messenger_dir::check_placement(dir, &record)
        .context("enrollment not attempted: the messenger directory cannot be used")?;
    let _lock = dir.lock()?;
    refuse_if_enrolled(dir)?;
    // A backend that cannot start here (no system bus for `sailfish`) would leave an
    // enrolled phone that enforces nothing: find out before the single-use code is spent.
    if hardware != HardwareKind::Sim {
        drop(
            crate::hardware::open(hardware, dir.root())
                .with_context(|| format!("the {hardware} hardware backend cannot start on this device; enrollment not attempted"))?,
        );
    }

    // The device key is created here and never leaves this machine; only its public
    // half and a proof of possession are sent.
    let key = SigningKey::generate(&mut OsRng);
    let device_public_key = encode_public_key(&key.verifying_key());
    let proof = encode_signature(&key.sign(&enroll_proof_message(&url.token, &device_public_key)));
    let request = EnrollRequest {
        token: url.token.clone(),
        device_public_key,
        hardware,
        proof,
    };
    let client = ServerClient::new(url.server.clone(), url.ca, None).map_err(explain)?;
    let response: EnrollResponse = client
        .post(&format!("{API_PREFIX}/enroll"), &request)
        .await
        .map_err(explain)?;

    let organization_key = decode_public_key(&response.organization_key)
        .context("enrollment failed: the server sent an invalid organization key")?;
    let now = clock.wall();
    let bundle = verify_bundle(
        &response.bundle,
        &organization_key,
        &response.device_id,
        None,
        now,
    )
    .context("enrollment failed: the server's first policy bundle was refused")?;

    // Leftovers of an earlier device in this directory must not be sent as ours.
    for stale in [
        SEQ_FILE,
        STATUS_FILE,
        ZONES_FILE,
        WIPE_MARKER,
        TIME_FLOOR_FILE,
    ] {
        let _ = std::fs::remove_file(dir.path(stale));
    }
    let _ = std::fs::remove_dir_all(dir.path(OUTBOX_DIR));

    dir.store_key(&key)?;
    dir.store_bundle(&response.bundle)?;
    // The first trusted time: the issue time of the bundle the server just signed.
    TimeFloor::load(dir, bundle.issued_at, &clock.boot()).store(dir)?;
    if hardware == HardwareKind::Sim {
        SimHardware::new(dir.root())
            .reset()
            .context("initializing the simulated hardware")?;
    }
    let identity = Identity {
        device_id: response.device_id,
        user: response.user,
        server: url.server.clone(),
        ca_fingerprint: url.ca,
        organization_key,
        hardware,
        enrolled_at: now,
    };
    // The messenger gets a key of its own, delegated by the device key; the device key
    // stays here. The bundle's issue time is the server's.
    crate::messenger_dir::provision(dir, &identity, &key, &record, bundle.issued_at, true)
        .context("writing the messenger directory")?;
    // Written last: its presence is what makes the directory enrolled.
    dir.store_identity(&identity)?;
    tracing::info!(device = %identity.device_id, bundle_version = bundle.version, "enrolled");

    Ok(Enrolled {
        effective_mode: decide(Some(&bundle), now).mode.name,
        device_id: identity.device_id,
        user: identity.user,
        server: identity.server.as_str().trim_end_matches('/').to_owned(),
        hardware,
        simulated: hardware.is_simulated(),
        bundle_version: bundle.version,
        messenger_dir: record.dir,
    })
}

fn refuse_if_enrolled(dir: &StateDir) -> Result<()> {
    if dir.is_enrolled() {
        match dir.load_identity() {
            Ok(id) => bail!(
                "{} is already enrolled as device {} ({}); use another --state directory",
                dir.root().display(),
                id.device_id,
                id.user
            ),
            Err(_) => bail!(
                "{} is already enrolled; use another --state directory",
                dir.root().display()
            ),
        }
    }
    Ok(())
}
