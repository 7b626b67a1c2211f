//! The gateway's configuration: one serde tree, loaded and validated once, before any port is
//! bound. A bad file is refused with a message that says how to fix it.
//!
//! The reference, with how calling systems are known and limited: `docs/configuration.md`; every
//! option, with a comment on each: `deploy/samblik.example.toml`.

pub use samblik_adapters::tls::ClientAuth;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name the audit log gives Samblik's own lookup panel as the calling system
/// (`actor.system`), so auditors can tell its lookups from a fagsystem's. No client certificate
/// may claim it.
pub const PANEL_SYSTEM: &str = "samblik-panel";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config is not valid: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    /// The departments' sources, fanned out to on every lookup.
    pub sources: Vec<SourceConfig>,
    /// Where every request is recorded before its answer leaves.
    pub audit: AuditConfig,
    /// What is disclosed to whom: the rules, the statutes, the field sets and the sensitivity.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The caseworkers' lookup panel and the auditors' pages (HTTPS); absent: no panel.
    #[serde(default)]
    pub panel: Option<PanelConfig>,
}

/// The lookup panel: HTTPS on a port of its own, with the gRPC port's certificate, signing in
/// through the municipality's identity provider (OpenID Connect, authorisation-code flow).
///
/// ```toml
/// [panel]
/// listen = "0.0.0.0:8443"
/// public_url = "https://samblik.sonderaa.kommune.example:8443"
/// frame_ancestors = ["https://fagsystem.sonderaa.kommune.example"]
/// [panel.oidc]
/// authorization_endpoint = "https://idp.sonderaa.kommune.example/authorize"
/// token_endpoint = "https://idp.sonderaa.kommune.example/token"
/// client_id = "samblik-panel"
/// client_secret_env = "SAMBLIK_OIDC_SECRET"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelConfig {
    /// Where the panel listens.
    pub listen: SocketAddr,
    /// The panel's address as browsers see it: the base of the sign-in redirect and the only
    /// origin state-changing forms are accepted from. `https://`; `http://` only on loopback
    /// (the demo's `--insecure`).
    pub public_url: String,
    /// The fagsystemer that may embed the panel in a frame (CSP `frame-ancestors`); empty: none.
    #[serde(default)]
    pub frame_ancestors: Vec<String>,
    /// A session unused this long is signed out.
    #[serde(default = "defaults::session_idle_secs")]
    pub session_idle_secs: u64,
    /// No session outlives this (nor its access token).
    #[serde(default = "defaults::session_max_secs")]
    pub session_max_secs: u64,
    /// Most sessions held at once (the oldest unused go first).
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: u64,
    /// Sign-in through the identity provider. Required: the demo's sign-in page is never
    /// available to a configured gateway.
    pub oidc: Option<OidcConfig>,
}

impl PanelConfig {
    fn validate(&self, tls: bool) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(format!("panel: {m}")));
        let Ok(url) = self.public_url.parse::<http::Uri>() else {
            return invalid(format!("public_url {:?} is not a URL", self.public_url));
        };
        let loopback = matches!(url.host(), Some("127.0.0.1" | "localhost" | "[::1]"));
        match url.scheme_str() {
            Some("https") if tls => {}
            Some("https") => return invalid("an https public_url needs [server.tls]".into()),
            Some("http") if loopback && !tls => {}
            _ => {
                return invalid(format!(
                    "public_url must be https:// (plain http:// only on loopback without TLS), got {:?}",
                    self.public_url
                ));
            }
        }
        if url.path() != "/" || url.query().is_some() {
            return invalid("public_url is an origin: no path or query".into());
        }
        for origin in &self.frame_ancestors {
            let ok = origin.parse::<http::Uri>().is_ok_and(|u| {
                u.scheme_str() == Some("https") && u.host().is_some() && u.path() == "/"
            }) && !origin.contains([' ', ';', ',', '\'', '*']);
            if !ok {
                return invalid(format!(
                    "frame_ancestors: {origin:?} is not an https:// origin"
                ));
            }
        }
        if self.session_idle_secs == 0 || self.session_idle_secs > self.session_max_secs {
            return invalid("session_idle_secs must be between 1 and session_max_secs".into());
        }
        if self.max_sessions == 0 {
            return invalid("max_sessions must be positive".into());
        }
        if let Some(o) = &self.oidc {
            for (name, value) in [
                ("authorization_endpoint", &o.authorization_endpoint),
                ("token_endpoint", &o.token_endpoint),
            ] {
                if !value
                    .parse::<http::Uri>()
                    .is_ok_and(|u| u.scheme_str() == Some("https") && u.host().is_some())
                {
                    return invalid(format!("oidc.{name} must be an https:// URL"));
                }
            }
            if o.client_id.trim().is_empty() {
                return invalid("oidc.client_id must not be empty".into());
            }
            if !o.scopes.iter().any(|s| s == "openid") {
                return invalid("oidc.scopes must include \"openid\"".into());
            }
            if o.timeout_ms == 0 {
                return invalid("oidc.timeout_ms must be positive".into());
            }
        }
        Ok(())
    }

    /// The origin state-changing forms must come from, e.g. `https://host:8443`.
    pub fn origin(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}

/// The panel's OpenID Connect client. The access token it receives is verified exactly as the
/// gRPC API verifies a bearer token (`[auth]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub client_id: String,
    /// The environment variable holding the client secret (none: a public client, PKCE only).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default = "defaults::oidc_scopes")]
    pub scopes: Vec<String>,
    /// PEM CA certificate(s) to trust for the token endpoint instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "defaults::oidc_timeout_ms")]
    pub timeout_ms: u64,
}

/// The disclosure policy. The rules themselves are a Cedar file (the shipped default when none is
/// named); this section supplies the facts they decide on that are configuration: the statutes
/// that are a legal basis, which fields are "selected", which case types are sensitive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The Cedar policy file; absent means the default policy shipped with Samblik. Relative
    /// paths are relative to the config file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The statutes configured as a legal basis. The default is the municipality's basis for
    /// existence and contact (tier 1) for every source and case type; without any statute, only
    /// consent, grants and the owning department disclose anything.
    #[serde(default = "defaults::statutes")]
    pub statutes: Vec<StatuteConfig>,
    /// Which tier-2 fields each source and case type shares; cases not named share all of them.
    #[serde(default)]
    pub field_sets: Vec<FieldSetConfig>,
    /// Sensitivity flags added to every case of a source and case type (on top of the flags the
    /// sources set), e.g. `honour-related-conflict` on SL § 12 a.
    #[serde(default = "defaults::sensitivity")]
    pub sensitivity: Vec<SensitivityConfig>,
    /// The shortest written reason a break-the-glass lookup is accepted with, in characters
    /// (at least 1: there is always a reason).
    #[serde(default = "defaults::break_glass_min_reason")]
    pub break_glass_min_reason: usize,
    /// The most break-the-glass lookups one caller may make in a day (the review time zone's
    /// day), counted from the audit log; beyond it a lookup is refused (RESOURCE_EXHAUSTED),
    /// recorded and flagged. 0: no limit.
    #[serde(default = "defaults::break_glass_per_day")]
    pub break_glass_per_day: usize,
    /// The longest an approved access request may run.
    #[serde(default = "defaults::max_grant_days")]
    pub max_grant_days: u32,
    /// The municipality's departments, case types and sensitivity flags: the only names the
    /// policy and the rest of this section may use. Absent: the built-in catalogue.
    #[serde(default)]
    pub catalog: CatalogConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            catalog: CatalogConfig::default(),
            file: None,
            statutes: defaults::statutes(),
            field_sets: Vec::new(),
            sensitivity: defaults::sensitivity(),
            break_glass_min_reason: defaults::break_glass_min_reason(),
            break_glass_per_day: defaults::break_glass_per_day(),
            max_grant_days: defaults::max_grant_days(),
        }
    }
}

/// The open catalogue. Each list given replaces the built-in one whole; a list left out keeps it.
/// The built-in catalogue is the report's eight municipal plans in four areas (child welfare,
/// jobcenter, integration, adult social) and the three standard flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    #[serde(default = "defaults::catalog_departments")]
    pub departments: Vec<CatalogDepartment>,
    #[serde(default = "defaults::catalog_case_types")]
    pub case_types: Vec<CatalogCaseType>,
    /// Sensitivity flags a source or `[[policy.sensitivity]]` may set, e.g. `address-protection`.
    #[serde(default = "defaults::catalog_flags")]
    pub flags: Vec<String>,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            departments: defaults::catalog_departments(),
            case_types: defaults::catalog_case_types(),
            flags: defaults::catalog_flags(),
        }
    }
}

/// A department (area) of the municipality, as caller tokens and sources' `owner_department`
/// name it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogDepartment {
    /// e.g. `adult-social`.
    pub id: String,
    /// As caseworkers know it, e.g. "Voksenområdet".
    pub name: String,
}

/// A case (plan) type a source may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogCaseType {
    /// The code sources send and rules name (`CaseType::"SL-141"`).
    pub code: String,
    /// e.g. "Handleplan for voksne".
    pub name: String,
    /// e.g. "Serviceloven § 141".
    pub legal_paragraph: String,
    /// The department whose sources serve it: one of `departments`.
    pub area: String,
}

/// A statute that is a legal basis for sharing, up to a tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatuteConfig {
    /// Stable id, recorded as the basis in the audit log, e.g. `lab-30a-rehabilitation`.
    pub id: String,
    /// What the statute is, for people.
    pub description: String,
    /// The highest tier it carries (1–3).
    pub max_tier: u8,
    /// The sources it covers; empty: every source.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The case types it covers; empty: every case type.
    #[serde(default)]
    pub case_types: Vec<String>,
    /// The receiving departments; empty: every department.
    #[serde(default)]
    pub to_departments: Vec<String>,
    /// The purposes; empty: every purpose.
    #[serde(default)]
    pub purposes: Vec<String>,
}

/// The tier-2 fields of one source's case types.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSetConfig {
    pub source: String,
    /// Empty: every case type of the source.
    #[serde(default)]
    pub case_types: Vec<String>,
    /// Field names of tier 2: `interventions`, `situation`, `goals`, `next_follow_up_on`,
    /// `assessment_summary`, `residence`.
    pub selected: Vec<String>,
}

/// Flags added to the cases of a source and case type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitivityConfig {
    /// Empty: every source.
    #[serde(default)]
    pub sources: Vec<String>,
    pub case_types: Vec<String>,
    pub flags: Vec<String>,
}

/// The audit log. There is no default: a gateway without an audit store does not start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The embedded store: a SQLite file (created if missing). Relative paths are relative to
    /// the config file. Give this or `postgres_url_env`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The production store for several replicas: the name of the environment variable that
    /// holds the PostgreSQL connection URL (it may carry a password, so it is not in this file).
    #[serde(default)]
    pub postgres_url_env: Option<String>,
    /// The Ed25519 checkpoint signing key (created with its `.pub` half if missing while the
    /// store holds no checkpoint; once it does, a missing key must be restored, never replaced).
    pub signing_key_file: PathBuf,
    /// The audit data keys: the HMAC key the CPR index columns hold the citizen's keyed hash
    /// under, and the AEAD keys that seal records' bodies and the consents' and access
    /// requests' contents, so that a copy of the database does not say who was looked up.
    /// Required: no store is written without them. Created (mode 0600) if missing; a store
    /// written with another index key refuses to start. Keep it outside the database and its
    /// backups, like the signing key. Rotation: `docs/audit-store.md`. Relative to the config
    /// file.
    pub data_key_file: PathBuf,
    /// The witness: an append-only file every signed checkpoint is also written to, once its
    /// records are durable; `samblik audit verify` holds the store to it, so a cut of the newest
    /// records together with their checkpoints is found. Put it where the database's writer
    /// cannot rewrite it (another volume, append-only). Relative to the config file.
    #[serde(default)]
    pub witness_file: Option<PathBuf>,
    /// This replica's chain id; unique per gateway replica writing to one store.
    #[serde(default = "defaults::audit_chain")]
    pub chain: String,
    /// A signed checkpoint at least every this many records…
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: u64,
    /// …and at least this often.
    #[serde(default = "defaults::checkpoint_interval_secs")]
    pub checkpoint_interval_secs: u64,
    /// `full`, the default and the only value: a record is on disk before the answer leaves.
    /// `off` (no fsync) is refused by name; see [`AuditDurability`].
    #[serde(default)]
    pub durability: AuditDurability,
    /// What the auditors' review queue flags.
    #[serde(default)]
    pub review: ReviewConfig,
    /// Whether a citizen's "who looked at my data" names the caseworker (`true`, default) or
    /// only their department and municipality.
    #[serde(default = "defaults::yes")]
    pub citizen_sees_names: bool,
    /// Records older than this many days are pruned: the chain's front is cut at a signed
    /// checkpoint and the prune is itself a signed record. Consents and access requests are
    /// kept.
    #[serde(default = "defaults::retention_days")]
    pub retention_days: u32,
    /// How often this gateway prunes its own chain (and once at start-up); 0: never on its own
    /// (`samblik audit prune` still can).
    #[serde(default = "defaults::prune_interval_secs")]
    pub prune_interval_secs: u64,
}

/// The anomaly thresholds of the auditors' review queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// The municipality's time zone (IANA name), for working hours and days.
    pub timezone: String,
    /// Working hours on weekdays, local time, `HH:MM`; lookups outside them are flagged.
    pub work_start: String,
    pub work_end: String,
    /// Working days, e.g. `["mon", "tue", "wed", "thu", "fri"]` (the default).
    pub work_days: Vec<String>,
    /// More lookups than this by one caller in one clock hour are flagged.
    pub max_lookups_per_hour: usize,
    /// More distinct citizens than this refused to one caller for lack of relation (no open
    /// case in their department) in one local day are flagged. Refusals for other reasons, and
    /// the same citizen tried again, do not count.
    pub max_denied_per_day: usize,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        ReviewConfig {
            timezone: "Europe/Copenhagen".into(),
            work_start: "07:00".into(),
            work_end: "18:00".into(),
            work_days: ["mon", "tue", "wed", "thu", "fri"]
                .map(String::from)
                .to_vec(),
            max_lookups_per_hour: 30,
            max_denied_per_day: 5,
        }
    }
}

impl ReviewConfig {
    /// The rules this describes, or what is wrong with it.
    pub fn rules(&self) -> Result<samblik_audit::review::ReviewRules, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("audit.review: {m}"));
        let timezone = self
            .timezone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| invalid(format!("unknown time zone {:?}", self.timezone)))?;
        let time = |field: &str, text: &str| {
            chrono::NaiveTime::parse_from_str(text, "%H:%M")
                .map_err(|_| invalid(format!("{field} must be HH:MM, got {text:?}")))
        };
        let work_start = time("work_start", &self.work_start)?;
        let work_end = time("work_end", &self.work_end)?;
        if work_start >= work_end {
            return Err(invalid("work_start must be before work_end".into()));
        }
        let work_days = self
            .work_days
            .iter()
            .map(|d| {
                d.parse::<chrono::Weekday>()
                    .map_err(|_| invalid(format!("work_days: {d:?} is not a day")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_lookups_per_hour == 0 {
            return Err(invalid("max_lookups_per_hour must be at least 1".into()));
        }
        Ok(samblik_audit::review::ReviewRules {
            timezone,
            work_start,
            work_end,
            work_days,
            max_lookups_per_hour: self.max_lookups_per_hour,
            max_denied_per_day: self.max_denied_per_day,
        })
    }
}

/// How durable an audit record is before its answer leaves: always `full` — on disk (SQLite's
/// log fsync'ed, PostgreSQL's WAL flushed). A config that asks for `off` is refused with the
/// reason, not taken: without the fsync a crash loses the records of answers already given.
/// Only the load benchmark measures what durability costs, through
/// [`crate::server::open_audit_log_with`], which no config file reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuditDurability {
    #[default]
    Full,
}

/// Why `audit.durability = "off"` is refused, and what to do instead.
const DURABILITY_OFF_REFUSED: &str = "audit.durability = \"off\" is refused: without the fsync a crash loses the audit records of answers already given, and every answer must stay recorded. Remove the setting (the default, \"full\", is the only value)";

impl<'de> Deserialize<'de> for AuditDurability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match String::deserialize(deserializer)?.as_str() {
            "full" => Ok(AuditDurability::Full),
            "off" => Err(D::Error::custom(DURABILITY_OFF_REFUSED)),
            other => Err(D::Error::custom(format!(
                "audit.durability {other:?} is not known: the only value is \"full\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the gRPC API listens.
    pub listen: SocketAddr,
    /// The overall deadline of a lookup whose caller sent no `grpc-timeout`.
    #[serde(default = "defaults::default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// The longest deadline honoured, whatever the caller asks for.
    #[serde(default = "defaults::max_deadline_ms")]
    pub max_deadline_ms: u64,
    /// Time kept back from a caller's `grpc-timeout` (at most half of it) so that the audit
    /// record is durable and the answer reaches the caller before the caller gives up.
    #[serde(default = "defaults::answer_margin_ms")]
    pub answer_margin_ms: u64,
    /// Requests whose encoded size exceeds this are refused as invalid.
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: usize,
    /// TLS on the gRPC port. Without it the gateway speaks plaintext (the demo's `--insecure`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// What one client may take of the gateway.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Limits that keep one misbehaving client from exhausting the gateway. The defaults are safe
/// for a municipality's fagsystemer; raise them only with a reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest gRPC message decoded at all (larger: RESOURCE_EXHAUSTED / OUT_OF_RANGE, not
    /// read). Requests above `server.max_request_bytes` but below this are INVALID_ARGUMENT.
    pub max_message_bytes: usize,
    /// The largest HTTP/2 header list (all metadata of one request, the token included).
    pub max_header_list_bytes: u32,
    /// Concurrent calls on one connection; more wait at the client or are refused.
    pub max_concurrent_streams: u32,
    /// Open connections; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections from one client address; one more is closed at once, so that one
    /// client (or one attacker) cannot take every slot. A fagsystem needs a handful.
    pub max_connections_per_address: usize,
    /// A connection on which the client has sent nothing but HTTP/2 housekeeping (PINGs,
    /// acknowledgements, window updates) for this long is closed and gives its slot back.
    /// 0: never.
    pub idle_timeout_ms: u64,
    /// How often the server PINGs a connection it has heard nothing on, and how long it waits
    /// for the answer before closing it: a dead peer gives its slot back. 0: no PINGs.
    pub http2_keepalive_interval_ms: u64,
    pub http2_keepalive_timeout_ms: u64,
    /// A connection older than this is asked to go (HTTP/2 GOAWAY; calls in flight finish
    /// within `request_timeout_ms`), so that no connection, idle or not, holds its slot for
    /// ever; clients reconnect by themselves. 0: no limit.
    pub max_connection_age_ms: u64,
    /// The longest any call may run, whatever deadline it asks for (a backstop behind
    /// `max_deadline_ms`).
    pub request_timeout_ms: u64,
    /// Lookups in progress at once, over every connection and the panel. One more is refused
    /// at once (`RESOURCE_EXHAUSTED`, reason `OVERLOADED`, audited) rather than queued: a
    /// queue would make every caller wait, and a caseworker is better told to try again.
    pub max_concurrent_lookups: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 256 * 1024,
            max_header_list_bytes: 16 * 1024,
            max_concurrent_streams: 100,
            max_connections: 1_024,
            max_connections_per_address: 64,
            idle_timeout_ms: 120_000,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 10_000,
            max_connection_age_ms: 1_800_000,
            request_timeout_ms: 15_000,
            max_concurrent_lookups: 256,
        }
    }
}

/// TLS for a listener: certificate and key from PEM files, reloaded when they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Relative paths are relative to the config file.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Client certificates: `off`, `optional` (checked if presented) or `required`.
    #[serde(default)]
    pub client_certs: ClientAuth,
    /// The CA(s) client certificates must chain to; needed unless `client_certs` is `off`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes.
    #[serde(default = "defaults::tls_reload_ms")]
    pub reload_ms: u64,
    /// Client certificates refused at the handshake although they chain to `client_ca_file`:
    /// `serial:HEX` (serial number) or `sha256:HEX` (fingerprint of the certificate).
    #[serde(default)]
    pub revoked: Vec<String>,
    /// More such entries, one per line (`#` comments), re-read when the file changes.
    #[serde(default)]
    pub revoked_file: Option<PathBuf>,
    /// Refuse (PERMISSION_DENIED) a client certificate whose name is not in `systems`. Without
    /// it, an unlisted certificate of the CA is a system without restrictions.
    #[serde(default)]
    pub require_listed_systems: bool,
    /// What each calling system (fagsystem), named by its client certificate, may do.
    #[serde(default)]
    pub systems: Vec<SystemConfig>,
}

impl TlsConfig {
    /// TLS with this certificate and key, no client certificates.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Self {
        TlsConfig {
            cert_file,
            key_file,
            client_certs: ClientAuth::Off,
            client_ca_file: None,
            reload_ms: defaults::tls_reload_ms(),
            revoked: Vec::new(),
            revoked_file: None,
            require_listed_systems: false,
            systems: Vec::new(),
        }
    }
}

/// One calling system and what it may do. A request's system is the subject common name of its
/// connection's verified client certificate, never anything the request says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// The subject common name of the system's client certificate.
    pub name: String,
    /// The sources (ids) its lookups may ask; absent: every source. Others are reported
    /// `DENIED` without being asked.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// The purposes (codes, e.g. `prepare-meeting`) it may look up for; absent: every purpose.
    /// Others are refused with PERMISSION_DENIED.
    #[serde(default)]
    pub purposes: Option<Vec<String>>,
}

/// Mutual TLS to a source: the source's certificate must chain to `ca_file` and be valid for
/// `server_name`; the gateway presents `cert_file`/`key_file`. Reloaded when the files change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTlsConfig {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The name the source's certificate must carry; by default the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default = "defaults::tls_reload_ms")]
    pub reload_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "defaults::leeway_secs")]
    pub leeway_secs: u64,
    /// The identity provider's signing keys, if not (only) from `jwks`.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// How many verified tokens to remember (until each one's expiry) so a fagsystem's repeated
    /// calls with the same token skip the signature check; 0 turns the cache off.
    #[serde(default = "defaults::verified_token_cache")]
    pub verified_token_cache: u64,
    /// The only signature algorithms a token may use, whatever its header says.
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<KeyAlgorithm>,
    /// The identity provider's JWKS endpoint, for keys that rotate without a config change.
    #[serde(default)]
    pub jwks: Option<JwksConfig>,
    /// What makes a token an access token, and which claims name the caller.
    #[serde(default)]
    pub claims: ClaimsConfig,
}

/// Keys fetched over HTTPS from the identity provider's JWKS endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// The `https://` URL of the key set. Never plain HTTP: whoever can change the keys can mint
    /// any caller.
    pub url: String,
    /// PEM file with the CA certificate(s) to trust for the JWKS endpoint, instead of the
    /// system's roots (for an identity provider behind a municipal CA). Relative paths are
    /// relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Fetched keys are trusted this long after their last successful fetch, also while the
    /// identity provider is down; after that, tokens are refused until a fetch succeeds.
    #[serde(default = "defaults::jwks_ttl_secs")]
    pub ttl_secs: u64,
    /// The key set is refreshed in the background when it is older than this.
    #[serde(default = "defaults::jwks_refresh_secs")]
    pub refresh_secs: u64,
    /// At most one fetch per this interval, however many tokens name an unknown `kid`: made-up
    /// key ids must not turn the gateway into a load generator against the identity provider.
    #[serde(default = "defaults::jwks_min_refresh_secs")]
    pub min_refresh_secs: u64,
    /// The longest one fetch may take.
    #[serde(default = "defaults::jwks_timeout_ms")]
    pub timeout_ms: u64,
}

/// How a verified token becomes a caller. Claim names may be dotted paths into nested objects
/// (e.g. `realm_access.roles`), so a municipality can use its identity provider's names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsConfig {
    /// The header `typ` every token must carry (RFC 9068: `at+jwt`), compared case-insensitively
    /// and with an optional `application/` prefix. An ID token (`typ` `JWT` or none) is then not
    /// an access token. Empty turns the check off; then set `token_use`.
    pub typ: String,
    /// A claim that must hold a given value, e.g. `{ claim = "token_use", value = "access" }`
    /// (Cognito) or a scope the gateway requires.
    pub token_use: Option<ClaimMatch>,
    /// The claim with the caller's display name (falls back to `sub`).
    pub name: String,
    /// The claim with the caller's department (required).
    pub department: String,
    /// The claim with the municipality code.
    pub municipality: String,
    /// The claim with the caller's roles: an array of strings or a space-separated string.
    pub roles: String,
    /// For role citizen: the claim with the citizen's own CPR number (e.g. MitID's
    /// `dk:gov:saml:attribute:CprNumberIdentifier`). A citizen token without it is no citizen.
    pub cpr: String,
    /// The identity provider's role names mapped to Samblik's (caseworker, department-leader,
    /// auditor, admin, citizen). Samblik's own names are always accepted; any other is ignored.
    pub role_names: BTreeMap<String, String>,
}

/// A claim that must hold `value` (or, if it is an array or a space-separated string, contain it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMatch {
    pub claim: String,
    pub value: String,
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        ClaimsConfig {
            typ: "at+jwt".to_owned(),
            token_use: None,
            name: "name".to_owned(),
            department: "department".to_owned(),
            municipality: "municipality".to_owned(),
            roles: "roles".to_owned(),
            cpr: "cpr".to_owned(),
            role_names: BTreeMap::new(),
        }
    }
}

/// Samblik's roles; tokens' role names map onto these. Each is a role the policy knows
/// ([`samblik_policy::Role`]): a name it did not know would reach no rule.
pub const ROLES: [&str; 5] = [
    "caseworker",
    "department-leader",
    "auditor",
    "admin",
    "citizen",
];

/// Accepted signature algorithms. Symmetric algorithms are deliberately absent: the gateway
/// must never hold a key that can mint tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyAlgorithm {
    ES256,
    ES384,
    RS256,
    PS256,
    EdDSA,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The `kid` tokens signed with this key carry.
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    /// PEM file with the public key (SubjectPublicKeyInfo). Relative paths are relative to the
    /// config file.
    pub public_key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique source id, e.g. `jobcenter`.
    pub id: String,
    /// The department's name as caseworkers know it, e.g. "Jobcenter".
    pub department: String,
    /// The adapter's gRPC endpoint, e.g. `http://127.0.0.1:50061`.
    pub endpoint: String,
    /// The longest this source may take to answer one lookup.
    #[serde(default = "defaults::source_timeout_ms")]
    pub timeout_ms: u64,
    /// The longest a connection attempt may take.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Calls of this source in flight at once; one more is answered at once as busy
    /// (UNAVAILABLE), so a slow department cannot hold every task. 0: no limit.
    #[serde(default = "defaults::max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    /// Consecutive failures (time-outs, unavailable, failed) after which the source is answered
    /// at once as UNAVAILABLE, without a call, for `breaker_cool_down_ms`; then one probe call
    /// closes the circuit again on success. 0: no circuit breaker.
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "defaults::breaker_cool_down_ms")]
    pub breaker_cool_down_ms: u64,
    /// The circuit also opens when, of the last `breaker_window_calls` calls (at most 64), at
    /// least `breaker_failure_rate_percent` failed: a source that fails every other call never
    /// fails five in a row. 0: no window. With `breaker_failures = 0` there is no circuit
    /// breaker at all, window included.
    #[serde(default = "defaults::breaker_window_calls")]
    pub breaker_window_calls: u32,
    #[serde(default = "defaults::breaker_failure_rate_percent")]
    pub breaker_failure_rate_percent: u32,
    /// Mutual TLS to the source; required for an `https://` endpoint.
    #[serde(default)]
    pub tls: Option<SourceTlsConfig>,
    /// The department that owns the source's data, as caller tokens name departments; default:
    /// the source id. A caller of this department has a relation to a citizen when this source
    /// holds an open case for them.
    #[serde(default)]
    pub owner_department: Option<String>,
    /// The case types the source serves (for the policy's ceiling); default: the standard plan
    /// types of its department, or all of them.
    #[serde(default)]
    pub case_types: Vec<String>,
}

mod defaults {
    use super::{CatalogCaseType, CatalogDepartment, SensitivityConfig, StatuteConfig};

    pub fn catalog_departments() -> Vec<CatalogDepartment> {
        [
            ("child-welfare", "Børne- og Familieafdelingen"),
            ("jobcenter", "Jobcenter"),
            ("integration", "Integrationsafdelingen"),
            ("adult-social", "Voksenområdet"),
        ]
        .map(|(id, name)| CatalogDepartment {
            id: id.into(),
            name: name.into(),
        })
        .into()
    }
    /// The report's eight municipal plans (domain brief §1.0), in its order.
    pub fn catalog_case_types() -> Vec<CatalogCaseType> {
        [
            (
                "SL-54",
                "Handleplan for forældre med anbragte børn",
                "Serviceloven § 54",
                "child-welfare",
            ),
            (
                "SL-57c",
                "Handleplan til forebyggelse af kriminalitet",
                "Serviceloven § 57 c",
                "child-welfare",
            ),
            (
                "SL-140",
                "Handleplan for børn og unge med behov for særlig støtte",
                "Serviceloven § 140",
                "child-welfare",
            ),
            (
                "SL-141",
                "Handleplan for voksne",
                "Serviceloven § 141",
                "adult-social",
            ),
            (
                "LAB-27",
                "Min Plan",
                "Lov om en aktiv beskæftigelsesindsats § 27",
                "jobcenter",
            ),
            (
                "LAB-30a",
                "Rehabiliteringsplan",
                "Lov om en aktiv beskæftigelsesindsats § 30 a",
                "jobcenter",
            ),
            (
                "SL-12a",
                "Handleplan ved æresrelateret konflikt",
                "Serviceloven § 12 a",
                "adult-social",
            ),
            (
                "IL-19",
                "Integrationskontrakt",
                "Integrationsloven § 19",
                "integration",
            ),
        ]
        .map(|(code, name, legal_paragraph, area)| CatalogCaseType {
            code: code.into(),
            name: name.into(),
            legal_paragraph: legal_paragraph.into(),
            area: area.into(),
        })
        .into()
    }
    pub fn catalog_flags() -> Vec<String> {
        samblik_policy::Catalog::FLAGS.map(str::to_owned).into()
    }

    pub fn session_idle_secs() -> u64 {
        30 * 60
    }
    pub fn session_max_secs() -> u64 {
        10 * 3600
    }
    pub fn max_sessions() -> u64 {
        10_000
    }
    pub fn oidc_scopes() -> Vec<String> {
        vec!["openid".into(), "profile".into()]
    }
    pub fn oidc_timeout_ms() -> u64 {
        5_000
    }

    pub fn yes() -> bool {
        true
    }

    pub fn statutes() -> Vec<StatuteConfig> {
        vec![StatuteConfig {
            id: "existence-and-contact".into(),
            description: "The municipality's basis for showing that a case exists and who is responsible for it (the report's minimum variation)".into(),
            max_tier: 1,
            sources: Vec::new(),
            case_types: Vec::new(),
            to_departments: Vec::new(),
            purposes: Vec::new(),
        }]
    }
    pub fn sensitivity() -> Vec<SensitivityConfig> {
        vec![SensitivityConfig {
            sources: Vec::new(),
            case_types: vec!["SL-12a".into()],
            flags: vec!["honour-related-conflict".into()],
        }]
    }
    pub fn break_glass_min_reason() -> usize {
        20
    }
    /// Break-the-glass is for the emergency: a few a day is already much for one caseworker.
    pub fn break_glass_per_day() -> usize {
        5
    }
    pub fn max_grant_days() -> u32 {
        90
    }
    pub fn default_deadline_ms() -> u64 {
        3_000
    }
    pub fn max_deadline_ms() -> u64 {
        10_000
    }
    pub fn answer_margin_ms() -> u64 {
        250
    }
    pub fn max_request_bytes() -> usize {
        4 * 1024
    }
    pub fn leeway_secs() -> u64 {
        30
    }
    pub fn verified_token_cache() -> u64 {
        10_000
    }
    pub fn algorithms() -> Vec<super::KeyAlgorithm> {
        vec![super::KeyAlgorithm::ES256, super::KeyAlgorithm::RS256]
    }
    pub fn jwks_ttl_secs() -> u64 {
        24 * 3600
    }
    pub fn jwks_refresh_secs() -> u64 {
        300
    }
    pub fn jwks_min_refresh_secs() -> u64 {
        30
    }
    pub fn jwks_timeout_ms() -> u64 {
        5_000
    }
    pub fn source_timeout_ms() -> u64 {
        2_000
    }
    pub fn connect_timeout_ms() -> u64 {
        1_000
    }
    /// A department's system is one server or a few: more lookups at once than this are
    /// queued there anyway.
    pub fn max_concurrent_calls() -> usize {
        64
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn breaker_cool_down_ms() -> u64 {
        10_000
    }
    pub fn breaker_window_calls() -> u32 {
        20
    }
    pub fn breaker_failure_rate_percent() -> u32 {
        50
    }
    pub fn audit_chain() -> String {
        "gateway-1".to_owned()
    }
    pub fn checkpoint_every() -> u64 {
        100
    }
    pub fn checkpoint_interval_secs() -> u64 {
        10
    }
    /// Six months.
    pub fn retention_days() -> u32 {
        183
    }
    /// Daily.
    pub fn prune_interval_secs() -> u64 {
        86_400
    }
    pub fn tls_reload_ms() -> u64 {
        10_000
    }
}

/// The most leeway accepted: more would make expiry meaningless.
const MAX_LEEWAY_SECS: u64 = 300;
/// The longest `policy.break_glass_min_reason` accepted: a reason is a sentence or two.
const MAX_BREAK_GLASS_MIN_REASON: usize = 500;

impl Config {
    /// Reads, parses and validates a TOML config file. Relative key paths are resolved against
    /// the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(&text, path)
    }

    /// [`Self::load`] of `text`, read from `path`.
    pub(crate) fn from_text(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for key in &mut config.auth.keys {
            resolve(&mut key.public_key_file);
        }
        if let Some(p) = &mut config.audit.path {
            resolve(p);
        }
        resolve(&mut config.audit.signing_key_file);
        resolve(&mut config.audit.data_key_file);
        if let Some(w) = &mut config.audit.witness_file {
            resolve(w);
        }
        if let Some(ca) = config.auth.jwks.as_mut().and_then(|j| j.ca_file.as_mut()) {
            resolve(ca);
        }
        if let Some(tls) = config.server.tls.as_mut() {
            resolve(&mut tls.cert_file);
            resolve(&mut tls.key_file);
            if let Some(ca) = tls.client_ca_file.as_mut() {
                resolve(ca);
            }
            if let Some(revoked) = tls.revoked_file.as_mut() {
                resolve(revoked);
            }
        }
        for tls in config.sources.iter_mut().filter_map(|s| s.tls.as_mut()) {
            resolve(&mut tls.ca_file);
            resolve(&mut tls.cert_file);
            resolve(&mut tls.key_file);
        }
        if let Some(p) = &mut config.policy.file {
            resolve(p);
        }
        if let Some(ca) = config
            .panel
            .as_mut()
            .and_then(|p| p.oidc.as_mut())
            .and_then(|o| o.ca_file.as_mut())
        {
            resolve(ca);
        }
        config.validate()?;
        if let Some(panel) = &config.panel
            && panel.oidc.is_none()
        {
            return Err(ConfigError::Invalid(
                "[panel] needs [panel.oidc]: caseworkers sign in through the identity provider"
                    .into(),
            ));
        }
        Ok(config)
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.audit.review.rules()?;
        let s = &self.server;
        if s.default_deadline_ms == 0 || s.default_deadline_ms > s.max_deadline_ms {
            return invalid(format!(
                "server.default_deadline_ms must be between 1 and server.max_deadline_ms ({}), got {}",
                s.max_deadline_ms, s.default_deadline_ms
            ));
        }
        if s.answer_margin_ms >= s.max_deadline_ms {
            return invalid(format!(
                "server.answer_margin_ms ({}) must be below server.max_deadline_ms ({})",
                s.answer_margin_ms, s.max_deadline_ms
            ));
        }
        if s.max_request_bytes < 64 {
            return invalid("server.max_request_bytes must be at least 64".into());
        }
        let l = &s.limits;
        if l.max_message_bytes < s.max_request_bytes {
            return invalid(format!(
                "server.limits.max_message_bytes ({}) must be at least server.max_request_bytes ({})",
                l.max_message_bytes, s.max_request_bytes
            ));
        }
        if l.max_header_list_bytes < 9 * 1024 {
            return invalid(
                "server.limits.max_header_list_bytes must be at least 9216: an 8 KiB access token must fit"
                    .into(),
            );
        }
        if l.max_concurrent_streams == 0
            || l.max_connections == 0
            || l.max_concurrent_lookups == 0
            || l.max_connections_per_address == 0
        {
            return invalid(
                "server.limits.max_concurrent_streams, max_connections, max_connections_per_address and max_concurrent_lookups must be positive".into(),
            );
        }
        if l.idle_timeout_ms != 0 && l.idle_timeout_ms <= l.request_timeout_ms {
            return invalid(format!(
                "server.limits.idle_timeout_ms ({}) must be 0 or above request_timeout_ms ({}): \
                 a client waiting for its answer sends nothing, and must not be cut off",
                l.idle_timeout_ms, l.request_timeout_ms
            ));
        }
        if l.request_timeout_ms < s.max_deadline_ms {
            return invalid(format!(
                "server.limits.request_timeout_ms ({}) must be at least server.max_deadline_ms ({})",
                l.request_timeout_ms, s.max_deadline_ms
            ));
        }
        if let Some(tls) = &s.tls {
            if tls.client_certs != ClientAuth::Off && tls.client_ca_file.is_none() {
                return invalid(format!(
                    "server.tls.client_certs is {:?}: set server.tls.client_ca_file to the CA client certificates must chain to",
                    tls.client_certs
                ));
            }
            if tls.reload_ms == 0 {
                return invalid("server.tls.reload_ms must be positive".into());
            }
            self.validate_client_certs(tls)?;
        }
        if let Some(panel) = &self.panel {
            panel.validate(s.tls.is_some())?;
        }
        let a = &self.auth;
        if a.issuer.trim().is_empty() || a.audience.trim().is_empty() {
            return invalid("auth.issuer and auth.audience must not be empty".into());
        }
        if a.leeway_secs > MAX_LEEWAY_SECS {
            return invalid(format!(
                "auth.leeway_secs must be at most {MAX_LEEWAY_SECS}, got {}",
                a.leeway_secs
            ));
        }
        if a.keys.is_empty() && a.jwks.is_none() {
            return invalid(
                "no token keys: add [auth.jwks] url = \"https://…\" or at least one [[auth.keys]] with kid, algorithm and public_key_file"
                    .into(),
            );
        }
        if a.algorithms.is_empty() {
            return invalid("auth.algorithms is empty: list the algorithms the identity provider signs with, e.g. [\"ES256\", \"RS256\"]".into());
        }
        let mut kids = HashSet::new();
        for key in &a.keys {
            if key.kid.is_empty() || !kids.insert(key.kid.as_str()) {
                return invalid(format!("auth.keys: kid {:?} is empty or repeated", key.kid));
            }
            if !a.algorithms.contains(&key.algorithm) {
                return invalid(format!(
                    "auth.keys: kid {:?} uses {:?}, which is not in auth.algorithms",
                    key.kid, key.algorithm
                ));
            }
        }
        if let Some(j) = &a.jwks {
            if !j.url.starts_with("https://") {
                return invalid(format!(
                    "auth.jwks.url must be an https:// URL, got {:?}",
                    j.url
                ));
            }
            if j.url.parse::<http::Uri>().is_err() {
                return invalid(format!("auth.jwks.url is not a valid URL: {:?}", j.url));
            }
            if j.ttl_secs == 0 || j.refresh_secs == 0 || j.timeout_ms == 0 {
                return invalid(
                    "auth.jwks: ttl_secs, refresh_secs and timeout_ms must be positive".into(),
                );
            }
            if j.refresh_secs > j.ttl_secs || j.min_refresh_secs > j.refresh_secs {
                return invalid(
                    "auth.jwks: need min_refresh_secs <= refresh_secs <= ttl_secs".into(),
                );
            }
        }
        let c = &a.claims;
        if c.typ.is_empty() && c.token_use.is_none() {
            return invalid("auth.claims: set typ (e.g. \"at+jwt\") or token_use, or ID tokens would pass as access tokens".into());
        }
        if [&c.name, &c.department, &c.municipality, &c.roles]
            .iter()
            .any(|n| n.is_empty())
        {
            return invalid("auth.claims: claim names must not be empty".into());
        }
        if let Some((from, to)) = c
            .role_names
            .iter()
            .find(|(_, to)| !ROLES.contains(&to.as_str()))
        {
            return invalid(format!(
                "auth.claims.role_names: {from:?} maps to {to:?}, which is not one of {ROLES:?}"
            ));
        }
        // Break-the-glass is the lookup without a relation: the reason is what the auditors
        // review it by, so there is always one.
        if self.policy.break_glass_min_reason == 0 {
            return invalid(
                "policy.break_glass_min_reason must be at least 1: a break-the-glass lookup always gives a reason (the default is 20 characters)"
                    .into(),
            );
        }
        // A minimum no request can carry would refuse every break-the-glass lookup, in an
        // emergency, with an error that blames the caseworker's reason.
        let longest = MAX_BREAK_GLASS_MIN_REASON.min(s.max_request_bytes / 2);
        if self.policy.break_glass_min_reason > longest {
            return invalid(format!(
                "policy.break_glass_min_reason must be at most {longest} characters (at most \
                 {MAX_BREAK_GLASS_MIN_REASON}, and half of server.max_request_bytes, {}): a \
                 longer minimum leaves no room for the reason in a lookup",
                s.max_request_bytes
            ));
        }
        let audit = &self.audit;
        if audit.path.is_some() == audit.postgres_url_env.is_some() {
            return invalid(
                "audit: give exactly one store: path = \"…/audit.db\" (SQLite) or postgres_url_env = \"VAR\" (PostgreSQL)"
                    .into(),
            );
        }
        if audit.chain.is_empty()
            || audit.checkpoint_every == 0
            || audit.checkpoint_interval_secs == 0
        {
            return invalid(
                "audit.chain must not be empty and audit.checkpoint_every / checkpoint_interval_secs must be positive"
                    .into(),
            );
        }
        if audit.retention_days == 0 {
            return invalid(
                "audit.retention_days must be at least 1 (to stop pruning, set prune_interval_secs = 0)"
                    .into(),
            );
        }
        if self.sources.is_empty() {
            return invalid("no [[sources]] configured: a gateway needs at least one".into());
        }
        let mut ids = HashSet::new();
        for source in &self.sources {
            if !is_source_id(&source.id) || !ids.insert(source.id.as_str()) {
                return invalid(format!(
                    "sources: id {:?} is repeated or not of lowercase letters, digits and '-'",
                    source.id
                ));
            }
            if !(source.endpoint.starts_with("http://") || source.endpoint.starts_with("https://"))
            {
                return invalid(format!(
                    "sources.{}: endpoint must be an http:// or https:// URL, got {:?}",
                    source.id, source.endpoint
                ));
            }
            match (source.endpoint.starts_with("https://"), &source.tls) {
                (true, None) => {
                    return invalid(format!(
                        "sources.{}: an https:// endpoint needs [sources.tls] with ca_file, cert_file and key_file",
                        source.id
                    ));
                }
                (false, Some(_)) => {
                    return invalid(format!(
                        "sources.{}: [sources.tls] is set, so the endpoint must be https://",
                        source.id
                    ));
                }
                _ => {}
            }
            if source.tls.as_ref().is_some_and(|t| t.reload_ms == 0) {
                return invalid(format!(
                    "sources.{}: tls.reload_ms must be positive",
                    source.id
                ));
            }
            if source.breaker_window_calls > crate::source_stack::MAX_WINDOW
                || (source.breaker_window_calls > 0
                    && !(1..=100).contains(&source.breaker_failure_rate_percent))
            {
                return invalid(format!(
                    "sources.{}: breaker_window_calls must be at most {} and, when set, \
                     breaker_failure_rate_percent between 1 and 100",
                    source.id,
                    crate::source_stack::MAX_WINDOW
                ));
            }
            if source.timeout_ms == 0 || source.connect_timeout_ms == 0 {
                return invalid(format!(
                    "sources.{}: timeout_ms and connect_timeout_ms must be positive",
                    source.id
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The revocation list and the calling systems of the listener's TLS.
    fn validate_client_certs(&self, tls: &TlsConfig) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if tls.client_certs == ClientAuth::Off
            && (!tls.systems.is_empty()
                || tls.require_listed_systems
                || !tls.revoked.is_empty()
                || tls.revoked_file.is_some())
        {
            return invalid(
                "server.tls: systems, require_listed_systems, revoked and revoked_file need client_certs = \"optional\" or \"required\""
                    .into(),
            );
        }
        if let Err(e) =
            samblik_adapters::tls::Revoked::parse(tls.revoked.iter().map(String::as_str))
        {
            return invalid(format!("server.tls.revoked: {e}"));
        }
        let mut names = HashSet::new();
        for system in &tls.systems {
            let name = system.name.trim();
            if name.is_empty()
                || name != system.name
                || name.chars().count() > 128
                || name.chars().any(char::is_control)
                || !names.insert(name)
            {
                return invalid(format!(
                    "server.tls.systems: name {:?} is empty, repeated, padded or not a certificate's common name",
                    system.name
                ));
            }
            // The panel's own calls are marked inside the process; a certificate with its name
            // is refused at every call, so listing it could only mislead the operator.
            if name == PANEL_SYSTEM {
                return invalid(format!(
                    "server.tls.systems: {name:?} is the lookup panel's own name; no calling \
                     system may use it (a client certificate naming it is refused)"
                ));
            }
            let limit = |field: &str, list: &Option<Vec<String>>, known: &[&str]| {
                let context = |what: String| format!("server.tls.systems {name:?}: {what}");
                match list {
                    Some(list) if list.is_empty() => invalid(context(format!(
                        "{field} = [] allows nothing; leave it out to allow every one"
                    ))),
                    Some(list) => match list.iter().find(|item| !known.contains(&item.as_str())) {
                        Some(unknown) => invalid(context(format!(
                            "unknown {} {unknown:?}; {field} are {}",
                            field.trim_end_matches('s'),
                            known.join(", ")
                        ))),
                        None => Ok(()),
                    },
                    None => Ok(()),
                }
            };
            let source_ids: Vec<&str> = self.sources.iter().map(|s| s.id.as_str()).collect();
            limit("sources", &system.sources, &source_ids)?;
            let purposes = samblik_proto::v1::Purpose::ALL.map(|p| p.code());
            limit("purposes", &system.purposes, &purposes)?;
        }
        Ok(())
    }
}

impl ServerConfig {
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }
    pub fn max_deadline(&self) -> Duration {
        Duration::from_millis(self.max_deadline_ms)
    }
    pub fn answer_margin(&self) -> Duration {
        Duration::from_millis(self.answer_margin_ms)
    }
}

impl SourceConfig {
    /// A source at `endpoint` with the default timeouts, no TLS, owned by the department of
    /// its id and serving its department's standard case types.
    pub fn new(id: &str, department: &str, endpoint: &str) -> Self {
        SourceConfig {
            id: id.to_owned(),
            department: department.to_owned(),
            endpoint: endpoint.to_owned(),
            timeout_ms: defaults::source_timeout_ms(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            max_concurrent_calls: defaults::max_concurrent_calls(),
            breaker_failures: defaults::breaker_failures(),
            breaker_cool_down_ms: defaults::breaker_cool_down_ms(),
            breaker_window_calls: defaults::breaker_window_calls(),
            breaker_failure_rate_percent: defaults::breaker_failure_rate_percent(),
            tls: None,
            owner_department: None,
            case_types: Vec::new(),
        }
    }

    /// The department that owns the source's data.
    pub fn owner(&self) -> &str {
        self.owner_department.as_deref().unwrap_or(&self.id)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// The source's bulkhead and circuit breaker.
    pub fn resilience(&self) -> crate::source_stack::Resilience {
        crate::source_stack::Resilience {
            max_concurrent: self.max_concurrent_calls,
            breaker_failures: self.breaker_failures,
            breaker_cool_down: Duration::from_millis(self.breaker_cool_down_ms),
            // `breaker_failures = 0` turns the whole breaker off, as it always has.
            breaker_window: if self.breaker_failures == 0 {
                0
            } else {
                self.breaker_window_calls
            },
            breaker_failure_rate_percent: self.breaker_failure_rate_percent,
        }
    }
}

fn is_source_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        [auth]
        issuer = "https://idp.example"
        audience = "samblik"
        [[auth.keys]]
        kid = "k1"
        algorithm = "ES256"
        public_key_file = "k1.pem"
        [[sources]]
        id = "jobcenter"
        department = "Jobcenter"
        endpoint = "http://127.0.0.1:1"
        [audit]
        path = "audit.db"
        signing_key_file = "audit.key"
        data_key_file = "audit-data.keys"
    "#;

    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Each config text is refused with an error that contains its needle.
    fn refused_with<'a>(cases: impl IntoIterator<Item = (String, &'a str)>) {
        for (text, needle) in cases {
            let err = parse(&text);
            assert!(
                err.as_ref().is_err_and(|e| e.contains(needle)),
                "expected an error containing {needle:?}, got {err:?}"
            );
        }
    }

    #[test]
    fn no_consecutive_failures_means_no_circuit_breaker_at_all() {
        let source = SourceConfig::new("s", "S", "http://127.0.0.1:1");
        assert_eq!(source.resilience().breaker_window, 20);
        let off = SourceConfig {
            breaker_failures: 0,
            ..source
        };
        let resilience = off.resilience();
        assert_eq!(
            (resilience.breaker_failures, resilience.breaker_window),
            (0, 0)
        );
    }

    #[test]
    fn accepts_a_minimal_config_with_defaults() {
        let config = parse(GOOD);
        assert!(config.is_ok(), "{config:?}");
        let config = config.unwrap_or_else(|_| unreachable!());
        assert_eq!(config.server.default_deadline_ms, 3_000);
        assert_eq!(config.auth.leeway_secs, 30);
        assert_eq!(config.sources[0].timeout_ms, 2_000);
        assert_eq!(
            (
                config.audit.retention_days,
                config.audit.prune_interval_secs
            ),
            (183, 86_400)
        );
    }

    #[test]
    fn refuses_an_audit_log_without_fsync_by_name() {
        let with = |durability: &str| {
            GOOD.replace(
                "signing_key_file = \"audit.key\"",
                &format!("signing_key_file = \"audit.key\"\ndurability = {durability:?}"),
            )
        };
        let err = parse(&with("off"));
        assert!(
            err.as_ref()
                .is_err_and(|e| e.contains("audit.durability = \"off\" is refused")
                    && e.contains("Remove the setting")),
            "{err:?}"
        );
        assert!(parse(&with("fast")).is_err_and(|e| e.contains("the only value")));
        let full = parse(&with("full"));
        assert!(
            full.is_ok_and(|c| c.audit.durability == AuditDurability::Full),
            "\"full\" is still accepted"
        );
    }

    #[test]
    fn refuses_a_break_glass_lookup_without_a_reason() {
        let with = |min: usize| format!("{GOOD}\n[policy]\nbreak_glass_min_reason = {min}\n");
        let err = parse(&with(0));
        assert!(
            err.as_ref()
                .is_err_and(|e| e.contains("policy.break_glass_min_reason must be at least 1")),
            "{err:?}"
        );
        let one = parse(&with(1));
        assert!(
            one.is_ok_and(|c| c.policy.break_glass_min_reason == 1),
            "a one-character minimum is refused"
        );
    }

    #[test]
    fn refuses_a_break_glass_minimum_no_lookup_can_carry() {
        let with = |min: usize, max_request: usize| {
            GOOD.replace(
                "[server]",
                &format!("[server]\nmax_request_bytes = {max_request}"),
            ) + &format!("\n[policy]\nbreak_glass_min_reason = {min}\n")
        };
        let err = parse(&with(501, 65536));
        assert!(
            err.as_ref().is_err_and(
                |e| e.contains("policy.break_glass_min_reason must be at most 500 characters")
            ),
            "{err:?}"
        );
        assert!(parse(&with(500, 65536)).is_ok());
        let err = parse(&with(100, 128));
        assert!(
            err.as_ref().is_err_and(
                |e| e.contains("policy.break_glass_min_reason must be at most 64 characters")
            ),
            "{err:?}"
        );
        assert!(parse(&with(64, 128)).is_ok());
    }

    #[test]
    fn refuses_unknown_fields() {
        let err = parse(&GOOD.replace("[server]", "[server]\nlisten_tls = true"));
        assert!(err.is_err_and(|e| e.contains("unknown field")));
    }

    #[test]
    fn refuses_bad_values_with_a_helpful_message() {
        let cases = [
            (GOOD.replace("\"ES256\"", "\"HS256\""), "unknown variant"),
            (
                GOOD.replace("id = \"jobcenter\"", "id = \"Job Center\""),
                "lowercase",
            ),
            (GOOD.replace("http://127.0.0.1:1", "127.0.0.1:1"), "http://"),
            (
                GOOD.replace("[auth]", "[auth]\nleeway_secs = 3600"),
                "leeway_secs must be at most",
            ),
            (
                GOOD.replace(
                    "listen = \"127.0.0.1:0\"",
                    "listen = \"127.0.0.1:0\"\ndefault_deadline_ms = 20000",
                ),
                "default_deadline_ms",
            ),
            (GOOD.replace("kid = \"k1\"", "kid = \"\""), "kid"),
            (
                GOOD.replace("[auth]", "[auth]\nalgorithms = [\"RS256\"]"),
                "not in auth.algorithms",
            ),
            (
                GOOD.replace("[auth]", "[auth]\nalgorithms = [\"HS256\"]"),
                "unknown variant",
            ),
            (
                format!("{GOOD}\n[auth.jwks]\nurl = \"http://idp.example/jwks\"\n"),
                "https://",
            ),
            (format!("{GOOD}\n[auth.claims]\ntyp = \"\"\n"), "ID tokens"),
            (
                format!("{GOOD}\n[auth.claims.role_names]\nSagsbehandler = \"boss\"\n"),
                "not one of",
            ),
            (
                format!("{GOOD}\n[server.limits]\nmax_message_bytes = 100\n"),
                "max_message_bytes",
            ),
            (
                format!("{GOOD}\n[server.limits]\nrequest_timeout_ms = 5000\n"),
                "request_timeout_ms",
            ),
            (
                format!("{GOOD}\n[server.limits]\nmax_header_list_bytes = 4096\n"),
                "8 KiB access token",
            ),
            (
                format!(
                    "{GOOD}\n[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_certs = \"required\"\n"
                ),
                "client_ca_file",
            ),
            (
                GOOD.replace("http://127.0.0.1:1", "https://127.0.0.1:1"),
                "needs [sources.tls]",
            ),
            (
                GOOD.replace("[audit]", "[audit]\nretention_days = 0"),
                "prune_interval_secs = 0",
            ),
        ];
        refused_with(cases);
    }

    const CLIENT_TLS: &str = "\n[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_certs = \"optional\"\nclient_ca_file = \"ca.pem\"\n";

    #[test]
    fn calling_systems_name_known_sources_and_purposes() {
        let good = format!(
            "{GOOD}{CLIENT_TLS}revoked = [\"serial:0a:1b\", \"sha256:{}\"]\n[[server.tls.systems]]\nname = \"DUBU\"\nsources = [\"jobcenter\"]\npurposes = [\"follow-up\"]\n[[server.tls.systems]]\nname = \"KMD Momentum\"\n",
            "ab".repeat(32)
        );
        let config = parse(&good);
        assert!(config.is_ok(), "{config:?}");
        let tls = config
            .ok()
            .and_then(|c| c.server.tls)
            .unwrap_or_else(|| unreachable!());
        assert_eq!(tls.systems.len(), 2);
        assert_eq!(tls.systems[1].sources, None);

        let system = |body: &str| format!("{GOOD}{CLIENT_TLS}[[server.tls.systems]]\n{body}\n");
        let cases = [
            (
                system("name = \"DUBU\"\nsources = [\"child-welfare\"]"),
                "unknown source \"child-welfare\"",
            ),
            (
                system("name = \"DUBU\"\npurposes = [\"curiosity\"]"),
                "unknown purpose \"curiosity\"",
            ),
            (system("name = \"DUBU\"\nsources = []"), "allows nothing"),
            (system("name = \"DUBU\"\npurposes = []"), "allows nothing"),
            (system("name = \"\""), "empty"),
            (system("name = \" DUBU\""), "padded"),
            (
                format!(
                    "{}[[server.tls.systems]]\nname = \"DUBU\"\n",
                    system("name = \"DUBU\"")
                ),
                "repeated",
            ),
            (system("name = \"DUBU\"\nscopes = []"), "unknown field"),
            (
                system("name = \"samblik-panel\""),
                "the lookup panel's own name",
            ),
            (
                format!("{GOOD}{CLIENT_TLS}revoked = [\"serial:zz\"]\n"),
                "not hexadecimal",
            ),
            (
                format!("{GOOD}{CLIENT_TLS}revoked = [\"0a1b\"]\n"),
                "serial:HEX",
            ),
            (
                format!(
                    "{GOOD}{}require_listed_systems = true\n",
                    CLIENT_TLS.replace("optional", "off")
                ),
                "need client_certs",
            ),
        ];
        refused_with(cases);
    }

    #[test]
    fn refuses_duplicate_sources() {
        let dup = format!(
            "{GOOD}\n[[sources]]\nid = \"jobcenter\"\ndepartment = \"X\"\nendpoint = \"http://127.0.0.1:2\"\n"
        );
        assert!(parse(&dup).is_err_and(|e| e.contains("repeated")));
    }
}

#[cfg(test)]
mod shipped {
    use super::Config;

    /// The example in `deploy/` is a real, valid config: it cannot rot.
    #[test]
    fn the_deploy_example_parses_and_validates() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samblik.example.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let config: Config =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(config.validate().is_ok(), "{:?}", config.validate());
        let ids: Vec<&str> = config.sources.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["child-welfare", "jobcenter", "integration", "adult-social"]
        );
        // That its policy section loads over its sources is disclosure.rs's test.
    }

    /// A review section the gateway cannot apply refuses to load, naming what is wrong.
    #[test]
    fn bad_review_thresholds_are_refused() {
        let good = super::ReviewConfig::default();
        assert!(good.rules().is_ok());
        let bad = [
            super::ReviewConfig {
                timezone: "Europe/Kolding".into(),
                ..good.clone()
            },
            super::ReviewConfig {
                work_start: "18:00".into(),
                work_end: "07:00".into(),
                ..good.clone()
            },
            super::ReviewConfig {
                work_days: vec!["funday".into()],
                ..good.clone()
            },
            super::ReviewConfig {
                max_lookups_per_hour: 0,
                ..good.clone()
            },
        ];
        for review in bad {
            let err = review
                .rules()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("audit.review:"), "{err}");
        }
    }
}
