//! Entry points for the fuzz targets (feature `fuzzing`, never in the production build): each
//! runs a production path from bytes a fuzzer chose, without the I/O around it (no audit
//! record, no source call), and hands back what the target checks. See `docs/fuzzing.md`.

use crate::config::{Config, ConfigError};
pub use crate::lookup::fuzz::{Disclosed, Validated, disclose_answer, validate_lookup};
use std::path::Path;

/// [`Config::load`] of `text` as if read from `path`: parsing, path resolution, validation.
pub fn load_config(text: &str, path: &Path) -> Result<Config, ConfigError> {
    Config::from_text(text, path)
}
