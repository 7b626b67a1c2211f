//! The audit record and its canonical encoding: a record's hash is SHA-256 over its canonical
//! JSON, which includes `prev_hash`. The event is encoded by whoever reports it
//! ([`AuditEvent::encode`]); the writer only frames and hashes it ([`EncodedEvent::seal`]).
//!
//! Why: `docs/audit-store.md`.

use samblik_cpr::Cpr;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// The hash a chain's first record points back to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A unary lookup.
    Lookup,
    /// A streamed lookup; one record per source's answer (all with the request's id), each
    /// durable before that answer is sent.
    LookupStream,
    /// The audit log itself: start-up after a crash, pruning, and the like.
    AuditMaintenance,
    /// A citizen's consent was recorded (the record's `change` holds it).
    ConsentRecorded,
    /// A consent was withdrawn.
    ConsentWithdrawn,
    /// An access request was filed with the owning department.
    AccessRequested,
    /// The owning department approved or denied an access request.
    AccessDecided,
    /// A citizen's consents were read.
    ConsentsListed,
    /// Access requests were read (a department's inbox or a caller's own).
    RequestsListed,
    /// The data-protection officer's dry run of the policy for a caller and a citizen.
    PolicyExplained,
    /// An auditor searched the log (the filter is in `detail`, a searched CPR in `cpr`).
    AuditSearched,
    /// An auditor exported records.
    AuditExported,
    /// An auditor verified the chains.
    AuditVerified,
    /// An auditor read the review queue.
    ReviewQueueRead,
    /// An auditor marked a review item as reviewed (the record's `change` holds the mark).
    ReviewMarked,
    /// A citizen read who looked at their data.
    CitizenViewed,
}

/// How the request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// An answer left the gateway.
    Answered,
    /// No valid token.
    Unauthenticated,
    /// The caller may not do this.
    Denied,
    /// The request was malformed; nothing was asked of any source.
    Invalid,
    /// The caller went away before the answer.
    Cancelled,
    /// The gateway failed.
    Failed,
    /// A registry change that was not made: no such consent or request, or it was already
    /// withdrawn or decided.
    Refused,
}

/// Who acted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The token's subject; empty when unauthenticated.
    pub caller_id: String,
    pub name: String,
    pub department: String,
    pub municipality: String,
    /// The calling system (fagsystem) when it identified itself, e.g. by client certificate.
    pub system: Option<String>,
}

/// What one case disclosed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseEntry {
    pub case_id: String,
    pub tier: u8,
    /// The legal basis that carried the disclosure.
    pub basis: Option<String>,
    pub rule_ids: Vec<String>,
    /// The field paths actually disclosed, e.g. `existence.responsible.phone`.
    pub fields: Vec<String>,
}

/// One source's part of a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEntry {
    pub source_id: String,
    /// `ok`, `timeout`, `unavailable`, `denied`, `error`.
    pub status: String,
    pub cases: Vec<CaseEntry>,
    /// A security event in the source's answer, for the auditors: [`FOREIGN_CITIZEN`] when it
    /// held a case about someone other than the citizen asked about (the answer was dropped).
    /// Absent otherwise, and then not encoded at all, so records without one hash as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
}

/// [`SourceEntry::flag`] of a source that answered about another citizen. Also the review
/// queue's kind for such a lookup.
pub const FOREIGN_CITIZEN: &str = "foreign-citizen";

/// What the gateway reports; the writer adds the chain fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub request_id: String,
    pub action: Action,
    pub actor: Actor,
    /// The citizen looked up, normalised to 10 digits; `None` when the request held no valid CPR.
    pub cpr: Option<Cpr>,
    pub purpose: Option<String>,
    pub break_glass_reason: Option<String>,
    pub outcome: Outcome,
    /// A short, safe reason for outcomes other than `answered`.
    pub detail: Option<String>,
    /// A refusal's stable machine-readable reason (the gateway's `ErrorInfo` reason, e.g.
    /// `NO_RELATION`); `None` on every other record.
    pub reason: Option<String>,
    pub sources: Vec<SourceEntry>,
    pub policy_version: String,
}

/// A record as stored: the event, its place in the chain and its hash. Its `Debug` shows a
/// registry change only by its type: the change holds the consent or request as JSON, CPR and
/// all.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// The chain (one per gateway replica).
    pub chain: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When the record was written, RFC 3339 UTC.
    pub at: String,
    pub request_id: String,
    pub action: Action,
    pub actor: Actor,
    pub cpr: Option<Cpr>,
    pub purpose: Option<String>,
    pub break_glass_reason: Option<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
    /// A refusal's stable reason. Absent on every other record, and on refusals written before
    /// refusals had reasons, and then not encoded at all, so those records hash as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub sources: Vec<SourceEntry>,
    pub policy_version: String,
    /// A registry change this record describes (the consent or request, never a token), as
    /// written with [`crate::AuditLog::change`]; on an audit-maintenance record, what the
    /// writer did ([`crate::Maintenance`]: start-up, clean stop, prune). Absent on every other
    /// record, and then not encoded at all, so records written before the registry existed hash
    /// as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<serde_json::Value>,
    /// The previous record's hash ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 of the canonical encoding, hex. Not part of the encoding: it is kept beside it.
    #[serde(skip)]
    pub hash: String,
}

impl std::fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let change = self.change.as_ref().map(|c| {
            c.get("type")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
        });
        f.debug_struct("AuditRecord")
            .field("chain", &self.chain)
            .field("seq", &self.seq)
            .field("at", &self.at)
            .field("request_id", &self.request_id)
            .field("action", &self.action)
            .field("actor", &self.actor)
            .field("cpr", &self.cpr)
            .field("purpose", &self.purpose)
            .field("break_glass_reason", &self.break_glass_reason)
            .field("outcome", &self.outcome)
            .field("detail", &self.detail)
            .field("reason", &self.reason)
            .field("sources", &self.sources)
            .field("policy_version", &self.policy_version)
            .field("change", &change)
            .field("prev_hash", &self.prev_hash)
            .field("hash", &self.hash)
            .finish()
    }
}

/// The columns a store keeps beside a record's body, to index and filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    pub request_id: String,
    pub action: Action,
    pub outcome: Outcome,
    pub cpr: Option<Cpr>,
    pub caller_id: String,
    pub department: String,
}

/// The part of a record's canonical encoding that does not depend on its place in the chain:
/// the fields from `request_id` to `change`, exactly as they appear in the encoding, with the
/// columns a store indexes beside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub indexed: Indexed,
    /// Those fields as a JSON object: the encoding's fields are between its braces.
    content: String,
}

/// Bytes reserved for an event's encoding before serialising it: a lookup's record is mostly
/// 1–3 KB, and a buffer that grows as it is written is copied at each step.
const ENCODING_CAPACITY: usize = 4096;

/// The fields of [`AuditRecord`] between `at` and `prev_hash`, borrowed, in the same order.
#[derive(Serialize)]
struct Content<'a> {
    request_id: &'a str,
    action: Action,
    actor: &'a Actor,
    cpr: &'a Option<Cpr>,
    purpose: &'a Option<String>,
    break_glass_reason: &'a Option<String>,
    outcome: Outcome,
    detail: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    sources: &'a [SourceEntry],
    policy_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    change: Option<&'a serde_json::Value>,
}

impl AuditEvent {
    /// Encodes the event's part of the record; `change` as [`AuditRecord::change`].
    pub fn encode(self, change: Option<&serde_json::Value>) -> EncodedEvent {
        let content = Content {
            request_id: &self.request_id,
            action: self.action,
            actor: &self.actor,
            cpr: &self.cpr,
            purpose: &self.purpose,
            break_glass_reason: &self.break_glass_reason,
            outcome: self.outcome,
            detail: &self.detail,
            reason: self.reason.as_deref(),
            sources: &self.sources,
            policy_version: &self.policy_version,
            change,
        };
        // Serialising a plain struct of strings, numbers and enums cannot fail, and gives UTF-8.
        let mut json = Vec::with_capacity(ENCODING_CAPACITY);
        let content = match serde_json::to_writer(&mut json, &content) {
            Ok(()) => String::from_utf8(json).unwrap_or_default(),
            Err(_) => String::new(),
        };
        EncodedEvent {
            indexed: Indexed {
                request_id: self.request_id,
                action: self.action,
                outcome: self.outcome,
                cpr: self.cpr,
                caller_id: self.actor.caller_id,
                department: self.actor.department,
            },
            content,
        }
    }
}

impl EncodedEvent {
    /// Places the event in `chain` at `seq` after `prev_hash`: frames its encoding with the
    /// chain fields and hashes the whole.
    pub fn seal(self, chain: &str, seq: u64, at: String, prev_hash: &str) -> SealedRecord {
        let mut body = String::with_capacity(self.content.len() + chain.len() + at.len() + 128);
        body.push_str("{\"chain\":");
        push_json_str(&mut body, chain);
        body.push_str(",\"seq\":");
        // Writing to a String cannot fail.
        let _ = write!(body, "{seq}");
        body.push_str(",\"at\":");
        push_json_str(&mut body, &at);
        body.push(',');
        // `{…}` without its braces; never empty, as `request_id` is always encoded.
        let fields = self
            .content
            .strip_prefix('{')
            .and_then(|j| j.strip_suffix('}'))
            .unwrap_or_default();
        body.push_str(fields);
        body.push_str(",\"prev_hash\":");
        push_json_str(&mut body, prev_hash);
        body.push('}');
        SealedRecord {
            hash: hash_of(&body),
            chain: chain.to_owned(),
            seq,
            at,
            indexed: self.indexed,
            body,
        }
    }
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it.
fn push_json_str(out: &mut String, s: &str) {
    // Chain ids, timestamps and hashes need no escaping; anything else goes through serde_json
    // so the encoding stays the one serialising the record gives.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// A record as a store writes it: the indexed columns, the canonical encoding (the body) and
/// its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    pub chain: String,
    pub seq: u64,
    pub at: String,
    pub indexed: Indexed,
    /// The canonical encoding, as hashed.
    pub body: String,
    pub hash: String,
}

impl AuditRecord {
    /// Places `event` in a chain after `prev_hash` and computes its hash.
    pub fn seal(event: AuditEvent, chain: &str, seq: u64, at: String, prev_hash: &str) -> Self {
        Self::seal_with_change(event, None, chain, seq, at, prev_hash)
    }

    /// [`AuditRecord::seal`] for a record that describes a registry change.
    pub fn seal_with_change(
        event: AuditEvent,
        change: Option<serde_json::Value>,
        chain: &str,
        seq: u64,
        at: String,
        prev_hash: &str,
    ) -> Self {
        let mut record = AuditRecord {
            chain: chain.to_owned(),
            seq,
            at,
            request_id: event.request_id,
            action: event.action,
            actor: event.actor,
            cpr: event.cpr,
            purpose: event.purpose,
            break_glass_reason: event.break_glass_reason,
            outcome: event.outcome,
            detail: event.detail,
            reason: event.reason,
            sources: event.sources,
            policy_version: event.policy_version,
            change,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        record.hash = hash_of(&record.canonical_json());
        record
    }

    /// The record as a store writes it.
    pub fn to_sealed(&self) -> SealedRecord {
        SealedRecord {
            chain: self.chain.clone(),
            seq: self.seq,
            at: self.at.clone(),
            indexed: Indexed {
                request_id: self.request_id.clone(),
                action: self.action,
                outcome: self.outcome,
                cpr: self.cpr.clone(),
                caller_id: self.actor.caller_id.clone(),
                department: self.actor.department.clone(),
            },
            body: self.canonical_json(),
            hash: self.hash.clone(),
        }
    }

    /// The hash this record should carry, computed from its content.
    pub fn compute_hash(&self) -> String {
        hash_of(&self.canonical_json())
    }

    /// The canonical encoding, as stored.
    pub fn canonical_json(&self) -> String {
        // Serialising a plain struct of strings, numbers and enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored body back; `hash` is the hash stored beside it.
    pub fn from_stored(body: &str, hash: &str) -> Result<Self, serde_json::Error> {
        let mut record: AuditRecord = serde_json::from_str(body)?;
        record.hash = hash.to_owned();
        Ok(record)
    }
}

/// SHA-256 of a canonical encoding, hex.
pub fn hash_of(canonical: &str) -> String {
    let digest = Sha256::digest(canonical.as_bytes());
    // Into a buffer, then one string: `hex::encode` builds its string a character at a time,
    // a measurable share of the writer's thread. 32 bytes always fit 64 ASCII digits.
    let mut hex = [0u8; 64];
    match hex::encode_to_slice(digest, &mut hex) {
        Ok(()) => String::from_utf8_lossy(&hex).into_owned(),
        Err(_) => hex::encode(digest),
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Lookup => "lookup",
            Action::LookupStream => "lookup-stream",
            Action::AuditMaintenance => "audit-maintenance",
            Action::ConsentRecorded => "consent-recorded",
            Action::ConsentWithdrawn => "consent-withdrawn",
            Action::AccessRequested => "access-requested",
            Action::AccessDecided => "access-decided",
            Action::ConsentsListed => "consents-listed",
            Action::RequestsListed => "requests-listed",
            Action::PolicyExplained => "policy-explained",
            Action::AuditSearched => "audit-searched",
            Action::AuditExported => "audit-exported",
            Action::AuditVerified => "audit-verified",
            Action::ReviewQueueRead => "review-queue-read",
            Action::ReviewMarked => "review-marked",
            Action::CitizenViewed => "citizen-viewed",
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpr(digits: &str) -> Cpr {
        Cpr::parse(digits).unwrap()
    }

    const PINNED_JSON: &str = r#"{"chain":"c","seq":1,"at":"2026-01-01T00:00:00Z","request_id":"r-1","action":"lookup","actor":{"caller_id":"cw-1","name":"","department":"","municipality":"","system":null},"cpr":"0101901235","purpose":"prepare-meeting","break_glass_reason":null,"outcome":"answered","detail":null,"sources":[],"policy_version":"v1","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#;

    fn event() -> AuditEvent {
        AuditEvent {
            request_id: "r-1".into(),
            action: Action::Lookup,
            actor: Actor {
                caller_id: "cw-1".into(),
                ..Actor::default()
            },
            cpr: Some(cpr("0101901235")),
            purpose: Some("prepare-meeting".into()),
            break_glass_reason: None,
            outcome: Outcome::Answered,
            detail: None,
            reason: None,
            sources: vec![],
            policy_version: "v1".into(),
        }
    }

    #[test]
    fn the_text_forms_match_serde() {
        for a in [
            Action::Lookup,
            Action::LookupStream,
            Action::AuditMaintenance,
            Action::ConsentRecorded,
            Action::ConsentWithdrawn,
            Action::AccessRequested,
            Action::AccessDecided,
            Action::ConsentsListed,
            Action::RequestsListed,
            Action::PolicyExplained,
            Action::AuditSearched,
            Action::AuditExported,
            Action::AuditVerified,
            Action::ReviewQueueRead,
            Action::ReviewMarked,
            Action::CitizenViewed,
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
        for o in [
            Outcome::Answered,
            Outcome::Unauthenticated,
            Outcome::Denied,
            Outcome::Invalid,
            Outcome::Cancelled,
            Outcome::Failed,
            Outcome::Refused,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }

    #[test]
    fn the_hash_covers_every_field_and_the_previous_hash() {
        let a = AuditRecord::seal(event(), "c", 1, "2026-01-01T00:00:00Z".into(), GENESIS_HASH);
        assert_eq!(a.hash, a.compute_hash());
        assert_eq!(a.hash.len(), 64);
        let mut changed = a.clone();
        changed.cpr = Some(cpr("0101901236"));
        assert_ne!(changed.compute_hash(), a.hash);
        let b = AuditRecord::seal(event(), "c", 1, "2026-01-01T00:00:00Z".into(), &a.hash);
        assert_ne!(b.hash, a.hash);
    }

    /// Pins the canonical encoding: a change here would break every chain already written.
    #[test]
    fn the_canonical_encoding_and_hash_are_pinned() {
        let a = AuditRecord::seal(event(), "c", 1, "2026-01-01T00:00:00Z".into(), GENESIS_HASH);
        assert_eq!(a.canonical_json(), PINNED_JSON);
        assert_eq!(
            a.hash,
            "00f7298cfebca7a5205e45897eea7b87dfa4573c7c8e3f31420919e3bc6ab370"
        );
    }

    #[test]
    fn a_change_is_hashed_and_round_trips() {
        let change = serde_json::json!({"type": "withdraw-consent", "id": "c-1"});
        let a = AuditRecord::seal_with_change(
            event(),
            Some(change.clone()),
            "c",
            1,
            "2026-01-01T00:00:00Z".into(),
            GENESIS_HASH,
        );
        assert!(a.canonical_json().contains("\"change\":{"));
        let plain = AuditRecord::seal(event(), "c", 1, "2026-01-01T00:00:00Z".into(), GENESIS_HASH);
        assert_ne!(a.hash, plain.hash);
        let back = AuditRecord::from_stored(&a.canonical_json(), &a.hash).unwrap();
        assert_eq!(back.change, Some(change));
        assert_eq!(back.compute_hash(), a.hash);
    }

    /// A refusal's reason is encoded right after its detail and hashed; a record without one
    /// encodes as records always have (the pinned encoding above).
    #[test]
    fn a_reason_is_hashed_and_round_trips() {
        let mut refused = event();
        refused.outcome = Outcome::Denied;
        refused.detail = Some("permission denied: no open case".into());
        refused.reason = Some("NO_RELATION".into());
        let at = "2026-01-01T00:00:00Z";
        let a = AuditRecord::seal(refused.clone(), "c", 1, at.into(), GENESIS_HASH);
        let json = a.canonical_json();
        assert!(
            json.contains(
                r#""detail":"permission denied: no open case","reason":"NO_RELATION","sources":[]"#
            ),
            "{json}"
        );
        let sealed = refused.encode(None).seal("c", 1, at.into(), GENESIS_HASH);
        assert_eq!(sealed.body, json);
        assert_eq!(sealed.hash, a.hash);
        let back = AuditRecord::from_stored(&json, &a.hash).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.reason.as_deref(), Some("NO_RELATION"));
        assert_eq!(back.compute_hash(), a.hash);
        let mut reworded = back.clone();
        reworded.reason = Some("ROLE_REQUIRED".into());
        assert_ne!(reworded.compute_hash(), a.hash);
        reworded.reason = None;
        assert_ne!(reworded.compute_hash(), a.hash);
    }

    /// The writer frames the caller's encoding instead of serialising the record: the two must
    /// give the same bytes, or the hashes it writes would not verify.
    #[test]
    fn sealing_an_encoded_event_gives_the_canonical_encoding() {
        let mut odd = event();
        odd.request_id = "r-\"quoted\"\\ and \u{7f}\u{1}\ttab".into();
        odd.actor.name = "Søren Ærø — \u{1F600}".into();
        odd.actor.system = Some("fagsystem\n2".into());
        odd.cpr = None;
        odd.detail = Some("</script>&amp;".into());
        odd.reason = Some("NO_\"RELATION\u{1}".into());
        odd.break_glass_reason = Some("akut".into());
        odd.sources = vec![SourceEntry {
            source_id: "child-welfare".into(),
            status: "ok".into(),
            cases: vec![CaseEntry {
                case_id: "c-1".into(),
                tier: 2,
                basis: None,
                rule_ids: vec!["a/b".into()],
                fields: vec!["existence.state".into(), "full.documents[d-1]".into()],
            }],
            flag: None,
        }];
        let change = serde_json::json!({"type": "mark", "ids": [1, 2], "note": "x\"y"});
        for (e, change, chain, at, prev) in [
            (event(), None, "c", "2026-01-01T00:00:00Z", GENESIS_HASH),
            (
                odd.clone(),
                None,
                "replica \"a\"",
                "2026-11-22T01:02:03.123456Z",
                "ab",
            ),
            (odd, Some(change), "c", "t\\", GENESIS_HASH),
        ] {
            let record =
                AuditRecord::seal_with_change(e.clone(), change.clone(), chain, 7, at.into(), prev);
            let sealed = e.encode(change.as_ref()).seal(chain, 7, at.into(), prev);
            assert_eq!(sealed.body, record.canonical_json());
            assert_eq!(sealed.hash, record.hash);
            assert_eq!(sealed, record.to_sealed());
        }
    }

    #[test]
    fn the_stored_encoding_round_trips() {
        let a = AuditRecord::seal(event(), "c", 1, "2026-01-01T00:00:00Z".into(), GENESIS_HASH);
        let back = AuditRecord::from_stored(&a.canonical_json(), &a.hash).unwrap();
        assert_eq!(back, a);
        assert!(!a.canonical_json().contains(&a.hash));
        assert_eq!(back.compute_hash(), a.hash);
    }
}
