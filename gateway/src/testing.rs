//! Fault injection for tests (feature `testing`, never in the production build): a lookup by
//! [`PANIC_CALLER`] panics in the pipeline once its sources are to be asked, as a bug would.

/// The caller id whose lookups panic.
pub const PANIC_CALLER: &str = "fault-injection-panic";

/// Panics when `caller_id` is [`PANIC_CALLER`].
#[allow(clippy::panic)]
pub fn panic_if_asked(caller_id: &str) {
    if caller_id == PANIC_CALLER {
        panic!("fault injection: a bug in the pipeline");
    }
}
