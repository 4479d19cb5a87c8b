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

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use redoubt_messenger::messenger::{CIPHERSUITE, create_config};
use tls_codec::{Deserialize as _, Serialize as _};

use crate::common::{ms, percentile};

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
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.to_public_vec().into(),
        };
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

/// A commit as sent: its encoding, and the Welcome's if any.
struct Sent {
    commit: Vec<u8>,
    welcome: Option<Vec<u8>>,
}

fn encode(m: &MlsMessageOut) -> Result<Vec<u8>> {
    m.tls_serialize_detached()
        .map_err(|e| anyhow!("encoding an MLS message: {e:?}"))
}

impl Member {
    fn create(name: &str) -> Result<Member> {
        let client = Client::new(name)?;
        let group = MlsGroup::new(
            &client.provider,
            &client.signer,
            &create_config(),
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
        let (commit, welcome, _info) = self
            .group
            .add_members(&self.client.provider, &self.client.signer, kps)
            .map_err(|e| anyhow!("adding members: {e:?}"))?;
        self.merge()?;
        Ok(Sent {
            commit: encode(&commit)?,
            welcome: Some(encode(&welcome)?),
        })
    }

    fn remove(&mut self, leaf: LeafNodeIndex) -> Result<Sent> {
        let (commit, _welcome, _info) = self
            .group
            .remove_members(&self.client.provider, &self.client.signer, &[leaf])
            .map_err(|e| anyhow!("removing a member: {e:?}"))?;
        self.merge()?;
        Ok(Sent {
            commit: encode(&commit)?,
            welcome: None,
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
        self.merge()?;
        Ok(Sent {
            commit,
            welcome: None,
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
                    let credential = CredentialWithKey {
                        credential: BasicCredential::new(format!("member{}", count + i).into())
                            .into(),
                        signature_key: signer.to_public_vec().into(),
                    };
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

/// Timings and sizes of one operation over the rounds.
#[derive(Default)]
struct OpStats {
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
fn measure(size: usize, shape: Shape, rounds: usize) -> Result<(Duration, [OpStats; 3])> {
    let started = Instant::now();
    let mut g = build(size, shape).with_context(|| format!("building a group of {size}"))?;
    let built = started.elapsed();
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
        let t = Instant::now();
        let joined = joiner.join(sent.welcome.as_deref().context("no Welcome")?)?;
        add.join.push(t.elapsed());
        add.record(create, process, &sent);

        // Remove that member again (back to `size`).
        let leaf = joined.group.own_leaf_index();
        let t = Instant::now();
        let sent = g.committer.remove(leaf)?;
        let create = t.elapsed();
        let t = Instant::now();
        g.receiver.process(&sent.commit)?;
        remove.record(create, t.elapsed(), &sent);

        // Self-update of the committer.
        let t = Instant::now();
        let sent = g.committer.self_update()?;
        let create = t.elapsed();
        let t = Instant::now();
        g.receiver.process(&sent.commit)?;
        update.record(create, t.elapsed(), &sent);
    }
    Ok((built, [add, remove, update]))
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
         OpenMlsRustCrypto in-memory provider, basic credentials (measures MLS itself, not \
         Redoubt's member certificates, SQLite store or network); {profile}; p50 of {rounds} \
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
        "  {:>5} | {:<8} | {:<11} | {:>11} | {:>11} | {:>9} | {:>12} | {:>13}",
        "size",
        "tree",
        "op",
        "create p50",
        "process p50",
        "join p50",
        "commit bytes",
        "welcome bytes"
    );
    for &shape in shapes {
        for &size in sizes {
            let (built, mut ops) = measure(size, shape, rounds)?;
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
                    "  {:>5} | {:<8} | {:<11} | {:>8.2} ms | {:>8.2} ms | {:>9} | {:>12} | {:>13}",
                    size,
                    shape.label(),
                    name,
                    ms(p50(&mut op.create)),
                    ms(p50(&mut op.process)),
                    join,
                    median_bytes(&mut op.commit_bytes).unwrap_or(0),
                    welcome
                );
            }
            println!(
                "  {:>5} | {:<8} | (building the group took {:.2} s)",
                size,
                shape.label(),
                built.as_secs_f64()
            );
        }
    }
    Ok(())
}
