//! The registry as both stores keep it: a consent or an access request as a row of storable
//! columns (lists as JSON, times as fixed-width text), the citizen as a keyed hash and what
//! could name them sealed ([`crate::atrest`]), and what a conditional change that touched no
//! row found.
//!
//! Where the registry is kept: `docs/audit-store.md`.

use crate::AuditError;
use crate::atrest::{AtRestKeys, Sealed};
use crate::registry::model::{AccessRequest, ChangeOutcome, Consent, ConsentKind, RequestState};
use chrono::{DateTime, SecondsFormat, Utc};
use samblik_cpr::Cpr;
use serde::{Deserialize, Serialize};

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

/// A stored CPR read back; the error does not repeat it.
pub(crate) fn parse_cpr(text: &str) -> Result<Cpr, AuditError> {
    Cpr::parse(text).map_err(|e| AuditError::Store(format!("bad CPR in the registry: {e}")))
}

/// Seals `value` for a row's `sealed` column.
fn seal<T: Serialize>(keys: &AtRestKeys, place: Sealed, value: &T) -> Result<String, AuditError> {
    keys.seal_text(place, &to_json(value))
}

/// Opens a row's `sealed` column and holds it to the row's `cpr` index column: a row whose
/// contents were moved to another citizen's row does not read.
fn open<T: serde::de::DeserializeOwned>(
    keys: &AtRestKeys,
    place: Sealed,
    sealed: &str,
    index: &str,
    cpr_of: impl Fn(&T) -> &str,
) -> Result<(T, Cpr), AuditError> {
    let text = keys
        .open_text(place, sealed)
        .map_err(|why| AuditError::Store(format!("a registry row does not open: {why}")))?;
    let value: T = from_json(&text)?;
    let cpr = parse_cpr(cpr_of(&value))?;
    if keys.index(&cpr) != index {
        return Err(AuditError::Store(
            "a registry row's citizen differs from its index column".into(),
        ));
    }
    Ok((value, cpr))
}

/// What a consent's `sealed` column holds.
#[derive(Serialize, Deserialize)]
struct ConsentSealed {
    cpr: String,
    document_ref: String,
}

/// What an access request's `sealed` column holds.
#[derive(Serialize, Deserialize)]
struct RequestSealed {
    cpr: String,
    case_id: String,
    justification: String,
}

/// A decision's reason as its column holds it: sealed (it is free text).
pub(crate) fn seal_reason(
    keys: &AtRestKeys,
    reason: Option<&str>,
) -> Result<Option<String>, AuditError> {
    reason
        .map(|r| keys.seal_text(Sealed::DecisionReason, r))
        .transpose()
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
pub(crate) const CONSENT_COLUMNS: &str = "id, cpr, sealed, kind, from_departments, recipients, \
     max_tier, purposes, valid_from, valid_until, recorded_by, recorded_at, withdrawn_at, \
     withdrawn_by";

/// A consent as stored: the same fields in storable types, shared by both backends; `cpr` is the
/// citizen's keyed hash, and `sealed` holds the CPR and the document reference.
pub(crate) struct ConsentRow {
    pub id: String,
    pub cpr: String,
    pub sealed: String,
    pub kind: String,
    pub from_departments: String,
    pub recipients: String,
    pub max_tier: i16,
    pub purposes: String,
    pub valid_from: String,
    pub valid_until: Option<String>,
    pub recorded_by: String,
    pub recorded_at: String,
    pub withdrawn_at: Option<String>,
    pub withdrawn_by: Option<String>,
}

impl ConsentRow {
    pub fn from_consent(c: &Consent, keys: &AtRestKeys) -> Result<Self, AuditError> {
        let sealed = ConsentSealed {
            cpr: c.cpr.as_str().to_owned(),
            document_ref: c.document_ref.clone(),
        };
        Ok(ConsentRow {
            id: c.id.clone(),
            cpr: keys.index(&c.cpr),
            sealed: seal(keys, Sealed::Consent, &sealed)?,
            kind: c.kind.as_str().to_owned(),
            from_departments: to_json(&c.from_departments),
            recipients: to_json(&c.to),
            max_tier: i16::from(c.max_tier),
            purposes: to_json(&c.purposes),
            valid_from: time_text(c.valid_from),
            valid_until: c.valid_until.map(time_text),
            recorded_by: c.recorded_by.clone(),
            recorded_at: time_text(c.recorded_at),
            withdrawn_at: c.withdrawn_at.map(time_text),
            withdrawn_by: c.withdrawn_by.clone(),
        })
    }

    pub fn into_consent(self, keys: &AtRestKeys) -> Result<Consent, AuditError> {
        let (sealed, cpr) = open(
            keys,
            Sealed::Consent,
            &self.sealed,
            &self.cpr,
            |s: &ConsentSealed| &s.cpr,
        )?;
        Ok(Consent {
            id: self.id,
            cpr,
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
            document_ref: sealed.document_ref,
            withdrawn_at: self.withdrawn_at.as_deref().map(parse_time).transpose()?,
            withdrawn_by: self.withdrawn_by,
        })
    }
}

/// The stored columns of an access request, in the order of [`RequestRow`].
pub(crate) const REQUEST_COLUMNS: &str = "id, cpr, sealed, requester_id, requester_name, \
     requester_department, source_id, owner_department, tier_wanted, purpose, filed_at, state, \
     decided_by, decided_at, decision_reason, granted_tier, granted_until";

/// An access request as stored, like [`ConsentRow`]: `sealed` holds the CPR, the case id and the
/// justification; `decision_reason` is sealed on its own ([`seal_reason`]).
pub(crate) struct RequestRow {
    pub id: String,
    pub cpr: String,
    pub sealed: String,
    pub requester_id: String,
    pub requester_name: String,
    pub requester_department: String,
    pub source_id: String,
    pub owner_department: String,
    pub tier_wanted: i16,
    pub purpose: String,
    pub filed_at: String,
    pub state: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub decision_reason: Option<String>,
    pub granted_tier: Option<i16>,
    pub granted_until: Option<String>,
}

impl RequestRow {
    pub fn from_request(r: &AccessRequest, keys: &AtRestKeys) -> Result<Self, AuditError> {
        let sealed = RequestSealed {
            cpr: r.cpr.as_str().to_owned(),
            case_id: r.case_id.clone(),
            justification: r.justification.clone(),
        };
        Ok(RequestRow {
            id: r.id.clone(),
            cpr: keys.index(&r.cpr),
            sealed: seal(keys, Sealed::Request, &sealed)?,
            requester_id: r.requester_id.clone(),
            requester_name: r.requester_name.clone(),
            requester_department: r.requester_department.clone(),
            source_id: r.source_id.clone(),
            owner_department: r.owner_department.clone(),
            tier_wanted: i16::from(r.tier_wanted),
            purpose: r.purpose.clone(),
            filed_at: time_text(r.filed_at),
            state: r.state.as_str().to_owned(),
            decided_by: r.decided_by.clone(),
            decided_at: r.decided_at.map(time_text),
            decision_reason: seal_reason(keys, r.decision_reason.as_deref())?,
            granted_tier: r.granted_tier.map(i16::from),
            granted_until: r.granted_until.map(time_text),
        })
    }

    pub fn into_request(self, keys: &AtRestKeys) -> Result<AccessRequest, AuditError> {
        let (sealed, cpr) = open(
            keys,
            Sealed::Request,
            &self.sealed,
            &self.cpr,
            |s: &RequestSealed| &s.cpr,
        )?;
        let decision_reason = self
            .decision_reason
            .map(|r| {
                keys.open_text(Sealed::DecisionReason, &r).map_err(|why| {
                    AuditError::Store(format!("a decision reason does not open: {why}"))
                })
            })
            .transpose()?;
        Ok(AccessRequest {
            id: self.id,
            cpr,
            requester_id: self.requester_id,
            requester_name: self.requester_name,
            requester_department: self.requester_department,
            source_id: self.source_id,
            owner_department: self.owner_department,
            case_id: sealed.case_id,
            tier_wanted: tier(self.tier_wanted)?,
            purpose: self.purpose,
            justification: sealed.justification,
            filed_at: parse_time(&self.filed_at)?,
            state: RequestState::parse(&self.state)
                .ok_or_else(|| AuditError::Store("bad request state in the registry".into()))?,
            decided_by: self.decided_by,
            decided_at: self.decided_at.as_deref().map(parse_time).transpose()?,
            decision_reason,
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
