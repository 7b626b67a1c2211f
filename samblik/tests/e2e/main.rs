//! The `samblik` program's tests, run as a user runs it: the binary in processes of its own
//! (the README's demo, `serve` from a config file, the CLI's commands) and `kill -9` under load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod common;
mod crash;
mod deploy;
