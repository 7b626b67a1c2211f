//! Entry points for the fuzz targets (feature `fuzzing`, never in the production build): each
//! runs a production path from bytes a fuzzer chose, without the I/O around it (no audit
//! record, no source call), and hands back what the target checks. See `docs/fuzzing.md`.

use crate::config::{Config, ConfigError};
pub use crate::lookup::fuzz::{disclose_answer, validate_lookup};
use samblik_policy::{Role, Tier};
use samblik_proto::v1::{Case, Purpose, Tier as WireTier};
use std::path::Path;
use std::time::Duration;

/// [`Config::load`] of `text` as if read from `path`: parsing, path resolution, validation.
pub fn load_config(text: &str, path: &Path) -> Result<Config, ConfigError> {
    Config::from_text(text, path)
}

/// What validation made of a lookup request.
#[derive(Debug)]
pub struct Validated {
    /// The normalised CPR number.
    pub cpr: String,
    pub purpose: Purpose,
    pub break_glass_reason: Option<String>,
    /// The sources to ask, by id, in configuration order.
    pub targets: Vec<String>,
    pub roles: Vec<Role>,
    /// Time left until the lookup's deadline.
    pub budget: Duration,
    /// What the audit draft would have been told.
    pub noted_citizen: Option<String>,
    pub noted_purpose: Option<Purpose>,
    /// Per relation (absent, found) and target: the source, the policy's ceiling for it and
    /// the tier it would be asked for.
    pub asked: Vec<(bool, String, Tier, WireTier)>,
}

/// What the pipeline made of one source's answer.
#[derive(Debug)]
pub struct Disclosed {
    /// The normalised CPR number asked about.
    pub cpr: String,
    /// The source answering: the request's first target.
    pub source_id: String,
    /// The tier it was asked for.
    pub asked: WireTier,
    /// The cases shown, each with the policy's tier, or why the whole answer was refused.
    pub cases: Result<Vec<(Case, Tier)>, &'static str>,
}
