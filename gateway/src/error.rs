//! The one place where gateway errors become gRPC statuses. Callers get a stable code, a safe
//! message and the request id; the details go to the log only.

use crate::auth::AuthError;
use samblik_proto::CprError;
use tonic::{Code, Status};

/// The response header that carries the request id, on answers and on errors alike.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Why a request was refused before any source was asked.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthError),
    #[error("invalid CPR number: {0}")]
    InvalidCpr(#[from] CprError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The audit record could not be made durable, so nothing may be disclosed.
    #[error("the audit log cannot be written")]
    AuditUnavailable,
    /// The caller may not do this (no relation to the citizen, wrong role or department).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request is valid but the state does not allow it (e.g. a decided request).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Something the answer depends on is down (the consent registry, the caller's own
    /// department's system); nothing is disclosed.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl GatewayError {
    /// The status for the caller. Exhaustive: a new variant must decide what the caller sees.
    pub fn to_status(&self, request_id: &str) -> Status {
        let (code, message) = match self {
            // Which check failed is useful to an attacker and to nobody else.
            GatewayError::Unauthenticated(_) => (
                Code::Unauthenticated,
                "missing or invalid access token".to_owned(),
            ),
            GatewayError::InvalidCpr(e) => (Code::InvalidArgument, e.to_string()),
            GatewayError::InvalidRequest(m) => (Code::InvalidArgument, m.clone()),
            GatewayError::PermissionDenied(m) => (Code::PermissionDenied, m.clone()),
            GatewayError::FailedPrecondition(m) => (Code::FailedPrecondition, m.clone()),
            GatewayError::NotFound(m) => (Code::NotFound, m.clone()),
            GatewayError::Unavailable(m) => (Code::Unavailable, m.clone()),
            GatewayError::AuditUnavailable => (
                Code::Unavailable,
                "the service cannot record this lookup right now, so nothing is disclosed; try again shortly"
                    .to_owned(),
            ),
        };
        let mut status = Status::new(code, format!("{message} (request id {request_id})"));
        if let Ok(value) = request_id.parse() {
            status.metadata_mut().insert(REQUEST_ID_HEADER, value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever failed inside authentication — a key id, a library's message, a claim name —
    /// the caller sees the same words and the request id, and nothing else.
    #[test]
    fn authentication_failures_tell_the_caller_nothing_but_the_request_id() {
        let failures = [
            AuthError::UnknownKey,
            AuthError::MalformedHeader("Base64 error: Invalid byte 33, offset 0.".into()),
            AuthError::Invalid("InvalidSignature".into()),
            AuthError::MissingClaim("org.department_code".into()),
            AuthError::AlgorithmNotAllowed(jsonwebtoken::Algorithm::HS256),
            AuthError::NotAccessToken,
            AuthError::TooLarge,
        ];
        for failure in failures {
            let status = GatewayError::from(failure.clone()).to_status("req-42");
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(
                status.message(),
                "missing or invalid access token (request id req-42)",
                "{failure:?}"
            );
            assert_eq!(
                status
                    .metadata()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok()),
                Some("req-42")
            );
        }
    }
}
