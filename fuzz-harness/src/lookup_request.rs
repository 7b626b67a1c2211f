//! A `LookupRequest` from its bytes on the wire through validation to the policy facts and the
//! tier each source would be asked for: the lookup pipeline's own validation, authentication
//! aside (the caller is chosen by the first byte).
//!
//! Input: one selector byte (bits 0–1 the caller, bit 2 the panel's break-the-glass form, bits
//! 3–4 the caller's grpc-timeout), then the encoded request.

use crate::fixture::{MAX_REQUEST_BYTES, MIN_REASON, fixture};
use crate::principal::principal;
use prost::Message;
use samblik_gateway::fuzzing::validate_lookup;
use samblik_gateway::lookup::BreakGlass;
use samblik_proto::Cpr;
use samblik_proto::v1::{LookupRequest, Purpose, Tier};
use std::time::Duration;

pub fn run(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    // tonic refuses a message that does not decode before any handler runs.
    let Ok(request) = LookupRequest::decode(bytes) else {
        return;
    };
    let fixture = fixture();
    let principal = principal(selector);
    let system = principal.system.clone();
    let break_glass = if selector & 4 == 0 {
        BreakGlass::IfReasonGiven
    } else {
        BreakGlass::Asked
    };
    let client_timeout = match (selector >> 3) & 3 {
        0 => None,
        1 => Some(Duration::ZERO),
        2 => Some(Duration::from_millis(1500)),
        _ => Some(Duration::from_secs(3600)),
    };
    let Ok(v) = validate_lookup(
        &fixture.pipeline,
        principal,
        &request,
        break_glass,
        client_timeout,
    ) else {
        return;
    };
    assert!(request.encoded_len() <= MAX_REQUEST_BYTES);
    let cpr = Cpr::parse(&request.cpr).expect("an accepted request's CPR parses");
    assert_eq!(v.cpr, cpr.as_str());
    assert_eq!(v.noted_citizen.as_deref(), Some(cpr.as_str()));
    assert_eq!(v.purpose as i32, request.purpose);
    assert_ne!(v.purpose, Purpose::Unspecified);
    assert_eq!(v.noted_purpose, Some(v.purpose));
    if let Some(allowed) = system.as_ref().and_then(|s| s.purposes.as_ref()) {
        assert!(
            allowed.contains(&v.purpose),
            "a purpose the system may not use"
        );
    }
    let reason = request.break_glass_reason.trim();
    match &v.break_glass_reason {
        None => assert!(reason.is_empty() && break_glass == BreakGlass::IfReasonGiven),
        Some(r) => {
            assert_eq!(r, reason);
            assert!(r.chars().count() >= MIN_REASON);
            assert!(!r.chars().any(char::is_control));
        }
    }
    let configured: Vec<&str> = fixture
        .config
        .sources
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    let expected: Vec<&str> = configured
        .iter()
        .copied()
        .filter(|id| request.sources.is_empty() || request.sources.iter().any(|s| s == id))
        .collect();
    assert_eq!(v.targets, expected, "the sources asked are not those named");
    assert!(
        request
            .sources
            .iter()
            .all(|s| configured.contains(&s.as_str())),
        "an unknown source was let through"
    );
    assert!(v.budget <= fixture.config.server.max_deadline());
    assert_eq!(v.asked.len(), 2 * v.targets.len());
    for (_, source, ceiling, asked) in &v.asked {
        assert!(v.targets.contains(source));
        // Asked for at least existence (so the timing tells nothing), at most the ceiling.
        assert!(*asked >= Tier::Existence);
        assert!(*asked as i32 <= (*ceiling as i32).max(Tier::Existence as i32));
    }
}
