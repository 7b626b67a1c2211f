//! Signed checkpoints: an Ed25519 signature over a chain's head, written every N records or T
//! seconds, so that cutting or rewriting the tail of a chain is detectable.

use crate::{AuditError, AuditStore};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain: String,
    /// The seq of the record whose hash is signed.
    pub seq: u64,
    pub head_hash: String,
    pub at: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

impl Checkpoint {
    fn message(chain: &str, seq: u64, head_hash: &str, at: &str) -> Vec<u8> {
        format!("samblik-audit-checkpoint/v1\n{chain}\n{seq}\n{head_hash}\n{at}").into_bytes()
    }

    /// Whether the signature is valid for this checkpoint under `key`.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify(
            &Self::message(&self.chain, self.seq, &self.head_hash, &self.at),
            &signature,
        )
        .is_ok()
    }
}

/// The audit log's checkpoint signing key.
pub struct CheckpointSigner {
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field(
                "public_key",
                &hex::encode(self.key.verifying_key().as_bytes()),
            )
            .finish()
    }
}

impl CheckpointSigner {
    /// Loads the secret key from `path` (64 hex digits), creating it (mode 0600) and its public
    /// half at `<path>.pub` on first use. Where a store exists, use
    /// [`CheckpointSigner::load_or_create_for`]: this does not know whether a key is expected.
    pub fn load_or_create(path: &Path) -> Result<Self, AuditError> {
        if !path.exists() {
            Self::create(path)?;
        }
        Self::load(path)
    }

    /// As [`CheckpointSigner::load_or_create`] for `store`, but creates a key only while the
    /// store holds no checkpoint. A key missing beside a store that has checkpoints was lost or
    /// deleted: a new one would overwrite `<path>.pub`, sign on where the old one stopped, and
    /// leave every earlier checkpoint unverifiable. The operator must restore the key instead.
    ///
    /// And the key must be the one the store's checkpoints are signed with — every chain's, as
    /// `samblik audit verify` checks every chain with one public key: the replicas writing to one
    /// store share one signing key. A replica given another key is refused at start-up, rather
    /// than found out at the next verification.
    pub fn load_or_create_for(path: &Path, store: &mut dyn AuditStore) -> Result<Self, AuditError> {
        let mut signed = Vec::new();
        for chain in store.chains()? {
            if let Some(checkpoint) = store.last_checkpoint(&chain)? {
                signed.push(checkpoint);
            }
        }
        if !path.exists() {
            if let Some(c) = signed.first() {
                return Err(AuditError::Key(format!(
                    "no checkpoint signing key at {}, but the audit store holds checkpoints \
                     signed with one (chain {:?}): restore the key file (and its .pub) \
                     from backup; a new key is never created for a store in use",
                    path.display(),
                    c.chain
                )));
            }
            Self::create(path)?;
        }
        let signer = Self::load(path)?;
        let key = signer.verifying_key();
        if let Some(c) = signed.iter().find(|c| !c.verify(&key)) {
            return Err(AuditError::Key(format!(
                "the checkpoint signing key at {} does not sign the audit store's checkpoints \
                 (chain {:?}): every replica writing to one store signs with the same key; give \
                 this one that key",
                path.display(),
                c.chain
            )));
        }
        Ok(signer)
    }

    fn create(path: &Path) -> Result<(), AuditError> {
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut secret);
        let key = SigningKey::from_bytes(&secret);
        write_private(path, hex::encode(secret).as_bytes())?;
        std::fs::write(
            public_key_path(path),
            hex::encode(key.verifying_key().as_bytes()),
        )
        .map_err(|e| AuditError::Key(format!("{}: {e}", public_key_path(path).display())))
    }

    fn load(path: &Path) -> Result<Self, AuditError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))?;
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| AuditError::Key(format!("{} is not 64 hex digits", path.display())))?;
        Ok(CheckpointSigner {
            key: SigningKey::from_bytes(&bytes),
        })
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, chain: &str, seq: u64, head_hash: &str, at: &str) -> Checkpoint {
        let signature = self
            .key
            .sign(&Checkpoint::message(chain, seq, head_hash, at));
        Checkpoint {
            chain: chain.to_owned(),
            seq,
            head_hash: head_hash.to_owned(),
            at: at.to_owned(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

/// Where the public half of the signing key at `path` lives.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Reads a public checkpoint key (64 hex digits).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuditError::Key(format!("{} is not 64 hex digits", path.display())))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let io = |e: std::io::Error| AuditError::Key(format!("{}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}
