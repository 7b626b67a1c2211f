//! The Samblik gateway: a federated, read-only lookup of a citizen's cases across a
//! municipality's departments.
//!
//! ```text
//! caller ──► connect        tls.rs       TLS; client certificate off/optional/required
//!                                        (limits: message, headers, streams, connections)
//!        ──► authenticate   auth.rs      client certificate → CallingSystem (its sources and
//!                                        purposes); JWT bearer token → Caller (UNAUTHENTICATED)
//!                           jwks.rs      the identity provider's keys over HTTPS
//!                           jwt_crypto.rs  signature checks with ring
//!        ──► validate       lookup.rs    CPR, purpose, size, source filter  (INVALID_ARGUMENT)
//!        ──► relate         lookup.rs    the caller's own department's source: an open case for
//!                                        the citizen, or break-the-glass        (PERMISSION_DENIED)
//!                                        consents and grants from the registry (samblik-audit)
//!        ──► plan           disclosure.rs  max tier per source (the policy's ceiling)
//!        ──► fan out        lookup.rs    every source concurrently, one deadline, per-source timeout,
//!                                        mutual TLS to each (tls.rs)
//!        ──► decide         disclosure.rs  facts per case → Cedar policy (policy crate) → tier,
//!                                        basis, rule ids
//!        ──► filter         disclosure.rs  drop fields above the tier and outside the field set,
//!                                        hidden addresses, hidden cases; say what was withheld
//!        ──► respond        server.rs    one envelope per source: status, as-of, cases
//! ```
//!
//! Consents and access requests are [`registry_api`]; every change is written with its audit
//! record in one transaction. Errors become gRPC statuses in one place, [`error`], each refusal
//! with a stable reason ([`error::Reason`]) on the wire and in its audit record. A request
//! tonic refuses before any handler reads it (too large, not decodable) is audited by
//! [`unread`]. The configuration is [`config`]. The panel is the `samblik-panel` crate; the
//! command line, the demo and the wiring of a whole server are the `samblik` crate.

pub mod audit;
pub mod audit_api;
pub mod auth;
pub mod config;
pub mod disclosure;
pub mod error;
pub mod jwks;
pub mod jwt_crypto;
pub mod lookup;
pub mod registry_api;
pub mod server;
pub mod tls;
pub mod unread;

pub use config::Config;
pub use lookup::{GatewaySource, LookupLimits, LookupPipeline};
