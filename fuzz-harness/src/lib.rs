//! One function per fuzz target, each taking the fuzzer's raw bytes, driving the production code
//! path and checking its invariants. A broken invariant panics: that is how libFuzzer (and the
//! replay test) learns of it.
//!
//! Run by the cargo-fuzz crate in `fuzz/` (nightly) and, over every committed corpus file, by
//! `tests/replay.rs` on stable. See `docs/fuzzing.md`.

// A harness reports a broken invariant by panicking; setup that cannot fail in a sane
// environment may unwrap.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod cert_name;
pub mod config;
pub mod cpr;
pub mod fixture;
pub mod lookup_request;
mod principal;
pub mod source_answer;
pub mod token;

/// A target's function: the fuzzer's bytes in, a panic out when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target: its name (the corpus folder's and the cargo-fuzz target's) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("cpr", cpr::run),
    ("token", token::run),
    ("cert_name", cert_name::run),
    ("lookup_request", lookup_request::run),
    ("source_answer", source_answer::run),
    ("config", config::run),
];
