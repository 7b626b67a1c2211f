//! The registry as both stores keep it: a consent or an access request as a row of storable
//! columns (lists as JSON, times as fixed-width text), and what a conditional change that
//! touched no row found.
//!
//! Where the registry is kept: `docs/audit-store.md`.

use crate::AuditError;
use crate::registry::model::{AccessRequest, ChangeOutcome, Consent, ConsentKind, RequestState};
use chrono::{DateTime, SecondsFormat, Utc};
use samblik_cpr::Cpr;
use serde::Serialize;

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

/// A stored CPR column read back; the error does not repeat it.
pub(crate) fn parse_cpr(text: &str) -> Result<Cpr, AuditError> {
    Cpr::parse(text).map_err(|e| AuditError::Store(format!("bad CPR in the registry: {e}")))
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

/// A consent as stored: the same fields in storable types, shared by both backends. No `Debug`:
/// it holds the CPR as text.
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
            cpr: c.cpr.as_str().to_owned(),
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
            cpr: parse_cpr(&self.cpr)?,
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

/// An access request as stored; no `Debug`, like [`ConsentRow`].
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
            cpr: r.cpr.as_str().to_owned(),
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
            cpr: parse_cpr(&self.cpr)?,
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

#[cfg(test)]
mod tests {
    // Through `crate::`: the layers check (tests/tests/e2e/layers.rs) reads a `super::` in a
    // nested module's file as its parent's.
    use crate::registry::rows::{parse_time, time_text};
    use chrono::{DateTime, TimeZone, Utc};

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap()
    }

    #[test]
    fn stored_times_read_back_exactly_and_sort_as_text() {
        let now = Utc::now();
        assert_eq!(parse_time(&time_text(now)).unwrap(), now);
        assert!(time_text(t(2)) < time_text(t(10)));
        assert!(time_text(t(2)) < time_text(t(2) + chrono::Duration::nanoseconds(1)));
    }
}
