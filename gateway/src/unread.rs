//! Requests that tonic refuses before any handler runs — a message over
//! `limits.max_message_bytes`, or one that is not a protobuf of the method's type — are audited
//! here ([`UnreadAuditLayer`]), and so are requests dropped before any handler claimed their
//! record ([`RecordClaim`]): every request to an audited service leaves its record.
//!
//! How a response no handler wrote is told apart: `docs/architecture.md`.

use crate::audit::AuditDraft;
use crate::context::{Credentials, RecordClaim};
use crate::error::{GatewayError, REQUEST_ID_HEADER, Reason, refusal_status};
use crate::lookup::LookupPipeline;
use futures::future::BoxFuture;
use samblik_audit::Action;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Code;
use tonic::body::Body;
use tracing::Instrument;

/// The audited action of a gRPC method path; `None` for services that are not audited (health,
/// reflection) and for methods no service has.
pub fn action_of(path: &str) -> Option<Action> {
    Some(match path.strip_prefix("/samblik.v1.")? {
        "LookupService/Lookup" => Action::Lookup,
        "LookupService/LookupStream" => Action::LookupStream,
        "PolicyService/Explain" => Action::PolicyExplained,
        "ConsentService/RecordConsent" => Action::ConsentRecorded,
        "ConsentService/WithdrawConsent" => Action::ConsentWithdrawn,
        "ConsentService/ListConsents" => Action::ConsentsListed,
        "AccessRequestService/FileRequest" => Action::AccessRequested,
        "AccessRequestService/ListRequests" => Action::RequestsListed,
        "AccessRequestService/DecideRequest" => Action::AccessDecided,
        "AuditService/Search" => Action::AuditSearched,
        "AuditService/Export" => Action::AuditExported,
        "AuditService/Verify" => Action::AuditVerified,
        "AuditService/ReviewQueue" => Action::ReviewQueueRead,
        "AuditService/MarkReviewed" => Action::ReviewMarked,
        "AuditService/MyAccessLog" => Action::CitizenViewed,
        _ => return None,
    })
}

/// Audits the requests of audited services that no handler read (see `docs/architecture.md`,
/// "Requests no handler read").
#[derive(Debug, Clone)]
pub struct UnreadAuditLayer {
    pipeline: Arc<LookupPipeline>,
}

impl UnreadAuditLayer {
    pub fn new(pipeline: Arc<LookupPipeline>) -> Self {
        UnreadAuditLayer { pipeline }
    }
}

impl<S> tower::Layer<S> for UnreadAuditLayer {
    type Service = UnreadAudit<S>;

    fn layer(&self, inner: S) -> UnreadAudit<S> {
        UnreadAudit {
            inner,
            pipeline: Arc::clone(&self.pipeline),
        }
    }
}

/// The service [`UnreadAuditLayer`] wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct UnreadAudit<S> {
    inner: S,
    pipeline: Arc<LookupPipeline>,
}

impl<S, B> tower::Service<http::Request<B>> for UnreadAudit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(action) = action_of(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let claim = RecordClaim::default();
        request.extensions_mut().insert(claim.clone());
        // Who is calling (token, client certificate) — never the message.
        let mut caller = http::Request::new(());
        *caller.headers_mut() = request.headers().clone();
        *caller.extensions_mut() = request.extensions().clone();
        let pipeline = Arc::clone(&self.pipeline);
        let unanswered = Unanswered {
            pipeline: Arc::clone(&pipeline),
            action,
            caller: Some(caller),
            claim,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let caller = unanswered.answered();
            match refused_unread(&response) {
                Some(refused) => Ok(record(&pipeline, action, refused, caller).await),
                None => Ok(response),
            }
        })
    }
}

/// An audited request the routes have not answered yet. Dropped so, with no handler's draft
/// claiming its record, it records the request as abandoned (see `docs/architecture.md`,
/// "Requests no handler read").
struct Unanswered {
    pipeline: Arc<LookupPipeline>,
    action: Action,
    caller: Option<http::Request<()>>,
    claim: RecordClaim,
}

impl Unanswered {
    /// The routes answered: the answer's check takes over. Returns the caller's headers.
    fn answered(mut self) -> http::Request<()> {
        self.caller.take().unwrap_or_default()
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(caller) = self.caller.take()
            && !self.claim.is_claimed()
        {
            record_abandoned(&self.pipeline, self.action, caller);
        }
    }
}

/// Records, without waiting (the request is being dropped), a request that ended before any
/// handler read it. The caller is named if the token verifies with the keys at hand: there is
/// no waiting for the identity provider here.
fn record_abandoned(pipeline: &LookupPipeline, action: Action, caller: http::Request<()>) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("unread", request_id = %request_id, action = ?action);
    let _entered = span.enter();
    let caller = tonic::Request::from_http(caller);
    let credentials = Credentials::of(&caller);
    let mut draft = AuditDraft::new(
        Arc::clone(pipeline.audit_log()),
        &request_id,
        action,
        pipeline.policy().version(),
    );
    if let Err(e) = pipeline.authenticate(&credentials, &mut draft) {
        tracing::info!(error = %e, "abandoned request's caller not identified");
    }
    tracing::info!("request ended before it was read");
    draft.abandoned(
        "the request ended before it was read: its deadline (the caller's, or the server's request timeout) passed, or the caller went away",
    );
}

/// The status of an error that no handler answered: non-OK, trailers-only, no request id.
fn refused_unread(response: &http::Response<Body>) -> Option<tonic::Status> {
    let headers = response.headers();
    if headers.contains_key(REQUEST_ID_HEADER) {
        return None;
    }
    let status = tonic::Status::from_header_map(headers)?;
    (status.code() != Code::Ok).then_some(status)
}

/// Records the unread request and answers with tonic's `refused`, under its reason's code with
/// the record's request id (a trailers-only answer has no body to keep), or UNAVAILABLE if the
/// record could not be written.
async fn record(
    pipeline: &LookupPipeline,
    action: Action,
    refused: tonic::Status,
    caller: http::Request<()>,
) -> http::Response<Body> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("unread", request_id = %request_id, action = ?action);
    async {
        let caller = tonic::Request::from_http(caller);
        let credentials = Credentials::of(&caller);
        let mut draft = AuditDraft::new(
            Arc::clone(pipeline.audit_log()),
            &request_id,
            action,
            pipeline.policy().version(),
        );
        pipeline.auth().refresh_keys_for(credentials.metadata).await;
        // Names the caller in the record if the token verifies; the outcome is `invalid` either
        // way, since the request itself could not be read.
        if let Err(e) = pipeline.authenticate(&credentials, &mut draft) {
            tracing::info!(error = %e, "unread request's caller not identified");
        }
        let (reason, why) = unread_reason(refused.code());
        let error = GatewayError::refused(reason, format!("the request could not be read: {why}"));
        tracing::info!(code = ?refused.code(), reason = %reason, "request refused unread");
        match draft.refused(&error).await {
            // Tonic's words and metadata (such as the encodings it accepts).
            Ok(()) => refusal_status(
                reason,
                refused.message().to_owned(),
                &request_id,
                refused.metadata().clone(),
            )
            .into_http(),
            Err(e) => e.to_status(&request_id).into_http(),
        }
    }
    .instrument(span)
    .await
}

/// Why tonic refused a request unread, by the code it answered with: the reason, and what the
/// record says of it.
fn unread_reason(code: Code) -> (Reason, &'static str) {
    match code {
        Code::OutOfRange | Code::ResourceExhausted => {
            (Reason::MessageTooLarge, "it is larger than the size limit")
        }
        Code::Unimplemented => (
            Reason::CompressionUnsupported,
            "it is compressed, and no compression is accepted",
        ),
        Code::Internal => (
            Reason::MessageUndecodable,
            "it is not a valid protobuf message",
        ),
        _ => (Reason::MessageUndecodable, "the transport refused it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_audited_services_methods_have_an_action() {
        assert_eq!(
            action_of("/samblik.v1.LookupService/Lookup"),
            Some(Action::Lookup)
        );
        assert_eq!(
            action_of("/samblik.v1.AuditService/MyAccessLog"),
            Some(Action::CitizenViewed)
        );
        assert_eq!(action_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            action_of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(action_of("/samblik.v1.LookupService/Nothing"), None);
    }

    /// The refusals tonic makes keep their code, but a message that is not protobuf: tonic
    /// calls that INTERNAL, and it is the caller's error, INVALID_ARGUMENT.
    #[test]
    fn an_unread_refusal_keeps_tonics_code_but_for_a_message_that_is_not_protobuf() {
        for code in [Code::OutOfRange, Code::Unimplemented] {
            assert_eq!(unread_reason(code).0.code(), code);
        }
        assert_eq!(unread_reason(Code::OutOfRange).0, Reason::MessageTooLarge);
        let undecodable = unread_reason(Code::Internal).0;
        assert_eq!(undecodable, Reason::MessageUndecodable);
        assert_eq!(undecodable.code(), Code::InvalidArgument);
    }

    #[test]
    fn only_a_non_ok_response_without_a_request_id_is_unread() {
        let status = |code: Code| tonic::Status::new(code, "x").into_http::<Body>();
        let code = |response| refused_unread(&response).map(|s| s.code());
        assert_eq!(code(status(Code::OutOfRange)), Some(Code::OutOfRange));
        let mut answered = status(Code::InvalidArgument);
        answered
            .headers_mut()
            .insert(REQUEST_ID_HEADER, http::HeaderValue::from_static("r-1"));
        assert_eq!(code(answered), None);
        // An answer's headers carry no status (it comes in the trailers).
        assert_eq!(code(http::Response::new(Body::empty())), None);
    }
}
