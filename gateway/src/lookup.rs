//! The lookup pipeline: authenticate → validate → plan → fan out → decide → filter → audit →
//! respond.
//!
//! Every source is asked concurrently under one overall deadline, each through its source stack
//! ([`crate::source_stack`]: its own timeout, its trace span). A source that is slow, down or answers nonsense yields an explicit status for that
//! source while the others are served; nothing is ever silently missing. Every path — answered,
//! refused, abandoned — leaves an audit record, and an answer leaves only after its record is
//! durable.

use crate::audit::{AuditDraft, disclosed_fields, source_entry};
use crate::auth::{Authenticator, Caller, CallingSystem, PANEL_SYSTEM, Systems};
use crate::context::Credentials;
use crate::disclosure::{DisclosurePolicy, LookupFacts, RegistryFacts, wire_tier};
use crate::error::{GatewayError, Reason};
use crate::source_stack::{self, Resilience, SourceCall, SourceService, failure_status};
use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use samblik_adapters::SourceAnswer;
use samblik_adapters::{CaseQuery, Source, SourceError};
use samblik_audit::registry::Registry;
use samblik_audit::search::AuditQuery;
use samblik_audit::{Action, AuditLog, CaseEntry, FOREIGN_CITIZEN, Outcome, SourceEntry};
use samblik_policy::{Decision, Role};
use samblik_proto::Cpr;
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::{
    CaseState, ExplainRequest, ExplainResponse, ExplainedCase, LookupRequest, LookupResponse,
    Purpose, SourceResult, SourceStatus, Tier,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tracing::Instrument;

/// Most sources one request may name in its filter.
const MAX_SOURCE_FILTER: usize = 64;

/// One configured source, wrapped once in the gateway's source stack
/// ([`crate::source_stack`]): every call of it goes through that stack.
pub struct GatewaySource {
    source: Arc<dyn Source>,
    /// The department's name as shown to caseworkers.
    department: String,
    /// The longest this source may take.
    timeout: Duration,
    stack: SourceService,
    circuit: source_stack::CircuitWatch,
}

impl GatewaySource {
    /// `source` behind the stack, with `timeout` as its own time limit and no bulkhead or
    /// circuit breaker.
    pub fn new(source: Arc<dyn Source>, department: impl Into<String>, timeout: Duration) -> Self {
        Self::with_resilience(source, department, timeout, Resilience::NONE)
    }

    /// `source` behind the stack, held back as `resilience` says.
    pub fn with_resilience(
        source: Arc<dyn Source>,
        department: impl Into<String>,
        timeout: Duration,
        resilience: Resilience,
    ) -> Self {
        let (stack, circuit) =
            source_stack::stack_watched(Arc::clone(&source), timeout, resilience);
        Self {
            stack,
            circuit,
            source,
            department: department.into(),
            timeout,
        }
    }

    pub fn id(&self) -> &str {
        self.source.id()
    }

    /// The source itself, without the stack: for its health, never for a lookup.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    pub fn department(&self) -> &str {
        &self.department
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Follows the source's circuit; `None` without a circuit breaker.
    pub fn circuit(&self) -> source_stack::CircuitWatch {
        self.circuit.clone()
    }

    /// One call through the stack.
    pub async fn call(&self, call: SourceCall) -> Result<SourceAnswer, SourceError> {
        self.stack.clone().oneshot(call).await
    }
}

impl std::fmt::Debug for GatewaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySource")
            .field("id", &self.id())
            .field("department", &self.department)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Limits applied to every lookup.
#[derive(Debug, Clone)]
pub struct LookupLimits {
    pub default_deadline: Duration,
    pub max_deadline: Duration,
    /// Kept back from the caller's deadline (at most half of it) so that the audit record is
    /// durable and the answer reaches the caller before it gives up.
    pub answer_margin: Duration,
    pub max_request_bytes: usize,
    /// Lookups in progress at once; one more is refused as [`Reason::Overloaded`].
    pub max_concurrent_lookups: usize,
}

impl LookupLimits {
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            default_deadline: server.default_deadline(),
            max_deadline: server.max_deadline(),
            answer_margin: server.answer_margin(),
            max_request_bytes: server.max_request_bytes,
            max_concurrent_lookups: server.limits.max_concurrent_lookups,
        }
    }
}

/// The gateway's lookup pipeline, shared by the gRPC API (and later the panel).
#[derive(Debug)]
pub struct LookupPipeline {
    auth: Authenticator,
    systems: Systems,
    policy: Arc<DisclosurePolicy>,
    registry: Registry,
    sources: Vec<GatewaySource>,
    limits: LookupLimits,
    audit: Arc<AuditLog>,
    audit_access: Arc<crate::audit::AuditAccess>,
    /// One permit per lookup in progress ([`LookupLimits::max_concurrent_lookups`]).
    admission: Arc<tokio::sync::Semaphore>,
}

/// Whether a lookup breaks the glass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakGlass {
    /// When the request gives a reason: the gRPC API's reading, where an empty
    /// `break_glass_reason` is an ordinary lookup.
    IfReasonGiven,
    /// Whatever the reason says: the panel's break-the-glass form, where a blank reason is too
    /// short, not a request for an ordinary lookup.
    Asked,
}

/// Who is calling: the caseworker, and the system calling on their behalf, if any.
#[derive(Debug, Clone)]
pub struct Principal {
    pub caller: Arc<Caller>,
    pub system: Option<Arc<CallingSystem>>,
}

/// One source's part of a lookup: what the caller sees and what the audit log records.
struct Answer {
    result: SourceResult,
    audit: SourceEntry,
}

/// A validated lookup, ready to fan out.
#[derive(Debug)]
pub struct LookupPlan {
    pub request_id: String,
    pub caller: Arc<Caller>,
    /// The system calling on the caller's behalf; it may be limited to some sources.
    pub system: Option<Arc<CallingSystem>>,
    pub purpose: Purpose,
    cpr: Cpr,
    /// Indexes into the pipeline's sources, in configuration order.
    targets: Vec<usize>,
    /// When the answer is due, on tokio's clock (tests may pause it).
    deadline: tokio::time::Instant,
    roles: Vec<Role>,
    /// The written reason, when the caller breaks the glass.
    break_glass_reason: Option<String>,
    /// Whether the caller's own department holds an open case for the citizen.
    relation: bool,
    /// Set when the lookup goes ahead on break-the-glass (no relation).
    break_glass: bool,
    registry: RegistryFacts,
    /// A dry run (explain): sources are asked for existence only and nothing is shown.
    dry_run: bool,
    /// The caller's own department's answers, fetched to establish the relation and reused
    /// (each taken once, by the target's own call).
    prefetched: std::sync::Mutex<Vec<(usize, Fetched)>>,
    /// The lookup's place among those in progress, given back when the plan goes.
    _admitted: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl LookupPlan {
    /// Keeps the own department's answers that are also targets, for their target's call.
    fn keep_prefetched(&mut self, fetched: Vec<(usize, Fetched)>) {
        let targets = &self.targets;
        self.prefetched = std::sync::Mutex::new(
            fetched
                .into_iter()
                .filter(|(i, _)| targets.contains(i))
                .collect(),
        );
    }

    fn take_prefetched(&self, index: usize) -> Option<Fetched> {
        let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
        let at = prefetched.iter().position(|(i, _)| *i == index)?;
        Some(prefetched.swap_remove(at).1)
    }

    pub(crate) fn facts(&self) -> LookupFacts<'_> {
        LookupFacts {
            caller_id: &self.caller.id,
            caller_department: &self.caller.department,
            roles: &self.roles,
            municipality: &self.caller.municipality,
            purpose: self.purpose.code(),
            relation: self.relation,
            break_glass: self.break_glass,
            registry: &self.registry,
        }
    }
}

/// What asking the caller's own department established ([`LookupPipeline::relate`]).
struct Relation {
    /// The own department's answers, for reuse as the lookup's own.
    fetched: Vec<(usize, Fetched)>,
    /// No relation because none of the own department's sources answered: not known to be
    /// absent.
    unknown: bool,
}

/// What one source call brought back, before the policy decides.
#[derive(Debug)]
enum Fetched {
    Answer {
        answer: SourceAnswer,
        asked: Tier,
    },
    Failed {
        status: SourceStatus,
        detail: &'static str,
    },
}

impl LookupPipeline {
    pub fn new(
        auth: Authenticator,
        sources: Vec<GatewaySource>,
        limits: LookupLimits,
        audit: Arc<AuditLog>,
        policy: Arc<DisclosurePolicy>,
        registry: Registry,
    ) -> Self {
        LookupPipeline {
            auth,
            systems: Systems::default(),
            policy,
            registry,
            sources,
            admission: Arc::new(tokio::sync::Semaphore::new(
                limits
                    .max_concurrent_lookups
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            limits,
            audit,
            audit_access: Arc::default(),
        }
    }

    /// How auditors and citizens read the log: review thresholds, the citizen's view and chain
    /// verification (none by default: `Verify` is then refused).
    pub fn with_audit_access(mut self, access: crate::audit::AuditAccess) -> Self {
        self.audit_access = Arc::new(access);
        self
    }

    /// The calling systems the listener's config names (by default none, and any system with
    /// a client certificate of the CA is let in without restrictions).
    pub fn with_systems(mut self, systems: Systems) -> Self {
        self.systems = systems;
        self
    }

    pub fn audit_access(&self) -> &crate::audit::AuditAccess {
        &self.audit_access
    }

    /// The disclosure policy in force.
    pub fn policy(&self) -> &Arc<DisclosurePolicy> {
        &self.policy
    }

    /// The consent and access-request registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The authenticator every API shares.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// The audit log every lookup is written to.
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Who is calling, for every API: the system from the connection's client certificate and
    /// the caseworker from the token. Each is noted in the audit draft and on the request's span
    /// as soon as it is known, so a refusal records whoever was identified. The caller has
    /// already fetched any signing keys the token needs ([`Authenticator::refresh_keys_for`]).
    pub fn authenticate(
        &self,
        credentials: &Credentials<'_>,
        draft: &mut AuditDraft,
    ) -> Result<Principal, GatewayError> {
        let span = tracing::Span::current();
        let system_name = credentials.system_name()?;
        let claims_panel = system_name.as_deref() == Some(PANEL_SYSTEM);
        if let Some(name) = &system_name {
            if claims_panel {
                // Refused below; recorded so that it cannot pass for the panel in the log.
                draft.system(&format!("{name} (client certificate, refused)"));
            } else {
                draft.system(name);
            }
            span.record("system", name.as_str());
        } else if credentials.via_panel {
            // Samblik's own panel: recorded as the system, limited by nothing but the policy.
            draft.system(PANEL_SYSTEM);
            span.record("system", PANEL_SYSTEM);
        }
        let caller = self.auth.authenticate(credentials.metadata)?;
        draft.caller(&caller);
        span.record("caller", caller.id.as_str());
        span.record("department", caller.department.as_str());
        let not_admitted = || {
            GatewayError::refused(
                Reason::SystemNotAdmitted,
                "this system's client certificate is not admitted to Samblik",
            )
        };
        let system = match system_name {
            Some(name) if claims_panel => {
                tracing::warn!(system = %name, "a client certificate claims to be the panel");
                return Err(not_admitted());
            }
            Some(name) => Some(self.systems.admit(&name).map_err(|e| {
                tracing::warn!(system = %name, error = %e, "calling system refused");
                not_admitted()
            })?),
            None => None,
        };
        Ok(Principal { caller, system })
    }

    /// A unary lookup: every source's answer at once, after its audit record is durable.
    pub async fn lookup(
        &self,
        request_id: String,
        credentials: &Credentials<'_>,
        request: &LookupRequest,
        client_timeout: Option<Duration>,
    ) -> Result<LookupResponse, GatewayError> {
        let (draft, plan) = self
            .begin(
                Action::Lookup,
                request_id,
                credentials,
                request,
                BreakGlass::IfReasonGiven,
                client_timeout,
            )
            .await?;
        let plan = &plan;
        let mut answers: Vec<(usize, Answer)> = plan
            .targets
            .iter()
            .map(|&i| async move { (i, self.ask(plan, i).await) })
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        answers.sort_unstable_by_key(|(i, _)| *i);
        let (results, entries): (Vec<_>, Vec<_>) = answers
            .into_iter()
            .map(|(_, a)| (a.result, a.audit))
            .unzip();
        draft.answered(entries).await?;
        Ok(LookupResponse {
            request_id: plan.request_id.clone(),
            sources: results,
        })
    }

    /// A streamed lookup: each source's answer as it arrives, each sent only after its own audit
    /// record is durable. When the receiver is dropped (the caller went away), outstanding source
    /// calls are cancelled and the abandonment is recorded.
    pub async fn lookup_stream(
        self: Arc<Self>,
        request_id: String,
        credentials: &Credentials<'_>,
        request: &LookupRequest,
        break_glass: BreakGlass,
        client_timeout: Option<Duration>,
    ) -> Result<mpsc::Receiver<Result<SourceResult, GatewayError>>, GatewayError> {
        let (draft, plan) = self
            .begin(
                Action::LookupStream,
                request_id,
                credentials,
                request,
                break_glass,
                client_timeout,
            )
            .await?;
        let (tx, rx) = mpsc::channel(plan.targets.len().max(1));
        let span = tracing::Span::current();
        // A panic in the fan-out ends the stream with INTERNAL, not silently.
        let on_panic = tx.clone();
        let fan_out = async move {
            let mut pending: FuturesUnordered<_> =
                plan.targets.iter().map(|&i| self.ask(&plan, i)).collect();
            loop {
                tokio::select! {
                    next = pending.next() => match next {
                        Some(answer) => {
                            if let Err(e) = draft.answered_part(answer.audit).await {
                                let _ = tx.send(Err(e)).await;
                                draft.complete();
                                return Ok(());
                            }
                            if tx.send(Ok(answer.result)).await.is_err() {
                                // Recorded but not delivered: the draft's drop records
                                // that the caller left.
                                return Ok(());
                            }
                        }
                        None => break,
                    },
                    () = tx.closed() => {
                        tracing::debug!("caller went away; cancelling source calls");
                        return Ok(());
                    }
                }
            }
            draft.complete();
            Ok::<(), GatewayError>(())
        };
        tokio::spawn(
            async move {
                if let Err(e) = crate::rpc::contained(fan_out).await {
                    let _ = on_panic.send(Err(e)).await;
                }
            }
            .instrument(span),
        );
        Ok(rx)
    }

    /// The data-protection officer's dry run: what would `request`'s caller see for the
    /// citizen, and why. Sources are asked for existence only; the answer holds case ids, types,
    /// tiers and reasons, never content. Admins only; audited.
    pub async fn explain(
        &self,
        request_id: String,
        credentials: &Credentials<'_>,
        request: &ExplainRequest,
    ) -> Result<ExplainResponse, GatewayError> {
        // The draft first: a caller who goes away while the identity provider's keys are
        // fetched is recorded as cancelled too.
        let mut draft = AuditDraft::for_request(
            Arc::clone(&self.audit),
            &request_id,
            Action::PolicyExplained,
            self.policy.version(),
            credentials,
        );
        self.auth.refresh_keys_for(credentials.metadata).await;
        let plan = match self.explain_plan(request_id, &mut draft, credentials, request) {
            Ok(plan) => plan,
            Err(e) => {
                draft.refused(&e).await?;
                return Err(e);
            }
        };
        let mut plan = plan;
        // The subject's refusal is the explanation's finding, not the admin's.
        let refusal = match self.establish(&mut plan).await {
            Ok(()) => None,
            Err(e) if e.code() == tonic::Code::Unavailable => {
                draft.refused(&e).await?;
                return Err(e);
            }
            Err(e) => Some(e),
        };
        let mut response = ExplainResponse {
            policy_version: self.policy.version().to_owned(),
            relation: plan.relation,
            refusal: refusal
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            refusal_reason: refusal
                .map(|e| e.reason().as_str().to_owned())
                .unwrap_or_default(),
            ..ExplainResponse::default()
        };
        let mut entries = Vec::new();
        if response.refusal.is_empty() {
            let plan = &plan;
            let mut fetched: Vec<(usize, Fetched)> = plan
                .targets
                .iter()
                .map(|&i| async move { (i, self.fetch_target(plan, i).await) })
                .collect::<FuturesUnordered<_>>()
                .collect()
                .await;
            fetched.sort_unstable_by_key(|(i, _)| *i);
            let facts = plan.facts();
            for (i, f) in fetched {
                let gs = &self.sources[i];
                let id = gs.id();
                let mut audited = Vec::new();
                match f {
                    Fetched::Answer { answer, .. } => {
                        for case in answer.cases {
                            if case.subject_cpr != plan.cpr.as_str() || case.existence.is_none() {
                                continue;
                            }
                            let decision = self.policy.decide(&facts, id, &case);
                            let case_type =
                                case.existence.as_ref().and_then(|e| e.case_type.clone());
                            let mut shown = self
                                .policy
                                .apply(id, case.clone(), &decision)
                                .and_then(|c| c.disclosure);
                            if shown.is_none() {
                                shown = Some(samblik_proto::v1::Disclosure {
                                    rule_ids: decision.rule_ids.to_vec(),
                                    ..Default::default()
                                });
                            }
                            // What the admin saw of the case: that it exists (tier 0: none of
                            // the tiers a caseworker is given) and its type.
                            audited.push(CaseEntry {
                                case_id: case.case_id.clone(),
                                tier: 0,
                                basis: None,
                                rule_ids: decision.rule_ids.to_vec(),
                                fields: case_type
                                    .is_some()
                                    .then(|| "existence.case_type".to_owned())
                                    .into_iter()
                                    .collect(),
                            });
                            response.cases.push(ExplainedCase {
                                source_id: id.to_owned(),
                                case_id: case.case_id,
                                case_type,
                                tier: wire_tier(decision.tier) as i32,
                                disclosure: shown,
                            });
                        }
                        entries.push(source_entry(id, SourceStatus::Ok, audited));
                    }
                    Fetched::Failed { status, detail } => {
                        entries.push(source_entry(id, status, Vec::new()));
                        response.unavailable.push(SourceResult {
                            source_id: id.to_owned(),
                            department: gs.department().to_owned(),
                            status: status as i32,
                            detail: detail.into(),
                            ..SourceResult::default()
                        });
                    }
                }
            }
        }
        draft.answered(entries).await?;
        Ok(response)
    }

    fn explain_plan(
        &self,
        request_id: String,
        draft: &mut AuditDraft,
        credentials: &Credentials<'_>,
        request: &ExplainRequest,
    ) -> Result<LookupPlan, GatewayError> {
        let Principal {
            caller: admin,
            system,
        } = self.authenticate(credentials, draft)?;
        if !admin.roles.iter().any(|r| r == "admin") {
            return Err(GatewayError::refused(
                Reason::RoleRequired,
                "explaining the policy needs the role admin",
            ));
        }
        let cpr = Cpr::parse(&request.cpr)?;
        draft.citizen(&cpr);
        let purpose = match Purpose::try_from(request.purpose) {
            Ok(Purpose::Unspecified) | Err(_) => {
                return Err(GatewayError::refused(
                    Reason::PurposeMissing,
                    "purpose is missing or not a known purpose",
                ));
            }
            Ok(p) => p,
        };
        draft.purpose(purpose);
        check_purpose(system.as_deref(), purpose)?;
        let valid = |s: &str| !s.is_empty() && s.len() <= 128;
        if !valid(&request.caller_id) || !valid(&request.caller_department) {
            return Err(GatewayError::refused(
                Reason::FieldInvalid,
                "caller_id and caller_department must name the caller to explain for",
            ));
        }
        let subject = Caller {
            id: request.caller_id.clone(),
            name: String::new(),
            department: request.caller_department.clone(),
            municipality: admin.municipality.clone(),
            roles: request.roles.clone(),
            citizen: None,
        };
        Ok(LookupPlan {
            request_id,
            roles: subject
                .roles
                .iter()
                .filter_map(|r| Role::parse(r))
                .collect(),
            caller: Arc::new(subject),
            system,
            purpose,
            cpr,
            targets: (0..self.sources.len()).collect(),
            deadline: tokio::time::Instant::now() + self.limits.default_deadline,
            break_glass_reason: request
                .break_glass
                .then(|| "explain: break-the-glass".to_owned()),
            relation: false,
            break_glass: false,
            registry: RegistryFacts::default(),
            dry_run: true,
            prefetched: Default::default(),
            _admitted: None,
        })
    }

    /// The ids of the configured sources.
    pub fn source_ids(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.id())
    }

    /// The configured sources as (id, department name), in configuration order.
    pub fn sources(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sources.iter().map(|s| (s.id(), s.department()))
    }

    /// Each source's id with a watch of its circuit (sources with a circuit breaker only).
    pub fn circuits(
        &self,
    ) -> Vec<(
        String,
        tokio::sync::watch::Receiver<source_stack::CircuitState>,
    )> {
        self.sources
            .iter()
            .filter_map(|s| Some((s.id().to_owned(), s.circuit()?)))
            .collect()
    }

    /// Opens the request's audit draft and prepares the lookup; a refusal is recorded (durably)
    /// before it is returned.
    async fn begin(
        &self,
        action: Action,
        request_id: String,
        credentials: &Credentials<'_>,
        request: &LookupRequest,
        break_glass: BreakGlass,
        client_timeout: Option<Duration>,
    ) -> Result<(AuditDraft, LookupPlan), GatewayError> {
        // The draft first: a caller who goes away while the identity provider's keys are
        // fetched is recorded as cancelled too.
        let mut draft = AuditDraft::for_request(
            Arc::clone(&self.audit),
            &request_id,
            action,
            self.policy.version(),
            credentials,
        );
        self.auth.refresh_keys_for(credentials.metadata).await;
        let prepared = self.prepare(
            request_id,
            &mut draft,
            credentials,
            request,
            break_glass,
            client_timeout,
        );
        // Admitted after the checks that need no source, so that a bad request is refused as
        // such even under load, and before any source is asked.
        let prepared =
            prepared.and_then(|mut plan| {
                let permit = Arc::clone(&self.admission).try_acquire_owned().map_err(|_| {
                GatewayError::refused(
                    Reason::Overloaded,
                    format!(
                        "the gateway is at its limit of {} lookups at once; try again shortly",
                        self.limits.max_concurrent_lookups
                    ),
                )
            })?;
                plan._admitted = Some(permit);
                Ok(plan)
            });
        let established = match prepared {
            Ok(mut plan) => {
                let established = self.establish(&mut plan).await;
                // A break-the-glass lookup is flagged even when refused for the daily limit.
                if plan.break_glass
                    && let Some(reason) = &plan.break_glass_reason
                {
                    draft.break_glass(reason);
                }
                established.map(|()| plan)
            }
            Err(e) => Err(e),
        };
        match established {
            Ok(plan) => Ok((draft, plan)),
            Err(e) => {
                draft.refused(&e).await?;
                Err(e)
            }
        }
    }

    /// Establishes the caller's relation to the citizen ([`Self::relate`]). Without a relation
    /// the lookup is refused — unless the caller breaks the glass.
    async fn establish(&self, plan: &mut LookupPlan) -> Result<(), GatewayError> {
        let relation = self.relate(plan).await?;
        if !plan.relation {
            if plan.break_glass_reason.is_none() {
                return Err(if relation.unknown {
                    GatewayError::refused(
                        Reason::RelationUnknown,
                        "your department's system did not answer, so your relation to the citizen cannot be established; nothing is disclosed",
                    )
                } else {
                    GatewayError::refused(
                        Reason::NoRelation,
                        "you have no open case for this citizen in your department; if you must look anyway, break the glass with a written reason",
                    )
                });
            }
            plan.break_glass = true;
            tracing::warn!(request_id = %plan.request_id, "break-the-glass lookup");
            self.within_break_glass_limit(plan).await?;
        }
        plan.keep_prefetched(relation.fetched);
        Ok(())
    }

    /// At most `policy.break_glass_per_day` answered break-the-glass lookups per caller per day
    /// (the review time zone's), counted in the audit log, so that every replica and every
    /// restart counts the same.
    async fn within_break_glass_limit(&self, plan: &LookupPlan) -> Result<(), GatewayError> {
        let limit = self.policy.break_glass_per_day();
        if limit == 0 {
            return Ok(());
        }
        let zone = self.audit_access.rules.timezone;
        let today = chrono::Utc::now().with_timezone(&zone).date_naive();
        let since = today
            .and_hms_opt(0, 0, 0)
            .and_then(|midnight| midnight.and_local_timezone(zone).earliest())
            .map(|midnight| midnight.with_timezone(&chrono::Utc));
        let query = AuditQuery {
            caller_id: Some(plan.caller.id.clone()),
            from: since,
            actions: vec![Action::Lookup, Action::LookupStream],
            outcomes: vec![Outcome::Answered],
            break_glass: true,
            ..AuditQuery::default()
        };
        let used = self.registry.search(query, limit).await.map_err(|e| {
            tracing::error!(error = %e, "audit log unreadable; refusing the break-the-glass lookup");
            GatewayError::refused(
                Reason::AuditLogUnreadable,
                "today's break-the-glass lookups cannot be counted right now, so nothing is disclosed; try again shortly",
            )
        })?;
        if used.len() >= limit {
            tracing::warn!(request_id = %plan.request_id, limit, "break-the-glass limit reached");
            return Err(GatewayError::refused(
                Reason::BreakGlassLimitReached,
                format!(
                    "you have broken the glass {limit} times today, as many as this municipality allows; ask your leader or the data protection officer"
                ),
            ));
        }
        Ok(())
    }

    /// Reads the citizen's consents and the caller's grants into the plan, and establishes the
    /// caller's relation to the citizen (`plan.relation`) by asking the caller's own
    /// department's sources for an open case. The own sources are asked even when the calling
    /// system may not ask them: the relation is the gateway's check, and their answers are
    /// shown only through [`Self::fetch_target`]. Fails only when the registry is unreadable.
    async fn relate(&self, plan: &mut LookupPlan) -> Result<Relation, GatewayError> {
        let (consents, grants) = futures::join!(
            self.registry.consents_for(&plan.cpr),
            self.registry.grants_for(&plan.cpr, &plan.caller.id),
        );
        let unreadable = |e: samblik_audit::AuditError| {
            tracing::error!(error = %e, "consent registry unreadable; refusing the call");
            GatewayError::refused(
                Reason::RegistryUnavailable,
                "consents and access grants cannot be read right now, so nothing is disclosed; try again shortly",
            )
        };
        plan.registry = RegistryFacts {
            consents: consents.map_err(unreadable)?,
            grants: grants.map_err(unreadable)?,
            now: chrono::Utc::now(),
        };
        let own: Vec<usize> = (0..self.sources.len())
            .filter(|&i| {
                self.policy.owner_of(self.sources[i].id()) == Some(&plan.caller.department)
            })
            .collect();
        // The own department's sources are asked as if the relation held: what they return is
        // the caller's own department's, and is shown only if it does.
        plan.relation = true;
        let asking = &*plan;
        let fetched: Vec<(usize, Fetched)> = own
            .iter()
            .map(|&i| async move { (i, self.fetch(asking, i).await) })
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        let cpr = plan.cpr.as_str();
        // An answer with a case about anyone else is not used at all (see `disclose`), so it
        // establishes nothing either.
        plan.relation = fetched.iter().any(|(_, f)| match f {
            Fetched::Answer { answer, .. } => {
                answer.cases.iter().all(|c| c.subject_cpr == cpr)
                    && answer.cases.iter().any(|c| {
                        c.existence
                            .as_ref()
                            .is_some_and(|e| e.state() == CaseState::Open)
                    })
            }
            Fetched::Failed { .. } => false,
        });
        let own_answered = fetched
            .iter()
            .any(|(_, f)| matches!(f, Fetched::Answer { .. }));
        tracing::Span::current().record("relation", plan.relation);
        Ok(Relation {
            unknown: !plan.relation && !own.is_empty() && !own_answered,
            fetched,
        })
    }

    /// A registry call about a citizen — recording their consent, filing an access request
    /// about them — needs the relation a lookup needs: an open case for the citizen in the
    /// caller's own department, established exactly as for a lookup ([`Self::relate`]), but
    /// with no break-the-glass. `doing` completes the refusal ("you may not …"). Sources are
    /// asked for existence only, and nothing they answer is shown. The plan returned can check
    /// a case with [`Self::shown_tier`].
    pub(crate) async fn require_relation(
        &self,
        request_id: &str,
        principal: &Principal,
        cpr: &Cpr,
        purpose: Purpose,
        doing: &str,
    ) -> Result<LookupPlan, GatewayError> {
        let caller = Arc::clone(&principal.caller);
        let mut plan = LookupPlan {
            request_id: request_id.to_owned(),
            roles: caller.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            caller,
            system: principal.system.clone(),
            purpose,
            cpr: cpr.clone(),
            targets: (0..self.sources.len()).collect(),
            deadline: tokio::time::Instant::now() + self.limits.default_deadline,
            break_glass_reason: None,
            relation: false,
            break_glass: false,
            registry: RegistryFacts::default(),
            dry_run: true,
            prefetched: Default::default(),
            _admitted: None,
        };
        let relation = self.relate(&mut plan).await?;
        if relation.unknown {
            return Err(GatewayError::refused(
                Reason::RelationUnknown,
                format!(
                    "your department's system did not answer, so your relation to the citizen cannot be established; you may not {doing} now, and nothing was changed"
                ),
            ));
        }
        if !plan.relation {
            return Err(GatewayError::refused(
                Reason::NoRelation,
                format!(
                    "you have no open case for this citizen in your department, so you may not {doing}"
                ),
            ));
        }
        plan.keep_prefetched(relation.fetched);
        Ok(plan)
    }

    /// The tier `plan`'s caller is shown now of case `case_id` of source `source_id`, asking the
    /// source. NOT_FOUND when the source holds no such case for the citizen — or holds one the
    /// policy hides from the caller: the answer never tells a hidden case from a missing one.
    pub(crate) async fn shown_tier(
        &self,
        plan: &LookupPlan,
        source_id: &str,
        case_id: &str,
    ) -> Result<samblik_policy::Tier, GatewayError> {
        let index = self.select_sources(&[source_id.to_owned()])?[0];
        match self.fetch_target(plan, index).await {
            Fetched::Answer { answer, .. } => {
                let facts = plan.facts();
                let tier = answer
                    .cases
                    .iter()
                    .find(|c| {
                        c.case_id == case_id
                            && c.subject_cpr == plan.cpr.as_str()
                            && c.existence.is_some()
                    })
                    .map_or(samblik_policy::Tier::Hidden, |c| {
                        self.policy.decide(&facts, source_id, c).tier
                    });
                if tier == samblik_policy::Tier::Hidden {
                    Err(GatewayError::refused(
                        Reason::CaseNotFound,
                        "the department holds no such case for this citizen",
                    ))
                } else {
                    Ok(tier)
                }
            }
            Fetched::Failed {
                status: SourceStatus::Denied,
                detail,
            } => Err(GatewayError::refused(
                Reason::SourceDenied,
                format!("{detail}, so the case cannot be checked"),
            )),
            Fetched::Failed { detail, .. } => Err(GatewayError::refused(
                Reason::SourceUnavailable,
                format!("{detail}, so the case cannot be checked; nothing was changed"),
            )),
        }
    }

    /// Authenticates and validates a request, noting what it learns in the audit draft.
    /// Nothing is asked of any source before this succeeds. `client_timeout` is the caller's
    /// `grpc-timeout`, if it sent one. The caller has already fetched any signing keys the token
    /// needs ([`Authenticator::refresh_keys_for`]), so this stays synchronous.
    fn prepare(
        &self,
        request_id: String,
        draft: &mut AuditDraft,
        credentials: &Credentials<'_>,
        request: &LookupRequest,
        break_glass: BreakGlass,
        client_timeout: Option<Duration>,
    ) -> Result<LookupPlan, GatewayError> {
        let started = tokio::time::Instant::now();
        let principal = self.authenticate(credentials, draft)?;
        self.validate(
            started,
            request_id,
            principal,
            request,
            break_glass,
            client_timeout,
            draft,
        )
    }

    /// Validates an authenticated caller's request into a plan, noting the citizen and the
    /// purpose as soon as each is known, so a refusal after them records them. Separate from
    /// [`Self::prepare`] so that the fuzz target drives it without an audit log.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn validate(
        &self,
        started: tokio::time::Instant,
        request_id: String,
        principal: Principal,
        request: &LookupRequest,
        break_glass: BreakGlass,
        client_timeout: Option<Duration>,
        notes: &mut impl RequestNotes,
    ) -> Result<LookupPlan, GatewayError> {
        let Principal { caller, system } = principal;
        self.request_size(request)?;
        let cpr = Cpr::parse(&request.cpr)?;
        notes.citizen(&cpr);
        let purpose = match Purpose::try_from(request.purpose) {
            Ok(Purpose::Unspecified) => {
                return Err(GatewayError::refused(
                    Reason::PurposeMissing,
                    "purpose is missing: say why you are looking (e.g. PURPOSE_PREPARE_MEETING)",
                ));
            }
            Ok(p) => p,
            Err(_) => {
                return Err(GatewayError::refused(
                    Reason::PurposeMissing,
                    "purpose is not a known purpose",
                ));
            }
        };
        notes.purpose(purpose);
        tracing::Span::current().record("purpose", purpose.code());
        check_purpose(system.as_deref(), purpose)?;
        let break_glass_reason =
            self.break_glass_reason(&request.break_glass_reason, break_glass)?;
        let roles = caller.roles.iter().filter_map(|r| Role::parse(r)).collect();
        let targets = self.select_sources(&request.sources)?;
        let budget = client_timeout
            .map(|t| t.saturating_sub((t / 2).min(self.limits.answer_margin)))
            .unwrap_or(self.limits.default_deadline)
            .min(self.limits.max_deadline);
        Ok(LookupPlan {
            request_id,
            caller,
            system,
            purpose,
            cpr,
            targets,
            deadline: started + budget,
            roles,
            break_glass_reason,
            relation: false,
            break_glass: false,
            registry: RegistryFacts::default(),
            dry_run: false,
            prefetched: Default::default(),
            _admitted: None,
        })
    }

    /// Refuses a request larger than `server.max_request_bytes`, as validation does before it
    /// reads anything of it.
    pub fn request_size(&self, request: &LookupRequest) -> Result<(), GatewayError> {
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(GatewayError::refused(
                Reason::RequestTooLarge,
                format!(
                    "request is larger than {} bytes",
                    self.limits.max_request_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A lookup's break-the-glass reason, trimmed, as validation reads it: `None` for an
    /// ordinary lookup, an error for a reason the lookup is refused for.
    pub fn break_glass_reason(
        &self,
        reason: &str,
        break_glass: BreakGlass,
    ) -> Result<Option<String>, GatewayError> {
        let min = self.policy.break_glass_min_reason();
        match reason.trim() {
            "" if break_glass == BreakGlass::IfReasonGiven => Ok(None),
            r if r.chars().count() < min => Err(GatewayError::refused(
                Reason::BreakGlassReasonMissing,
                format!("a break-the-glass reason must say why in at least {min} characters"),
            )),
            // Auditors read the reason on their terminals: an escape sequence or a line break
            // in it could rewrite what they see.
            r if r.chars().any(char::is_control) => Err(GatewayError::refused(
                Reason::BreakGlassReasonInvalid,
                "a break-the-glass reason must be plain text on one line, without control \
                 characters",
            )),
            r => Ok(Some(r.to_owned())),
        }
    }

    fn select_sources(&self, filter: &[String]) -> Result<Vec<usize>, GatewayError> {
        if filter.is_empty() {
            return Ok((0..self.sources.len()).collect());
        }
        if filter.len() > MAX_SOURCE_FILTER {
            return Err(GatewayError::refused(
                Reason::FieldInvalid,
                format!("at most {MAX_SOURCE_FILTER} sources may be named"),
            ));
        }
        let mut targets = Vec::with_capacity(filter.len());
        for id in filter {
            let index = self
                .sources
                .iter()
                .position(|s| s.id() == id)
                .ok_or_else(|| {
                    // Source ids are configuration, not personal data: safe to echo (bounded).
                    let shown: String = id.chars().take(64).collect();
                    GatewayError::refused(
                        Reason::UnknownSource,
                        format!("unknown source {shown:?}"),
                    )
                })?;
            if !targets.contains(&index) {
                targets.push(index);
            }
        }
        targets.sort_unstable();
        Ok(targets)
    }

    /// One source's part of the answer: its call (or the answer fetched to establish the
    /// relation), the policy's decisions and the filtering.
    async fn ask(&self, plan: &LookupPlan, index: usize) -> Answer {
        #[cfg(feature = "testing")]
        crate::testing::panic_if_asked(&plan.caller.id);
        let fetched = self.fetch_target(plan, index).await;
        let gs = &self.sources[index];
        let id = gs.id();
        let mut result = SourceResult {
            source_id: id.to_owned(),
            department: gs.department().to_owned(),
            ..SourceResult::default()
        };
        let mut audited = Vec::new();
        let mut flag = None;
        match fetched {
            Fetched::Answer { answer, asked } => match self.disclose(plan, id, asked, answer.cases)
            {
                Ok(cases) => {
                    result.status = SourceStatus::Ok as i32;
                    result.as_of = Some(answer.as_of.into());
                    for (case, decision) in cases {
                        audited.push(case_entry(&case, &decision));
                        result.cases.push(case);
                    }
                }
                Err(Rejected::Malformed(reason)) => {
                    tracing::warn!(source = %id, reason, "source answer rejected");
                    result.status = SourceStatus::Error as i32;
                    result.detail = "the department's system answered with invalid data".into();
                }
                Err(Rejected::ForeignCitizen) => {
                    // A security event: a wrong mapping or a broken adapter in the department's
                    // system. Nothing of the answer is used; the auditors see the flag.
                    tracing::error!(source = %id, "source answered about another citizen; its whole answer was dropped");
                    result.status = SourceStatus::Error as i32;
                    result.detail =
                        "the department's system answered about another citizen; its answer was not used"
                            .into();
                    flag = Some(FOREIGN_CITIZEN);
                }
            },
            Fetched::Failed { status, detail } => {
                result.status = status as i32;
                result.detail = detail.into();
            }
        }
        let mut audit = source_entry(id, result.status(), audited);
        audit.flag = flag.map(str::to_owned);
        Answer { audit, result }
    }

    /// What a target of the lookup brought back: nothing, without a call, when the calling system
    /// may not ask it; else the answer fetched to establish the relation, or a call of its own.
    async fn fetch_target(&self, plan: &LookupPlan, index: usize) -> Fetched {
        let id = self.sources[index].id();
        if plan.system.as_ref().is_some_and(|s| !s.may_ask(id)) {
            return Fetched::Failed {
                status: SourceStatus::Denied,
                detail: "the calling system may not ask this department",
            };
        }
        match plan.take_prefetched(index) {
            Some(f) => f,
            None => self.fetch(plan, index).await,
        }
    }

    /// One source call through its stack, at the highest tier the policy could grant from it,
    /// under the lookup's deadline.
    async fn fetch(&self, plan: &LookupPlan, index: usize) -> Fetched {
        let max_tier = self.asked_tier(plan, index);
        let call = SourceCall {
            query: CaseQuery {
                cpr: plan.cpr.clone(),
                max_tier,
                // Set by the stack's deadline layer, which knows the source's own timeout.
                deadline: None,
            },
            caller: CallerContext {
                request_id: plan.request_id.clone(),
                caller_id: plan.caller.id.clone(),
                caller_department: plan.caller.department.clone(),
                municipality: plan.caller.municipality.clone(),
                purpose: plan.purpose as i32,
            },
            deadline: plan.deadline,
        };
        match self.sources[index].call(call).await {
            Ok(answer) => Fetched::Answer {
                answer,
                asked: max_tier,
            },
            Err(error) => {
                let (status, detail) = failure_status(&error);
                Fetched::Failed { status, detail }
            }
        }
    }

    /// The tier source `index` is asked for: the highest the policy could grant from it.
    pub(crate) fn asked_tier(&self, plan: &LookupPlan, index: usize) -> Tier {
        // A source whose every case would be hidden is still asked (for existence only), so
        // neither the answer's timing nor its as-of time tells the policy's outcome.
        if plan.dry_run {
            Tier::Existence
        } else {
            wire_tier(self.policy.ceiling(&plan.facts(), self.sources[index].id()))
                .max(Tier::Existence)
        }
    }

    /// Decides and filters one source's cases. A case about another citizen makes the whole
    /// answer untrustworthy (the source has mixed up whom it is answering about), and a
    /// malformed case makes it unusable (it could hide that a case exists): either way none of
    /// it is shown.
    pub(crate) fn disclose(
        &self,
        plan: &LookupPlan,
        source_id: &str,
        asked: Tier,
        cases: Vec<samblik_proto::v1::Case>,
    ) -> Result<Vec<(samblik_proto::v1::Case, Decision)>, Rejected> {
        if cases.iter().any(|c| c.subject_cpr != plan.cpr.as_str()) {
            return Err(Rejected::ForeignCitizen);
        }
        let facts = plan.facts();
        let mut disclosed = Vec::with_capacity(cases.len());
        for mut case in cases {
            if case.case_id.is_empty() || case.existence.is_none() {
                return Err(Rejected::Malformed("case without id or existence part"));
            }
            if case.carried_tier() > asked {
                // Not the case id: it is the department's data, and could be anything.
                tracing::warn!(source = %source_id, "source sent fields above the asked tier; dropped");
                case.restrict_to(asked);
            }
            let decision = self.policy.decide(&facts, source_id, &case);
            if let Some(case) = self.policy.apply(source_id, case, &decision) {
                disclosed.push((case, decision));
            }
        }
        Ok(disclosed)
    }
}

/// Why a source's answer was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// A case about someone other than the citizen asked about.
    ForeignCitizen,
    /// A case the gateway cannot judge; what is wrong with it.
    Malformed(&'static str),
}

/// What validation notes about a request as it learns it: the audit draft, in production.
pub(crate) trait RequestNotes {
    fn citizen(&mut self, cpr: &Cpr);
    fn purpose(&mut self, purpose: Purpose);
}

impl RequestNotes for AuditDraft {
    fn citizen(&mut self, cpr: &Cpr) {
        AuditDraft::citizen(self, cpr);
    }

    fn purpose(&mut self, purpose: Purpose) {
        AuditDraft::purpose(self, purpose);
    }
}

fn case_entry(case: &samblik_proto::v1::Case, decision: &Decision) -> CaseEntry {
    CaseEntry {
        case_id: case.case_id.clone(),
        tier: u8::try_from(case.tier).unwrap_or(0),
        basis: decision.basis.as_ref().map(ToString::to_string),
        rule_ids: decision.rule_ids.to_vec(),
        fields: disclosed_fields(case),
    }
}

/// Refuses a purpose the calling system may not look up for.
fn check_purpose(system: Option<&CallingSystem>, purpose: Purpose) -> Result<(), GatewayError> {
    match system {
        Some(s) if !s.may_look_up_for(purpose) => Err(GatewayError::refused(
            Reason::PurposeNotAllowed,
            format!(
                "the calling system may not look up for the purpose {}",
                purpose.code()
            ),
        )),
        _ => Ok(()),
    }
}

/// The lookup pipeline's fuzz entry points (feature `fuzzing`): see [`crate::fuzzing`].
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz {
    use super::*;

    /// What validation made of a lookup request.
    #[derive(Debug)]
    pub struct Validated {
        /// The normalised CPR number.
        pub cpr: String,
        pub purpose: Purpose,
        pub break_glass_reason: Option<String>,
        /// The sources to ask, by id, in configuration order.
        pub targets: Vec<String>,
        pub roles: Vec<Role>,
        /// Time left until the lookup's deadline.
        pub budget: Duration,
        /// What the audit draft would have been told.
        pub noted_citizen: Option<String>,
        pub noted_purpose: Option<Purpose>,
        /// Per relation (absent, found) and target: the source, the policy's ceiling for it and
        /// the tier it would be asked for.
        pub asked: Vec<(bool, String, samblik_policy::Tier, Tier)>,
    }

    /// What the pipeline made of one source's answer.
    #[derive(Debug)]
    pub struct Disclosed {
        /// The normalised CPR number asked about.
        pub cpr: String,
        /// The source answering: the request's first target.
        pub source_id: String,
        /// The tier it was asked for.
        pub asked: Tier,
        /// The cases shown, each with the policy's tier, or why the whole answer was refused.
        pub cases: Result<Vec<(samblik_proto::v1::Case, samblik_policy::Tier)>, &'static str>,
    }

    /// What validation noted, in place of the audit draft.
    #[derive(Default)]
    struct Noted {
        citizen: Option<String>,
        purpose: Option<Purpose>,
    }

    impl RequestNotes for Noted {
        fn citizen(&mut self, cpr: &Cpr) {
            self.citizen = Some(cpr.as_str().to_owned());
        }

        fn purpose(&mut self, purpose: Purpose) {
            self.purpose = Some(purpose);
        }
    }

    fn plan(
        pipeline: &LookupPipeline,
        principal: Principal,
        request: &LookupRequest,
        break_glass: BreakGlass,
        client_timeout: Option<Duration>,
        noted: &mut Noted,
    ) -> Result<LookupPlan, GatewayError> {
        pipeline.validate(
            tokio::time::Instant::now(),
            "fuzz".into(),
            principal,
            request,
            break_glass,
            client_timeout,
            noted,
        )
    }

    /// The plan as [`LookupPipeline::establish`] leaves it when the relation is (or is not)
    /// found, before a break-the-glass lookup's daily limit.
    fn relate(plan: &mut LookupPlan, relation: bool) {
        plan.relation = relation;
        plan.break_glass = !relation && plan.break_glass_reason.is_some();
    }

    /// Validates `request` from `principal` into a plan (the pipeline's own validation,
    /// authentication aside) and computes the policy facts and ceilings each target is asked
    /// with.
    pub fn validate_lookup(
        pipeline: &LookupPipeline,
        principal: Principal,
        request: &LookupRequest,
        break_glass: BreakGlass,
        client_timeout: Option<Duration>,
    ) -> Result<Validated, GatewayError> {
        let mut noted = Noted::default();
        let result = plan(
            pipeline,
            principal,
            request,
            break_glass,
            client_timeout,
            &mut noted,
        );
        let mut plan = result?;
        let budget = plan
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let mut asked = Vec::new();
        for relation in [false, true] {
            relate(&mut plan, relation);
            for &i in &plan.targets {
                let facts = plan.facts();
                let ceiling = pipeline.policy.ceiling(&facts, pipeline.sources[i].id());
                asked.push((
                    relation,
                    pipeline.sources[i].id().to_owned(),
                    ceiling,
                    pipeline.asked_tier(&plan, i),
                ));
            }
        }
        Ok(Validated {
            cpr: plan.cpr.as_str().to_owned(),
            purpose: plan.purpose,
            break_glass_reason: plan.break_glass_reason.clone(),
            targets: plan
                .targets
                .iter()
                .map(|&i| pipeline.sources[i].id().to_owned())
                .collect(),
            roles: plan.roles.clone(),
            budget,
            noted_citizen: noted.citizen,
            noted_purpose: noted.purpose,
            asked,
        })
    }

    /// Decodes `answer` as the request's first target's response on the wire and filters it as
    /// a lookup by `principal` would, with the relation `relation`. `None` when `request` does
    /// not validate.
    pub fn disclose_answer(
        pipeline: &LookupPipeline,
        principal: Principal,
        request: &LookupRequest,
        relation: bool,
        answer: &[u8],
    ) -> Option<Disclosed> {
        let mut plan = plan(
            pipeline,
            principal,
            request,
            BreakGlass::IfReasonGiven,
            None,
            &mut Noted::default(),
        )
        .ok()?;
        relate(&mut plan, relation);
        let index = *plan.targets.first()?;
        let source_id = pipeline.sources[index].id().to_owned();
        let asked = pipeline.asked_tier(&plan, index);
        let cases = samblik_adapters::decode_answer(answer)
            .map_err(|_| "the source's answer is not usable")
            .and_then(|answer| {
                pipeline
                    .disclose(&plan, &source_id, asked, answer.cases)
                    .map_err(|rejected| match rejected {
                        Rejected::ForeignCitizen => "a case about another citizen",
                        Rejected::Malformed(why) => why,
                    })
            });
        Some(Disclosed {
            cpr: plan.cpr.as_str().to_owned(),
            source_id,
            asked,
            cases: cases.map(|cases| {
                cases
                    .into_iter()
                    .map(|(case, decision)| (case, decision.tier))
                    .collect()
            }),
        })
    }
}
