//! The reads each store answers, for the registry and for the log's searches, on a connection of
//! its own.

use crate::AuditError;
use crate::registry::model::{AccessRequest, Consent, RequestState};
use chrono::{DateTime, Utc};
use samblik_cpr::Cpr;

/// Filters for [`RegistryReader::requests`]; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    pub owner_department: Option<String>,
    pub requester_id: Option<String>,
    pub state: Option<RequestState>,
    pub cpr: Option<Cpr>,
}

/// Blocking reads of the registry, on a connection of their own. Never call these on an async
/// runtime's thread; [`Registry`](crate::registry::Registry) runs them on blocking threads.
pub trait RegistryReader: Send + 'static {
    /// Every consent of `cpr`, withdrawn and expired ones too, newest first.
    fn consents_for(&mut self, cpr: &Cpr) -> Result<Vec<Consent>, AuditError>;
    fn consent(&mut self, id: &str) -> Result<Option<Consent>, AuditError>;
    /// The approved requests `caller_id` filed about `cpr` (whether or not still active), newest
    /// decision first.
    fn grants_for(&mut self, cpr: &Cpr, caller_id: &str) -> Result<Vec<AccessRequest>, AuditError>;
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
