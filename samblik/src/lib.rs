//! The `samblik` program: the command line, the one place a gateway is wired together
//! ([`server`]), the demo with its synthetic municipality, token issuer and throw-away PKI, and
//! the allocator every Samblik program runs.

pub mod audit_cli;
pub mod cli;
pub mod client;
pub mod demo;
pub mod pki;
pub mod server;
pub mod tokens;

/// The allocator a Samblik program installs: jemalloc (feature `jemalloc`, on by default), else
/// the system's. Both are unit structs, so the name is the type and its one value. Install it
/// with [`global_allocator!`].
#[cfg(not(feature = "jemalloc"))]
pub use std::alloc::System as Allocator;
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc as Allocator;

/// The name of [`Allocator`], for benchmark reports.
pub const ALLOCATOR_NAME: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else {
    "system"
};

/// Installs [`Allocator`] as the program's global allocator: one line at the top of every
/// binary and benchmark, so the load tools measure the allocator the `samblik` program runs.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::Allocator = $crate::Allocator;
    };
}
