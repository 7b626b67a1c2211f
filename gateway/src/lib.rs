//! The Samblik gateway's core: a federated, read-only lookup of a citizen's cases across a
//! municipality's departments. A lookup is authenticated ([`auth`]), validated, related and fanned
//! out ([`lookup`]), decided and filtered ([`disclosure`]), audited ([`audit`]) and answered
//! ([`server`]). Consents and access requests are [`registry_api`]; errors become gRPC statuses
//! in one place, [`error`]; the configuration is [`config`].
//!
//! Each refusal carries a stable reason ([`error::Reason`]) on the wire and in its audit record.
//! The request flow drawn out, and the map of the crates around this one: `docs/architecture.md`.

pub mod audit;
pub mod audit_api;
pub mod auth;
pub mod config;
pub mod context;
pub mod disclosure;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod jwks;
pub mod jwt_crypto;
pub mod lookup;
pub mod registry_api;
pub mod rpc;
pub mod server;
pub mod source_stack;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod unread;

pub use config::Config;
pub use lookup::{GatewaySource, LookupLimits, LookupPipeline};
