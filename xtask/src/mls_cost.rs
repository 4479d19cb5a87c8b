//! The MLS cost part of `cargo xtask bench messaging`: for groups of N members, the
//! time to create a commit (add one, remove one, self-update) and to process it, and
//! its size. In-process with openmls' in-memory `OpenMlsRustCrypto` provider and
//! basic credentials: this measures MLS, not Redoubt's member certificates, SQLite
//! store or network.
//!
//! The group is built the way the messenger builds one: one member (the committer)
//! adds the others with `add_members` (which also updates the committer's path), at
//! most 100 per commit. With `--filled`, every member joins from its Welcome and
//! commits a self-update at once, so the ratchet tree has no blank nodes (the shape a
//! group reaches when members update regularly; the messenger does not do this yet).
//! Besides the committer, one receiver is kept, which joined from a Welcome and
//! processes every commit; the other members' states are dropped.
//!
//! "server verify" is the delivery service's check of each commit (with its Welcome
//! and GroupInfo) against its public view of the group: the server's own
//! `messaging/public_group.rs`, included here as a module, so the figure is that
//! code's. For it every leaf carries a member certificate signed by a bench
//! organization key, as in Redoubt.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use redoubt_messenger::messenger::{CIPHERSUITE, create_config};
use tls_codec::{Deserialize as _, Serialize as _};

use crate::common::{ms, percentile};

/// The server's commit verification, measured as the server runs it (the fuzz seeds'
/// tests check their commits with it too).
#[allow(dead_code)]
#[path = "../../crates/redoubt-server/src/messaging/public_group.rs"]
pub(crate) mod public_group;

/// The bench's organization key (certifies every member's MLS key).
fn org() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
}

/// The device a member name stands for.
fn device_of(name: &str) -> redoubt_proto::DeviceId {
    let mut raw = [0u8; 12];
    for (i, b) in name.bytes().enumerate() {
        raw[i % 12] = raw[i % 12].wrapping_mul(31).wrapping_add(b);
    }
    raw[0] ^= name.len() as u8;
    redoubt_proto::DeviceId::from_random(raw)
}

/// A credential as Redoubt's: the organization's certificate for `name`'s key.
fn certified(name: &str, signer: &SignatureKeyPair) -> CredentialWithKey {
    use redoubt_proto::messaging::{B64, MemberCertificate};
    let cert = MemberCertificate {
        device_id: device_of(name),
        user: "bench".parse().expect("a valid user name"),
        mls_key: B64(signer.to_public_vec()),
        issued_at: redoubt_proto::Timestamp(1_800_000_000),
    };
    let env = redoubt_proto::SignedEnvelope::sign(MemberCertificate::KIND, &cert, &org());
    CredentialWithKey {
        credential: BasicCredential::new(serde_json::to_vec(&env).unwrap_or_default()).into(),
        signature_key: signer.to_public_vec().into(),
    }
}

/// Most members added by one commit while building a group.
const BUILD_BATCH: usize = 100;

/// The tree shape a group was built to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Members only added (what the messenger produces today).
    AsAdded,
    /// Every member committed a self-update after joining.
    Filled,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::AsAdded => "as added",
            Shape::Filled => "filled",
        }
    }
}

/// One member's client: its provider (key store), signature key and credential.
struct Client {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Client {
    fn new(name: &str) -> Result<Client> {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| anyhow!("creating a signature key: {e:?}"))?;
        signer
            .store(provider.storage())
            .map_err(|e| anyhow!("storing a signature key: {e:?}"))?;
        let credential = certified(name, &signer);
        Ok(Client {
            provider,
            signer,
            credential,
        })
    }

    fn key_package(&self) -> Result<KeyPackage> {
        Ok(KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(|e| anyhow!("creating a KeyPackage: {e:?}"))?
            .key_package()
            .clone())
    }

    /// Joins from the encoded Welcome message.
    fn join(self, welcome: &[u8]) -> Result<Member> {
        let welcome = match MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| anyhow!("decoding a Welcome: {e:?}"))?
            .extract()
        {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => bail!("expected a Welcome"),
        };
        let group = StagedWelcome::new_from_welcome(
            &self.provider,
            create_config().join_config(),
            welcome,
            None,
        )
        .and_then(|s| s.into_group(&self.provider))
        .map_err(|e| anyhow!("joining from a Welcome: {e:?}"))?;
        Ok(Member {
            client: self,
            group,
        })
    }
}

/// A client with its state of the group.
struct Member {
    client: Client,
    group: MlsGroup,
}

/// A commit as sent: its encoding, the Welcome's if any, and the new GroupInfo.
struct Sent {
    commit: Vec<u8>,
    welcome: Option<Vec<u8>>,
    group_info: Option<Vec<u8>>,
}

fn encode_info(gi: Option<openmls::messages::group_info::GroupInfo>) -> Result<Option<Vec<u8>>> {
    gi.map(|g| encode(&MlsMessageOut::from(g))).transpose()
}

fn encode(m: &MlsMessageOut) -> Result<Vec<u8>> {
    m.tls_serialize_detached()
        .map_err(|e| anyhow!("encoding an MLS message: {e:?}"))
}

impl Member {
    fn create(name: &str) -> Result<Member> {
        let client = Client::new(name)?;
        let group = MlsGroup::new_with_group_id(
            &client.provider,
            &client.signer,
            &create_config(),
            openmls::group::GroupId::from_slice(bench_group().as_str().as_bytes()),
            client.credential.clone(),
        )
        .map_err(|e| anyhow!("creating the group: {e:?}"))?;
        Ok(Member { client, group })
    }

    fn merge(&mut self) -> Result<()> {
        self.group
            .merge_pending_commit(&self.client.provider)
            .map_err(|e| anyhow!("merging own commit: {e:?}"))
    }

    /// Adds members (the commit also updates the committer's path) and merges.
    fn add(&mut self, kps: &[KeyPackage]) -> Result<Sent> {
        let (commit, welcome, info) = self
            .group
            .add_members(&self.client.provider, &self.client.signer, kps)
            .map_err(|e| anyhow!("adding members: {e:?}"))?;
        self.merge()?;
        Ok(Sent {
            commit: encode(&commit)?,
            welcome: Some(encode(&welcome)?),
            group_info: encode_info(info)?,
        })
    }

    fn remove(&mut self, leaf: LeafNodeIndex) -> Result<Sent> {
        let (commit, _welcome, info) = self
            .group
            .remove_members(&self.client.provider, &self.client.signer, &[leaf])
            .map_err(|e| anyhow!("removing a member: {e:?}"))?;
        self.merge()?;
        Ok(Sent {
            commit: encode(&commit)?,
            welcome: None,
            group_info: encode_info(info)?,
        })
    }

    fn self_update(&mut self) -> Result<Sent> {
        let bundle = self
            .group
            .self_update(
                &self.client.provider,
                &self.client.signer,
                LeafNodeParameters::default(),
            )
            .map_err(|e| anyhow!("self-update: {e:?}"))?;
        let commit = encode(bundle.commit())?;
        let group_info = bundle
            .group_info()
            .map(|g| encode(&MlsMessageOut::from(g.clone())))
            .transpose()?;
        self.merge()?;
        Ok(Sent {
            commit,
            welcome: None,
            group_info,
        })
    }

    /// Decodes, verifies and merges another member's commit.
    fn process(&mut self, commit: &[u8]) -> Result<()> {
        let msg = MlsMessageIn::tls_deserialize_exact(commit)
            .map_err(|e| anyhow!("decoding a commit: {e:?}"))?
            .try_into_protocol_message()
            .map_err(|e| anyhow!("not a group message: {e:?}"))?;
        let processed = self
            .group
            .process_message(&self.client.provider, msg)
            .map_err(|e| anyhow!("processing a commit: {e:?}"))?;
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => self
                .group
                .merge_staged_commit(&self.client.provider, *staged)
                .map_err(|e| anyhow!("merging a commit: {e:?}")),
            _ => bail!("expected a commit"),
        }
    }
}

/// A group of `size` members: the committer (leaf 0) and one receiver.
struct Group {
    committer: Member,
    receiver: Member,
}

fn build(size: usize, shape: Shape) -> Result<Group> {
    if size < 2 {
        bail!("a group needs at least 2 members (committer and receiver)");
    }
    let mut committer = Member::create("committer")?;
    let receiver_client = Client::new("receiver")?;
    let sent = committer.add(&[receiver_client.key_package()?])?;
    let mut receiver = receiver_client.join(sent.welcome.as_deref().context("no Welcome")?)?;
    let mut count = 2;
    match shape {
        Shape::AsAdded => {
            // The others' private keys are never used: one key store serves them all.
            let crowd = OpenMlsRustCrypto::default();
            while count < size {
                let n = (size - count).min(BUILD_BATCH);
                let mut kps = Vec::with_capacity(n);
                for i in 0..n {
                    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
                        .map_err(|e| anyhow!("creating a signature key: {e:?}"))?;
                    let credential = certified(&format!("member{}", count + i), &signer);
                    let kp = KeyPackage::builder()
                        .build(CIPHERSUITE, &crowd, &signer, credential)
                        .map_err(|e| anyhow!("creating a KeyPackage: {e:?}"))?;
                    kps.push(kp.key_package().clone());
                }
                let sent = committer.add(&kps)?;
                receiver.process(&sent.commit)?;
                count += n;
            }
        }
        Shape::Filled => {
            let update = receiver.self_update()?;
            committer.process(&update.commit)?;
            while count < size {
                let joiner = Client::new(&format!("member{count}"))?;
                let sent = committer.add(&[joiner.key_package()?])?;
                receiver.process(&sent.commit)?;
                let mut joined = joiner.join(sent.welcome.as_deref().context("no Welcome")?)?;
                let update = joined.self_update()?;
                committer.process(&update.commit)?;
                receiver.process(&update.commit)?;
                count += 1;
            }
        }
    }
    let members = committer.group.members().count();
    if members != size {
        bail!("built a group of {members} members, wanted {size}");
    }
    Ok(Group {
        committer,
        receiver,
    })
}

/// The benchmark group's id.
fn bench_group() -> redoubt_proto::GroupId {
    redoubt_proto::GroupId::from_random([5; 16])
}

/// The server's public view of the benchmark group, advanced commit by commit.
struct Ds {
    state: Vec<u8>,
    org: ed25519_dalek::VerifyingKey,
}

impl Ds {
    /// Starts tracking the group as it is now (from its GroupInfo and tree).
    fn new(committer: &Member) -> Result<Ds> {
        let crypto = openmls_rust_crypto::RustCrypto::default();
        let gi = committer
            .group
            .export_group_info(&crypto, &committer.client.signer, false)
            .map_err(|e| anyhow!("exporting the GroupInfo: {e:?}"))?;
        let MlsMessageBodyIn::GroupInfo(vgi) = MlsMessageIn::tls_deserialize_exact(&encode(&gi)?)
            .map_err(|e| anyhow!("{e:?}"))?
            .extract()
        else {
            bail!("not a GroupInfo");
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(
            &committer
                .group
                .export_ratchet_tree()
                .tls_serialize_detached()
                .map_err(|e| anyhow!("{e:?}"))?,
        )
        .map_err(|e| anyhow!("{e:?}"))?;
        let state = public_group::PublicState::default();
        PublicGroup::from_external(&crypto, &state, tree, vgi, ProposalStore::new())
            .map_err(|e| anyhow!("the server's view of the group: {e:?}"))?;
        Ok(Ds {
            state: state.snapshot(),
            org: org().verifying_key(),
        })
    }

    /// Verifies a commit as the server does and moves on to its epoch.
    fn verify(&mut self, sent: &Sent) -> Result<Duration> {
        let t = Instant::now();
        let v = public_group::verify_commit(
            &self.state,
            &bench_group(),
            &device_of("committer"),
            &sent.commit,
            sent.welcome.as_deref(),
            sent.group_info.as_deref(),
            &self.org,
        )
        .map_err(|e| anyhow!("the server refused the commit: {e}"))?;
        let took = t.elapsed();
        self.state = v.state;
        Ok(took)
    }
}

/// Timings and sizes of one operation over the rounds.
#[derive(Default)]
struct OpStats {
    verify: Vec<Duration>,
    create: Vec<Duration>,
    process: Vec<Duration>,
    join: Vec<Duration>,
    commit_bytes: Vec<usize>,
    welcome_bytes: Vec<usize>,
}

impl OpStats {
    fn record(&mut self, create: Duration, process: Duration, sent: &Sent) {
        self.create.push(create);
        self.process.push(process);
        self.commit_bytes.push(sent.commit.len());
        if let Some(w) = &sent.welcome {
            self.welcome_bytes.push(w.len());
        }
    }
}

fn p50(samples: &mut [Duration]) -> Duration {
    samples.sort();
    percentile(samples, 0.5)
}

fn median_bytes(samples: &mut [usize]) -> Option<usize> {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

/// Measures add / remove / self-update at one size.
fn measure(size: usize, shape: Shape, rounds: usize) -> Result<(Duration, usize, [OpStats; 3])> {
    let started = Instant::now();
    let mut g = build(size, shape).with_context(|| format!("building a group of {size}"))?;
    let built = started.elapsed();
    let mut ds = Ds::new(&g.committer)?;
    let (mut add, mut remove, mut update) =
        (OpStats::default(), OpStats::default(), OpStats::default());
    for round in 0..rounds {
        // Add one member: the committer creates and merges, the receiver processes,
        // the new member joins from the Welcome.
        let joiner = Client::new(&format!("extra{round}"))?;
        let kp = joiner.key_package()?;
        let t = Instant::now();
        let sent = g.committer.add(std::slice::from_ref(&kp))?;
        let create = t.elapsed();
        let t = Instant::now();
        g.receiver.process(&sent.commit)?;
        let process = t.elapsed();
        add.verify.push(ds.verify(&sent)?);
        let t = Instant::now();
        let joined = joiner.join(sent.welcome.as_deref().context("no Welcome")?)?;
        add.join.push(t.elapsed());
        add.record(create, process, &sent);

        // Remove that member again (back to `size`).
        let leaf = joined.group.own_leaf_index();
        let t = Instant::now();
        let sent = g.committer.remove(leaf)?;
        let create = t.elapsed();
        remove.verify.push(ds.verify(&sent)?);
        let t = Instant::now();
        g.receiver.process(&sent.commit)?;
        remove.record(create, t.elapsed(), &sent);

        // Self-update of the committer.
        let t = Instant::now();
        let sent = g.committer.self_update()?;
        let create = t.elapsed();
        update.verify.push(ds.verify(&sent)?);
        let t = Instant::now();
        g.receiver.process(&sent.commit)?;
        update.record(create, t.elapsed(), &sent);
    }
    Ok((built, ds.state.len(), [add, remove, update]))
}

/// The openmls version in the workspace's `Cargo.lock`.
fn openmls_version() -> Option<String> {
    let lock = std::fs::read_to_string(crate::common::workspace_root().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"openmls\"" {
            let v = lines.next()?.strip_prefix("version = \"")?;
            return Some(v.trim_end_matches('"').to_owned());
        }
    }
    None
}

/// Runs the MLS cost part and prints its table.
pub fn run(sizes: &[usize], rounds: usize, shapes: &[Shape]) -> Result<()> {
    let profile = if cfg!(debug_assertions) {
        "DEBUG build (figures are not representative)"
    } else {
        "release build"
    };
    eprintln!(
        "MLS cost: sizes {sizes:?}, tree {:?}, {rounds} round(s){}…",
        shapes.iter().map(|s| s.label()).collect::<Vec<_>>(),
        if shapes.contains(&Shape::Filled) && sizes.iter().any(|&n| n >= 1000) {
            " (building a filled tree of 1000 takes about a minute)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "MLS cost, in-process: openmls {}, {CIPHERSUITE:?}, ratchet tree extension on, \
         OpenMlsRustCrypto in-memory provider, basic credentials carrying organization-signed \
         member certificates; 'server verify' is the delivery service's check of the commit with \
         its Welcome and GroupInfo (crates/redoubt-server/src/messaging/public_group.rs, without \
         SQLite or network); {profile}; p50 of {rounds} \
         round(s); one receiver at leaf 1 processes every commit; load average {}.",
        openmls_version().unwrap_or_else(|| "?".into()),
        crate::common::load_average()
    );
    println!(
        "  tree 'as added': members added ≤{BUILD_BATCH} per commit by one committer, \
         no self-updates (what the messenger does today); 'filled' (--tree filled|both): every member \
         self-updated after joining (no blank nodes)."
    );
    println!(
        "  {:>5} | {:<8} | {:<11} | {:>11} | {:>11} | {:>17} | {:>9} | {:>12} | {:>13}",
        "size",
        "tree",
        "op",
        "create p50",
        "process p50",
        "server verify p50",
        "join p50",
        "commit bytes",
        "welcome bytes"
    );
    for &shape in shapes {
        for &size in sizes {
            let (built, state_bytes, mut ops) = measure(size, shape, rounds)?;
            for (name, op) in ["add 1", "remove 1", "self-update"]
                .iter()
                .zip(ops.iter_mut())
            {
                let join = if op.join.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.2} ms", ms(p50(&mut op.join)))
                };
                let welcome = median_bytes(&mut op.welcome_bytes)
                    .map_or_else(|| "-".to_owned(), |b| b.to_string());
                println!(
                    "  {:>5} | {:<8} | {:<11} | {:>8.2} ms | {:>8.2} ms | {:>14.2} ms | {:>9} | {:>12} | {:>13}",
                    size,
                    shape.label(),
                    name,
                    ms(p50(&mut op.create)),
                    ms(p50(&mut op.process)),
                    ms(p50(&mut op.verify)),
                    join,
                    median_bytes(&mut op.commit_bytes).unwrap_or(0),
                    welcome
                );
            }
            println!(
                "  {:>5} | {:<8} | (building the group took {:.2} s; the server's stored public state: {} bytes)",
                size,
                shape.label(),
                built.as_secs_f64(),
                state_bytes
            );
        }
    }
    Ok(())
}
