//! The end-to-end tests: the real sources and the real gateway (and panel) on loopback ports,
//! called over gRPC, HTTPS and a real browser. One test binary, so the whole stack is linked
//! once; each module is one part of the story.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod atrest;
mod attacks;
mod audit;
mod audit_api;
mod bad_input;
mod catalog;
mod faults;
mod floods;
mod idle;
mod layers;
mod limits;
mod lookup;
mod netfaults;
mod panel;
mod panel_browser;
mod panics;
mod policy;
mod refusals;
mod tls;
mod tokens;
