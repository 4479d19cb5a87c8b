//! The delivery service's own view of each group: openmls' secret-free [`PublicGroup`]
//! (ratchet tree, group context, transcript hash, confirmation tag), kept as a
//! serialized snapshot in the group's row. Every commit is verified against it before
//! anything changes — public framing, current epoch, a member's valid signature,
//! well-formed Add/Remove/Update proposals, organization certificates on every new or
//! changed leaf, a Welcome addressed to exactly the added KeyPackages, a GroupInfo of
//! the new epoch — and the member devices and Welcome recipients are derived from the
//! verified commit, never from what the committer declares. Nothing here can decrypt
//! a message: a `PublicGroup` holds no secret.
//!
//! Pure: no IO, no clock. The benchmark (`xtask/src/mls_cost.rs`) includes this file
//! to measure exactly this code.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use openmls::ciphersuite::signable::Verifiable as _;
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{CURRENT_VERSION, traits};
use redoubt_proto::messaging::MemberCertificate;
use redoubt_proto::{DeviceId, GroupId as RedoubtGroupId, SignedEnvelope};
use tls_codec::Deserialize as _;

/// The one ciphersuite of Redoubt (the messenger's `CIPHERSUITE`).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Why a group's start or a commit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The input is not what it must be (answered 400).
    #[error("{0}")]
    Invalid(String),
    /// A valid commit, but for another epoch than the group's current one.
    #[error("the commit was made in epoch {sent}, the conversation is at {current}")]
    WrongEpoch {
        /// The commit's epoch.
        sent: u64,
        /// The group's epoch.
        current: u64,
    },
    /// The stored state does not load (a bug or a corrupt database).
    #[error("the stored group state is unreadable: {0}")]
    Corrupt(String),
}

fn invalid(m: impl Into<String>) -> Refused {
    Refused::Invalid(m.into())
}

/// An error of the in-memory public storage (serialization only).
#[derive(Debug, thiserror::Error)]
#[error("public group storage: {0}")]
pub struct StorageError(String);

/// openmls' public storage for one group, in memory: each value as JSON under its
/// name. [`PublicState::snapshot`] is what the database row keeps.
#[derive(Debug, Default)]
pub struct PublicState {
    values: RefCell<BTreeMap<String, serde_json::Value>>,
    proposals: RefCell<Vec<(serde_json::Value, serde_json::Value)>>,
}

impl PublicState {
    /// Loads a snapshot.
    pub fn from_snapshot(bytes: &[u8]) -> Result<PublicState, Refused> {
        let values: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(|e| Refused::Corrupt(e.to_string()))?;
        Ok(PublicState {
            values: RefCell::new(values),
            proposals: RefCell::default(),
        })
    }

    /// The group's state as bytes (proposals are never kept between commits: the
    /// delivery service accepts no standalone proposal).
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.values.borrow()).unwrap_or_default()
    }

    fn put<T: serde::Serialize>(&self, name: &str, v: &T) -> Result<(), StorageError> {
        let v = serde_json::to_value(v).map_err(|e| StorageError(e.to_string()))?;
        self.values.borrow_mut().insert(name.to_owned(), v);
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StorageError> {
        self.values
            .borrow()
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).map_err(|e| StorageError(e.to_string())))
            .transpose()
    }

    fn del(&self, name: &str) {
        self.values.borrow_mut().remove(name);
    }
}

type R<T> = Result<T, StorageError>;

impl PublicStorageProvider<CURRENT_VERSION> for PublicState {
    type PublicError = StorageError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
        tree: &T,
    ) -> R<()> {
        self.put("tree", tree)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        h: &H,
    ) -> R<()> {
        self.put("interim_transcript_hash", h)
    }

    fn write_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        c: &C,
    ) -> R<()> {
        self.put("context", c)
    }

    fn write_confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        t: &T,
    ) -> R<()> {
        self.put("confirmation_tag", t)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        P: traits::ProposalRef<CURRENT_VERSION>,
        Q: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        r: &P,
        p: &Q,
    ) -> R<()> {
        let r = serde_json::to_value(r).map_err(|e| StorageError(e.to_string()))?;
        let p = serde_json::to_value(p).map_err(|e| StorageError(e.to_string()))?;
        self.proposals.borrow_mut().push((r, p));
        Ok(())
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        P: traits::ProposalRef<CURRENT_VERSION>,
        Q: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> R<Vec<(P, Q)>> {
        self.proposals
            .borrow()
            .iter()
            .map(|(r, p)| {
                Ok((
                    serde_json::from_value(r.clone()).map_err(|e| StorageError(e.to_string()))?,
                    serde_json::from_value(p.clone()).map_err(|e| StorageError(e.to_string()))?,
                ))
            })
            .collect()
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> R<Option<T>> {
        self.get("tree")
    }

    fn group_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> R<Option<C>> {
        self.get("context")
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> R<Option<H>> {
        self.get("interim_transcript_hash")
    }

    fn confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> R<Option<T>> {
        self.get("confirmation_tag")
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> R<()> {
        self.del("tree");
        Ok(())
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> R<()> {
        self.del("confirmation_tag");
        Ok(())
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> R<()> {
        self.del("context");
        Ok(())
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> R<()> {
        self.del("interim_transcript_hash");
        Ok(())
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        P: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        r: &P,
    ) -> R<()> {
        let r = serde_json::to_value(r).map_err(|e| StorageError(e.to_string()))?;
        self.proposals.borrow_mut().retain(|(k, _)| *k != r);
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        P: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> R<()> {
        self.proposals.borrow_mut().clear();
        Ok(())
    }
}

/// The device of a leaf whose certificate was verified when it entered the tree.
fn device_of(credential: &Credential) -> Option<DeviceId> {
    let envelope: SignedEnvelope = serde_json::from_slice(credential.serialized_content()).ok()?;
    let payload = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        envelope.payload.as_bytes(),
    )
    .ok()?;
    serde_json::from_slice::<MemberCertificate>(&payload)
        .ok()
        .map(|c| c.device_id)
}

/// Checks a leaf entering the tree: its credential is a member certificate signed by
/// the organization for the leaf's own signature key. Returns the device. (Whether
/// the device is revoked is checked by the store, in the commit's transaction.)
fn certified_device(leaf: &LeafNode, org: &VerifyingKey) -> Result<DeviceId, Refused> {
    let envelope: SignedEnvelope =
        serde_json::from_slice(leaf.credential().serialized_content())
            .map_err(|_| invalid("a leaf's credential is not an organization certificate"))?;
    let cert: MemberCertificate = envelope
        .verify(MemberCertificate::KIND, org)
        .map_err(|_| invalid("a leaf's certificate was not issued by this organization"))?;
    if cert.mls_key.0 != leaf.signature_key().as_slice() {
        return Err(invalid(
            "a leaf's certificate is for another key than the one it signs with",
        ));
    }
    Ok(cert.device_id)
}

fn members_of(group: &PublicGroup) -> Result<Vec<DeviceId>, Refused> {
    let mut out = BTreeSet::new();
    for m in group.members() {
        out.insert(
            device_of(&m.credential)
                .ok_or_else(|| Refused::Corrupt("a leaf without a certificate".into()))?,
        );
    }
    Ok(out.into_iter().collect())
}

fn mls_group_id(id: &RedoubtGroupId) -> openmls::group::GroupId {
    openmls::group::GroupId::from_slice(id.as_str().as_bytes())
}

/// A group's verified initial state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The [`PublicState`] snapshot to store.
    pub state: Vec<u8>,
    /// The GroupInfo, verified.
    pub group_info: Vec<u8>,
}

/// Verifies the creator's GroupInfo (epoch 0) and ratchet tree: the group id is the
/// registered one, and its only member is `creator`, certified by the organization.
pub fn start(
    id: &RedoubtGroupId,
    group_info: &[u8],
    ratchet_tree: &[u8],
    creator: &DeviceId,
    org: &VerifyingKey,
) -> Result<Started, Refused> {
    let crypto = RustCrypto::default();
    let MlsMessageBodyIn::GroupInfo(vgi) = MlsMessageIn::tls_deserialize_exact(group_info)
        .map_err(|_| invalid("group_info is not an MLS message"))?
        .extract()
    else {
        return Err(invalid("group_info is not a GroupInfo"));
    };
    if vgi.ciphersuite() != CIPHERSUITE {
        return Err(invalid("the group does not use Redoubt's ciphersuite"));
    }
    let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree)
        .map_err(|_| invalid("ratchet_tree is not an MLS ratchet tree"))?;
    let state = PublicState::default();
    let (group, _) = PublicGroup::from_external(&crypto, &state, tree, vgi, ProposalStore::new())
        .map_err(|e| invalid(format!("the GroupInfo and tree do not verify: {e}")))?;
    if group.group_id() != &mls_group_id(id) {
        return Err(invalid("the GroupInfo is for another group id"));
    }
    if group.group_context().epoch().as_u64() != 0 {
        return Err(invalid("a new group starts at epoch 0"));
    }
    let leaves: Vec<Member> = group.members().collect();
    let [only] = leaves.as_slice() else {
        return Err(invalid("a new group has exactly one member, its creator"));
    };
    let leaf = group
        .leaf(only.index)
        .ok_or_else(|| Refused::Corrupt("no leaf for a member".into()))?;
    if &certified_device(leaf, org)? != creator {
        return Err(invalid("the group's member is not the creating device"));
    }
    Ok(Started {
        state: state.snapshot(),
        group_info: group_info.to_vec(),
    })
}

/// A verified commit: what the store records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The epoch the commit was made in (the group's epoch before it).
    pub epoch: u64,
    /// The new [`PublicState`] snapshot.
    pub state: Vec<u8>,
    /// Every member device after the commit (from the tree).
    pub members: Vec<DeviceId>,
    /// Devices of the added leaves: the Welcome's recipients.
    pub added: Vec<DeviceId>,
    /// The GroupInfo of the new epoch, when the committer sent one (verified).
    pub group_info: Option<Vec<u8>>,
}

/// Checks what a member posts to `…/messages`: an MLS `PrivateMessage` (encrypted, so
/// the server never stores a readable one) carrying application content, for this group;
/// returns the epoch in its header. A handshake message (a commit or proposal) sent this
/// way would reach the members without the server's commit check, and anything else
/// would be queued to every member as junk: both are refused.
pub fn check_application_message(id: &RedoubtGroupId, bytes: &[u8]) -> Result<u64, Refused> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| invalid("the message is not an MLS message"))?;
    if msg.wire_format() != WireFormat::PrivateMessage {
        return Err(invalid("a message must be an encrypted MLS PrivateMessage"));
    }
    let framed = ProtocolMessage::try_from(msg)
        .map_err(|_| invalid("the message is not an MLS group message"))?;
    if framed.content_type() != ContentType::Application {
        return Err(invalid(
            "only application messages are sent here; commits and proposals go to …/commit",
        ));
    }
    if framed.group_id() != &mls_group_id(id) {
        return Err(invalid("the message is for another group"));
    }
    Ok(framed.epoch().as_u64())
}

/// Verifies a commit posted by `sender` against the group's `state`, with its Welcome
/// and GroupInfo; nothing is changed here (the caller stores the result).
pub fn verify_commit(
    state: &[u8],
    id: &RedoubtGroupId,
    sender: &DeviceId,
    commit: &[u8],
    welcome: Option<&[u8]>,
    group_info: Option<&[u8]>,
    org: &VerifyingKey,
) -> Result<Verified, Refused> {
    let crypto = RustCrypto::default();
    let storage = PublicState::from_snapshot(state)?;
    let gid = mls_group_id(id);
    let mut group = PublicGroup::load(&storage, &gid)
        .map_err(|e| Refused::Corrupt(e.to_string()))?
        .ok_or_else(|| Refused::Corrupt("incomplete group state".into()))?;
    let current = group.group_context().epoch().as_u64();
    let msg = MlsMessageIn::tls_deserialize_exact(commit)
        .map_err(|_| invalid("the commit is not an MLS message"))?;
    let MlsMessageBodyIn::PublicMessage(public) = msg.extract() else {
        return Err(invalid(
            "a commit must be a group message with public framing",
        ));
    };
    if public.group_id() != &gid {
        return Err(invalid("the commit is for another group"));
    }
    let sent = public.epoch().as_u64();
    if sent != current {
        return Err(Refused::WrongEpoch { sent, current });
    }
    let processed = group
        .process_message(&crypto, public)
        .map_err(|e| invalid(format!("the commit does not verify: {e}")))?;
    let Sender::Member(sender_leaf) = *processed.sender() else {
        return Err(invalid("only a member of the group may commit"));
    };
    let sender_device = group
        .leaf(sender_leaf)
        .and_then(|l| device_of(l.credential()))
        .ok_or_else(|| Refused::Corrupt("the sender's leaf has no certificate".into()))?;
    if &sender_device != sender {
        return Err(invalid("the commit is signed by another member's key"));
    }
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(invalid("the message is not a commit"));
    };
    for p in staged.queued_proposals() {
        if !matches!(
            p.proposal(),
            Proposal::Add(_) | Proposal::Remove(_) | Proposal::Update(_)
        ) {
            return Err(invalid("a commit may only add, remove and update members"));
        }
    }
    let mut added = Vec::new();
    let mut refs = BTreeSet::new();
    for a in staged.add_proposals() {
        let kp = a.add_proposal().key_package();
        added.push(certified_device(kp.leaf_node(), org)?);
        let r = kp
            .hash_ref(&crypto)
            .map_err(|e| Refused::Corrupt(e.to_string()))?;
        refs.insert(r.as_slice().to_vec());
    }
    // A changed leaf keeps its device: nobody takes over another member's place.
    for u in staged.update_proposals() {
        let Sender::Member(idx) = *u.sender() else {
            return Err(invalid("an update from a non-member"));
        };
        let before = group.leaf(idx).and_then(|l| device_of(l.credential()));
        if before != Some(certified_device(u.update_proposal().leaf_node(), org)?) {
            return Err(invalid("an update changes the leaf's device"));
        }
    }
    if let Some(leaf) = staged.update_path_leaf_node()
        && certified_device(leaf, org)? != sender_device
    {
        return Err(invalid("the commit's path changes the sender's device"));
    }
    match (welcome, refs.is_empty()) {
        (None, true) => {}
        (None, false) => return Err(invalid("a commit that adds members needs their Welcome")),
        (Some(_), true) => return Err(invalid("a Welcome without members added")),
        (Some(w), false) => {
            let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(w)
                .map_err(|_| invalid("the Welcome is not an MLS message"))?
                .extract()
            else {
                return Err(invalid("the Welcome is not a Welcome"));
            };
            if w.ciphersuite() != CIPHERSUITE {
                return Err(invalid("the Welcome uses another ciphersuite"));
            }
            let to: Vec<Vec<u8>> = w
                .secrets()
                .iter()
                .map(|s| s.new_member().as_slice().to_vec())
                .collect();
            let to_set: BTreeSet<Vec<u8>> = to.iter().cloned().collect();
            if to.len() != to_set.len() || to_set != refs {
                return Err(invalid(
                    "the Welcome is not addressed to exactly the added KeyPackages",
                ));
            }
        }
    }
    group
        .merge_commit(&storage, *staged)
        .map_err(|e| Refused::Corrupt(format!("merging: {e:?}")))?;
    let group_info = match group_info {
        None => None,
        Some(bytes) => {
            let MlsMessageBodyIn::GroupInfo(vgi) = MlsMessageIn::tls_deserialize_exact(bytes)
                .map_err(|_| invalid("group_info is not an MLS message"))?
                .extract()
            else {
                return Err(invalid("group_info is not a GroupInfo"));
            };
            let key = group
                .leaf(sender_leaf)
                .ok_or_else(|| Refused::Corrupt("the sender left the tree".into()))?
                .signature_key()
                .clone();
            let pk = OpenMlsSignaturePublicKey::from_signature_key(
                key,
                CIPHERSUITE.signature_algorithm(),
            );
            let gi = vgi
                .verify(&crypto, &pk)
                .map_err(|_| invalid("the GroupInfo is not signed by the committer"))?;
            // The context carries the new epoch, tree hash and confirmed transcript
            // hash (which covers this commit); the confirmation tag needs the epoch's
            // secrets, which the server does not have.
            if gi.group_context() != group.group_context() {
                return Err(invalid("the GroupInfo is not the commit's new epoch"));
            }
            Some(bytes.to_vec())
        }
    };
    added.sort();
    added.dedup();
    Ok(Verified {
        epoch: current,
        state: storage.snapshot(),
        members: members_of(&group)?,
        added,
        group_info,
    })
}
