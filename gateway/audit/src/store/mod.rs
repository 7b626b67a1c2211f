//! The two stores, each in a folder of its own: the embedded one ([`sqlite`]) and the production
//! one ([`postgres`]). Both keep the citizen as a keyed hash and bodies sealed
//! ([`crate::atrest`]). Nothing above the stores depends on one but the registry's handle, which
//! opens the store's readers.
//!
//! Their design: `docs/audit-store.md`.

pub mod postgres;
pub mod sqlite;
