//! How the embedded store keeps a record's body: compressed with a zstd dictionary trained on the
//! store's own records, redacted first ([`redacted`]) so that no dictionary holds personal data,
//! then sealed ([`crate::atrest`]). What is hashed stays the canonical JSON.
//!
//! The stored form, the training and why: `docs/audit-store.md`.

use crate::atrest::{AtRestKeys, Sealed, is_sealed};
use crate::{AuditError, StoredRecord};
use rusqlite::Connection;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Records the first dictionary is trained from (the store's newest), and how many the store
/// has before it trains one: ~2.5 MB of samples for a dictionary of 16 KB.
pub const TRAINING_RECORDS: i64 = 2048;
/// Records written with a dictionary after which a new one is trained from the newest records.
pub const RETRAIN_AFTER_RECORDS: i64 = 1 << 20;
/// The size of a trained dictionary.
const DICTIONARY_BYTES: usize = 16 * 1024;
/// Zstd's level 1: with a dictionary, higher levels shrink a body by a byte or two and cost
/// time on the writer's thread.
const LEVEL: i32 = 1;
/// The largest body a frame may claim to hold: a record is kilobytes; a frame claiming more was
/// not written by a store.
const MAX_BODY_BYTES: u64 = 16 << 20;

/// When a store trains dictionaries (by rowid): [`Schedule::default`] in production; a test
/// takes smaller figures to see training and retraining happen on a few records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub training_records: i64,
    pub retrain_after_records: i64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            training_records: TRAINING_RECORDS,
            retrain_after_records: RETRAIN_AFTER_RECORDS,
        }
    }
}

/// The first bytes of a zstd frame: a sealed body holds a frame (compressed with a dictionary)
/// or the canonical JSON itself (written before the store had a dictionary).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// A stored body as read from the table, before it is opened and decompressed.
#[derive(Debug)]
pub(crate) enum StoredBody {
    /// Sealed: what every store written since bodies are sealed holds.
    Sealed(Vec<u8>),
    /// Anything else (text, a bare frame): never written by this store, so it is reported as
    /// unreadable rather than read.
    Unsealed,
}

impl FromSql for StoredBody {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value {
            ValueRef::Blob(b) if is_sealed(b) => Ok(StoredBody::Sealed(b.to_vec())),
            ValueRef::Text(_) | ValueRef::Blob(_) => Ok(StoredBody::Unsealed),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

/// The dictionaries a connection has met, by id, ready to decompress with, and the keys that
/// open the bodies. Shared (behind a mutex) with the SQL function `samblik_body`, which a search
/// calls to reach into bodies.
pub(crate) struct Dictionaries {
    keys: Arc<AtRestKeys>,
    decoders: HashMap<u32, zstd::bulk::Decompressor<'static>>,
}

/// The dictionaries of a connection that opens bodies with `keys`.
pub(crate) fn shared(keys: &Arc<AtRestKeys>) -> SharedDictionaries {
    Arc::new(Mutex::new(Dictionaries {
        keys: Arc::clone(keys),
        decoders: HashMap::new(),
    }))
}

impl std::fmt::Debug for Dictionaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionaries")
            .field("ids", &self.decoders.keys().collect::<Vec<_>>())
            .finish()
    }
}

pub(crate) type SharedDictionaries = Arc<Mutex<Dictionaries>>;

/// Takes the shared cache (a thread that panicked holding it leaves it unusable, not wrong).
pub(crate) fn lock(
    dictionaries: &SharedDictionaries,
) -> Result<std::sync::MutexGuard<'_, Dictionaries>, AuditError> {
    dictionaries
        .lock()
        .map_err(|_| AuditError::Store("the dictionary cache is poisoned".into()))
}

impl Dictionaries {
    /// Loads the file's dictionaries this connection does not know yet. A file without the
    /// table (written before dictionaries existed, opened read-only) has none.
    pub(crate) fn refresh(&mut self, conn: &Connection) -> Result<(), AuditError> {
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema
                             WHERE type = 'table' AND name = 'audit_dictionaries')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(());
        }
        let mut stmt = conn.prepare_cached("SELECT id, dict FROM audit_dictionaries")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id = u32::try_from(row.get::<_, i64>(0)?)
                .map_err(|_| AuditError::Store("a dictionary id is out of range".into()))?;
            if self.decoders.contains_key(&id) {
                continue;
            }
            // A dictionary that cannot be used leaves the records that need it unreadable
            // (verification names the first), not the whole store.
            let decoder = match row.get_ref(1)? {
                ValueRef::Blob(dict) => zstd::bulk::Decompressor::with_dictionary(dict),
                _ => Err(std::io::Error::other("not a blob")),
            };
            match decoder {
                Ok(decoder) => {
                    self.decoders.insert(id, decoder);
                }
                Err(e) => {
                    tracing::error!(dictionary = id, error = %e, "an audit body dictionary is unusable")
                }
            }
        }
        Ok(())
    }

    fn knows(&self, inner: &[u8]) -> bool {
        !inner.starts_with(&ZSTD_MAGIC)
            || dictionary_of(inner).is_none_or(|id| self.decoders.contains_key(&id))
    }

    /// Opens a stored body: the frame or text it seals.
    fn open(&self, body: &StoredBody) -> Result<Vec<u8>, String> {
        match body {
            StoredBody::Sealed(sealed) => self.keys.open(Sealed::Body, sealed),
            StoredBody::Unsealed => Err("the body is not sealed".into()),
        }
    }

    /// The canonical JSON of an opened body.
    fn text_of(&mut self, inner: Vec<u8>) -> Result<String, String> {
        if inner.starts_with(&ZSTD_MAGIC) {
            self.decompress(&inner)
        } else {
            String::from_utf8(inner).map_err(|_| "the body is not UTF-8".into())
        }
    }

    /// Decompresses one body. The error says what is wrong with it; verification reports it as
    /// that record's fault.
    pub(crate) fn decompress(&mut self, frame: &[u8]) -> Result<String, String> {
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if size <= MAX_BODY_BYTES => size,
            Ok(_) => return Err("the compressed body does not state a plausible size".into()),
            Err(_) => return Err("the body is not a zstd frame".into()),
        };
        let id = dictionary_of(frame).ok_or("the compressed body names no dictionary")?;
        let decoder = self.decoders.get_mut(&id).ok_or_else(|| {
            format!("the compressed body needs dictionary {id}, which the store lacks")
        })?;
        let bytes = decoder
            .decompress(frame, usize::try_from(size).unwrap_or(usize::MAX))
            .map_err(|e| format!("the compressed body does not decompress: {e}"))?;
        String::from_utf8(bytes).map_err(|_| "the decompressed body is not UTF-8".into())
    }
}

/// The id of the dictionary a compressed body needs (from its frame header), if it names one.
pub fn dictionary_of(frame: &[u8]) -> Option<u32> {
    zstd::zstd_safe::get_dict_id_from_frame(frame).map(std::num::NonZeroU32::get)
}

/// Turns stored bodies into canonical JSON, loading dictionaries the connection has not met yet
/// from `conn`. A body that cannot be opened or decompressed becomes a text that matches no hash
/// (it says why), so verification and searches report that record rather than failing as a
/// whole.
pub(crate) fn decode_all(
    dictionaries: &SharedDictionaries,
    conn: &Connection,
    bodies: Vec<StoredBody>,
) -> Result<Vec<String>, AuditError> {
    let mut dictionaries = lock(dictionaries)?;
    let opened: Vec<Result<Vec<u8>, String>> =
        bodies.iter().map(|body| dictionaries.open(body)).collect();
    let unknown = opened
        .iter()
        .any(|inner| matches!(inner, Ok(inner) if !dictionaries.knows(inner)));
    if unknown {
        dictionaries.refresh(conn)?;
    }
    Ok(opened
        .into_iter()
        .map(|inner| {
            inner
                .and_then(|inner| dictionaries.text_of(inner))
                .unwrap_or_else(|why| format!("unreadable: {why}"))
        })
        .collect())
}

/// A row of [`STORED_COLUMNS`](crate::STORED_COLUMNS), its body as stored.
pub(crate) fn stored_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(StoredRecord, StoredBody)> {
    Ok((
        StoredRecord {
            seq: r.get::<_, i64>(0)?.unsigned_abs(),
            request_id: r.get(1)?,
            cpr: r.get(2)?,
            caller_id: r.get(3)?,
            body: String::new(),
            hash: r.get(5)?,
            at: r.get(6)?,
            department: r.get(7)?,
            action: r.get(8)?,
            outcome: r.get(9)?,
        },
        r.get(4)?,
    ))
}

/// Puts the canonical JSON of each row's stored body into its record.
pub(crate) fn with_bodies(
    dictionaries: &SharedDictionaries,
    conn: &Connection,
    rows: Vec<(StoredRecord, StoredBody)>,
) -> Result<Vec<StoredRecord>, AuditError> {
    let (mut records, bodies): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    for (record, body) in records
        .iter_mut()
        .zip(decode_all(dictionaries, conn, bodies)?)
    {
        record.body = body;
    }
    Ok(records)
}

/// Registers `samblik_body(body)` on `conn`: the canonical JSON of a stored body, so that SQL
/// can reach into it (`json_extract(samblik_body(body), …)`). It knows the dictionaries in
/// `dictionaries`; [`Dictionaries::refresh`] them in the same read transaction first.
pub(crate) fn register_function(
    conn: &Connection,
    dictionaries: &SharedDictionaries,
) -> Result<(), AuditError> {
    let dictionaries = Arc::clone(dictionaries);
    conn.create_scalar_function(
        "samblik_body",
        1,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8
            | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
        move |ctx| {
            let body = StoredBody::column_result(ctx.get_raw(0)).map_err(|_| {
                rusqlite::Error::UserFunctionError("samblik_body takes a stored body".into())
            })?;
            let mut dictionaries =
                lock(&dictionaries).map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
            dictionaries
                .open(&body)
                .and_then(|inner| dictionaries.text_of(inner))
                .map_err(|why| {
                    rusqlite::Error::UserFunctionError(
                        format!("{why}; run `samblik audit verify`").into(),
                    )
                })
        },
    )?;
    Ok(())
}

/// The writer's side: the dictionary it compresses new bodies with, and when the next one is
/// due. Training (~0.1 s of CPU for 2,048 records) runs on a thread of its own, reading the
/// file on a connection of its own, so that the writer never waits for it; the writer stores
/// the dictionary in the first transaction after it is ready, and compresses with it once that
/// transaction has committed.
pub(crate) struct Encoder {
    path: PathBuf,
    /// Open the bodies the training reads.
    keys: Arc<AtRestKeys>,
    schedule: Schedule,
    current: Option<(u32, zstd::bulk::Compressor<'static>)>,
    /// The rowid at which the writer trains (or looks for) its next dictionary.
    due: i64,
    training: Option<std::thread::JoinHandle<Option<Trained>>>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("dictionary", &self.current.as_ref().map(|(id, _)| id))
            .field("due", &self.due)
            .field("training", &self.training.is_some())
            .finish()
    }
}

/// A dictionary the training thread made from the records up to rowid `through`.
struct Trained {
    dict: Vec<u8>,
    through: i64,
}

/// A dictionary stored or found in a transaction not yet committed.
pub(crate) struct Pending {
    id: u32,
    dict: Vec<u8>,
    due: i64,
}

impl Encoder {
    /// The writer's encoder for the file at `path` (open on `conn`): its newest dictionary, if
    /// it has one.
    pub(crate) fn open(
        conn: &Connection,
        path: &Path,
        schedule: Schedule,
        keys: &Arc<AtRestKeys>,
    ) -> Result<Self, AuditError> {
        let mut encoder = Encoder {
            path: path.to_owned(),
            keys: Arc::clone(keys),
            schedule,
            current: None,
            due: schedule.training_records,
            training: None,
        };
        if let Some((id, dict, through)) = newest(conn)? {
            encoder.adopt(Pending {
                id,
                dict,
                due: through + schedule.retrain_after_records,
            });
        }
        Ok(encoder)
    }

    /// The keys the store seals with.
    pub(crate) fn keys(&self) -> &AtRestKeys {
        &self.keys
    }

    /// A body as stored: compressed with the current dictionary (the text itself before there
    /// is one, or should compressing fail, which zstd does not do on memory it was given), then
    /// sealed.
    pub(crate) fn encode(&mut self, body: &str) -> Result<Vec<u8>, AuditError> {
        let compressed = self
            .current
            .as_mut()
            .and_then(|(_, compressor)| compressor.compress(body.as_bytes()).ok());
        match compressed {
            Some(frame) => self.keys.seal(Sealed::Body, &frame),
            None => self.keys.seal(Sealed::Body, body.as_bytes()),
        }
    }

    /// Inside the writer's transaction, the table ending at rowid `last`: stores a dictionary
    /// the training thread has finished, or takes the file's newest if another writer trained
    /// it recently, or starts a training when one is due. Returns the dictionary to compress
    /// with once the transaction has committed ([`Encoder::adopt`]).
    pub(crate) fn step(
        &mut self,
        conn: &Connection,
        last: i64,
    ) -> Result<Option<Pending>, AuditError> {
        if let Some(training) = &self.training {
            if !training.is_finished() {
                return Ok(None);
            }
            let trained = self.training.take().and_then(|t| t.join().ok()).flatten();
            return match trained {
                Some(trained) => self.store(conn, trained, last),
                None => {
                    self.due = last + self.schedule.training_records;
                    Ok(None)
                }
            };
        }
        if last < self.due {
            return Ok(None);
        }
        if let Some((id, dict, through)) = newest(conn)?
            && through + self.schedule.retrain_after_records > last
            && self
                .current
                .as_ref()
                .is_none_or(|(current, _)| *current != id)
        {
            return Ok(Some(Pending {
                id,
                dict,
                due: through + self.schedule.retrain_after_records,
            }));
        }
        let (path, records) = (self.path.clone(), self.schedule.training_records);
        let keys = Arc::clone(&self.keys);
        let spawned = std::thread::Builder::new()
            .name("samblik-audit-train".into())
            .spawn(move || train(&path, &keys, records, last));
        match spawned {
            Ok(training) => self.training = Some(training),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start training an audit body dictionary; bodies stay as they are for now");
                self.due = last + self.schedule.training_records;
            }
        }
        Ok(None)
    }

    /// Stores a trained dictionary in the writer's transaction.
    fn store(
        &mut self,
        conn: &Connection,
        trained: Trained,
        last: i64,
    ) -> Result<Option<Pending>, AuditError> {
        let id = zstd::zstd_safe::get_dict_id_from_dict(&trained.dict).map(|id| id.get());
        let stored = match id {
            Some(id) => conn.execute(
                "INSERT OR IGNORE INTO audit_dictionaries (id, trained_through, dict)
                 VALUES (?1, ?2, ?3)",
                rusqlite::params![i64::from(id), trained.through, trained.dict],
            )?,
            None => 0,
        };
        let Some(id) = id.filter(|_| stored == 1) else {
            // No id, or another dictionary has it (ids come from the content): keep the current.
            tracing::warn!(
                dictionary = id,
                "a trained audit body dictionary has no id of its own; not used"
            );
            self.due = last + self.schedule.training_records;
            return Ok(None);
        };
        Ok(Some(Pending {
            id,
            dict: trained.dict,
            due: trained.through + self.schedule.retrain_after_records,
        }))
    }

    /// After the transaction that stored or found `pending` committed: compresses with it from
    /// now on.
    pub(crate) fn adopt(&mut self, pending: Pending) {
        self.due = pending.due;
        match zstd::bulk::Compressor::with_dictionary(LEVEL, &pending.dict) {
            Ok(compressor) => self.current = Some((pending.id, compressor)),
            Err(e) => {
                tracing::warn!(error = %e, dictionary = pending.id, "an audit body dictionary is unusable; bodies stay as they were");
            }
        }
    }
}

/// On the training thread: a dictionary from the newest `records` records of the file at
/// `path`, read on a connection of its own. `None` (logged) if there are too few records or
/// zstd cannot train on them: the writer tries again later.
fn train(path: &Path, keys: &Arc<AtRestKeys>, records: i64, through: i64) -> Option<Trained> {
    let started = std::time::Instant::now();
    let samples = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(AuditError::from)
    .and_then(|conn| samples(&conn, keys, records));
    let samples = match samples {
        Ok(samples) if i64::try_from(samples.len()).unwrap_or(0) >= records => samples,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read records to train an audit body dictionary on");
            return None;
        }
    };
    match zstd::dict::from_samples(&samples, DICTIONARY_BYTES) {
        Ok(dict) => {
            tracing::info!(
                records = samples.len(),
                bytes = dict.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "trained an audit body dictionary"
            );
            Some(Trained { dict, through })
        }
        Err(e) => {
            tracing::warn!(error = %e, records = samples.len(), "training an audit body dictionary failed; bodies stay as they are for now");
            None
        }
    }
}

/// The file's newest dictionary: id, bytes, and the rowid it was trained through.
fn newest(conn: &Connection) -> Result<Option<(u32, Vec<u8>, i64)>, AuditError> {
    use rusqlite::OptionalExtension;
    let row = conn
        .query_row(
            "SELECT id, dict, trained_through FROM audit_dictionaries
              ORDER BY trained_through DESC, id DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    row.map(|(id, dict, through)| {
        u32::try_from(id)
            .map(|id| (id, dict, through))
            .map_err(|_| AuditError::Store("a dictionary id is out of range".into()))
    })
    .transpose()
}

/// What a dictionary may learn from `body`: the record's canonical JSON with nothing in it that
/// could name or single out a person. The caller's id and name, a break-the-glass reason or
/// other free text, a registry change's content and the previous hash (noise) are blanked; the
/// citizen, the request id, case ids and the document ids in field paths keep their shape with
/// every digit (and the request id's every hex digit) a zero. The keys, departments, purposes,
/// outcomes, sources, tiers, legal bases, rule ids, field paths and times stay: they are what
/// repeats. `None` for a body that is not a record.
pub fn redacted(body: &str) -> Option<Vec<u8>> {
    fn zeroed(text: &mut String, digit: fn(char) -> bool) {
        *text = text
            .chars()
            .map(|c| if digit(c) { '0' } else { c })
            .collect();
    }
    let decimal = |c: char| c.is_ascii_digit();
    let mut record: crate::AuditRecord = serde_json::from_str(body).ok()?;
    zeroed(&mut record.request_id, |c| c.is_ascii_hexdigit());
    record.actor.caller_id.clear();
    record.actor.name.clear();
    // Every citizen the same placeholder: a CPR's shape with no one's digits.
    if record.cpr.is_some() {
        record.cpr = samblik_cpr::Cpr::parse("0101000000").ok();
    }
    for text in [&mut record.break_glass_reason, &mut record.detail]
        .into_iter()
        .flatten()
    {
        text.clear();
    }
    record.prev_hash.clear();
    if record.action != crate::Action::AuditMaintenance {
        record.change = None;
    }
    for case in record.sources.iter_mut().flat_map(|s| s.cases.iter_mut()) {
        zeroed(&mut case.case_id, decimal);
        for field in &mut case.fields {
            zeroed(field, decimal);
        }
    }
    serde_json::to_vec(&record).ok()
}

/// The newest `n` bodies, as canonical JSON, [`redacted`] for training.
fn samples(conn: &Connection, keys: &Arc<AtRestKeys>, n: i64) -> Result<Vec<Vec<u8>>, AuditError> {
    let mut stmt =
        conn.prepare_cached("SELECT body FROM audit_records ORDER BY rowid DESC LIMIT ?1")?;
    let bodies = stmt
        .query_map([n], |r| r.get::<_, StoredBody>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let dictionaries = shared(keys);
    Ok(decode_all(&dictionaries, conn, bodies)?
        .iter()
        .filter_map(|body| redacted(body))
        .collect())
}
