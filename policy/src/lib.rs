//! Samblik's disclosure policy: facts about one case in one lookup go in, a [`Decision`] comes
//! out — the [`Tier`] to disclose, the [`LegalBasis`] that carries it, the ids of the rules that
//! decided, whether the address may be shown, and why the next tier up was withheld. Pure and
//! synchronous: no I/O, no clock, no gRPC types.
//!
//! The rules are data: a Cedar policy (`default/disclosure.cedar` ships as the default),
//! validated strictly at load time against a schema built from the gateway's [`Catalog`]
//! (`default/samblik.cedarschema`), so a rule naming an unknown attribute, source, case type,
//! purpose, flag or action refuses to load. Rust computes the facts (relation, consent
//! coverage, grants, sensitivity) in [`CaseFacts`]; Cedar decides; [`Policy::decide`] explains.
//!
//! Where to look: the consent, statute and grant checks are the permits of the default policy;
//! [`Policy::decide`] asks Cedar for each tier from the top down; [`Policy::ceiling`] bounds what
//! the gateway asks a source for.

mod decision;
mod error;
mod facts;
mod memo;
mod policy;
mod reads;

pub use decision::{Decision, LegalBasis, NEEDS_BASIS, RULE_UNKNOWN_VOCABULARY, Withheld};
pub use error::PolicyError;
pub use facts::{BasisFact, CaseFacts, Catalog, Role, Tier};
pub use policy::{CaseTypes, Policy};
