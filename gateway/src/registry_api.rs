//! `samblik.v1.ConsentService` and `samblik.v1.AccessRequestService`: the consent registry and
//! the owning department's necessity assessment. Every call is audited — a change in the same
//! transaction as its record, a refusal and a read as records of their own.

use crate::audit::AuditDraft;
use crate::auth::Caller;
use crate::context::Credentials;
use crate::error::{GatewayError, Reason};
use crate::lookup::{LookupPipeline, Principal};
use crate::rpc::{SpanKind, call};
use chrono::{DateTime, Utc};
use samblik_audit::Action;
use samblik_audit::registry::{
    self as reg, ChangeOutcome, ConsentKind, Recipients, RegistryChange, RequestFilter,
};
use samblik_proto::Cpr;
use samblik_proto::v1::access_request_service_server::AccessRequestService;
use samblik_proto::v1::consent_service_server::ConsentService;
use samblik_proto::v1::{
    self as pb, DecideAccessRequest, FileAccessRequest, ListAccessRequests,
    ListAccessRequestsResponse, ListConsentsRequest, ListConsentsResponse, Purpose,
    RecordConsentRequest, RequestView, WithdrawConsentRequest,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The shortest justification an access request is accepted with.
pub const MIN_JUSTIFICATION: usize = 20;
/// Most requests one list returns.
const LIST_LIMIT: usize = 500;
/// Roles that may record, withdraw and list a citizen's consents (with a relation to them), file
/// requests and decide them.
const CASEWORK_ROLES: &[&str] = &["caseworker", "department-leader"];

/// The registry APIs over the lookup pipeline's authenticator, audit log, policy and store.
#[derive(Debug, Clone)]
pub struct RegistryApi {
    pipeline: Arc<LookupPipeline>,
}

impl RegistryApi {
    pub fn new(pipeline: Arc<LookupPipeline>) -> Self {
        RegistryApi { pipeline }
    }

    async fn begin<T>(
        &self,
        request: &Request<T>,
        request_id: &str,
        action: Action,
        roles: &[&str],
    ) -> Result<(AuditDraft, Caller), GatewayError> {
        begin(&self.pipeline, request, request_id, action, roles).await
    }
}

/// Opens a call's audit draft and authenticates the caller, who must hold one of `roles`; a
/// refusal is recorded before it is returned.
pub(crate) async fn begin<T>(
    pipeline: &LookupPipeline,
    request: &Request<T>,
    request_id: &str,
    action: Action,
    roles: &[&str],
) -> Result<(AuditDraft, Caller), GatewayError> {
    let (draft, principal) = begin_as(pipeline, request, request_id, action, roles).await?;
    Ok((draft, principal.caller.as_ref().clone()))
}

/// [`begin`], answering with the whole principal: the caller and the system calling for them.
pub(crate) async fn begin_as<T>(
    pipeline: &LookupPipeline,
    request: &Request<T>,
    request_id: &str,
    action: Action,
    roles: &[&str],
) -> Result<(AuditDraft, Principal), GatewayError> {
    let credentials = Credentials::of(request);
    // The draft first: a caller who goes away while the identity provider's keys are fetched
    // is recorded as cancelled too.
    let mut draft = AuditDraft::for_request(
        Arc::clone(pipeline.audit_log()),
        request_id,
        action,
        pipeline.policy().version(),
        &credentials,
    );
    pipeline.auth().refresh_keys_for(credentials.metadata).await;
    let principal = match pipeline.authenticate(&credentials, &mut draft) {
        Ok(p) => p,
        Err(e) => {
            draft.refused(&e).await?;
            return Err(e);
        }
    };
    if !principal
        .caller
        .roles
        .iter()
        .any(|r| roles.contains(&r.as_str()))
    {
        let e = GatewayError::refused(
            Reason::RoleRequired,
            format!("this needs one of the roles {}", roles.join(", ")),
        );
        draft.refused(&e).await?;
        return Err(e);
    }
    Ok((draft, principal))
}

impl RegistryApi {
    /// Writes `change` with its audit record, then makes what the store now holds visible to
    /// the next lookup. The mirror is re-read whatever the outcome: a change whose fsync failed
    /// may still be in the store (and a withdrawn consent must not outlive its withdrawal in
    /// memory), and a retry of it finds it already done.
    async fn apply(
        &self,
        draft: AuditDraft,
        change: RegistryChange,
    ) -> Result<ChangeOutcome, GatewayError> {
        let outcome = draft.change(change.clone()).await;
        self.pipeline.registry().refresh(&change).await;
        outcome
    }

    /// A citizen's consents are their caseworker's business: recording, withdrawing and (for
    /// staff) reading them needs the relation a lookup needs. The call names no purpose.
    async fn require_relation(
        &self,
        request_id: &str,
        principal: &Principal,
        cpr: &Cpr,
        doing: &str,
    ) -> Result<(), GatewayError> {
        self.pipeline
            .require_relation(request_id, principal, cpr, Purpose::Unspecified, doing)
            .await
            .map(drop)
    }
}

/// Runs a refusal through the draft (recorded durably) and returns it.
pub(crate) async fn refuse<T>(draft: AuditDraft, error: GatewayError) -> Result<T, GatewayError> {
    draft.refused(&error).await?;
    Err(error)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn from_timestamp(
    t: &prost_types::Timestamp,
    field: &str,
) -> Result<DateTime<Utc>, GatewayError> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .ok_or_else(|| {
            GatewayError::refused(Reason::FieldInvalid, format!("{field} is not a valid time"))
        })
}

fn purpose_code(value: i32) -> Result<&'static str, GatewayError> {
    match Purpose::try_from(value) {
        Ok(Purpose::Unspecified) | Err(_) => Err(GatewayError::refused(
            Reason::PurposeMissing,
            "purpose is missing or not a known purpose",
        )),
        Ok(p) => Ok(p.code()),
    }
}

fn tier_of(value: i32, field: &str) -> Result<u8, GatewayError> {
    match pb::Tier::try_from(value) {
        Ok(t @ (pb::Tier::Existence | pb::Tier::Selected | pb::Tier::Full)) => Ok(t as u8),
        _ => Err(GatewayError::refused(
            Reason::FieldInvalid,
            format!("{field} must be TIER_EXISTENCE, TIER_SELECTED or TIER_FULL"),
        )),
    }
}

fn wire_tier(tier: u8) -> i32 {
    pb::Tier::try_from(i32::from(tier)).map_or(0, |t| t as i32)
}

fn consent_record(c: &reg::Consent, now: DateTime<Utc>) -> pb::ConsentRecord {
    let (to_departments, to_any) = match &c.to {
        Recipients::Departments(d) => (d.clone(), false),
        Recipients::AnyWithCase => (Vec::new(), true),
    };
    pb::ConsentRecord {
        consent: Some(pb::Consent {
            consent_id: c.id.clone(),
            kind: match c.kind {
                ConsentKind::Permit => pb::ConsentKind::Permit,
                ConsentKind::Refuse => pb::ConsentKind::Refuse,
            } as i32,
            from_departments: c.from_departments.clone(),
            to_departments,
            to_any_department_with_case: to_any,
            max_tier: wire_tier(c.max_tier),
            purposes: c
                .purposes
                .iter()
                .filter_map(|p| Purpose::from_code(p))
                .map(|p| p as i32)
                .collect(),
            valid_from: Some(timestamp(c.valid_from)),
            valid_until: c.valid_until.map(timestamp),
            document_ref: c.document_ref.clone(),
        }),
        recorded_by: c.recorded_by.clone(),
        recorded_at: Some(timestamp(c.recorded_at)),
        withdrawn_at: c.withdrawn_at.map(timestamp),
        withdrawn_by: c.withdrawn_by.clone().unwrap_or_default(),
        active: c.is_active(now),
    }
}

fn access_request(r: &reg::AccessRequest) -> pb::AccessRequest {
    pb::AccessRequest {
        request_id: r.id.clone(),
        requester_id: r.requester_id.clone(),
        requester_name: r.requester_name.clone(),
        requester_department: r.requester_department.clone(),
        source_id: r.source_id.clone(),
        owner_department: r.owner_department.clone(),
        case_id: r.case_id.clone(),
        tier_wanted: wire_tier(r.tier_wanted),
        purpose: Purpose::from_code(&r.purpose).map_or(0, |p| p as i32),
        justification: r.justification.clone(),
        filed_at: Some(timestamp(r.filed_at)),
        state: match r.state {
            reg::RequestState::Pending => pb::RequestState::Pending,
            reg::RequestState::Approved => pb::RequestState::Approved,
            reg::RequestState::Denied => pb::RequestState::Denied,
        } as i32,
        decided_by: r.decided_by.clone().unwrap_or_default(),
        decided_at: r.decided_at.map(timestamp),
        decision_reason: r.decision_reason.clone().unwrap_or_default(),
        granted_tier: r.granted_tier.map_or(0, wire_tier),
        granted_until: r.granted_until.map(timestamp),
        cpr: r.cpr.as_str().to_owned(),
    }
}

/// Request ids named in one record of a listing at most; the rest are counted.
const SHOWN_IDS: usize = 20;

/// What a listing showed of one citizen's requests, for their audit record: the request ids.
fn shown_detail(ids: &[&str]) -> String {
    let named = ids
        .iter()
        .take(SHOWN_IDS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    match ids.len().saturating_sub(SHOWN_IDS) {
        0 => format!("requests shown: {named}"),
        more => format!("requests shown: {named} and {more} more"),
    }
}

/// A change's outcome as the caller's answer.
fn outcome(outcome: ChangeOutcome, what: &str) -> Result<(), GatewayError> {
    let (reason, message) = match outcome {
        ChangeOutcome::Applied => return Ok(()),
        ChangeOutcome::NotFound => (Reason::ItemNotFound, format!("no such {what}")),
        ChangeOutcome::AlreadyDone => (
            Reason::AlreadyDone,
            format!("the {what} is already withdrawn or decided"),
        ),
        ChangeOutcome::WrongDepartment => (
            Reason::WrongDepartment,
            format!("only the department that owns the case may decide this {what}"),
        ),
        ChangeOutcome::Invalid => (Reason::FieldInvalid, format!("the {what} is not valid")),
    };
    Err(GatewayError::refused(reason, message))
}

impl RegistryApi {
    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
        request_id: &str,
    ) -> Result<pb::ConsentRecord, GatewayError> {
        let (mut draft, principal) = begin_as(
            &self.pipeline,
            &request,
            request_id,
            Action::ConsentRecorded,
            CASEWORK_ROLES,
        )
        .await?;
        let message = request.into_inner();
        let (cpr, consent) = match self.consent_from(&message, &principal.caller, &mut draft) {
            Ok(c) => c,
            Err(e) => return refuse(draft, e).await,
        };
        let related = self
            .require_relation(request_id, &principal, &cpr, "record a consent for them")
            .await;
        if let Err(e) = related {
            return refuse(draft, e).await;
        }
        let now = consent.recorded_at;
        let applied = self
            .apply(draft, RegistryChange::RecordConsent(consent.clone()))
            .await?;
        outcome(applied, "consent")?;
        tracing::info!(consent_id = %consent.id, "consent recorded");
        Ok(consent_record(&consent, now))
    }

    fn consent_from(
        &self,
        message: &RecordConsentRequest,
        caller: &Caller,
        draft: &mut AuditDraft,
    ) -> Result<(Cpr, reg::Consent), GatewayError> {
        let cpr = Cpr::parse(&message.cpr)?;
        draft.citizen(&cpr);
        let c = message
            .consent
            .as_ref()
            .ok_or_else(|| GatewayError::refused(Reason::FieldInvalid, "consent is missing"))?;
        let kind = match pb::ConsentKind::try_from(c.kind) {
            Ok(pb::ConsentKind::Permit) => ConsentKind::Permit,
            Ok(pb::ConsentKind::Refuse) => ConsentKind::Refuse,
            _ => {
                return Err(GatewayError::refused(
                    Reason::FieldInvalid,
                    "kind must be CONSENT_KIND_PERMIT or CONSENT_KIND_REFUSE",
                ));
            }
        };
        let max_tier = match kind {
            ConsentKind::Permit => tier_of(c.max_tier, "max_tier")?,
            ConsentKind::Refuse => 0,
        };
        let purposes = c
            .purposes
            .iter()
            .map(|p| purpose_code(*p).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let to = match (c.to_any_department_with_case, c.to_departments.is_empty()) {
            (true, true) => Recipients::AnyWithCase,
            (false, false) => Recipients::Departments(c.to_departments.clone()),
            (true, false) => {
                return Err(GatewayError::refused(
                    Reason::FieldInvalid,
                    "name receiving departments or any department with a case, not both",
                ));
            }
            (false, true) => {
                return Err(GatewayError::refused(
                    Reason::FieldInvalid,
                    "name the receiving departments, or any department with a case",
                ));
            }
        };
        let now = Utc::now();
        let valid_from = match &c.valid_from {
            Some(t) => from_timestamp(t, "valid_from")?,
            None => now,
        };
        let valid_until = c
            .valid_until
            .as_ref()
            .map(|t| from_timestamp(t, "valid_until"))
            .transpose()?;
        if valid_until.is_some_and(|u| u <= valid_from) {
            return Err(GatewayError::refused(
                Reason::FieldInvalid,
                "valid_until must be after valid_from",
            ));
        }
        let consent = reg::Consent {
            id: new_id("c"),
            cpr: cpr.clone(),
            kind,
            from_departments: c.from_departments.clone(),
            to,
            max_tier,
            purposes,
            valid_from,
            valid_until,
            recorded_by: caller.id.clone(),
            recorded_at: now,
            document_ref: c.document_ref.trim().to_owned(),
            withdrawn_at: None,
            withdrawn_by: None,
        };
        consent
            .validate()
            .map_err(|m| GatewayError::refused(Reason::FieldInvalid, m))?;
        Ok((cpr, consent))
    }

    async fn withdraw_consent(
        &self,
        request: Request<WithdrawConsentRequest>,
        request_id: &str,
    ) -> Result<pb::ConsentRecord, GatewayError> {
        let (mut draft, principal) = begin_as(
            &self.pipeline,
            &request,
            request_id,
            Action::ConsentWithdrawn,
            CASEWORK_ROLES,
        )
        .await?;
        let message = request.into_inner();
        let cpr = match Cpr::parse(&message.cpr) {
            Ok(c) => c,
            Err(e) => return refuse(draft, e.into()).await,
        };
        draft.citizen(&cpr);
        if message.consent_id.is_empty() || message.consent_id.len() > 64 {
            return refuse(
                draft,
                GatewayError::refused(Reason::FieldInvalid, "consent_id is missing or malformed"),
            )
            .await;
        }
        // Before the registry is touched, so that a caller without the relation learns nothing,
        // not even whether the consent exists.
        let related = self
            .require_relation(request_id, &principal, &cpr, "withdraw their consent")
            .await;
        if let Err(e) = related {
            return refuse(draft, e).await;
        }
        let now = Utc::now();
        let applied = self
            .apply(
                draft,
                RegistryChange::WithdrawConsent {
                    id: message.consent_id.clone(),
                    cpr: cpr.clone(),
                    by: principal.caller.id.clone(),
                    at: now,
                },
            )
            .await?;
        outcome(applied, "consent")?;
        let consent = self
            .pipeline
            .registry()
            .consent(&message.consent_id)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                GatewayError::refused(
                    Reason::RegistryUnavailable,
                    "the consent cannot be read back",
                )
            })?;
        Ok(consent_record(&consent, now))
    }

    async fn list_consents(
        &self,
        request: Request<ListConsentsRequest>,
        request_id: &str,
    ) -> Result<ListConsentsResponse, GatewayError> {
        // No admin: an administrator operates the gateway and is no citizen's caseworker (the
        // data-protection officer has `samblik policy explain`, auditors the audit log).
        let mut roles = CASEWORK_ROLES.to_vec();
        roles.push("citizen");
        let (mut draft, principal) = begin_as(
            &self.pipeline,
            &request,
            request_id,
            Action::ConsentsListed,
            &roles,
        )
        .await?;
        let caller = &principal.caller;
        let staff = caller
            .roles
            .iter()
            .any(|r| CASEWORK_ROLES.contains(&r.as_str()));
        let asked = Cpr::parse(&request.get_ref().cpr);
        let cpr = if staff {
            match asked {
                Ok(c) => c,
                Err(e) => return refuse(draft, e.into()).await,
            }
        } else {
            // A citizen reads their own consents, named by their token; the request may name
            // them too, and no one else.
            let Some(own) = caller.citizen.clone() else {
                let e =
                    GatewayError::refused(Reason::CitizenNotNamed, "the token names no citizen");
                return refuse(draft, e).await;
            };
            match asked {
                _ if request.get_ref().cpr.trim().is_empty() => own,
                Ok(c) if c == own => own,
                Ok(other) => {
                    draft.citizen(&other);
                    let e = GatewayError::refused(
                        Reason::OwnDataOnly,
                        "a citizen may list only their own consents",
                    );
                    return refuse(draft, e).await;
                }
                Err(e) => return refuse(draft, e.into()).await,
            }
        };
        draft.citizen(&cpr);
        // Staff read a citizen's consents as they record them: as the citizen's caseworker.
        if staff
            && let Err(e) = self
                .require_relation(request_id, &principal, &cpr, "read their consents")
                .await
        {
            return refuse(draft, e).await;
        }
        let consents = match self.pipeline.registry().consents_for(&cpr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "consent registry unreadable");
                return refuse(
                    draft,
                    GatewayError::refused(
                        Reason::RegistryUnavailable,
                        "the consent registry cannot be read",
                    ),
                )
                .await;
            }
        };
        draft.answered(Vec::new()).await?;
        let now = Utc::now();
        Ok(ListConsentsResponse {
            consents: consents.iter().map(|c| consent_record(c, now)).collect(),
        })
    }

    async fn file_request(
        &self,
        request: Request<FileAccessRequest>,
        request_id: &str,
    ) -> Result<pb::AccessRequest, GatewayError> {
        let (mut draft, principal) = begin_as(
            &self.pipeline,
            &request,
            request_id,
            Action::AccessRequested,
            CASEWORK_ROLES,
        )
        .await?;
        let message = request.into_inner();
        let (cpr, purpose, filed) = match self.request_from(&message, &principal.caller, &mut draft)
        {
            Ok(r) => r,
            Err(e) => return refuse(draft, e).await,
        };
        if let Err(e) = self
            .check_case(request_id, &principal, &cpr, purpose, &filed)
            .await
        {
            return refuse(draft, e).await;
        }
        let applied = self
            .apply(draft, RegistryChange::FileRequest(filed.clone()))
            .await?;
        outcome(applied, "request")?;
        tracing::info!(request = %filed.id, source = %filed.source_id, "access request filed");
        Ok(access_request(&filed))
    }

    fn request_from(
        &self,
        message: &FileAccessRequest,
        caller: &Caller,
        draft: &mut AuditDraft,
    ) -> Result<(Cpr, Purpose, reg::AccessRequest), GatewayError> {
        let cpr = Cpr::parse(&message.cpr)?;
        draft.citizen(&cpr);
        let purpose = purpose_code(message.purpose)?;
        let wire_purpose = Purpose::from_code(purpose).unwrap_or_default();
        draft.purpose(wire_purpose);
        let owner = self
            .pipeline
            .policy()
            .owner_of(&message.source_id)
            .ok_or_else(|| {
                let shown: String = message.source_id.chars().take(64).collect();
                GatewayError::refused(Reason::UnknownSource, format!("unknown source {shown:?}"))
            })?
            .to_owned();
        let tier_wanted = tier_of(message.tier_wanted, "tier_wanted")?;
        if message.case_id.trim().is_empty() || message.case_id.len() > 64 {
            return Err(GatewayError::refused(
                Reason::FieldInvalid,
                "case_id is missing or malformed",
            ));
        }
        let justification = message.justification.trim();
        if justification.chars().count() < MIN_JUSTIFICATION || justification.len() > 4_000 {
            return Err(GatewayError::refused(
                Reason::FieldInvalid,
                format!(
                    "the justification must say why, in {MIN_JUSTIFICATION} to 4000 characters"
                ),
            ));
        }
        let filed = reg::AccessRequest {
            id: new_id("ar"),
            cpr: cpr.clone(),
            requester_id: caller.id.clone(),
            requester_name: caller.name.clone(),
            requester_department: caller.department.clone(),
            source_id: message.source_id.clone(),
            owner_department: owner,
            case_id: message.case_id.trim().to_owned(),
            tier_wanted,
            purpose: purpose.to_owned(),
            justification: justification.to_owned(),
            filed_at: Utc::now(),
            state: reg::RequestState::Pending,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            granted_tier: None,
            granted_until: None,
        };
        filed
            .validate()
            .map_err(|m| GatewayError::refused(Reason::FieldInvalid, m))?;
        Ok((cpr, wire_purpose, filed))
    }

    /// A request may be filed only by the citizen's caseworker (the relation a lookup needs),
    /// for a case the named source holds for the citizen and shows the caller — and for more
    /// of it than the caller is shown already.
    async fn check_case(
        &self,
        request_id: &str,
        principal: &Principal,
        cpr: &Cpr,
        purpose: Purpose,
        filed: &reg::AccessRequest,
    ) -> Result<(), GatewayError> {
        let plan = self
            .pipeline
            .require_relation(
                request_id,
                principal,
                cpr,
                purpose,
                "file an access request about them",
            )
            .await?;
        let shown = self
            .pipeline
            .shown_tier(&plan, &filed.source_id, &filed.case_id)
            .await?;
        if shown.as_u8() >= filed.tier_wanted {
            return Err(GatewayError::refused(
                Reason::AlreadyShown,
                format!(
                    "you are already shown this case at tier {}; ask only for more",
                    shown.as_u8()
                ),
            ));
        }
        Ok(())
    }

    async fn list_requests(
        &self,
        request: Request<ListAccessRequests>,
        request_id: &str,
    ) -> Result<ListAccessRequestsResponse, GatewayError> {
        let (draft, caller) = self
            .begin(&request, request_id, Action::RequestsListed, CASEWORK_ROLES)
            .await?;
        let message = request.into_inner();
        let mut filter = RequestFilter::default();
        match RequestView::try_from(message.view) {
            Ok(RequestView::Inbox) => filter.owner_department = Some(caller.department.clone()),
            Ok(RequestView::Mine) => filter.requester_id = Some(caller.id.clone()),
            _ => {
                return refuse(
                    draft,
                    GatewayError::refused(
                        Reason::FieldInvalid,
                        "view must be REQUEST_VIEW_INBOX or REQUEST_VIEW_MINE",
                    ),
                )
                .await;
            }
        }
        filter.state = match pb::RequestState::try_from(message.state) {
            Ok(pb::RequestState::Unspecified) => None,
            Ok(pb::RequestState::Pending) => Some(reg::RequestState::Pending),
            Ok(pb::RequestState::Approved) => Some(reg::RequestState::Approved),
            Ok(pb::RequestState::Denied) => Some(reg::RequestState::Denied),
            Err(_) => {
                return refuse(
                    draft,
                    GatewayError::refused(Reason::FieldInvalid, "state is not a known state"),
                )
                .await;
            }
        };
        let requests = match self.pipeline.registry().requests(filter, LIST_LIMIT).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "registry unreadable");
                return refuse(
                    draft,
                    GatewayError::refused(
                        Reason::RegistryUnavailable,
                        "access requests cannot be read",
                    ),
                )
                .await;
            }
        };
        // The record names every citizen whose request was shown, so that an auditor (and the
        // citizen) searching by CPR finds it: one record per citizen, each listing the requests
        // of theirs that were shown.
        let mut shown: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in &requests {
            shown.entry(r.cpr.as_str()).or_default().push(r.id.as_str());
        }
        let mut citizens = Vec::with_capacity(shown.len());
        for (cpr, ids) in shown {
            let Ok(cpr) = Cpr::parse(cpr) else {
                tracing::error!("an access request in the store names no valid CPR; refusing");
                return refuse(
                    draft,
                    GatewayError::refused(
                        Reason::RegistryUnavailable,
                        "access requests cannot be read",
                    ),
                )
                .await;
            };
            citizens.push((cpr, shown_detail(&ids)));
        }
        draft.answered_per_citizen(citizens).await?;
        Ok(ListAccessRequestsResponse {
            requests: requests.iter().map(access_request).collect(),
        })
    }

    async fn decide_request(
        &self,
        request: Request<DecideAccessRequest>,
        request_id: &str,
    ) -> Result<pb::AccessRequest, GatewayError> {
        let (mut draft, caller) = self
            .begin(&request, request_id, Action::AccessDecided, CASEWORK_ROLES)
            .await?;
        let message = request.into_inner();
        let now = Utc::now();
        let change = match self.decision_from(&message, &caller, now, &mut draft).await {
            Ok(c) => c,
            Err(e) => return refuse(draft, e).await,
        };
        let applied = self.apply(draft, change).await?;
        outcome(applied, "request")?;
        let decided = self
            .pipeline
            .registry()
            .request(&message.request_id)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                GatewayError::refused(
                    Reason::RegistryUnavailable,
                    "the request cannot be read back",
                )
            })?;
        tracing::info!(request = %decided.id, approved = message.approve, "access request decided");
        Ok(access_request(&decided))
    }

    async fn decision_from(
        &self,
        message: &DecideAccessRequest,
        caller: &Caller,
        now: DateTime<Utc>,
        draft: &mut AuditDraft,
    ) -> Result<RegistryChange, GatewayError> {
        if message.request_id.is_empty() || message.request_id.len() > 64 {
            return Err(GatewayError::refused(
                Reason::FieldInvalid,
                "request_id is missing or malformed",
            ));
        }
        let reason = message.reason.trim().to_owned();
        let (tier, until) = if message.approve {
            let tier = tier_of(message.tier, "tier")?;
            let until = message
                .until
                .as_ref()
                .ok_or_else(|| {
                    GatewayError::refused(Reason::FieldInvalid, "an approval needs an end (until)")
                })
                .and_then(|t| from_timestamp(t, "until"))?;
            let max = self.pipeline.policy().max_grant();
            if until <= now || until > now + max {
                return Err(GatewayError::refused(
                    Reason::FieldInvalid,
                    format!(
                        "an approval must end in the future and within {} days",
                        max.num_days()
                    ),
                ));
            }
            (Some(tier), Some(until))
        } else {
            if reason.is_empty() {
                return Err(GatewayError::refused(
                    Reason::FieldInvalid,
                    "a denial needs a reason",
                ));
            }
            (None, None)
        };
        // The request itself says which citizen it is about and what was asked: the record
        // names the citizen, and no more can be granted than was asked for.
        let filed = self
            .pipeline
            .registry()
            .request(&message.request_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "registry unreadable");
                GatewayError::refused(
                    Reason::RegistryUnavailable,
                    "access requests cannot be read",
                )
            })?;
        if let Some(filed) = &filed {
            if filed.owner_department == caller.department {
                draft.citizen(&filed.cpr);
            }
            if tier.is_some_and(|t| t > filed.tier_wanted) {
                return Err(GatewayError::refused(
                    Reason::FieldInvalid,
                    "the tier granted cannot exceed the tier asked for",
                ));
            }
        }
        Ok(RegistryChange::DecideRequest {
            id: message.request_id.clone(),
            by: caller.id.clone(),
            by_department: caller.department.clone(),
            approve: message.approve,
            tier,
            until,
            reason: if reason.is_empty() {
                "approved".into()
            } else {
                reason
            },
            at: now,
        })
    }
}

#[tonic::async_trait]
impl ConsentService for RegistryApi {
    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        call(SpanKind::Api, "RecordConsent", async |id| {
            RegistryApi::record_consent(self, request, id).await
        })
        .await
    }

    async fn withdraw_consent(
        &self,
        request: Request<WithdrawConsentRequest>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        call(SpanKind::Api, "WithdrawConsent", async |id| {
            RegistryApi::withdraw_consent(self, request, id).await
        })
        .await
    }

    async fn list_consents(
        &self,
        request: Request<ListConsentsRequest>,
    ) -> Result<Response<ListConsentsResponse>, Status> {
        call(SpanKind::Api, "ListConsents", async |id| {
            RegistryApi::list_consents(self, request, id).await
        })
        .await
    }
}

#[tonic::async_trait]
impl AccessRequestService for RegistryApi {
    async fn file_request(
        &self,
        request: Request<FileAccessRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        call(SpanKind::Api, "FileRequest", async |id| {
            RegistryApi::file_request(self, request, id).await
        })
        .await
    }

    async fn list_requests(
        &self,
        request: Request<ListAccessRequests>,
    ) -> Result<Response<ListAccessRequestsResponse>, Status> {
        call(SpanKind::Api, "ListRequests", async |id| {
            RegistryApi::list_requests(self, request, id).await
        })
        .await
    }

    async fn decide_request(
        &self,
        request: Request<DecideAccessRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        call(SpanKind::Api, "DecideRequest", async |id| {
            RegistryApi::decide_request(self, request, id).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change the store refused is recorded with the reason its caller is refused for.
    #[test]
    fn a_refused_change_is_recorded_with_the_reason_it_is_refused_for() {
        for change in [
            ChangeOutcome::Applied,
            ChangeOutcome::NotFound,
            ChangeOutcome::AlreadyDone,
            ChangeOutcome::WrongDepartment,
            ChangeOutcome::Invalid,
        ] {
            let refused = outcome(change, "request")
                .err()
                .map(|e| e.reason().as_str());
            assert_eq!(refused, change.reason(), "{change:?}");
        }
    }
}
