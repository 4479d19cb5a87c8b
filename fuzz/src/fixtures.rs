//! Fixed keys, ids and a policy bundle shared by the fuzz targets and by the seed
//! generator in `cargo xtask fuzz` (which includes this file by path), so that seeds
//! signed by the generator verify inside the targets.

use ed25519_dalek::SigningKey;
use redoubt_proto::envelope::encode_public_key;
use redoubt_proto::zones::{CheckpointKey, ZonePolicy};
use redoubt_proto::{Assignments, DeviceId, PolicyBundle, Timestamp};

/// "Now" for every target: a fixed time, so runs are reproducible.
pub const NOW: Timestamp = Timestamp(1_800_000_000);

/// The organization's signing key (bundles, commands).
pub fn org_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The device key (compliance reports).
pub fn device_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// The key of checkpoint `north-gate` of zone `lab`.
pub fn checkpoint_key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

/// The device every bundle and report is for.
pub fn device() -> DeviceId {
    DeviceId::from_random([1; 12])
}

/// A bundle for [`device`]: the presets, base mode `standard`, zone `lab` (mode
/// `secure-site`, checkpoint `north-gate` with [`checkpoint_key`]), valid for a day
/// after [`NOW`].
pub fn bundle() -> PolicyBundle {
    PolicyBundle {
        device_id: device(),
        version: 3,
        issued_at: NOW.plus_secs(-60),
        expires_at: NOW.plus_secs(86_400),
        modes: redoubt_policy::presets(),
        assignments: Assignments {
            base_mode: redoubt_policy::STANDARD.parse().expect("a valid name"),
            group_modes: Vec::new(),
        },
        check_in_interval_secs: 60,
        organization_endpoints: vec!["redoubt.example.org".into()],
        servers: Vec::new(),
        zones: vec![ZonePolicy {
            name: "lab".parse().expect("a valid name"),
            mode: redoubt_policy::SECURE_SITE.parse().expect("a valid name"),
            checkpoints: vec![CheckpointKey {
                name: "north-gate".parse().expect("a valid name"),
                public_key: encode_public_key(&checkpoint_key().verifying_key()),
            }],
            wifi_bssids: vec!["aa:bb:cc:dd:ee:ff".parse().expect("a valid name")],
        }],
    }
}

/// A fixed MLS group of three certified members (alice, bob, carol) at epoch 1, for
/// the server's commit check (`server_commit`) and its seeds. Every key and every
/// "random" byte is derived from fixed labels, so the target and the seed generator
/// build the very same group: the seeds' commits verify inside the target.
pub mod group {
    use std::cell::Cell;

    use ed25519_dalek::SigningKey;
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::{MemoryStorage, RustCrypto};
    use openmls_traits::OpenMlsProvider;
    use openmls_traits::random::OpenMlsRand;
    use openmls_traits::types::{CryptoError, HashType};
    use redoubt_proto::messaging::{B64, MemberCertificate};
    use redoubt_proto::{DeviceId, GroupId as RedoubtGroupId, SignedEnvelope};
    use tls_codec::Serialize as _;

    use super::{NOW, org_key};

    /// Redoubt's one ciphersuite.
    pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

    /// The lifetime of every fixture leaf: always valid (openmls checks lifetimes
    /// against the wall clock; a fixed, always valid one keeps the group the same on
    /// every run).
    pub fn lifetime() -> Lifetime {
        Lifetime::init(0, u64::MAX)
    }

    /// The fixture group's Redoubt id.
    pub fn group_id() -> RedoubtGroupId {
        RedoubtGroupId::from_random([0x51; 16])
    }

    /// Its MLS group id (as the server derives it).
    pub fn mls_group_id() -> GroupId {
        GroupId::from_slice(group_id().as_str().as_bytes())
    }

    /// The group configuration (the messenger's: public framing for commits, the
    /// ratchet tree in the GroupInfo), with the fixed [`lifetime`].
    pub fn config() -> MlsGroupCreateConfig {
        MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .lifetime(lifetime())
            .build()
    }

    /// Deterministic "randomness": SHA-256 of a label and a block counter.
    #[derive(Debug)]
    pub struct FixedRand {
        crypto: RustCrypto,
        label: Vec<u8>,
        counter: Cell<u64>,
    }

    impl FixedRand {
        fn fill(&self, out: &mut [u8]) -> Result<(), CryptoError> {
            for chunk in out.chunks_mut(32) {
                let n = self.counter.get();
                self.counter.set(n + 1);
                let mut input = self.label.clone();
                input.extend_from_slice(&n.to_le_bytes());
                let block = self.crypto.hash(HashType::Sha2_256, &input)?;
                chunk.copy_from_slice(&block[..chunk.len()]);
            }
            Ok(())
        }
    }

    impl OpenMlsRand for FixedRand {
        type Error = CryptoError;

        fn random_array<const N: usize>(&self) -> Result<[u8; N], CryptoError> {
            let mut out = [0u8; N];
            self.fill(&mut out)?;
            Ok(out)
        }

        fn random_vec(&self, len: usize) -> Result<Vec<u8>, CryptoError> {
            let mut out = vec![0u8; len];
            self.fill(&mut out)?;
            Ok(out)
        }
    }

    /// An openmls provider whose randomness is [`FixedRand`] (HPKE encryption still
    /// draws its own ephemeral keys: Welcomes and update paths differ between runs,
    /// the fixture group, built without either in its history, does not).
    #[derive(Debug)]
    pub struct Provider {
        crypto: RustCrypto,
        rand: FixedRand,
        storage: MemoryStorage,
    }

    impl Provider {
        /// A provider whose randomness is derived from `label`.
        pub fn new(label: &str) -> Provider {
            Provider {
                crypto: RustCrypto::default(),
                rand: FixedRand {
                    crypto: RustCrypto::default(),
                    label: format!("redoubt-fuzz/{label}/").into_bytes(),
                    counter: Cell::new(0),
                },
                storage: MemoryStorage::default(),
            }
        }
    }

    impl OpenMlsProvider for Provider {
        type CryptoProvider = RustCrypto;
        type RandProvider = FixedRand;
        type StorageProvider = MemoryStorage;

        fn storage(&self) -> &MemoryStorage {
            &self.storage
        }

        fn crypto(&self) -> &RustCrypto {
            &self.crypto
        }

        fn rand(&self) -> &FixedRand {
            &self.rand
        }
    }

    /// One member device: its fixed MLS key and the organization's certificate for
    /// it (as the server issues at enrollment).
    pub struct Member {
        /// The device.
        pub device: DeviceId,
        /// Its MLS signature key.
        pub signer: SignatureKeyPair,
        /// Its credential: the organization-signed member certificate.
        pub credential: CredentialWithKey,
    }

    /// Member `n` (0 alice, 1 bob, 2 carol: the group; 3 dave: added by a seed).
    pub fn member(n: u8) -> Member {
        let key = SigningKey::from_bytes(&[0x40 + n; 32]);
        let public = key.verifying_key().to_bytes().to_vec();
        let device = DeviceId::from_random([0x40 + n; 12]);
        let cert = MemberCertificate {
            device_id: device.clone(),
            user: "fuzz".parse().expect("a valid user name"),
            mls_key: B64(public.clone()),
            issued_at: NOW,
        };
        let envelope = SignedEnvelope::sign(MemberCertificate::KIND, &cert, &org_key());
        let credential = CredentialWithKey {
            credential: BasicCredential::new(
                serde_json::to_vec(&envelope).expect("an envelope serializes"),
            )
            .into(),
            signature_key: public.clone().into(),
        };
        Member {
            device,
            signer: SignatureKeyPair::from_raw(
                CIPHERSUITE.signature_algorithm(),
                key.to_bytes().to_vec(),
                public,
            ),
            credential,
        }
    }

    /// A KeyPackage of `member`, its private keys kept in `provider`.
    pub fn key_package(provider: &Provider, member: &Member) -> Result<KeyPackage, String> {
        Ok(KeyPackage::builder()
            .key_package_lifetime(lifetime())
            .build(
                CIPHERSUITE,
                provider,
                &member.signer,
                member.credential.clone(),
            )
            .map_err(|e| format!("a KeyPackage: {e:?}"))?
            .key_package()
            .clone())
    }

    /// An MLS message as bytes.
    pub fn encode(m: &MlsMessageOut) -> Result<Vec<u8>, String> {
        m.tls_serialize_detached()
            .map_err(|e| format!("encoding: {e:?}"))
    }

    /// A commit as a client posts it: the commit, the Welcome of its added members,
    /// the new epoch's GroupInfo.
    pub struct Posted {
        /// The commit (public framing).
        pub commit: Vec<u8>,
        /// The Welcome, when members are added.
        pub welcome: Option<Vec<u8>>,
        /// The GroupInfo of the new epoch.
        pub group_info: Option<Vec<u8>>,
    }

    /// The fixture: alice's group at epoch 1 with bob and carol, and how it got
    /// there (what the server saw).
    pub struct Fixture {
        /// Alice's provider (her group's secrets).
        pub alice_provider: Provider,
        /// Alice's group, at epoch 1.
        pub alice: MlsGroup,
        /// The provider holding bob's and carol's KeyPackage keys (to join).
        pub joiners: Provider,
        /// The creator's GroupInfo at epoch 0 (what `start` verifies).
        pub start_group_info: Vec<u8>,
        /// The ratchet tree at epoch 0.
        pub start_tree: Vec<u8>,
        /// Alice's commit adding bob and carol (no update path: nothing random in
        /// the group's history).
        pub build: Posted,
    }

    /// Builds the fixture (the same group on every call).
    pub fn build() -> Result<Fixture, String> {
        let alice = member(0);
        let provider = Provider::new("alice");
        let mut group = MlsGroup::new_with_group_id(
            &provider,
            &alice.signer,
            &config(),
            mls_group_id(),
            alice.credential.clone(),
        )
        .map_err(|e| format!("creating the group: {e:?}"))?;
        let start_group_info = encode(
            &group
                .export_group_info(provider.crypto(), &alice.signer, false)
                .map_err(|e| format!("GroupInfo: {e:?}"))?,
        )?;
        let start_tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| format!("encoding the tree: {e:?}"))?;
        let joiners = Provider::new("joiners");
        let kps = [
            key_package(&joiners, &member(1))?,
            key_package(&joiners, &member(2))?,
        ];
        let (commit, welcome, info) = group
            .add_members_without_update(&provider, &alice.signer, &kps)
            .map_err(|e| format!("adding bob and carol: {e:?}"))?;
        group
            .merge_pending_commit(&provider)
            .map_err(|e| format!("merging: {e:?}"))?;
        let build = Posted {
            commit: encode(&commit)?,
            welcome: Some(encode(&welcome)?),
            group_info: info.map(|g| encode(&MlsMessageOut::from(g))).transpose()?,
        };
        Ok(Fixture {
            alice_provider: provider,
            alice: group,
            joiners,
            start_group_info,
            start_tree,
            build,
        })
    }

    /// Frames a posted commit as the `server_commit` target reads it:
    /// `sender · commit · welcome? · group_info?`, where `sender` is one byte (its
    /// value modulo 4 picks alice, bob, carol or an outsider as the authenticated
    /// poster), `commit` is a little-endian u16 length and the bytes, and each
    /// optional part is a presence byte (odd: present) then the same.
    pub fn frame(sender: u8, posted: &Posted) -> Vec<u8> {
        fn part(out: &mut Vec<u8>, bytes: &[u8]) {
            let n = u16::try_from(bytes.len()).expect("a part fits in 64 KiB");
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        let mut out = vec![sender];
        part(&mut out, &posted.commit);
        for opt in [&posted.welcome, &posted.group_info] {
            match opt {
                Some(b) => {
                    out.push(1);
                    part(&mut out, b);
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Reads [`frame`]'s layout, leniently (a length past the end takes what is
    /// left; missing trailing parts are absent): the sender byte and the parts.
    pub fn unframe(data: &[u8]) -> (u8, Posted) {
        fn take(data: &mut &[u8], n: usize) -> Vec<u8> {
            let n = n.min(data.len());
            let (head, rest) = data.split_at(n);
            *data = rest;
            head.to_vec()
        }
        fn part(data: &mut &[u8]) -> Vec<u8> {
            let len = take(data, 2);
            let n = match len.as_slice() {
                [a, b] => u16::from_le_bytes([*a, *b]) as usize,
                [a] => *a as usize,
                _ => 0,
            };
            take(data, n)
        }
        fn optional(data: &mut &[u8]) -> Option<Vec<u8>> {
            let flag = take(data, 1);
            (flag.first().is_some_and(|f| f & 1 == 1)).then(|| part(data))
        }
        let mut data = data;
        let sender = take(&mut data, 1).first().copied().unwrap_or(0);
        let commit = part(&mut data);
        let welcome = optional(&mut data);
        let group_info = optional(&mut data);
        (
            sender,
            Posted {
                commit,
                welcome,
                group_info,
            },
        )
    }
}
