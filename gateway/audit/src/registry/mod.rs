//! The consent / access-request / grant registry. It lives in the audit store, and every change
//! is written by the audit writer in the same transaction as the audit record that describes it
//! ([`crate::AuditLog::change`]), so the registry never holds a change the log does not.
//!
//! Reads go through [`Registry`]: no cache, every read asks the store, so a withdrawn consent is
//! invisible to the very next lookup, on every replica. Beneath it: the model (`model`), the rows
//! both stores keep (`rows`) and the reads each store answers (`reader`).

pub(crate) mod model;
pub(crate) mod reader;
pub(crate) mod rows;

pub use crate::registry::model::{
    AccessRequest, ChangeOutcome, Consent, ConsentKind, Recipients, RegistryChange, RequestState,
};
pub use crate::registry::reader::{RegistryReader, RequestFilter};

use crate::AuditError;
use chrono::{DateTime, Utc};
use samblik_cpr::Cpr;
use std::sync::{Arc, Mutex};

type Opener = dyn Fn() -> Result<Box<dyn RegistryReader>, AuditError> + Send + Sync;

struct Pool {
    idle: Mutex<Vec<Box<dyn RegistryReader>>>,
    open: Box<Opener>,
    /// At most this many readers exist at once.
    permits: Arc<tokio::sync::Semaphore>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !idle.is_empty() {
            // A blocking PostgreSQL client must not be dropped on a runtime thread (closing it
            // blocks on its own runtime), and the pool may be dropped on one.
            let closed = std::thread::Builder::new()
                .name("samblik-registry-close".into())
                .spawn(move || drop(idle));
            if let Err(e) = closed {
                tracing::warn!(error = %e, "cannot close registry connections on their own thread");
            }
        }
    }
}

/// The registry's read side, for async code: each read runs on a blocking thread over a small
/// pool of connections and goes to the store (no cache).
#[derive(Clone)]
pub struct Registry {
    pool: Arc<Pool>,
    /// The embedded store's consents and grants in memory (see [`Registry::sqlite`]); `None`
    /// for a store that other processes also write (PostgreSQL).
    mirror: Option<Arc<std::sync::RwLock<Option<Mirror>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("available", &self.pool.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// How many readers a [`Registry`] opens at most.
pub const DEFAULT_READERS: usize = 4;

/// What every lookup reads — the citizens' consents and the approved requests — held in memory
/// for the embedded store. Exact, not a cache: one gateway process owns an SQLite store and every
/// change goes through its audit writer, after which [`Registry::refresh`] re-reads the changed
/// rows before the change is answered. If a refresh fails, the mirror is dropped and every read
/// goes to the store again.
#[derive(Debug, Default)]
struct Mirror {
    /// Per CPR, newest first (as [`RegistryReader::consents_for`]).
    consents: std::collections::HashMap<Cpr, Vec<Consent>>,
    /// Per (CPR, requester), approved requests (as [`RegistryReader::grants_for`]).
    grants: std::collections::HashMap<(Cpr, String), Vec<AccessRequest>>,
}

impl Registry {
    /// Reads the registry in the SQLite file at `path`, creating the schema if it is missing.
    /// The consents and grants are loaded into memory and kept exact by [`Registry::refresh`];
    /// the file must be owned by this one gateway process (several replicas share PostgreSQL).
    pub fn sqlite(
        path: &std::path::Path,
        keys: Arc<crate::AtRestKeys>,
    ) -> Result<Registry, AuditError> {
        let path = path.to_owned();
        let mut first = crate::store::sqlite::SqliteReader::open(&path, true, Arc::clone(&keys))?;
        let mut mirror = Mirror::default();
        for consent in first.all_consents()? {
            mirror
                .consents
                .entry(consent.cpr.clone())
                .or_default()
                .push(consent);
        }
        for grant in first.all_grants()? {
            mirror
                .grants
                .entry((grant.cpr.clone(), grant.requester_id.clone()))
                .or_default()
                .push(grant);
        }
        let mut registry = Self::with_opener(
            Box::new(first),
            move || {
                Ok(Box::new(crate::store::sqlite::SqliteReader::open(
                    &path,
                    false,
                    Arc::clone(&keys),
                )?) as _)
            },
            DEFAULT_READERS,
        );
        registry.mirror = Some(Arc::new(std::sync::RwLock::new(Some(mirror))));
        Ok(registry)
    }

    /// The in-memory mirror, if there is one and it is intact.
    fn mirrored<T>(&self, f: impl FnOnce(&Mirror) -> T) -> Option<T> {
        let mirror = self.mirror.as_ref()?;
        let guard = mirror.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(f)
    }

    /// After a change was written: re-reads what it touched from the store into the mirror, so
    /// the next lookup sees it. Call before the change is answered. Without a mirror this does
    /// nothing; if the re-read fails, the mirror is dropped and reads go to the store.
    pub async fn refresh(&self, change: &RegistryChange) {
        let Some(mirror) = &self.mirror else {
            return;
        };
        let refreshed = match change {
            RegistryChange::RecordConsent(Consent { cpr, .. })
            | RegistryChange::WithdrawConsent { cpr, .. } => {
                let cpr2 = cpr.clone();
                self.read(move |r| r.consents_for(&cpr2))
                    .await
                    .map(|c| (Some((cpr.clone(), c)), None))
            }
            RegistryChange::FileRequest(_) => return,
            RegistryChange::DecideRequest { id, .. } => {
                let id = id.clone();
                self.read(move |r| {
                    let Some(request) = r.request(&id)? else {
                        return Ok(None);
                    };
                    let grants = r.grants_for(&request.cpr, &request.requester_id)?;
                    Ok(Some(((request.cpr, request.requester_id), grants)))
                })
                .await
                .map(|g| (None, g))
            }
        };
        let mut guard = mirror.write().unwrap_or_else(|e| e.into_inner());
        match (refreshed, guard.as_mut()) {
            (Ok((consents, grants)), Some(m)) => {
                if let Some((cpr, c)) = consents {
                    m.consents.insert(cpr, c);
                }
                if let Some((key, g)) = grants {
                    m.grants.insert(key, g);
                }
            }
            (Ok(_), None) => {}
            (Err(e), _) => {
                tracing::error!(error = %e, "registry mirror cannot be refreshed; reading the store from now on");
                *guard = None;
            }
        }
    }

    /// Reads the registry in PostgreSQL at `url`, creating the schema if it is missing. The
    /// connection is made on a thread of its own, so this may be called from async code (it
    /// blocks until connected).
    pub fn postgres(url: &str, keys: Arc<crate::AtRestKeys>) -> Result<Registry, AuditError> {
        let url = url.to_owned();
        let connect = {
            let url = url.clone();
            let keys = Arc::clone(&keys);
            move || crate::store::postgres::PostgresReader::connect(&url, true, keys)
        };
        let first = std::thread::Builder::new()
            .name("samblik-registry-connect".into())
            .spawn(connect)
            .map_err(|e| AuditError::Store(format!("cannot start a thread: {e}")))?
            .join()
            .map_err(|_| AuditError::Store("the registry connection panicked".into()))??;
        Ok(Self::with_opener(
            Box::new(first),
            move || {
                Ok(Box::new(crate::store::postgres::PostgresReader::connect(
                    &url,
                    false,
                    Arc::clone(&keys),
                )?) as _)
            },
            DEFAULT_READERS,
        ))
    }

    /// A registry over readers made by `open` (always called on a blocking thread), at most
    /// `max_readers` at once, starting with `first`.
    pub fn with_opener(
        first: Box<dyn RegistryReader>,
        open: impl Fn() -> Result<Box<dyn RegistryReader>, AuditError> + Send + Sync + 'static,
        max_readers: usize,
    ) -> Registry {
        Registry {
            pool: Arc::new(Pool {
                idle: Mutex::new(vec![first]),
                open: Box::new(open),
                permits: Arc::new(tokio::sync::Semaphore::new(max_readers.max(1))),
            }),
            mirror: None,
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn RegistryReader) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let permit = Arc::clone(&self.pool.permits)
            .acquire_owned()
            .await
            .map_err(|_| AuditError::Stopped)?;
        let pool = Arc::clone(&self.pool);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut reader = match idle {
                Some(reader) => reader,
                None => (pool.open)()?,
            };
            let result = f(&mut *reader);
            // A reader that failed may have lost its connection: let it go, open a new one next.
            if result.is_ok() {
                pool.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(reader);
            }
            result
        })
        .await
        .map_err(|e| AuditError::Store(format!("a registry read failed: {e}")))?
    }

    /// See [`RegistryReader::consents_for`].
    pub async fn consents_for(&self, cpr: &Cpr) -> Result<Vec<Consent>, AuditError> {
        if let Some(c) = self.mirrored(|m| m.consents.get(cpr).cloned().unwrap_or_default()) {
            return Ok(c);
        }
        let cpr = cpr.clone();
        self.read(move |r| r.consents_for(&cpr)).await
    }

    pub async fn consent(&self, id: &str) -> Result<Option<Consent>, AuditError> {
        let id = id.to_owned();
        self.read(move |r| r.consent(&id)).await
    }

    /// See [`RegistryReader::grants_for`].
    pub async fn grants_for(
        &self,
        cpr: &Cpr,
        caller_id: &str,
    ) -> Result<Vec<AccessRequest>, AuditError> {
        let key = (cpr.clone(), caller_id.to_owned());
        if let Some(g) = self.mirrored(|m| m.grants.get(&key).cloned().unwrap_or_default()) {
            return Ok(g);
        }
        let (cpr, caller_id) = key;
        self.read(move |r| r.grants_for(&cpr, &caller_id)).await
    }

    /// See [`RegistryReader::requests`].
    pub async fn requests(
        &self,
        filter: RequestFilter,
        limit: usize,
    ) -> Result<Vec<AccessRequest>, AuditError> {
        self.read(move |r| r.requests(&filter, limit)).await
    }

    pub async fn request(&self, id: &str) -> Result<Option<AccessRequest>, AuditError> {
        let id = id.to_owned();
        self.read(move |r| r.request(&id)).await
    }

    /// See [`RegistryReader::search`]; never mirrored.
    pub async fn search(
        &self,
        query: crate::search::AuditQuery,
        limit: usize,
    ) -> Result<Vec<crate::AuditRecord>, AuditError> {
        self.read(move |r| r.search(&query, limit)).await
    }

    /// See [`RegistryReader::activity`].
    pub async fn activity(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        callers: Vec<String>,
    ) -> Result<Vec<crate::search::Activity>, AuditError> {
        self.read(move |r| r.activity(from, until, &callers)).await
    }
}
