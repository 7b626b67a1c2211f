//! The one place where gateway errors become gRPC statuses. Every refusal has a stable
//! [`Reason`], which decides its code and travels as `google.rpc.ErrorInfo` in the status details
//! (domain [`ERROR_DOMAIN`], metadata `request_id`); clients, the panel and the audit log branch
//! on it. The message is for people: safe, and free to be reworded. Internals go to the log only.

use crate::auth::AuthError;
use samblik_proto::CprError;
use std::collections::HashMap;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The response header that carries the request id, on answers and on errors alike.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The `domain` of every refusal's `google.rpc.ErrorInfo`.
pub const ERROR_DOMAIN: &str = "samblik";

/// The `ErrorInfo` metadata key that carries the request id.
pub const REQUEST_ID_KEY: &str = "request_id";

/// Declares [`Reason`] from one table, so that its text, its code and [`Reason::ALL`] cannot
/// drift apart.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])+ $variant:ident = $text:literal => $code:ident,)+) => {
        /// Why a request was refused, as clients may branch on it: one per situation, not one
        /// per message. Its text ([`Reason::as_str`]) is part of the API and of the audit
        /// records already written: never change one, only add.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &[Reason] = &[$(Reason::$variant,)+];

            /// The stable text: `ErrorInfo.reason` and the audit record's `reason`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)+
                }
            }

            /// The one gRPC code a refusal for this reason carries.
            pub fn code(self) -> Code {
                match self {
                    $(Reason::$variant => Code::$code,)+
                }
            }
        }
    };
}

reasons! {
    /// No valid access token (which check failed is not said).
    Unauthenticated = "UNAUTHENTICATED" => Unauthenticated,
    /// The calling system's client certificate is not admitted.
    SystemNotAdmitted = "SYSTEM_NOT_ADMITTED" => PermissionDenied,
    /// The caller holds none of the roles the call needs.
    RoleRequired = "ROLE_REQUIRED" => PermissionDenied,
    /// A citizen's call whose token names no citizen.
    CitizenNotNamed = "CITIZEN_NOT_NAMED" => PermissionDenied,
    /// A citizen asked about someone else.
    OwnDataOnly = "OWN_DATA_ONLY" => PermissionDenied,
    /// The caller's own department holds no open case for the citizen (a lookup may break the
    /// glass instead). The review queue counts these.
    NoRelation = "NO_RELATION" => PermissionDenied,
    /// The calling system may not look up for this purpose.
    PurposeNotAllowed = "PURPOSE_NOT_ALLOWED" => PermissionDenied,
    /// Only the department that owns the case may decide the access request.
    WrongDepartment = "WRONG_DEPARTMENT" => PermissionDenied,
    /// The department's system, or the calling system's limits, refused asking it about the
    /// case.
    SourceDenied = "SOURCE_DENIED" => PermissionDenied,
    /// The CPR number is missing, malformed or not a date.
    InvalidCpr = "INVALID_CPR" => InvalidArgument,
    /// No purpose, or one this gateway does not know.
    PurposeMissing = "PURPOSE_MISSING" => InvalidArgument,
    /// A break-the-glass reason too short to say why.
    BreakGlassReasonMissing = "BREAK_GLASS_REASON_MISSING" => InvalidArgument,
    /// A break-the-glass reason that is not plain text on one line.
    BreakGlassReasonInvalid = "BREAK_GLASS_REASON_INVALID" => InvalidArgument,
    /// The caller has broken the glass as often today as `policy.break_glass_per_day` allows.
    BreakGlassLimitReached = "BREAK_GLASS_LIMIT_REACHED" => ResourceExhausted,
    /// The gateway has as many lookups in progress as `server.limits.max_concurrent_lookups`
    /// allows; try again shortly.
    Overloaded = "OVERLOADED" => ResourceExhausted,
    /// A source id the gateway does not have.
    UnknownSource = "UNKNOWN_SOURCE" => InvalidArgument,
    /// The request is larger than the lookup's size limit (`server.max_request_bytes`).
    RequestTooLarge = "REQUEST_TOO_LARGE" => InvalidArgument,
    /// Any other field is missing, malformed or out of range; the message names it.
    FieldInvalid = "FIELD_INVALID" => InvalidArgument,
    /// The message is larger than the transport's limit (`limits.max_message_bytes`) and was
    /// refused unread, with the code tonic gives it.
    MessageTooLarge = "MESSAGE_TOO_LARGE" => OutOfRange,
    /// The message is not a protobuf of the method's type and was refused unread: the caller's
    /// error, so INVALID_ARGUMENT, not the INTERNAL tonic answers it with.
    MessageUndecodable = "MESSAGE_UNDECODABLE" => InvalidArgument,
    /// The message is compressed, and the gateway accepts no compression.
    CompressionUnsupported = "COMPRESSION_UNSUPPORTED" => Unimplemented,
    /// The consent is already withdrawn, or the access request already decided.
    AlreadyDone = "ALREADY_DONE" => FailedPrecondition,
    /// An access request for no more than the caller is shown already.
    AlreadyShown = "ALREADY_SHOWN" => FailedPrecondition,
    /// The department holds no such case for the citizen, or none the caller may know of.
    CaseNotFound = "CASE_NOT_FOUND" => NotFound,
    /// No consent, access request or review item has the id or key given.
    ItemNotFound = "ITEM_NOT_FOUND" => NotFound,
    /// The audit record cannot be made durable, so nothing is disclosed.
    AuditUnavailable = "AUDIT_UNAVAILABLE" => Unavailable,
    /// The audit log cannot be read (search, export, review queue, verification).
    AuditLogUnreadable = "AUDIT_LOG_UNREADABLE" => Unavailable,
    /// Consents, grants or access requests cannot be read, so nothing is disclosed or changed.
    RegistryUnavailable = "REGISTRY_UNAVAILABLE" => Unavailable,
    /// The caller's own department's system did not answer, so their relation to the citizen
    /// is not known.
    RelationUnknown = "RELATION_UNKNOWN" => Unavailable,
    /// The department's system that holds the case did not answer.
    SourceUnavailable = "SOURCE_UNAVAILABLE" => Unavailable,
    /// Chain verification is not configured on this gateway.
    VerificationNotConfigured = "VERIFICATION_NOT_CONFIGURED" => Unavailable,
    /// The gateway failed while handling the request (a panic, caught at the request's
    /// boundary); the request id finds its record.
    InternalError = "INTERNAL_ERROR" => Internal,
}

impl Reason {
    /// The reason `text` names; `None` for a text no reason has.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == text)
    }

    /// The reason a Samblik refusal carries in its status details; `None` for a status without
    /// one (an answer, or an error from something else on the way).
    pub fn of_status(status: &Status) -> Option<Reason> {
        let info = status.get_details_error_info()?;
        if info.domain != ERROR_DOMAIN {
            return None;
        }
        Reason::parse(&info.reason)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthError),
    #[error("invalid CPR number: {0}")]
    InvalidCpr(#[from] CprError),
    /// The audit record could not be made durable, so nothing may be disclosed.
    #[error("the audit log cannot be written")]
    AuditUnavailable,
    /// Any other refusal; `message` is safe to show the caller and to record.
    #[error("{}: {message}", kind(reason.code()))]
    Refused { reason: Reason, message: String },
}

/// What a refusal's text in the audit record begins with, by its code: the words records have
/// always begun with.
fn kind(code: Code) -> &'static str {
    match code {
        Code::PermissionDenied => "permission denied",
        Code::FailedPrecondition => "failed precondition",
        Code::NotFound => "not found",
        Code::Unavailable => "unavailable",
        // Bad input, and requests that could not be read at all.
        _ => "invalid request",
    }
}

impl GatewayError {
    /// A refusal for `reason`, with a safe message for the caller.
    /// The gateway failed on the request (a panic was caught); nothing of the panic is said.
    pub fn internal() -> Self {
        Self::refused(
            Reason::InternalError,
            "the gateway failed while handling this request; nothing was disclosed, and the failure is recorded",
        )
    }

    pub fn refused(reason: Reason, message: impl Into<String>) -> Self {
        GatewayError::Refused {
            reason,
            message: message.into(),
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            GatewayError::Unauthenticated(_) => Reason::Unauthenticated,
            GatewayError::InvalidCpr(_) => Reason::InvalidCpr,
            GatewayError::AuditUnavailable => Reason::AuditUnavailable,
            GatewayError::Refused { reason, .. } => *reason,
        }
    }

    pub fn code(&self) -> Code {
        self.reason().code()
    }

    /// The status for the caller. Exhaustive: a new variant must decide what the caller sees.
    pub fn to_status(&self, request_id: &str) -> Status {
        let message = match self {
            // Which check failed is useful to an attacker and to nobody else.
            GatewayError::Unauthenticated(_) => "missing or invalid access token".to_owned(),
            GatewayError::InvalidCpr(e) => e.to_string(),
            GatewayError::AuditUnavailable => "the service cannot record this lookup right now, so nothing is disclosed; try again shortly".to_owned(),
            GatewayError::Refused { message, .. } => message.clone(),
        };
        refusal_status(
            self.reason(),
            format!("{message} (request id {request_id})"),
            request_id,
            MetadataMap::new(),
        )
    }

    /// [`GatewayError::to_status`], logged: how every service answers a refusal.
    pub fn into_status(self, request_id: &str) -> Status {
        tracing::info!(reason = %self.reason(), error = %self, "call refused");
        self.to_status(request_id)
    }
}

/// The status of a refusal for `reason` with `message` as it is: the reason's code, its
/// `ErrorInfo`, and the request id in `metadata` too.
pub fn refusal_status(
    reason: Reason,
    message: String,
    request_id: &str,
    mut metadata: MetadataMap,
) -> Status {
    if let Ok(value) = request_id.parse() {
        metadata.insert(REQUEST_ID_HEADER, value);
    }
    let info = ErrorDetails::with_error_info(
        reason.as_str(),
        ERROR_DOMAIN,
        HashMap::from([(REQUEST_ID_KEY.to_owned(), request_id.to_owned())]),
    );
    Status::with_error_details_and_metadata(reason.code(), message, info, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason's text and code, as clients and stored records know them. The match is
    /// exhaustive: a new reason does not compile until it is listed here.
    fn listed(reason: Reason) -> (&'static str, Code) {
        match reason {
            Reason::Unauthenticated => ("UNAUTHENTICATED", Code::Unauthenticated),
            Reason::SystemNotAdmitted => ("SYSTEM_NOT_ADMITTED", Code::PermissionDenied),
            Reason::RoleRequired => ("ROLE_REQUIRED", Code::PermissionDenied),
            Reason::CitizenNotNamed => ("CITIZEN_NOT_NAMED", Code::PermissionDenied),
            Reason::OwnDataOnly => ("OWN_DATA_ONLY", Code::PermissionDenied),
            Reason::NoRelation => ("NO_RELATION", Code::PermissionDenied),
            Reason::PurposeNotAllowed => ("PURPOSE_NOT_ALLOWED", Code::PermissionDenied),
            Reason::WrongDepartment => ("WRONG_DEPARTMENT", Code::PermissionDenied),
            Reason::SourceDenied => ("SOURCE_DENIED", Code::PermissionDenied),
            Reason::InvalidCpr => ("INVALID_CPR", Code::InvalidArgument),
            Reason::PurposeMissing => ("PURPOSE_MISSING", Code::InvalidArgument),
            Reason::BreakGlassReasonMissing => {
                ("BREAK_GLASS_REASON_MISSING", Code::InvalidArgument)
            }
            Reason::BreakGlassReasonInvalid => {
                ("BREAK_GLASS_REASON_INVALID", Code::InvalidArgument)
            }
            Reason::BreakGlassLimitReached => {
                ("BREAK_GLASS_LIMIT_REACHED", Code::ResourceExhausted)
            }
            Reason::Overloaded => ("OVERLOADED", Code::ResourceExhausted),
            Reason::UnknownSource => ("UNKNOWN_SOURCE", Code::InvalidArgument),
            Reason::RequestTooLarge => ("REQUEST_TOO_LARGE", Code::InvalidArgument),
            Reason::FieldInvalid => ("FIELD_INVALID", Code::InvalidArgument),
            Reason::MessageTooLarge => ("MESSAGE_TOO_LARGE", Code::OutOfRange),
            Reason::MessageUndecodable => ("MESSAGE_UNDECODABLE", Code::InvalidArgument),
            Reason::CompressionUnsupported => ("COMPRESSION_UNSUPPORTED", Code::Unimplemented),
            Reason::AlreadyDone => ("ALREADY_DONE", Code::FailedPrecondition),
            Reason::AlreadyShown => ("ALREADY_SHOWN", Code::FailedPrecondition),
            Reason::CaseNotFound => ("CASE_NOT_FOUND", Code::NotFound),
            Reason::ItemNotFound => ("ITEM_NOT_FOUND", Code::NotFound),
            Reason::AuditUnavailable => ("AUDIT_UNAVAILABLE", Code::Unavailable),
            Reason::AuditLogUnreadable => ("AUDIT_LOG_UNREADABLE", Code::Unavailable),
            Reason::RegistryUnavailable => ("REGISTRY_UNAVAILABLE", Code::Unavailable),
            Reason::RelationUnknown => ("RELATION_UNKNOWN", Code::Unavailable),
            Reason::SourceUnavailable => ("SOURCE_UNAVAILABLE", Code::Unavailable),
            Reason::VerificationNotConfigured => ("VERIFICATION_NOT_CONFIGURED", Code::Unavailable),
            Reason::InternalError => ("INTERNAL_ERROR", Code::Internal),
        }
    }

    #[test]
    fn every_reason_has_its_listed_text_and_code() {
        let mut texts = std::collections::HashSet::new();
        for &reason in Reason::ALL {
            let (text, code) = listed(reason);
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.code(), code, "{text}");
            assert!(texts.insert(text), "{text} twice");
            assert_eq!(Reason::parse(text), Some(reason));
            let screaming = text.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            assert!(screaming, "{text}");
        }
        assert_eq!(Reason::parse("no_relation"), None);
    }

    /// `docs/refusals.md` lists every reason with its code, and nothing else.
    #[test]
    fn docs_list_every_reason() {
        let screaming = |code: Code| {
            let mut text = String::new();
            for c in format!("{code:?}").chars() {
                if c.is_ascii_uppercase() && !text.is_empty() {
                    text.push('_');
                }
                text.push(c.to_ascii_uppercase());
            }
            text
        };
        let documented: Vec<(String, String)> = include_str!("../../docs/refusals.md")
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(|c| c.trim().trim_matches('`'));
                let (_, reason, code) = (cells.next()?, cells.next()?, cells.next()?);
                Reason::parse(reason)?;
                Some((reason.to_owned(), code.to_owned()))
            })
            .collect();
        let expected: Vec<(String, String)> = Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), screaming(r.code())))
            .collect();
        assert_eq!(documented, expected);
    }

    /// The review queue counts refusals by the text the audit crate knows, not by the message.
    #[test]
    fn the_review_queue_knows_the_no_relation_reason() {
        assert_eq!(
            Reason::NoRelation.as_str(),
            samblik_audit::review::NO_RELATION
        );
    }

    #[test]
    fn a_refusal_carries_its_reason_code_and_request_id_in_error_info() {
        let error = GatewayError::refused(Reason::NoRelation, "no open case");
        let status = error.to_status("req-7");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "no open case (request id req-7)");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "NO_RELATION");
        assert_eq!(info.domain, "samblik");
        assert_eq!(
            info.metadata.get("request_id").map(String::as_str),
            Some("req-7")
        );
        assert_eq!(Reason::of_status(&status), Some(Reason::NoRelation));
        // The record's text begins as refusals' texts always have.
        assert_eq!(error.to_string(), "permission denied: no open case");
        // Over the wire and back.
        let back = Status::from_header_map(status.into_http::<()>().headers()).unwrap();
        assert_eq!(Reason::of_status(&back), Some(Reason::NoRelation));
        assert_eq!(Reason::of_status(&Status::permission_denied("x")), None);
    }

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
            assert_eq!(Reason::of_status(&status), Some(Reason::Unauthenticated));
        }
    }
}
