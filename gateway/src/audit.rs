//! The gateway's side of the audit log: what each request becomes as an audit record, on every
//! path — answered, refused, or abandoned by its caller.

use crate::auth::Caller;
use crate::context::Credentials;
use crate::error::{GatewayError, Reason};
use samblik_audit::registry::{ChangeOutcome, RegistryChange};
use samblik_audit::review::ReviewRules;
use samblik_audit::verify::{ChainSummary, VerifyError};
use samblik_audit::{Action, Actor, AuditEvent, AuditLog, CaseEntry, Outcome, SourceEntry};
use samblik_proto::Cpr;
use samblik_proto::v1::{Case, Purpose, SourceStatus};
use std::sync::Arc;
use tonic::Code;

/// Checks every chain of the store; runs on a blocking thread.
pub type Verifier = dyn Fn() -> Result<Vec<ChainSummary>, VerifyError> + Send + Sync;

/// How the log is read back, from config.
#[derive(Clone, Default)]
pub struct AuditAccess {
    pub rules: ReviewRules,
    /// Whether the citizen's view names the caseworker, or only their department.
    pub citizen_sees_names: bool,
    /// `None`: `Verify` answers UNAVAILABLE.
    pub verifier: Option<Arc<Verifier>>,
}

impl std::fmt::Debug for AuditAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditAccess")
            .field("rules", &self.rules)
            .field("citizen_sees_names", &self.citizen_sees_names)
            .field("verifier", &self.verifier.is_some())
            .finish()
    }
}

/// A request's audit record while the request runs. It must be finished with
/// [`AuditDraft::answered`] or [`AuditDraft::refused`]; if it is dropped instead (the caller
/// went away and the handler was cancelled), a `cancelled` record is queued.
#[derive(Debug)]
pub struct AuditDraft {
    log: Arc<AuditLog>,
    event: Option<AuditEvent>,
}

impl AuditDraft {
    pub fn new(log: Arc<AuditLog>, request_id: &str, action: Action, policy_version: &str) -> Self {
        AuditDraft {
            log,
            event: Some(AuditEvent {
                request_id: request_id.to_owned(),
                action,
                actor: Actor::default(),
                cpr: None,
                purpose: None,
                break_glass_reason: None,
                outcome: Outcome::Cancelled,
                detail: None,
                reason: None,
                sources: Vec::new(),
                policy_version: policy_version.to_owned(),
            }),
        }
    }

    /// The draft of a request that came with `credentials`. It claims the request's record: if
    /// the request is dropped from now on, this draft records it, and the gRPC server's
    /// [`crate::unread::UnreadAudit`] writes nothing of its own.
    pub fn for_request(
        log: Arc<AuditLog>,
        request_id: &str,
        action: Action,
        policy_version: &str,
        credentials: &Credentials<'_>,
    ) -> Self {
        if let Some(record) = &credentials.record {
            record.claim();
        }
        Self::new(log, request_id, action, policy_version)
    }

    fn event_mut(&mut self) -> Option<&mut AuditEvent> {
        self.event.as_mut()
    }

    pub fn caller(&mut self, caller: &Caller) {
        if let Some(e) = self.event_mut() {
            e.actor = Actor {
                caller_id: caller.id.clone(),
                name: caller.name.clone(),
                department: caller.department.clone(),
                municipality: caller.municipality.clone(),
                system: e.actor.system.take(),
            };
        }
    }

    /// The system calling on the caller's behalf, as its client certificate names it.
    pub fn system(&mut self, name: &str) {
        if let Some(e) = self.event_mut() {
            e.actor.system = Some(name.to_owned());
        }
    }

    pub fn citizen(&mut self, cpr: &Cpr) {
        if let Some(e) = self.event_mut() {
            e.cpr = Some(cpr.clone());
        }
    }

    /// A break-the-glass lookup: the written reason is stored and marks the record for review.
    pub fn break_glass(&mut self, reason: &str) {
        if let Some(e) = self.event_mut() {
            e.break_glass_reason = Some(reason.to_owned());
        }
    }

    pub fn purpose(&mut self, purpose: Purpose) {
        if let Some(e) = self.event_mut() {
            e.purpose = Some(purpose.code().to_owned());
        }
    }

    /// A short, safe description of what was asked (never a CPR, a token or record content).
    pub fn detail(&mut self, detail: String) {
        if let Some(e) = self.event_mut() {
            e.detail = Some(detail);
        }
    }

    /// Records an answered request whose record carries `change` (an auditor's review mark)
    /// and waits until it is durable.
    pub async fn answered_with_change(
        mut self,
        change: serde_json::Value,
    ) -> Result<(), GatewayError> {
        let Some(mut event) = self.event.take() else {
            return Ok(());
        };
        event.outcome = Outcome::Answered;
        let written = self.log.append_with_change(event, change).await;
        written.map(|_| ()).map_err(not_written)
    }

    /// Records a refusal and waits until it is durable.
    pub async fn refused(mut self, error: &GatewayError) -> Result<(), GatewayError> {
        let Some(mut event) = self.event.take() else {
            return Ok(());
        };
        event.outcome = match error.code() {
            // The caller may not break the glass again today: denied, not a failure of ours.
            Code::ResourceExhausted if error.reason() == Reason::BreakGlassLimitReached => {
                Outcome::Denied
            }
            Code::Unauthenticated => Outcome::Unauthenticated,
            Code::PermissionDenied => Outcome::Denied,
            Code::Unavailable => Outcome::Failed,
            // Requests that could not be read or asked for what cannot be: no source was asked.
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::OutOfRange
            | Code::Internal
            | Code::Unimplemented => Outcome::Invalid,
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::DataLoss => Outcome::Failed,
        };
        // The error's text is safe: it never contains the token or the CPR.
        event.detail = Some(error.to_string());
        event.reason = Some(error.reason().as_str().to_owned());
        write(&self.log, event).await
    }

    /// Records what was disclosed and waits until it is durable. Only then may it be sent.
    pub async fn answered(mut self, sources: Vec<SourceEntry>) -> Result<(), GatewayError> {
        let Some(mut event) = self.event.take() else {
            return Ok(());
        };
        event.outcome = Outcome::Answered;
        event.sources = sources;
        write(&self.log, event).await
    }

    /// Records an answer that showed something of each of `citizens` (a listing of access
    /// requests): one record per citizen, naming them, with its own detail, all under the one
    /// request id — the log is searched by CPR, and a record holds one. Without citizens, one
    /// record that names none. Waits until every record is durable.
    pub async fn answered_per_citizen(
        mut self,
        citizens: Vec<(Cpr, String)>,
    ) -> Result<(), GatewayError> {
        let Some(mut event) = self.event.take() else {
            return Ok(());
        };
        event.outcome = Outcome::Answered;
        if citizens.is_empty() {
            return write(&self.log, event).await;
        }
        let log = &self.log;
        let writes = citizens.into_iter().map(|(cpr, detail)| {
            let mut e = event.clone();
            e.cpr = Some(cpr.clone());
            e.detail = Some(detail);
            write(log, e)
        });
        futures::future::try_join_all(writes).await.map(|_| ())
    }

    /// Records one part of a streamed answer (one department) and waits until it is durable;
    /// the draft stays open for the next part.
    pub async fn answered_part(&self, source: SourceEntry) -> Result<(), GatewayError> {
        let Some(base) = &self.event else {
            return Ok(());
        };
        let mut event = base.clone();
        event.outcome = Outcome::Answered;
        event.sources = vec![source];
        write(&self.log, event).await
    }

    /// Applies a registry change and records it in the same transaction; waits until both are
    /// durable. The record's outcome says whether the change was made.
    pub async fn change(mut self, change: RegistryChange) -> Result<ChangeOutcome, GatewayError> {
        let Some(event) = self.event.take() else {
            return Err(GatewayError::AuditUnavailable);
        };
        match self.log.change(event, change).await {
            Ok((outcome, _)) => Ok(outcome),
            Err(e) => {
                tracing::error!(error = %e, "registry change not written; refusing");
                Err(GatewayError::AuditUnavailable)
            }
        }
    }

    /// Closes a streamed lookup whose parts were all recorded.
    pub fn complete(mut self) {
        self.event = None;
    }

    /// Records, without waiting, that the request ended unanswered, and `why`: for paths that
    /// can no longer wait (the request is being dropped).
    pub fn abandoned(mut self, why: &str) {
        self.abandon(why);
    }

    fn abandon(&mut self, why: &str) {
        if let Some(mut event) = self.event.take() {
            event.outcome = Outcome::Cancelled;
            event.detail = Some(why.to_owned());
            self.log.append_detached(event);
        }
    }
}

impl Drop for AuditDraft {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The handler panicked: the gateway failed, not the caller.
            if let Some(mut event) = self.event.take() {
                let error = GatewayError::internal();
                event.outcome = Outcome::Failed;
                event.detail = Some(error.to_string());
                event.reason = Some(error.reason().as_str().to_owned());
                self.log.append_detached(event);
            }
            return;
        }
        // The handler was dropped: the caller went away, or a deadline (the caller's, or the
        // server's request timeout) passed.
        self.abandon("the caller went away or its time ran out before the answer");
    }
}

async fn write(log: &AuditLog, event: AuditEvent) -> Result<(), GatewayError> {
    log.append(event).await.map(|_| ()).map_err(not_written)
}

fn not_written(e: samblik_audit::AuditError) -> GatewayError {
    tracing::error!(error = %e, "audit record not written; refusing to answer");
    GatewayError::AuditUnavailable
}

/// The audit entry for one source's part of an answer.
pub fn source_entry(source_id: &str, status: SourceStatus, cases: Vec<CaseEntry>) -> SourceEntry {
    SourceEntry {
        source_id: source_id.to_owned(),
        status: match status {
            SourceStatus::Ok => "ok",
            SourceStatus::Timeout => "timeout",
            SourceStatus::Unavailable => "unavailable",
            SourceStatus::Denied => "denied",
            SourceStatus::Error | SourceStatus::Unspecified => "error",
        }
        .to_owned(),
        cases,
        flag: None,
    }
}

/// The field paths a filtered case discloses, e.g. `existence.responsible.phone`.
pub fn disclosed_fields(case: &Case) -> Vec<String> {
    let mut fields = Vec::new();
    let mut push = |present: bool, path: &str| {
        if present {
            fields.push(path.to_owned());
        }
    };
    if let Some(e) = &case.existence {
        push(e.case_type.is_some(), "existence.case_type");
        push(true, "existence.state");
        push(!e.opened_on.is_empty(), "existence.opened_on");
        push(!e.closed_on.is_empty(), "existence.closed_on");
        if let Some(r) = &e.responsible {
            push(!r.name.is_empty(), "existence.responsible.name");
            push(!r.unit.is_empty(), "existence.responsible.unit");
            push(!r.phone.is_empty(), "existence.responsible.phone");
            push(!r.email.is_empty(), "existence.responsible.email");
        }
    }
    if let Some(s) = &case.selected {
        push(!s.interventions.is_empty(), "selected.interventions");
        push(!s.situation.is_empty(), "selected.situation");
        push(!s.goals.is_empty(), "selected.goals");
        push(
            !s.next_follow_up_on.is_empty(),
            "selected.next_follow_up_on",
        );
        push(
            !s.assessment_summary.is_empty(),
            "selected.assessment_summary",
        );
        push(!s.residence.is_empty(), "selected.residence");
    }
    if let Some(f) = &case.full {
        for d in &f.documents {
            fields.push(format!("full.documents[{}]", d.document_id));
        }
    }
    fields
}
