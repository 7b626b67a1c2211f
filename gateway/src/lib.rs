//! The Samblik gateway: a federated, read-only lookup of a citizen's cases across a
//! municipality's departments.
//!
//! ```text
//! caller ──► connect        tls.rs       TLS; client certificate off/optional/required
//!                                        (limits: message, headers, streams, connections)
//!        ──► authenticate   auth.rs      JWT bearer token → Caller          (UNAUTHENTICATED)
//!                           jwks.rs      the identity provider's keys over HTTPS
//!                           jwt_crypto.rs  signature checks with ring
//!        ──► validate       lookup.rs    CPR, purpose, size, source filter  (INVALID_ARGUMENT)
//!        ──► plan           lookup.rs    sources, deadline, max tier per source (policy ceiling)
//!        ──► fan out        lookup.rs    every source concurrently, one deadline, per-source timeout,
//!                                        mutual TLS to each (tls.rs)
//!        ──► decide         policy crate tier per case, with basis and rule ids
//!        ──► filter         lookup.rs    drop fields above the tier, drop hidden cases and
//!                                        cases about another citizen
//!        ──► respond        server.rs    one envelope per source: status, as-of, cases
//! ```
//!
//! Errors become gRPC statuses in one place, [`error`]. The configuration is [`config`]; the
//! demo, with its synthetic municipality and token issuer, is [`demo`] and [`tokens`].

pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod disclosure;
pub mod error;
pub mod jwks;
pub mod jwt_crypto;
pub mod lookup;
pub mod registry_api;
pub mod server;
pub mod tls;
pub mod tokens;

pub use config::Config;
pub use lookup::{GatewaySource, LookupLimits, LookupPipeline};
