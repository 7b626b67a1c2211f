//! The lookup pipeline: authenticate → validate → plan → fan out → decide → filter → audit →
//! respond.
//!
//! Every source is asked concurrently under one overall deadline, each also under its own
//! timeout. A source that is slow, down or answers nonsense yields an explicit status for that
//! source while the others are served; nothing is ever silently missing. Every path — answered,
//! refused, abandoned — leaves an audit record, and an answer leaves only after its record is
//! durable.

use crate::audit::{AuditDraft, disclosed_fields, source_entry};
use crate::auth::{Authenticator, Caller};
use crate::error::GatewayError;
use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use samblik_adapters::{CaseQuery, Source, SourceError};
use samblik_audit::{Action, AuditLog, CaseEntry, SourceEntry};
use samblik_policy::{CaseFacts, Decision, LookupFacts, MinimumVariation, POLICY_VERSION};
use samblik_proto::Cpr;
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::{LookupRequest, LookupResponse, Purpose, SourceResult, SourceStatus, Tier};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

/// Most sources one request may name in its filter.
const MAX_SOURCE_FILTER: usize = 64;

/// One configured source with what the gateway applies around it.
pub struct GatewaySource {
    pub source: Arc<dyn Source>,
    /// The department's name as shown to caseworkers.
    pub department: String,
    /// The longest this source may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for GatewaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySource")
            .field("id", &self.source.id())
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
}

impl LookupLimits {
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            default_deadline: server.default_deadline(),
            max_deadline: server.max_deadline(),
            answer_margin: server.answer_margin(),
            max_request_bytes: server.max_request_bytes,
        }
    }
}

/// The gateway's lookup pipeline, shared by the gRPC API (and later the panel).
#[derive(Debug)]
pub struct LookupPipeline {
    auth: Authenticator,
    policy: MinimumVariation,
    sources: Vec<GatewaySource>,
    limits: LookupLimits,
    audit: Arc<AuditLog>,
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
    pub purpose: Purpose,
    cpr: Cpr,
    /// Indexes into the pipeline's sources, in configuration order.
    targets: Vec<usize>,
    deadline: Instant,
}

impl LookupPipeline {
    pub fn new(
        auth: Authenticator,
        sources: Vec<GatewaySource>,
        limits: LookupLimits,
        audit: Arc<AuditLog>,
    ) -> Self {
        LookupPipeline {
            auth,
            policy: MinimumVariation,
            sources,
            limits,
            audit,
        }
    }

    /// The audit log every lookup is written to.
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// A unary lookup: every source's answer at once, after its audit record is durable.
    pub async fn lookup(
        &self,
        request_id: String,
        metadata: &tonic::metadata::MetadataMap,
        request: &LookupRequest,
        client_timeout: Option<Duration>,
    ) -> Result<LookupResponse, GatewayError> {
        let (draft, plan) = self
            .begin(
                Action::Lookup,
                request_id,
                metadata,
                request,
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
        metadata: &tonic::metadata::MetadataMap,
        request: &LookupRequest,
        client_timeout: Option<Duration>,
    ) -> Result<mpsc::Receiver<Result<SourceResult, GatewayError>>, GatewayError> {
        let (draft, plan) = self
            .begin(
                Action::LookupStream,
                request_id,
                metadata,
                request,
                client_timeout,
            )
            .await?;
        let (tx, rx) = mpsc::channel(plan.targets.len().max(1));
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let mut pending: FuturesUnordered<_> =
                    plan.targets.iter().map(|&i| self.ask(&plan, i)).collect();
                loop {
                    tokio::select! {
                        next = pending.next() => match next {
                            Some(answer) => {
                                if let Err(e) = draft.answered_part(answer.audit).await {
                                    let _ = tx.send(Err(e)).await;
                                    draft.complete();
                                    return;
                                }
                                if tx.send(Ok(answer.result)).await.is_err() {
                                    // Recorded but not delivered: the draft's drop records
                                    // that the caller left.
                                    return;
                                }
                            }
                            None => break,
                        },
                        () = tx.closed() => {
                            tracing::debug!("caller went away; cancelling source calls");
                            return;
                        }
                    }
                }
                draft.complete();
            }
            .instrument(span),
        );
        Ok(rx)
    }

    /// The ids of the configured sources.
    pub fn source_ids(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.source.id())
    }

    /// Opens the request's audit draft and prepares the lookup; a refusal is recorded (durably)
    /// before it is returned.
    async fn begin(
        &self,
        action: Action,
        request_id: String,
        metadata: &tonic::metadata::MetadataMap,
        request: &LookupRequest,
        client_timeout: Option<Duration>,
    ) -> Result<(AuditDraft, LookupPlan), GatewayError> {
        self.auth.refresh_keys_for(metadata).await;
        let mut draft =
            AuditDraft::new(Arc::clone(&self.audit), &request_id, action, POLICY_VERSION);
        match self.prepare(request_id, &mut draft, metadata, request, client_timeout) {
            Ok(plan) => Ok((draft, plan)),
            Err(e) => {
                draft.refused(&e).await?;
                Err(e)
            }
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
        metadata: &tonic::metadata::MetadataMap,
        request: &LookupRequest,
        client_timeout: Option<Duration>,
    ) -> Result<LookupPlan, GatewayError> {
        let started = Instant::now();
        let caller = self.auth.authenticate(metadata)?;
        draft.caller(&caller);
        record_caller(&caller);
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(GatewayError::InvalidRequest(format!(
                "request is larger than {} bytes",
                self.limits.max_request_bytes
            )));
        }
        let cpr = Cpr::parse(&request.cpr)?;
        draft.citizen(&cpr);
        let purpose = match Purpose::try_from(request.purpose) {
            Ok(Purpose::Unspecified) => {
                return Err(GatewayError::InvalidRequest(
                    "purpose is missing: say why you are looking (e.g. PURPOSE_PREPARE_MEETING)"
                        .into(),
                ));
            }
            Ok(p) => p,
            Err(_) => {
                return Err(GatewayError::InvalidRequest(
                    "purpose is not a known purpose".into(),
                ));
            }
        };
        draft.purpose(purpose);
        tracing::Span::current().record("purpose", purpose.code());
        let targets = self.select_sources(&request.sources)?;
        let budget = client_timeout
            .map(|t| t.saturating_sub((t / 2).min(self.limits.answer_margin)))
            .unwrap_or(self.limits.default_deadline)
            .min(self.limits.max_deadline);
        Ok(LookupPlan {
            request_id,
            caller,
            purpose,
            cpr,
            targets,
            deadline: started + budget,
        })
    }

    fn select_sources(&self, filter: &[String]) -> Result<Vec<usize>, GatewayError> {
        if filter.is_empty() {
            return Ok((0..self.sources.len()).collect());
        }
        if filter.len() > MAX_SOURCE_FILTER {
            return Err(GatewayError::InvalidRequest(format!(
                "at most {MAX_SOURCE_FILTER} sources may be named"
            )));
        }
        let mut targets = Vec::with_capacity(filter.len());
        for id in filter {
            let index = self
                .sources
                .iter()
                .position(|s| s.source.id() == id)
                .ok_or_else(|| {
                    // Source ids are configuration, not personal data: safe to echo (bounded).
                    let shown: String = id.chars().take(64).collect();
                    GatewayError::InvalidRequest(format!("unknown source {shown:?}"))
                })?;
            if !targets.contains(&index) {
                targets.push(index);
            }
        }
        targets.sort_unstable();
        Ok(targets)
    }

    /// One source call, with the gateway's timeout, policy and filtering around it.
    async fn ask(&self, plan: &LookupPlan, index: usize) -> Answer {
        let gs = &self.sources[index];
        let id = gs.source.id();
        let span = tracing::info_span!(
            "source_call",
            source = %id,
            request_id = %plan.request_id,
            status = tracing::field::Empty,
            cases = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let lookup_facts = LookupFacts {
                caller_department: &plan.caller.department,
                source_id: id,
            };
            let max_tier = to_wire_tier(self.policy.ceiling(&lookup_facts));
            let query = CaseQuery {
                cpr: plan.cpr.clone(),
                max_tier,
            };
            let caller = CallerContext {
                request_id: plan.request_id.clone(),
                caller_id: plan.caller.id.clone(),
                caller_department: plan.caller.department.clone(),
                municipality: plan.caller.municipality.clone(),
                purpose: plan.purpose as i32,
            };
            let deadline = plan.deadline.min(started + gs.timeout);
            let outcome =
                tokio::time::timeout_at(deadline.into(), gs.source.find_cases(query, caller)).await;
            let mut result = SourceResult {
                source_id: id.to_owned(),
                department: gs.department.clone(),
                ..SourceResult::default()
            };
            let mut audited = Vec::new();
            match outcome {
                Ok(Ok(answer)) => match self.disclose(plan, id, max_tier, answer.cases) {
                    Ok(cases) => {
                        result.status = SourceStatus::Ok as i32;
                        result.as_of = Some(answer.as_of.into());
                        for (case, decision) in cases {
                            audited.push(case_entry(&case, &decision));
                            result.cases.push(case);
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(source = %id, reason, "source answer rejected");
                        result.status = SourceStatus::Error as i32;
                        result.detail = "the department's system answered with invalid data".into();
                    }
                },
                Ok(Err(error)) => {
                    tracing::warn!(source = %id, error = %error, "source lookup failed");
                    let (status, detail) = match error {
                        SourceError::Timeout => (
                            SourceStatus::Timeout,
                            "the department's system did not answer in time",
                        ),
                        SourceError::Unavailable(_) => (
                            SourceStatus::Unavailable,
                            "the department's system is unavailable",
                        ),
                        SourceError::Denied(_) => (
                            SourceStatus::Denied,
                            "the department's system refused the lookup",
                        ),
                        SourceError::InvalidQuery(_) | SourceError::Failed(_) => {
                            (SourceStatus::Error, "the department's system failed")
                        }
                    };
                    result.status = status as i32;
                    result.detail = detail.into();
                }
                Err(_elapsed) => {
                    tracing::warn!(source = %id, "source lookup timed out");
                    result.status = SourceStatus::Timeout as i32;
                    result.detail = "the department's system did not answer in time".into();
                }
            }
            let span = tracing::Span::current();
            span.record("status", result.status().as_str_name());
            span.record("cases", result.cases.len());
            span.record("elapsed_ms", started.elapsed().as_millis() as u64);
            Answer {
                audit: source_entry(id, result.status(), audited),
                result,
            }
        }
        .instrument(span)
        .await
    }

    /// Decides and filters one source's cases. Cases about another citizen are dropped; a
    /// malformed case makes the whole answer unusable (it could hide that a case exists).
    fn disclose(
        &self,
        plan: &LookupPlan,
        source_id: &str,
        asked: Tier,
        cases: Vec<samblik_proto::v1::Case>,
    ) -> Result<Vec<(samblik_proto::v1::Case, Decision)>, &'static str> {
        let mut disclosed = Vec::with_capacity(cases.len());
        let mut foreign = 0usize;
        for mut case in cases {
            if case.subject_cpr != plan.cpr.as_str() {
                foreign += 1;
                continue;
            }
            let case_type = match &case.existence {
                Some(e) if !case.case_id.is_empty() => e
                    .case_type
                    .as_ref()
                    .map(|t| t.code.clone())
                    .unwrap_or_default(),
                _ => return Err("case without id or existence part"),
            };
            if case.carried_tier() > asked {
                tracing::warn!(source = %source_id, case_id = %case.case_id, "source sent fields above the asked tier; dropped");
            }
            let decision = self.policy.decide(&CaseFacts {
                lookup: LookupFacts {
                    caller_department: &plan.caller.department,
                    source_id,
                },
                case_type: &case_type,
            });
            let tier = to_wire_tier(decision.tier).min(asked);
            if tier == Tier::Hidden {
                continue;
            }
            case.restrict_to(tier);
            // The caller knows whom they asked about; the number need not travel again.
            case.subject_cpr.clear();
            disclosed.push((case, decision));
        }
        if foreign > 0 {
            tracing::warn!(source = %source_id, dropped = foreign, "source returned cases of another citizen; dropped");
        }
        Ok(disclosed)
    }
}

fn case_entry(case: &samblik_proto::v1::Case, decision: &Decision) -> CaseEntry {
    CaseEntry {
        case_id: case.case_id.clone(),
        tier: u8::try_from(case.tier).unwrap_or(0),
        basis: decision.basis.as_ref().map(|b| b.as_str().to_owned()),
        rule_ids: decision.rule_ids.iter().map(|r| (*r).to_owned()).collect(),
        fields: disclosed_fields(case),
    }
}

/// Notes the authenticated caller on the request's span.
fn record_caller(caller: &Caller) {
    let span = tracing::Span::current();
    span.record("caller", caller.id.as_str());
    span.record("department", caller.department.as_str());
}

fn to_wire_tier(tier: samblik_policy::Tier) -> Tier {
    match tier {
        samblik_policy::Tier::Hidden => Tier::Hidden,
        samblik_policy::Tier::Existence => Tier::Existence,
        samblik_policy::Tier::Selected => Tier::Selected,
        samblik_policy::Tier::Full => Tier::Full,
    }
}

/// Parses a `grpc-timeout` header value (e.g. `1500m`, `2S`): up to 8 digits and a unit.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("250000u"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "10", "10x", "-1S", "123456789S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
