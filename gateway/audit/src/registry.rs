//! The consent / access-request / grant registry. It lives in the audit store, and every change
//! is written by the audit writer in the same transaction as the audit record that describes it
//! ([`crate::AuditLog::change`]), so the registry never holds a change the log does not.
//!
//! Reads go through [`Registry`]: no cache, every read asks the store, so a withdrawn consent is
//! invisible to the very next lookup, on every replica.

use crate::AuditError;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// A permit, or a negative consent ("never share X with Y") that overrides every permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentKind {
    Permit,
    Refuse,
}

/// With whom a consent shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipients {
    Departments(Vec<String>),
    /// Any department where the citizen has a case.
    AnyWithCase,
}

/// A citizen's recorded consent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// `c-` + a UUID, assigned by the gateway before recording.
    pub id: String,
    pub cpr: String,
    pub kind: ConsentKind,
    /// Whose data may (not) be shared; never empty.
    pub from_departments: Vec<String>,
    pub to: Recipients,
    /// 1..=3 for a permit, 0 for a refusal.
    pub max_tier: u8,
    /// Purpose codes; empty only for a refusal, meaning every purpose.
    pub purposes: Vec<String>,
    pub valid_from: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
    /// The caller who recorded it.
    pub recorded_by: String,
    pub recorded_at: DateTime<Utc>,
    /// Where the signed consent document is kept.
    pub document_ref: String,
    pub withdrawn_at: Option<DateTime<Utc>>,
    pub withdrawn_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
}

/// A request to the owning department for more than consent and statute give. An approved
/// request is a grant; the grant's id is the request's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// `ar-` + a UUID.
    pub id: String,
    pub cpr: String,
    pub requester_id: String,
    pub requester_name: String,
    pub requester_department: String,
    pub source_id: String,
    pub owner_department: String,
    pub case_id: String,
    pub tier_wanted: u8,
    pub purpose: String,
    pub justification: String,
    pub filed_at: DateTime<Utc>,
    pub state: RequestState,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_reason: Option<String>,
    pub granted_tier: Option<u8>,
    pub granted_until: Option<DateTime<Utc>>,
}

/// A change to the registry, applied by [`crate::AuditLog::change`] and recorded in its audit
/// record's `change`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RegistryChange {
    RecordConsent(Consent),
    /// Matches on both `id` and `cpr`.
    WithdrawConsent {
        id: String,
        cpr: String,
        by: String,
        at: DateTime<Utc>,
    },
    FileRequest(AccessRequest),
    /// Only someone of the request's owning department may decide, and only once. An approval
    /// needs a tier (1..=3) and an end (after `at`); a denial ignores both.
    DecideRequest {
        id: String,
        by: String,
        by_department: String,
        approve: bool,
        tier: Option<u8>,
        until: Option<DateTime<Utc>>,
        reason: String,
        at: DateTime<Utc>,
    },
}

/// What a change did. Every outcome is audited; only `Applied` changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeOutcome {
    Applied,
    /// No such consent (for this CPR) or request.
    NotFound,
    /// The consent is already withdrawn, the request already decided, or the id already taken.
    AlreadyDone,
    /// The decider is not of the request's owning department.
    WrongDepartment,
    /// The change does not validate (see [`RegistryChange::validate`]).
    Invalid,
}

impl ChangeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOutcome::Applied => "applied",
            ChangeOutcome::NotFound => "not-found",
            ChangeOutcome::AlreadyDone => "already-done",
            ChangeOutcome::WrongDepartment => "wrong-department",
            ChangeOutcome::Invalid => "invalid",
        }
    }

    /// The refusal's reason in the change's record, as the gateway's refusal of the call names
    /// it (its `ErrorInfo` reason); `None` for a change that was made.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            ChangeOutcome::Applied => None,
            ChangeOutcome::NotFound => Some("ITEM_NOT_FOUND"),
            ChangeOutcome::AlreadyDone => Some("ALREADY_DONE"),
            ChangeOutcome::WrongDepartment => Some("WRONG_DEPARTMENT"),
            ChangeOutcome::Invalid => Some("FIELD_INVALID"),
        }
    }
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(RequestState::Pending),
            "approved" => Some(RequestState::Approved),
            "denied" => Some(RequestState::Denied),
            _ => None,
        }
    }
}

impl ConsentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentKind::Permit => "permit",
            ConsentKind::Refuse => "refuse",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "permit" => Some(ConsentKind::Permit),
            "refuse" => Some(ConsentKind::Refuse),
            _ => None,
        }
    }
}

fn is_cpr(cpr: &str) -> bool {
    cpr.len() == 10 && cpr.bytes().all(|b| b.is_ascii_digit())
}

impl Consent {
    /// Not withdrawn, and `at` within `[valid_from, valid_until)`.
    pub fn is_active(&self, at: DateTime<Utc>) -> bool {
        self.withdrawn_at.is_none()
            && self.valid_from <= at
            && self.valid_until.is_none_or(|until| at < until)
    }

    /// Whether this consent, active at `at`, speaks to sharing `from_department`'s data with
    /// `to_department` for `purpose`. For a refusal that means it forbids it (a refusal without
    /// purposes covers every purpose); the tier is the caller's to apply (`max_tier`).
    pub fn covers(
        &self,
        from_department: &str,
        to_department: &str,
        purpose: &str,
        to_has_case: bool,
        at: DateTime<Utc>,
    ) -> bool {
        let from = self.from_departments.iter().any(|d| d == from_department);
        let to = match &self.to {
            Recipients::Departments(departments) => departments.iter().any(|d| d == to_department),
            Recipients::AnyWithCase => to_has_case,
        };
        let purpose = match self.kind {
            ConsentKind::Refuse if self.purposes.is_empty() => true,
            _ => self.purposes.iter().any(|p| p == purpose),
        };
        self.is_active(at) && from && to && purpose
    }

    /// Checks what a recorded consent must satisfy. The message never holds the CPR.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("consent id is empty".into());
        }
        if !is_cpr(&self.cpr) {
            return Err("cpr must be 10 digits".into());
        }
        if self.from_departments.is_empty() || self.from_departments.iter().any(String::is_empty) {
            return Err("from_departments must name at least one department".into());
        }
        if let Recipients::Departments(to) = &self.to
            && (to.is_empty() || to.iter().any(String::is_empty))
        {
            return Err("to must name at least one department".into());
        }
        match self.kind {
            ConsentKind::Permit => {
                if !(1..=3).contains(&self.max_tier) {
                    return Err("a permit's max_tier must be 1, 2 or 3".into());
                }
                if self.purposes.is_empty() {
                    return Err("a permit must name at least one purpose".into());
                }
            }
            ConsentKind::Refuse => {
                if self.max_tier != 0 {
                    return Err("a refusal's max_tier must be 0".into());
                }
            }
        }
        if self.purposes.iter().any(String::is_empty) {
            return Err("a purpose is empty".into());
        }
        if let Some(until) = self.valid_until
            && until <= self.valid_from
        {
            return Err("valid_until must be after valid_from".into());
        }
        if self.document_ref.trim().is_empty() {
            return Err("document_ref is empty".into());
        }
        if self.recorded_by.is_empty() {
            return Err("recorded_by is empty".into());
        }
        if self.withdrawn_at.is_some() || self.withdrawn_by.is_some() {
            return Err("a new consent cannot be withdrawn already".into());
        }
        Ok(())
    }
}

impl AccessRequest {
    /// Approved, and `at` before the grant's end.
    pub fn grant_active(&self, at: DateTime<Utc>) -> bool {
        self.state == RequestState::Approved
            && self.granted_tier.is_some_and(|t| t > 0)
            && self.granted_until.is_some_and(|until| at < until)
    }

    /// Checks what a newly filed request must satisfy. The message never holds the CPR.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("request id is empty".into());
        }
        if !is_cpr(&self.cpr) {
            return Err("cpr must be 10 digits".into());
        }
        for (name, value) in [
            ("requester_id", &self.requester_id),
            ("requester_department", &self.requester_department),
            ("source_id", &self.source_id),
            ("owner_department", &self.owner_department),
            ("case_id", &self.case_id),
            ("purpose", &self.purpose),
        ] {
            if value.is_empty() {
                return Err(format!("{name} is empty"));
            }
        }
        if self.justification.trim().is_empty() {
            return Err("justification is empty".into());
        }
        if !(1..=3).contains(&self.tier_wanted) {
            return Err("tier_wanted must be 1, 2 or 3".into());
        }
        if self.state != RequestState::Pending
            || self.decided_by.is_some()
            || self.decided_at.is_some()
            || self.decision_reason.is_some()
            || self.granted_tier.is_some()
            || self.granted_until.is_some()
        {
            return Err("a new request must be pending and undecided".into());
        }
        Ok(())
    }
}

impl RegistryChange {
    /// Checks the change on its own, before the store is asked.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            RegistryChange::RecordConsent(consent) => consent.validate(),
            RegistryChange::FileRequest(request) => request.validate(),
            RegistryChange::WithdrawConsent { id, by, .. } => {
                if id.is_empty() || by.is_empty() {
                    return Err("id and by must be set".into());
                }
                Ok(())
            }
            RegistryChange::DecideRequest {
                id,
                by,
                by_department,
                approve,
                tier,
                until,
                reason,
                at,
            } => {
                if id.is_empty() || by.is_empty() || by_department.is_empty() {
                    return Err("id, by and by_department must be set".into());
                }
                if reason.trim().is_empty() {
                    return Err("a decision needs a reason".into());
                }
                if *approve {
                    if !tier.is_some_and(|t| (1..=3).contains(&t)) {
                        return Err("an approval's tier must be 1, 2 or 3".into());
                    }
                    if !until.is_some_and(|u| u > *at) {
                        return Err("an approval needs an end after the decision".into());
                    }
                }
                Ok(())
            }
        }
    }

    /// The CPR the change concerns, for the audit record's indexed column.
    pub fn cpr(&self) -> Option<&str> {
        match self {
            RegistryChange::RecordConsent(c) => Some(&c.cpr),
            RegistryChange::WithdrawConsent { cpr, .. } => Some(cpr),
            RegistryChange::FileRequest(r) => Some(&r.cpr),
            RegistryChange::DecideRequest { .. } => None,
        }
    }
}

/// Times as stored: RFC 3339 UTC with nanoseconds, fixed width, so text order is time order and
/// a value reads back exactly.
pub(crate) fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, AuditError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| AuditError::Store(format!("bad time in the registry: {e}")))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    // Vectors of strings and plain enums always serialise.
    serde_json::to_string(value).unwrap_or_default()
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, AuditError> {
    serde_json::from_str(text)
        .map_err(|e| AuditError::Store(format!("bad value in the registry: {e}")))
}

/// The stored columns of a consent, in the order of [`CONSENT_COLUMNS`]. Lists and recipients
/// are JSON text; times are [`time_text`].
pub(crate) const CONSENT_COLUMNS: &str = "id, cpr, kind, from_departments, recipients, max_tier, \
     purposes, valid_from, valid_until, recorded_by, recorded_at, document_ref, withdrawn_at, \
     withdrawn_by";

/// A consent as stored: the same fields in storable types, shared by both backends.
#[derive(Debug)]
pub(crate) struct ConsentRow {
    pub id: String,
    pub cpr: String,
    pub kind: String,
    pub from_departments: String,
    pub recipients: String,
    pub max_tier: i16,
    pub purposes: String,
    pub valid_from: String,
    pub valid_until: Option<String>,
    pub recorded_by: String,
    pub recorded_at: String,
    pub document_ref: String,
    pub withdrawn_at: Option<String>,
    pub withdrawn_by: Option<String>,
}

impl ConsentRow {
    pub fn from_consent(c: &Consent) -> Self {
        ConsentRow {
            id: c.id.clone(),
            cpr: c.cpr.clone(),
            kind: c.kind.as_str().to_owned(),
            from_departments: to_json(&c.from_departments),
            recipients: to_json(&c.to),
            max_tier: i16::from(c.max_tier),
            purposes: to_json(&c.purposes),
            valid_from: time_text(c.valid_from),
            valid_until: c.valid_until.map(time_text),
            recorded_by: c.recorded_by.clone(),
            recorded_at: time_text(c.recorded_at),
            document_ref: c.document_ref.clone(),
            withdrawn_at: c.withdrawn_at.map(time_text),
            withdrawn_by: c.withdrawn_by.clone(),
        }
    }

    pub fn into_consent(self) -> Result<Consent, AuditError> {
        Ok(Consent {
            id: self.id,
            cpr: self.cpr,
            kind: ConsentKind::parse(&self.kind)
                .ok_or_else(|| AuditError::Store("bad consent kind in the registry".into()))?,
            from_departments: from_json(&self.from_departments)?,
            to: from_json(&self.recipients)?,
            max_tier: tier(self.max_tier)?,
            purposes: from_json(&self.purposes)?,
            valid_from: parse_time(&self.valid_from)?,
            valid_until: self.valid_until.as_deref().map(parse_time).transpose()?,
            recorded_by: self.recorded_by,
            recorded_at: parse_time(&self.recorded_at)?,
            document_ref: self.document_ref,
            withdrawn_at: self.withdrawn_at.as_deref().map(parse_time).transpose()?,
            withdrawn_by: self.withdrawn_by,
        })
    }
}

/// The stored columns of an access request, in the order of [`RequestRow`].
pub(crate) const REQUEST_COLUMNS: &str = "id, cpr, requester_id, requester_name, \
     requester_department, source_id, owner_department, case_id, tier_wanted, purpose, \
     justification, filed_at, state, decided_by, decided_at, decision_reason, granted_tier, \
     granted_until";

#[derive(Debug)]
pub(crate) struct RequestRow {
    pub id: String,
    pub cpr: String,
    pub requester_id: String,
    pub requester_name: String,
    pub requester_department: String,
    pub source_id: String,
    pub owner_department: String,
    pub case_id: String,
    pub tier_wanted: i16,
    pub purpose: String,
    pub justification: String,
    pub filed_at: String,
    pub state: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub decision_reason: Option<String>,
    pub granted_tier: Option<i16>,
    pub granted_until: Option<String>,
}

impl RequestRow {
    pub fn from_request(r: &AccessRequest) -> Self {
        RequestRow {
            id: r.id.clone(),
            cpr: r.cpr.clone(),
            requester_id: r.requester_id.clone(),
            requester_name: r.requester_name.clone(),
            requester_department: r.requester_department.clone(),
            source_id: r.source_id.clone(),
            owner_department: r.owner_department.clone(),
            case_id: r.case_id.clone(),
            tier_wanted: i16::from(r.tier_wanted),
            purpose: r.purpose.clone(),
            justification: r.justification.clone(),
            filed_at: time_text(r.filed_at),
            state: r.state.as_str().to_owned(),
            decided_by: r.decided_by.clone(),
            decided_at: r.decided_at.map(time_text),
            decision_reason: r.decision_reason.clone(),
            granted_tier: r.granted_tier.map(i16::from),
            granted_until: r.granted_until.map(time_text),
        }
    }

    pub fn into_request(self) -> Result<AccessRequest, AuditError> {
        Ok(AccessRequest {
            id: self.id,
            cpr: self.cpr,
            requester_id: self.requester_id,
            requester_name: self.requester_name,
            requester_department: self.requester_department,
            source_id: self.source_id,
            owner_department: self.owner_department,
            case_id: self.case_id,
            tier_wanted: tier(self.tier_wanted)?,
            purpose: self.purpose,
            justification: self.justification,
            filed_at: parse_time(&self.filed_at)?,
            state: RequestState::parse(&self.state)
                .ok_or_else(|| AuditError::Store("bad request state in the registry".into()))?,
            decided_by: self.decided_by,
            decided_at: self.decided_at.as_deref().map(parse_time).transpose()?,
            decision_reason: self.decision_reason,
            granted_tier: self.granted_tier.map(tier).transpose()?,
            granted_until: self.granted_until.as_deref().map(parse_time).transpose()?,
        })
    }
}

fn tier(stored: i16) -> Result<u8, AuditError> {
    u8::try_from(stored).map_err(|_| AuditError::Store("bad tier in the registry".into()))
}

/// What the store found when a conditional change touched no row, to tell the outcomes apart.
pub(crate) fn decide_refusal(
    found: Option<(String, String)>,
    by_department: &str,
) -> ChangeOutcome {
    match found {
        None => ChangeOutcome::NotFound,
        // An outsider learns nothing about the request's state.
        Some((_, owner)) if owner != by_department => ChangeOutcome::WrongDepartment,
        Some(_) => ChangeOutcome::AlreadyDone,
    }
}

/// Filters for [`RegistryReader::requests`]; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    pub owner_department: Option<String>,
    pub requester_id: Option<String>,
    pub state: Option<RequestState>,
    pub cpr: Option<String>,
}

/// Blocking reads of the registry, on a connection of their own. Never call these on an async
/// runtime's thread; [`Registry`] runs them on blocking threads.
pub trait RegistryReader: Send + 'static {
    /// Every consent of `cpr`, withdrawn and expired ones too, newest first.
    fn consents_for(&mut self, cpr: &str) -> Result<Vec<Consent>, AuditError>;
    fn consent(&mut self, id: &str) -> Result<Option<Consent>, AuditError>;
    /// The approved requests `caller_id` filed about `cpr` (whether or not still active), newest
    /// decision first.
    fn grants_for(&mut self, cpr: &str, caller_id: &str) -> Result<Vec<AccessRequest>, AuditError>;
    /// Up to `limit` requests matching `filter`, newest first.
    fn requests(
        &mut self,
        filter: &RequestFilter,
        limit: usize,
    ) -> Result<Vec<AccessRequest>, AuditError>;
    fn request(&mut self, id: &str) -> Result<Option<AccessRequest>, AuditError>;
    /// Up to `limit` audit records matching `query`, newest first, each checked against its
    /// hash.
    fn search(
        &mut self,
        query: &crate::search::AuditQuery,
        limit: usize,
    ) -> Result<Vec<crate::AuditRecord>, AuditError>;
    /// The lookups made from `from` until `until` (by `callers` only, unless empty), oldest
    /// first.
    fn activity(
        &mut self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        callers: &[String],
    ) -> Result<Vec<crate::search::Activity>, AuditError>;
}

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
    consents: std::collections::HashMap<String, Vec<Consent>>,
    /// Per (CPR, requester), approved requests (as [`RegistryReader::grants_for`]).
    grants: std::collections::HashMap<(String, String), Vec<AccessRequest>>,
}

impl Registry {
    /// Reads the registry in the SQLite file at `path`, creating the schema if it is missing.
    /// The consents and grants are loaded into memory and kept exact by [`Registry::refresh`];
    /// the file must be owned by this one gateway process (several replicas share PostgreSQL).
    pub fn sqlite(path: &std::path::Path) -> Result<Registry, AuditError> {
        let path = path.to_owned();
        let mut first = crate::sqlite::SqliteReader::open(&path, true)?;
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
            move || Ok(Box::new(crate::sqlite::SqliteReader::open(&path, false)?) as _),
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
    pub fn postgres(url: &str) -> Result<Registry, AuditError> {
        let url = url.to_owned();
        let connect = {
            let url = url.clone();
            move || crate::postgres::PostgresReader::connect(&url, true)
        };
        let first = std::thread::Builder::new()
            .name("samblik-registry-connect".into())
            .spawn(connect)
            .map_err(|e| AuditError::Store(format!("cannot start a thread: {e}")))?
            .join()
            .map_err(|_| AuditError::Store("the registry connection panicked".into()))??;
        Ok(Self::with_opener(
            Box::new(first),
            move || Ok(Box::new(crate::postgres::PostgresReader::connect(&url, false)?) as _),
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
    pub async fn consents_for(&self, cpr: &str) -> Result<Vec<Consent>, AuditError> {
        if let Some(c) = self.mirrored(|m| m.consents.get(cpr).cloned().unwrap_or_default()) {
            return Ok(c);
        }
        let cpr = cpr.to_owned();
        self.read(move |r| r.consents_for(&cpr)).await
    }

    pub async fn consent(&self, id: &str) -> Result<Option<Consent>, AuditError> {
        let id = id.to_owned();
        self.read(move |r| r.consent(&id)).await
    }

    /// See [`RegistryReader::grants_for`].
    pub async fn grants_for(
        &self,
        cpr: &str,
        caller_id: &str,
    ) -> Result<Vec<AccessRequest>, AuditError> {
        let key = (cpr.to_owned(), caller_id.to_owned());
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap()
    }

    fn permit() -> Consent {
        Consent {
            id: "c-1".into(),
            cpr: "0101901235".into(),
            kind: ConsentKind::Permit,
            from_departments: vec!["child-welfare".into()],
            to: Recipients::Departments(vec!["jobcenter".into()]),
            max_tier: 2,
            purposes: vec!["prepare-meeting".into()],
            valid_from: t(1),
            valid_until: Some(t(10)),
            recorded_by: "cw-1".into(),
            recorded_at: t(1),
            document_ref: "doc-1".into(),
            withdrawn_at: None,
            withdrawn_by: None,
        }
    }

    fn request() -> AccessRequest {
        AccessRequest {
            id: "ar-1".into(),
            cpr: "0101901235".into(),
            requester_id: "cw-1".into(),
            requester_name: "Test".into(),
            requester_department: "jobcenter".into(),
            source_id: "child-welfare".into(),
            owner_department: "child-welfare".into(),
            case_id: "BF-1".into(),
            tier_wanted: 2,
            purpose: "prepare-meeting".into(),
            justification: "joint meeting".into(),
            filed_at: t(1),
            state: RequestState::Pending,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            granted_tier: None,
            granted_until: None,
        }
    }

    #[test]
    fn a_consent_is_active_from_its_start_until_before_its_end_unless_withdrawn() {
        let c = permit();
        assert!(!c.is_active(t(1) - chrono::Duration::seconds(1)));
        assert!(c.is_active(t(1)));
        assert!(c.is_active(t(9)));
        assert!(!c.is_active(t(10)));
        let open = Consent {
            valid_until: None,
            ..permit()
        };
        assert!(open.is_active(t(28)));
        let withdrawn = Consent {
            withdrawn_at: Some(t(2)),
            withdrawn_by: Some("cw-1".into()),
            ..permit()
        };
        assert!(!withdrawn.is_active(t(3)));
    }

    #[test]
    fn a_permit_covers_only_its_departments_and_purposes() {
        let c = permit();
        assert!(c.covers("child-welfare", "jobcenter", "prepare-meeting", false, t(2)));
        assert!(!c.covers("integration", "jobcenter", "prepare-meeting", true, t(2)));
        assert!(!c.covers(
            "child-welfare",
            "integration",
            "prepare-meeting",
            true,
            t(2)
        ));
        assert!(!c.covers("child-welfare", "jobcenter", "draft-plan", true, t(2)));
        assert!(!c.covers("child-welfare", "jobcenter", "prepare-meeting", true, t(11)));
        let any = Consent {
            to: Recipients::AnyWithCase,
            ..permit()
        };
        assert!(any.covers(
            "child-welfare",
            "integration",
            "prepare-meeting",
            true,
            t(2)
        ));
        assert!(!any.covers(
            "child-welfare",
            "integration",
            "prepare-meeting",
            false,
            t(2)
        ));
    }

    #[test]
    fn a_refusal_without_purposes_covers_every_purpose() {
        let refuse = Consent {
            kind: ConsentKind::Refuse,
            max_tier: 0,
            purposes: vec![],
            ..permit()
        };
        assert_eq!(refuse.validate(), Ok(()));
        assert!(refuse.covers("child-welfare", "jobcenter", "anything", false, t(2)));
        assert!(!refuse.covers("child-welfare", "integration", "anything", false, t(2)));
        let narrow = Consent {
            purposes: vec!["draft-plan".into()],
            ..refuse
        };
        assert!(narrow.covers("child-welfare", "jobcenter", "draft-plan", false, t(2)));
        assert!(!narrow.covers("child-welfare", "jobcenter", "prepare-meeting", false, t(2)));
    }

    #[test]
    fn invalid_consents_are_refused() {
        assert_eq!(permit().validate(), Ok(()));
        let bad = [
            Consent {
                cpr: "010190123".into(),
                ..permit()
            },
            Consent {
                cpr: "01019O1235".into(),
                ..permit()
            },
            Consent {
                from_departments: vec![],
                ..permit()
            },
            Consent {
                to: Recipients::Departments(vec![]),
                ..permit()
            },
            Consent {
                max_tier: 0,
                ..permit()
            },
            Consent {
                max_tier: 4,
                ..permit()
            },
            Consent {
                purposes: vec![],
                ..permit()
            },
            Consent {
                valid_until: Some(t(1)),
                ..permit()
            },
            Consent {
                document_ref: " ".into(),
                ..permit()
            },
            Consent {
                kind: ConsentKind::Refuse,
                max_tier: 2,
                ..permit()
            },
        ];
        for c in bad {
            let err = c.validate().unwrap_err();
            assert!(!err.contains("0101"), "the message holds no CPR: {err}");
        }
    }

    #[test]
    fn requests_validate_and_grants_are_active_until_their_end() {
        assert_eq!(request().validate(), Ok(()));
        for bad in [
            AccessRequest {
                tier_wanted: 0,
                ..request()
            },
            AccessRequest {
                justification: "".into(),
                ..request()
            },
            AccessRequest {
                cpr: "12".into(),
                ..request()
            },
            AccessRequest {
                state: RequestState::Approved,
                ..request()
            },
        ] {
            assert!(bad.validate().is_err());
        }
        assert!(!request().grant_active(t(2)));
        let granted = AccessRequest {
            state: RequestState::Approved,
            granted_tier: Some(2),
            granted_until: Some(t(5)),
            ..request()
        };
        assert!(granted.grant_active(t(4)));
        assert!(!granted.grant_active(t(5)));
        let denied = AccessRequest {
            state: RequestState::Denied,
            ..granted
        };
        assert!(!denied.grant_active(t(4)));
    }

    #[test]
    fn an_approval_needs_a_tier_and_an_end() {
        let decide = |tier, until| RegistryChange::DecideRequest {
            id: "ar-1".into(),
            by: "cw-2".into(),
            by_department: "child-welfare".into(),
            approve: true,
            tier,
            until,
            reason: "necessary".into(),
            at: t(2),
        };
        assert_eq!(decide(Some(2), Some(t(5))).validate(), Ok(()));
        assert!(decide(None, Some(t(5))).validate().is_err());
        assert!(decide(Some(4), Some(t(5))).validate().is_err());
        assert!(decide(Some(2), None).validate().is_err());
        assert!(decide(Some(2), Some(t(2))).validate().is_err());
    }

    #[test]
    fn stored_times_read_back_exactly_and_sort_as_text() {
        let now = Utc::now();
        assert_eq!(parse_time(&time_text(now)).unwrap(), now);
        assert!(time_text(t(2)) < time_text(t(10)));
        assert!(time_text(t(2)) < time_text(t(2) + chrono::Duration::nanoseconds(1)));
    }
}
