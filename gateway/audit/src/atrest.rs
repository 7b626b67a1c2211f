//! No CPR number in clear at rest: the keys that keep the store unreadable without them. A
//! citizen's CPR in an index column is a keyed hash ([`AtRestKeys::index`], HMAC-SHA256 under a
//! long-lived index key); a record's body and a registry row's contents are sealed with an AEAD
//! (AES-256-GCM, [`AtRestKeys::seal`]) under the newest data key, each naming the key it was
//! sealed with, so older keys keep opening what they sealed after a rotation.
//!
//! The key file, rotation and why: `docs/audit-store.md`.

use crate::AuditError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use samblik_cpr::Cpr;
use std::io::Write;
use std::path::Path;

/// What every sealed value starts with: a version, so a value written otherwise is told apart
/// (and a value that is not sealed at all is never mistaken for one).
const MAGIC: &[u8; 4] = b"SBK1";
/// The prefix of a sealed value kept as text (PostgreSQL's text columns, the registry's).
const TEXT_PREFIX: &str = "sealed:";
/// Bytes of a key, either kind.
const KEY_BYTES: usize = 32;
/// What the index key's check value is the keyed hash of: a store remembers it, so a store
/// opened with another index key (whose searches would silently find nothing) is refused.
const CHECK_LABEL: &[u8] = b"samblik-audit-index-key-check/v1";

/// The data and index keys, read from the data key file (see [`AtRestKeys::load`]). `Debug`
/// shows the key ids only.
pub struct AtRestKeys {
    index: hmac::Key,
    /// The data keys by id, in the file's order; the last one seals.
    data: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for AtRestKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtRestKeys")
            .field(
                "data_key_ids",
                &self.data.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Where a sealed value belongs, bound into its seal as associated data: a value moved to
/// another column (a body into a consent's contents) does not open there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// A record's stored body.
    Body,
    /// A consent's sealed contents.
    Consent,
    /// An access request's sealed contents.
    Request,
    /// An access request's decision reason.
    DecisionReason,
}

impl Sealed {
    fn aad(self) -> &'static [u8] {
        match self {
            Sealed::Body => b"samblik-audit/body",
            Sealed::Consent => b"samblik-audit/consent",
            Sealed::Request => b"samblik-audit/request",
            Sealed::DecisionReason => b"samblik-audit/decision-reason",
        }
    }
}

impl AtRestKeys {
    /// Reads the key file at `path`: lines of `index HEX` (exactly one: the HMAC key of the
    /// CPR index columns) and `data ID HEX` (one or more: AEAD keys; the last one seals, every
    /// one opens what it sealed), `#` comments and blank lines. Keys are 64 hex digits. The
    /// errors name the line, never a key.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AuditError::DataKey(format!(
                "cannot read the audit data key file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| {
            AuditError::DataKey(format!("the audit data key file {}: {e}", path.display()))
        })
    }

    /// Reads the key file, creating it (mode 0600, with a fresh index key and one data key) if
    /// it does not exist. Only for a store that holds nothing yet: the store refuses an index
    /// key that is not the one it was written with ([`AtRestKeys::check_value`]).
    pub fn load_or_create(path: &Path) -> Result<Self, AuditError> {
        if !path.exists() {
            Self::create(path)?;
        }
        Self::load(path)
    }

    /// Writes a new key file at `path` (mode 0600): a fresh index key and data key `1`.
    pub fn create(path: &Path) -> Result<(), AuditError> {
        write_private(path, &fresh_file(&SystemRandom::new())?)
    }

    /// Fresh keys held in memory only, for a throw-away store (a benchmark's, a test's): what
    /// they seal is unreadable once they are dropped.
    pub fn generate() -> Result<Self, AuditError> {
        Self::parse(&fresh_file(&SystemRandom::new())?).map_err(AuditError::DataKey)
    }

    /// Rotation: appends a fresh data key to the file at `path`, which seals from the next
    /// start on; the keys before it stay to open what they sealed. Returns the new key's id
    /// (one more than the largest numeric id in the file).
    pub fn add_data_key(path: &Path) -> Result<String, AuditError> {
        let keys = Self::load(path)?;
        let next = keys
            .data
            .iter()
            .filter_map(|(id, _)| id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let line = format!("data {next} {}\n", hex::encode(random_key(&keys.rng)?));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| AuditError::DataKey(format!("{}: {e}", path.display())))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| AuditError::DataKey(format!("{}: {e}", path.display())))?;
        Ok(next.to_string())
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut index = None;
        let mut data: Vec<(String, LessSafeKey)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = n + 1;
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["index", key] => {
                    if index.is_some() {
                        return Err(format!("line {at}: a second index key"));
                    }
                    index = Some(hmac::Key::new(hmac::HMAC_SHA256, &key_bytes(key, at)?));
                }
                ["data", id, key] => {
                    if !valid_id(id) {
                        return Err(format!(
                            "line {at}: a data key id is 1 to 32 letters, digits, '.', '-' or '_'"
                        ));
                    }
                    if data.iter().any(|(known, _)| known == id) {
                        return Err(format!("line {at}: data key {id} is listed twice"));
                    }
                    let key = UnboundKey::new(&AES_256_GCM, &key_bytes(key, at)?)
                        .map_err(|_| format!("line {at}: not an AES-256 key"))?;
                    data.push(((*id).to_owned(), LessSafeKey::new(key)));
                }
                _ => {
                    return Err(format!("line {at}: expected `index HEX` or `data ID HEX`"));
                }
            }
        }
        let index = index.ok_or("no index key (a line `index HEX`)")?;
        if data.is_empty() {
            return Err("no data key (a line `data ID HEX`)".into());
        }
        Ok(AtRestKeys {
            index,
            data,
            rng: SystemRandom::new(),
        })
    }

    /// The citizen's entry in an index column: HMAC-SHA256 of the 10 digits under the index
    /// key, hex. Without the key it says nothing; with it, equal CPRs index equal.
    pub fn index(&self, cpr: &Cpr) -> String {
        hex::encode(hmac::sign(&self.index, cpr.as_str().as_bytes()).as_ref())
    }

    /// What a store remembers of its index key, to refuse another one.
    pub fn check_value(&self) -> String {
        hex::encode(hmac::sign(&self.index, CHECK_LABEL).as_ref())
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> &str {
        self.data.last().map_or("", |(id, _)| id)
    }

    /// `plaintext` sealed under the newest data key for `place`: the magic, the key's id, a
    /// random nonce, then the ciphertext with its tag.
    pub fn seal(&self, place: Sealed, plaintext: &[u8]) -> Result<Vec<u8>, AuditError> {
        let (id, key) = self
            .data
            .last()
            .ok_or_else(|| AuditError::DataKey("no data key".into()))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| AuditError::DataKey("no randomness for a nonce".into()))?;
        let id_len = u8::try_from(id.len()).map_err(|_| AuditError::DataKey("key id".into()))?;
        let mut sealed =
            Vec::with_capacity(MAGIC.len() + 1 + id.len() + NONCE_LEN + plaintext.len() + 16);
        sealed.extend_from_slice(MAGIC);
        sealed.push(id_len);
        sealed.extend_from_slice(id.as_bytes());
        sealed.extend_from_slice(&nonce);
        let start = sealed.len();
        sealed.extend_from_slice(plaintext);
        let mut in_out = sealed.split_off(start);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(place.aad()),
            &mut in_out,
        )
        .map_err(|_| AuditError::DataKey("sealing failed".into()))?;
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Opens what [`AtRestKeys::seal`] sealed for `place`. The error says what is wrong (an
    /// unknown key id, a changed byte), never what it holds.
    pub fn open(&self, place: Sealed, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let rest = sealed
            .strip_prefix(MAGIC.as_slice())
            .ok_or("the value is not sealed")?;
        let (&id_len, rest) = rest.split_first().ok_or("the sealed value is cut short")?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN {
            return Err("the sealed value is cut short".into());
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let id = std::str::from_utf8(id).map_err(|_| "the sealed value's key id is not text")?;
        let key = self
            .data
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, key)| key)
            .ok_or_else(|| {
                format!("sealed with data key {id:?}, which the data key file does not hold")
            })?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut in_out = ciphertext.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(place.aad()), &mut in_out)
            .map_err(|_| "the sealed value does not open: changed, or sealed for another place")?;
        Ok(plain.to_vec())
    }

    /// [`AtRestKeys::seal`] as text, for a text column: `sealed:` and the sealed bytes in
    /// base64.
    pub fn seal_text(&self, place: Sealed, plaintext: &str) -> Result<String, AuditError> {
        Ok(format!(
            "{TEXT_PREFIX}{}",
            BASE64.encode(self.seal(place, plaintext.as_bytes())?)
        ))
    }

    /// Opens what [`AtRestKeys::seal_text`] sealed.
    pub fn open_text(&self, place: Sealed, sealed: &str) -> Result<String, String> {
        let bytes = sealed
            .strip_prefix(TEXT_PREFIX)
            .and_then(|b| BASE64.decode(b).ok())
            .ok_or("the value is not sealed")?;
        String::from_utf8(self.open(place, &bytes)?)
            .map_err(|_| "the sealed text is not UTF-8".into())
    }
}

/// Whether a stored body is sealed (rather than text or a bare zstd frame, as a store written
/// before sealing holds).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

/// A new key file's text: a fresh index key and data key `1`.
fn fresh_file(rng: &SystemRandom) -> Result<String, AuditError> {
    Ok(format!(
        "# Samblik's audit data keys. Keep this file outside the database and its backups.\n\
         # index: the HMAC key of the CPR index columns (long-lived: never change it).\n\
         # data: the AEAD keys; the last one seals, every one listed opens what it sealed.\n\
         index {}\ndata 1 {}\n",
        hex::encode(random_key(rng)?),
        hex::encode(random_key(rng)?)
    ))
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn key_bytes(text: &str, line: usize) -> Result<[u8; KEY_BYTES], String> {
    let mut key = [0u8; KEY_BYTES];
    hex::decode_to_slice(text, &mut key)
        .map_err(|_| format!("line {line}: a key is {} hex digits", KEY_BYTES * 2))?;
    Ok(key)
}

fn random_key(rng: &SystemRandom) -> Result<[u8; KEY_BYTES], AuditError> {
    let mut key = [0u8; KEY_BYTES];
    rng.fill(&mut key)
        .map_err(|_| AuditError::DataKey("no randomness for a key".into()))?;
    Ok(key)
}

/// Creates `path` readable by its owner only, and never over an existing file.
fn write_private(path: &Path, text: &str) -> Result<(), AuditError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| AuditError::DataKey(format!("{}: {e}", parent.display())))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| AuditError::DataKey(format!("{}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| AuditError::DataKey(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use crate::atrest::{AtRestKeys, Sealed, is_sealed};
    use samblik_cpr::Cpr;

    fn keys_in(dir: &std::path::Path) -> (std::path::PathBuf, AtRestKeys) {
        let path = dir.join("audit-data.keys");
        let keys = AtRestKeys::load_or_create(&path).unwrap();
        (path, keys)
    }

    #[test]
    fn a_sealed_value_opens_under_its_key_only_and_for_its_place_only() {
        let dir = tempfile::tempdir().unwrap();
        let (_, keys) = keys_in(dir.path());
        let sealed = keys
            .seal(Sealed::Body, b"0101901234 was looked up")
            .unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(10).any(|w| w == b"0101901234"));
        assert_eq!(
            keys.open(Sealed::Body, &sealed).unwrap(),
            b"0101901234 was looked up"
        );
        assert!(
            keys.open(Sealed::Consent, &sealed).is_err(),
            "another place"
        );
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(keys.open(Sealed::Body, &changed).is_err(), "a changed byte");
        assert!(
            keys.open(Sealed::Body, &sealed[..sealed.len() - 1])
                .is_err()
        );
        assert!(keys.open(Sealed::Body, b"SBK1").is_err());
        // Two seals of one value differ (random nonces).
        assert_ne!(
            sealed,
            keys.seal(Sealed::Body, b"0101901234 was looked up")
                .unwrap()
        );
        let (_, other) = keys_in(&dir.path().join("other"));
        assert!(
            other.open(Sealed::Body, &sealed).is_err(),
            "another key file"
        );
    }

    #[test]
    fn the_index_is_keyed_and_equal_for_equal_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (_, keys) = keys_in(dir.path());
        let (_, other) = keys_in(&dir.path().join("other"));
        let a = Cpr::parse("010190-1234").unwrap();
        let b = Cpr::parse("0101901234").unwrap();
        assert_eq!(keys.index(&a), keys.index(&b));
        assert_eq!(keys.index(&a).len(), 64);
        assert!(!keys.index(&a).contains("0101901234"));
        assert_ne!(keys.index(&a), other.index(&a));
        assert_ne!(keys.check_value(), other.check_value());
    }

    #[test]
    fn after_a_rotation_the_new_key_seals_and_the_old_one_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (path, before) = keys_in(dir.path());
        let old = before.seal(Sealed::Consent, b"old").unwrap();
        assert_eq!(AtRestKeys::add_data_key(&path).unwrap(), "2");
        let after = AtRestKeys::load(&path).unwrap();
        assert_eq!(after.sealing_key_id(), "2");
        assert_eq!(
            after.check_value(),
            before.check_value(),
            "the index key stays"
        );
        assert_eq!(after.open(Sealed::Consent, &old).unwrap(), b"old");
        let new = after.seal(Sealed::Consent, b"new").unwrap();
        let why = before.open(Sealed::Consent, &new).unwrap_err();
        assert!(why.contains("\"2\""), "{why}");
        // Text form, for text columns.
        let text = after.seal_text(Sealed::DecisionReason, "why").unwrap();
        assert_eq!(
            after.open_text(Sealed::DecisionReason, &text).unwrap(),
            "why"
        );
        assert!(after.open_text(Sealed::DecisionReason, "why").is_err());
    }

    #[test]
    fn a_bad_key_file_is_refused_without_repeating_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = "ab".repeat(32);
        for (text, says) in [
            (String::new(), "no index key"),
            (format!("index {good}\n"), "no data key"),
            (format!("data 1 {good}\n"), "no index key"),
            (
                format!("index {good}\nindex {good}\ndata 1 {good}"),
                "second index",
            ),
            (
                format!("index {good}\ndata 1 {good}\ndata 1 {good}"),
                "twice",
            ),
            (format!("index {good}\ndata 1 abc"), "64 hex"),
            (format!("index {good}\ndata a/b {good}"), "key id"),
            (format!("index {good}\nsecret {good}"), "expected"),
        ] {
            let path = dir.path().join("k");
            std::fs::write(&path, &text).unwrap();
            let err = AtRestKeys::load(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(!err.contains(&good), "{err}");
        }
        assert!(AtRestKeys::load(&dir.path().join("missing")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_created_key_file_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, keys) = keys_in(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(AtRestKeys::create(&path).is_err());
        let again = AtRestKeys::load_or_create(&path).unwrap();
        assert_eq!(again.check_value(), keys.check_value());
        assert!(!format!("{keys:?}").contains(&keys.check_value()));
    }
}
