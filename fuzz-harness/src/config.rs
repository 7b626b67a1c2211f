//! The config loader, `Config::load` (parsing, path resolution, validation), and then what a
//! gateway builds from a config that loads, short of files and the network: the disclosure
//! policy (the shipped rules), the calling systems and the lookup limits.

use samblik_gateway::auth::Systems;
use samblik_gateway::config::Config;
use samblik_gateway::disclosure::DisclosurePolicy;
use samblik_gateway::fuzzing::load_config;
use samblik_gateway::lookup::LookupLimits;
use std::path::Path;

pub fn run(data: &[u8]) {
    // `load` reads the file as UTF-8 text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = load_config(text, Path::new("/etc/samblik/samblik.toml")) else {
        return;
    };
    // Loaded: validation held, and holds again.
    config.validate().expect("a loaded config validates");
    check(&config);
}

fn check(config: &Config) {
    // Relative paths were resolved against the file's folder.
    for key in &config.auth.keys {
        assert!(key.public_key_file.is_absolute());
    }
    assert!(config.audit.signing_key_file.is_absolute());
    let s = &config.server;
    assert!(s.default_deadline() > std::time::Duration::ZERO);
    assert!(s.default_deadline() <= s.max_deadline());
    assert!(s.answer_margin() < s.max_deadline());
    let limits = LookupLimits::from_config(s);
    assert_eq!(limits.max_request_bytes, s.max_request_bytes);
    let _ = Systems::from_config(s.tls.as_ref());
    // The policy file is not read (it could be any path); the shipped rules are checked over
    // the config's sources and `[policy]` instead.
    let _ = DisclosurePolicy::with_default_rules(&config.sources, config.policy.clone());
}
