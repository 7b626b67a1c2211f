//! The registry's model: citizens' consents, their access requests (an approved request is a
//! grant) and the changes made to them, with the rules each must satisfy. Nothing here reads or
//! writes a store; both stores and the gateway use it.
//!
//! Where the registry is kept: `docs/audit-store.md`.

use chrono::{DateTime, Utc};
use samblik_cpr::Cpr;
use serde::{Deserialize, Serialize};

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
    pub cpr: Cpr,
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
    pub cpr: Cpr,
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
        cpr: Cpr,
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
    pub fn cpr(&self) -> Option<&Cpr> {
        match self {
            RegistryChange::RecordConsent(c) => Some(&c.cpr),
            RegistryChange::WithdrawConsent { cpr, .. } => Some(cpr),
            RegistryChange::FileRequest(r) => Some(&r.cpr),
            RegistryChange::DecideRequest { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    // Through `crate::`: the layers check (tests/tests/e2e/layers.rs) reads a `super::` in a
    // nested module's file as its parent's.
    use crate::registry::model::*;
    use chrono::TimeZone;

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap()
    }

    fn permit() -> Consent {
        Consent {
            id: "c-1".into(),
            cpr: Cpr::parse("0101901235").unwrap(),
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
            cpr: Cpr::parse("0101901235").unwrap(),
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
}
