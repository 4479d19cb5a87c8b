//! The server's own commit check (`POST …/commits`): `verify_commit` of
//! `redoubt-server`'s `messaging/public_group.rs` (included by path, the code the
//! server runs) against a fixture public group of three certified members at epoch 1
//! (`redoubt_fuzz::fixtures::group`, built once; its state comes from the server's
//! own `start` and `verify_commit` of the commit that built it).
//!
//! Input: `sender · commit · welcome? · group_info?` (see `fixtures::group::frame`);
//! the sender byte picks the authenticated poster among the members or an outsider.
//!
//! Properties: nothing panics; no input makes the check report the stored state as
//! corrupt (that is the server's fault, not the poster's); a refusal for the epoch
//! names the commit's own epoch; anything accepted was posted by a current member
//! whose leaf signed it, at the current epoch, and its new state loads at the next
//! epoch with exactly the listed member devices, each leaf carrying an organization
//! certificate for its own key, the added devices among them and the GroupInfo kept
//! only when one was sent. (The fixture state cannot change on a refusal: the check
//! borrows it immutably and returns the new state only in `Verified`.)
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use ed25519_dalek::VerifyingKey;
use libfuzzer_sys::fuzz_target;
use openmls::prelude::*;
use redoubt_fuzz::fixtures::{self, group};
use redoubt_proto::messaging::MemberCertificate;
use redoubt_proto::{DeviceId, SignedEnvelope};
use tls_codec::Deserialize as _;

#[allow(dead_code)]
#[path = "../../crates/redoubt-server/src/messaging/public_group.rs"]
mod public_group;

use public_group::{PublicState, Refused};

/// The server's view of the fixture group.
struct Fixture {
    /// The stored state (epoch 1).
    state: Vec<u8>,
    /// Its epoch.
    epoch: u64,
    /// The device of each leaf, by leaf index.
    leaves: Vec<(u32, DeviceId)>,
    /// The organization key.
    org: VerifyingKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let org = fixtures::org_key().verifying_key();
        let f = group::build().expect("the fixture group builds");
        let alice = group::member(0);
        let started = public_group::start(
            &group::group_id(),
            &f.start_group_info,
            &f.start_tree,
            &alice.device,
            &org,
        )
        .expect("the server starts the fixture group");
        let v = public_group::verify_commit(
            &started.state,
            &group::group_id(),
            &alice.device,
            &f.build.commit,
            f.build.welcome.as_deref(),
            f.build.group_info.as_deref(),
            &org,
        )
        .expect("the server accepts the fixture's build commit");
        let (epoch, leaves) = tree(&v.state, &org).expect("the fixture state loads");
        assert_eq!(epoch, 1);
        assert_eq!(leaves.len(), 3);
        Fixture {
            state: v.state,
            epoch,
            leaves,
            org,
        }
    })
}

/// The epoch and the (leaf index, certified device) pairs of a stored state; `Err`
/// when a leaf's certificate is not the organization's for that leaf's key.
fn tree(state: &[u8], org: &VerifyingKey) -> Result<(u64, Vec<(u32, DeviceId)>), String> {
    let storage = PublicState::from_snapshot(state).map_err(|e| e.to_string())?;
    let g = PublicGroup::load(&storage, &group::mls_group_id())
        .map_err(|e| e.to_string())?
        .ok_or("no group in the state")?;
    let mut leaves = Vec::new();
    for m in g.members() {
        let env: SignedEnvelope = serde_json::from_slice(m.credential.serialized_content())
            .map_err(|_| format!("leaf {}: not an envelope", m.index.u32()))?;
        let cert: MemberCertificate = env
            .verify(MemberCertificate::KIND, org)
            .map_err(|_| format!("leaf {}: not certified", m.index.u32()))?;
        if cert.mls_key.0 != m.signature_key {
            return Err(format!(
                "leaf {}: certificate for another key",
                m.index.u32()
            ));
        }
        leaves.push((m.index.u32(), cert.device_id));
    }
    Ok((g.group_context().epoch().as_u64(), leaves))
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (choice, posted) = group::unframe(data);
    let outsider = fixtures::device();
    let sender = match choice % 4 {
        3 => outsider.clone(),
        n => f.leaves[n as usize].1.clone(),
    };
    let result = public_group::verify_commit(
        &f.state,
        &group::group_id(),
        &sender,
        &posted.commit,
        posted.welcome.as_deref(),
        posted.group_info.as_deref(),
        &f.org,
    );
    let v = match result {
        Err(Refused::Corrupt(m)) => panic!("posted bytes reported as a corrupt state: {m}"),
        Err(Refused::WrongEpoch { sent, current }) => {
            assert_eq!(current, f.epoch);
            assert_ne!(sent, f.epoch);
            return;
        }
        Err(Refused::Invalid(_)) => return,
        Ok(v) => v,
    };

    // Posted by a current member, signed by that member's leaf, at the current epoch.
    assert_ne!(sender, outsider, "accepted from an outsider");
    let Ok(MlsMessageBodyIn::PublicMessage(public)) =
        MlsMessageIn::tls_deserialize_exact(&posted.commit).map(|m| m.extract())
    else {
        panic!("accepted something that is not a public message");
    };
    let Sender::Member(leaf) = *public.sender() else {
        panic!("accepted a commit not sent by a member");
    };
    assert!(
        f.leaves.contains(&(leaf.u32(), sender.clone())),
        "accepted a commit signed by another leaf than the poster's"
    );
    assert_eq!(public.epoch().as_u64(), f.epoch);
    assert_eq!(v.epoch, f.epoch);

    // The new state: next epoch, every leaf certified, members as listed.
    let (epoch, leaves) = tree(&v.state, &f.org).expect("an accepted state loads, certified");
    assert_eq!(epoch, f.epoch + 1);
    let devices: BTreeSet<DeviceId> = leaves.iter().map(|(_, d)| d.clone()).collect();
    assert!(
        v.members.windows(2).all(|w| w[0] < w[1]),
        "members sorted and distinct"
    );
    assert_eq!(
        v.members,
        devices.into_iter().collect::<Vec<_>>(),
        "members are the tree's devices"
    );
    assert!(v.members.contains(&sender), "the committer stays a member");
    assert!(
        v.added.iter().all(|d| v.members.contains(d)),
        "added are members"
    );
    assert_eq!(
        v.added.is_empty(),
        posted.welcome.is_none(),
        "Welcome iff added"
    );
    assert_eq!(
        v.group_info, posted.group_info,
        "the GroupInfo kept as sent"
    );
});
