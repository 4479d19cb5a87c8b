//! Seed corpora for the fuzz targets, generated from the real encoders with the
//! fixtures the targets use (`fuzz/src/fixtures.rs`, included by path), so seeds signed
//! here verify inside the targets: the fuzzer starts from valid inputs and mutates.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use redoubt_messenger::messenger::{CIPHERSUITE, create_config};
use redoubt_policy::{PhoneTime, ZoneState};
use redoubt_proto::messaging::MessengerPush;
use redoubt_proto::ws::{AgentFrame, ServerFrame};
use redoubt_proto::zones::{CheckpointCode, CommandId, DeviceAction, DeviceCommand, Direction};
use redoubt_proto::{
    Capability, CapabilityState, ComplianceReport, HardwareKind, NetworkState, PolicyBundle,
    SignedEnvelope,
};
use tls_codec::Serialize as _;

#[path = "../../../fuzz/src/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use fixtures::{NOW, bundle, checkpoint_key, device, device_key, org_key};

/// Writes the seeds of `target` into `dir` (created; existing files are kept).
pub fn write(target: &str, dir: &Path) -> Result<usize> {
    let seeds = seeds(target)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, seed) in seeds.iter().enumerate() {
        let path = dir.join(format!("seed-{i:02}"));
        std::fs::write(&path, seed).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(seeds.len())
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

fn code(direction: Direction, nonce: &str, key: &ed25519_dalek::SigningKey) -> Result<String> {
    Ok(CheckpointCode {
        zone: "lab".parse()?,
        checkpoint: "north-gate".parse()?,
        direction,
        not_before: NOW.plus_secs(-10),
        not_after: NOW.plus_secs(50),
        nonce: nonce.into(),
    }
    .encode(key))
}

fn report() -> Result<ComplianceReport> {
    Ok(ComplianceReport {
        device_id: device(),
        seq: 7,
        bundle_version: bundle().version,
        effective_mode: "secure-site".into(),
        capabilities: Capability::ALL
            .into_iter()
            .map(|c| (c, CapabilityState::Off))
            .collect::<BTreeMap<_, _>>(),
        network: NetworkState::OrganizationOnly,
        hardware: HardwareKind::Sim,
        observed_at: NOW,
        fallback_reason: None,
        zones: vec!["lab".parse()?],
        locked_by: None,
        commands_done: vec![CommandId::from_random([3; 12])],
        events: vec![],
        trusted_floor: Some(NOW),
        clock_tampered: false,
        inventory: Some(redoubt_proto::Inventory {
            model: Some("Simulated phone (SIMULATED)".into()),
            os_name: Some("Debian GNU/Linux".into()),
            os_version: Some("13".into()),
            kernel: Some("6.12.0".into()),
            agent_version: "0.1.0".into(),
            hardware_backend: "simulated".into(),
            storage_total_bytes: Some(64_000_000_000),
            storage_free_bytes: Some(20_000_000_000),
            battery_percent: None,
            battery_charging: None,
        }),
    })
}

fn lock_command() -> DeviceCommand {
    DeviceCommand {
        id: CommandId::from_random([4; 12]),
        device_id: device(),
        action: DeviceAction::Lock,
        issued_at: NOW.plus_secs(-5),
        expires_at: NOW.plus_secs(3600),
    }
}

fn seeds(target: &str) -> Result<Vec<Vec<u8>>> {
    let org = org_key();
    let signed_bundle = SignedEnvelope::sign(PolicyBundle::KIND, &bundle(), &org);
    Ok(match target {
        "checkpoint_code" => vec![
            code(Direction::In, "n-in", &checkpoint_key())?.into_bytes(),
            code(Direction::Out, "n-out", &checkpoint_key())?.into_bytes(),
            code(Direction::In, "forged", &org)?.into_bytes(),
            b"RDZ1.e30.AA".to_vec(),
        ],
        "envelope" => vec![
            json(&SignedEnvelope::sign(
                "fuzz/v1",
                &serde_json::json!({"a": [1, 2.5, null, true], "b": "text"}),
                &org,
            ))?,
            json(&signed_bundle)?,
            br#"{"a":[1,{"b":"c"}],"d":-1e3}"#.to_vec(),
            // The crash of 2026-12-04: more digits than an f64 holds (see
            // redoubt-proto's `numbers_verify_back_to_exactly_what_was_signed`).
            format!("{{\"a\":-{}}}", "3".repeat(104)).into_bytes(),
        ],
        "bundle" => vec![json(&signed_bundle)?, json(&bundle())?],
        "compliance_report" => {
            let env = SignedEnvelope::sign(ComplianceReport::KIND, &report()?, &device_key());
            vec![json(&AgentFrame::Report { report: env })?, json(&report()?)?]
        }
        "enrollment_url" => vec![
            b"redoubt://enroll?server=https%3A%2F%2Fredoubt.example.org%3A8443&token=abcDEF_123-x&ca=sha256%3A0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_vec(),
            b"redoubt://enroll?server=https://[::1]:1&token=t&ca=sha256:00".to_vec(),
        ],
        "mode_file" => vec![
            b"name = \"night-shift\"\ndescription = \"Guards on the night shift\"\nnetwork = \"organization-only\"\napp_allowlist = [\"org.redoubt.messenger\"]\n\n[capabilities]\ncamera = \"deny\"\nmicrophone = \"allow\"\nbluetooth = \"deny\"\nwifi = \"allow\"\ncellular_data = \"deny\"\nlocation = \"allow\"\nnfc = \"deny\"\nusb_data = \"deny\"\nscreenshots = \"deny\"\n".to_vec(),
        ],
        "zone_file" => vec![
            b"name = \"lab\"\ndescription = \"Building 4, second floor\"\nmode = \"secure-site\"\ncheckpoints = [\"north-gate\", \"south-gate\"]\nwifi_bssids = [\"02:00:00:00:01:00\"]\n".to_vec(),
        ],
        "ws_frames" => vec![
            json(&AgentFrame::Hello {
                device_id: device(),
                signature: "c2lnbmF0dXJl".into(),
            })?,
            json(&AgentFrame::CommandAck {
                id: CommandId::from_random([5; 12]),
                accepted: false,
                reason: Some("expired".into()),
            })?,
            json(&ServerFrame::Challenge { nonce: "bm9uY2U".into() })?,
            json(&ServerFrame::Welcome { server_time: NOW })?,
            json(&ServerFrame::Bundle { bundle: signed_bundle })?,
            json(&ServerFrame::ReportAck { seq: 12 })?,
            json(&ServerFrame::Error {
                code: "bad_request".into(),
                message: "m".into(),
                fatal: true,
            })?,
            json(&MessengerPush::KeyPackagesLow { remaining: 3 })?,
        ],
        "zone_state" => {
            let b = bundle();
            let mut state = ZoneState::default();
            let empty = json(&state)?;
            state
                .apply_code(&code(Direction::In, "n1", &checkpoint_key())?, &b, PhoneTime::trusted(NOW), "e1".into())
                .map_err(|e| anyhow!("seed check-in: {e}"))?;
            let inside = json(&state)?;
            let mut n = 0;
            state
                .apply_command(&lock_command(), &device(), Some(&b), PhoneTime::trusted(NOW), &mut || {
                    n += 1;
                    format!("c{n}")
                })
                .map_err(|e| anyhow!("seed lock: {e}"))?;
            vec![empty, inside, json(&state)?]
        }
        "mls_commit" => mls_seeds()?,
        "server_commit" => server_commit_seeds()?,
        other => anyhow::bail!("no seeds for target {other}"),
    })
}

/// Real MLS messages as the messenger makes them (its group config): commits (add,
/// self-update, remove), the Welcome, a KeyPackage and an application message; and an
/// add commit in public framing (what a delivery service that verifies commits reads).
fn mls_seeds() -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let public = MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build();
    for config in [create_config(), public] {
        let provider = OpenMlsRustCrypto::default();
        let member = |name: &str| -> Result<(SignatureKeyPair, CredentialWithKey)> {
            let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
                .map_err(|e| anyhow!("signature key: {e:?}"))?;
            signer
                .store(provider.storage())
                .map_err(|e| anyhow!("storing a key: {e:?}"))?;
            let credential = CredentialWithKey {
                credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
                signature_key: signer.to_public_vec().into(),
            };
            Ok((signer, credential))
        };
        let (alice, alice_cred) = member("alice")?;
        let (bob, bob_cred) = member("bob")?;
        let mut group = MlsGroup::new(&provider, &alice, &config, alice_cred)
            .map_err(|e| anyhow!("group: {e:?}"))?;
        let kp = KeyPackage::builder()
            .build(CIPHERSUITE, &provider, &bob, bob_cred)
            .map_err(|e| anyhow!("key package: {e:?}"))?
            .key_package()
            .clone();
        let kp_msg = MlsMessageOut::from(kp.clone());
        let (commit, welcome, _) = group
            .add_members(&provider, &alice, &[kp])
            .map_err(|e| anyhow!("add: {e:?}"))?;
        group
            .merge_pending_commit(&provider)
            .map_err(|e| anyhow!("merge: {e:?}"))?;
        let update = group
            .self_update(&provider, &alice, LeafNodeParameters::default())
            .map_err(|e| anyhow!("self-update: {e:?}"))?;
        let update_commit = update.commit().clone();
        group
            .merge_pending_commit(&provider)
            .map_err(|e| anyhow!("merge: {e:?}"))?;
        let app = group
            .create_message(&provider, &alice, b"hello")
            .map_err(|e| anyhow!("message: {e:?}"))?;
        let (remove, _, _) = group
            .remove_members(&provider, &alice, &[LeafNodeIndex::new(1)])
            .map_err(|e| anyhow!("remove: {e:?}"))?;
        for m in [&commit, &welcome, &kp_msg, &update_commit, &app, &remove] {
            out.push(
                m.tls_serialize_detached()
                    .map_err(|e| anyhow!("encoding: {e:?}"))?,
            );
        }
    }
    Ok(out)
}

/// Commits against the fixture group (`fixtures::group`: alice, bob and carol at
/// epoch 1), made by its members' real clients and framed as `server_commit` reads
/// them: alice adds dave (with the Welcome and GroupInfo), removes carol, updates
/// herself (with and without the GroupInfo); bob, joined from the fixture's Welcome,
/// updates himself; and the fixture's own build commit, now an epoch behind.
fn server_commit_seeds() -> Result<Vec<Vec<u8>>> {
    use fixtures::group::{self, Posted, encode, frame, key_package, member};
    let info = |gi: Option<&openmls::messages::group_info::GroupInfo>| {
        gi.map(|g| encode(&MlsMessageOut::from(g.clone())))
            .transpose()
            .map_err(|e| anyhow!("{e}"))
    };
    let fixture = group::build().map_err(|e| anyhow!("the fixture group: {e}"))?;
    let provider = &fixture.alice_provider;
    let mut alice = fixture.alice;
    let alice_key = member(0).signer;
    let mut out = Vec::new();

    let dave = group::Provider::new("dave");
    let kp = key_package(&dave, &member(3)).map_err(|e| anyhow!("{e}"))?;
    let (commit, welcome, gi) = alice
        .add_members(provider, &alice_key, &[kp])
        .map_err(|e| anyhow!("adding dave: {e:?}"))?;
    out.push(frame(
        0,
        &Posted {
            commit: encode(&commit).map_err(|e| anyhow!("{e}"))?,
            welcome: Some(encode(&welcome).map_err(|e| anyhow!("{e}"))?),
            group_info: info(gi.as_ref())?,
        },
    ));
    alice
        .clear_pending_commit(provider.storage())
        .map_err(|e| anyhow!("clearing: {e:?}"))?;

    let (commit, _, gi) = alice
        .remove_members(provider, &alice_key, &[LeafNodeIndex::new(2)])
        .map_err(|e| anyhow!("removing carol: {e:?}"))?;
    out.push(frame(
        0,
        &Posted {
            commit: encode(&commit).map_err(|e| anyhow!("{e}"))?,
            welcome: None,
            group_info: info(gi.as_ref())?,
        },
    ));
    alice
        .clear_pending_commit(provider.storage())
        .map_err(|e| anyhow!("clearing: {e:?}"))?;

    let update = alice
        .self_update(provider, &alice_key, LeafNodeParameters::default())
        .map_err(|e| anyhow!("alice's self-update: {e:?}"))?;
    let commit = encode(update.commit()).map_err(|e| anyhow!("{e}"))?;
    for group_info in [info(update.group_info())?, None] {
        out.push(frame(
            0,
            &Posted {
                commit: commit.clone(),
                welcome: None,
                group_info,
            },
        ));
    }

    let Some(welcome) = fixture.build.welcome.as_deref() else {
        anyhow::bail!("the fixture's build commit has no Welcome");
    };
    let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact_bytes(welcome)
        .map_err(|e| anyhow!("decoding the Welcome: {e:?}"))?
        .extract()
    else {
        anyhow::bail!("the fixture's Welcome is not a Welcome");
    };
    let mut bob = StagedWelcome::new_from_welcome(
        &fixture.joiners,
        group::config().join_config(),
        welcome,
        None,
    )
    .and_then(|s| s.into_group(&fixture.joiners))
    .map_err(|e| anyhow!("bob joining: {e:?}"))?;
    let update = bob
        .self_update(
            &fixture.joiners,
            &member(1).signer,
            LeafNodeParameters::default(),
        )
        .map_err(|e| anyhow!("bob's self-update: {e:?}"))?;
    out.push(frame(
        1,
        &Posted {
            commit: encode(update.commit()).map_err(|e| anyhow!("{e}"))?,
            welcome: None,
            group_info: info(update.group_info())?,
        },
    ));

    out.push(frame(0, &fixture.build));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::fixtures::{self, group};
    use super::server_commit_seeds;
    use crate::mls_cost::public_group::{self, Refused};

    /// The server's state of the fixture group, as the `server_commit` target
    /// computes it: `start` at epoch 0, then the build commit.
    fn fixture_state() -> Vec<u8> {
        let org = fixtures::org_key().verifying_key();
        let f = group::build().expect("the fixture builds");
        let alice = group::member(0).device;
        let started = public_group::start(
            &group::group_id(),
            &f.start_group_info,
            &f.start_tree,
            &alice,
            &org,
        )
        .expect("start");
        public_group::verify_commit(
            &started.state,
            &group::group_id(),
            &alice,
            &f.build.commit,
            f.build.welcome.as_deref(),
            f.build.group_info.as_deref(),
            &org,
        )
        .expect("the build commit verifies")
        .state
    }

    /// The target and the seed generator run in different processes: the fixture
    /// must come out the same each time, or no seed would verify in the target.
    #[test]
    fn the_fixture_group_is_the_same_on_every_build() {
        assert_eq!(fixture_state(), fixture_state());
    }

    /// Every seed reaches the end of the server's check: the members' commits are
    /// accepted (with the added device as the Welcome's recipient), the stale build
    /// commit is refused for its epoch only.
    #[test]
    fn server_commit_seeds_pass_the_servers_check() {
        let org = fixtures::org_key().verifying_key();
        let state = fixture_state();
        let seeds = server_commit_seeds().expect("seeds");
        assert_eq!(seeds.len(), 6);
        let (last, members) = seeds.split_last().expect("seeds");
        for (i, seed) in members.iter().enumerate() {
            let (sender, posted) = group::unframe(seed);
            assert_eq!(group::frame(sender, &posted), *seed, "seed {i} round-trips");
            let v = public_group::verify_commit(
                &state,
                &group::group_id(),
                &group::member(sender).device,
                &posted.commit,
                posted.welcome.as_deref(),
                posted.group_info.as_deref(),
                &org,
            )
            .unwrap_or_else(|e| panic!("seed {i} refused: {e}"));
            assert_eq!(v.epoch, 1);
            let expected_added = if i == 0 {
                vec![group::member(3).device]
            } else {
                vec![]
            };
            assert_eq!(v.added, expected_added, "seed {i}");
            assert_eq!(v.members.len(), if i == 1 { 2 } else { 3 + v.added.len() });
        }
        let (sender, posted) = group::unframe(last);
        let refused = public_group::verify_commit(
            &state,
            &group::group_id(),
            &group::member(sender).device,
            &posted.commit,
            posted.welcome.as_deref(),
            posted.group_info.as_deref(),
            &org,
        );
        assert_eq!(
            refused,
            Err(Refused::WrongEpoch {
                sent: 0,
                current: 1
            })
        );
    }
}
