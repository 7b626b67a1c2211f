//! Where the gateway meets its policy: Rust computes the facts (relation, consents, grants,
//! statutes, sensitivity), the Cedar policy decides the tier, and this module filters each case
//! down to what was decided and says what was withheld and why.
//!
//! Nothing here caches consents or grants: they are read from the store for every lookup, so a
//! withdrawal or an expiry takes effect on the very next one, on every replica.

use crate::config::{
    CatalogConfig, Config, ConfigError, FieldSetConfig, PolicyConfig, SourceConfig,
};
use chrono::{DateTime, Utc};
use samblik_audit::registry::{AccessRequest, Consent, ConsentKind};
use samblik_policy::{BasisFact, CaseFacts, CaseTypes, Catalog, Decision, Policy, Role, Tier};
use samblik_proto::v1::{self as pb, Case};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// The tier-2 fields a field set may name, with their field paths.
pub const SELECTED_FIELDS: &[&str] = &[
    "interventions",
    "situation",
    "goals",
    "next_follow_up_on",
    "assessment_summary",
    "residence",
];

/// The address fields: never shown where the policy hides addresses.
const ADDRESS_FIELDS: &[&str] = &["residence"];

/// How many distinct unknown codes are counted each under its own name; past that, a source
/// sending ever new codes is counted under one, so it cannot grow the gateway's memory.
const MAX_UNKNOWN_CODES: usize = 256;
/// The most digits a code written to the log may hold: `LAB-30a` has two, a CPR number ten.
const MAX_CODE_DIGITS: usize = 5;

/// The loaded policy with the configuration it decides on.
#[derive(Debug)]
pub struct DisclosurePolicy {
    policy: Policy,
    config: PolicyConfig,
    /// Per source id: its owner department and the case types it serves.
    sources: HashMap<String, SourceFacts>,
    /// Per (source, case type): the selected fields; `(source, "")` is the source's default.
    field_sets: HashMap<(String, String), Vec<String>>,
    /// The catalogue's case type codes and flags: anything else reaches the policy as
    /// [`Catalog::UNKNOWN`].
    case_types: HashSet<String>,
    flags: HashSet<String>,
    unknown: UnknownCodes,
}

/// A code a source sent that the catalogue does not hold, and how often it was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCode {
    pub source_id: String,
    /// `case type` or `flag`.
    pub kind: &'static str,
    /// The code as logged: `(none)` when the case had no type, `(unprintable)` when it is long
    /// or holds other characters than a code does, `(other)` past the counted number of codes.
    pub code: String,
    pub seen: u64,
}

/// Counts unknown codes per source and code, and says so in the log at the 1st, 2nd, 4th, 8th…
/// sighting: an operator sees every code and how often it comes, without one line per case.
#[derive(Debug, Default)]
struct UnknownCodes {
    seen: Mutex<HashMap<(String, &'static str, String), u64>>,
}

impl UnknownCodes {
    fn count(&self, source_id: &str, kind: &'static str, code: &str) {
        let mut key = (source_id.to_owned(), kind, loggable(code));
        let seen = {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !seen.contains_key(&key) && seen.len() >= MAX_UNKNOWN_CODES {
                key.2 = "(other)".to_owned();
            }
            let n = seen.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if seen.is_power_of_two() {
            tracing::warn!(
                source = %key.0,
                kind,
                code = %key.2,
                seen,
                "a case with a {kind} the catalogue does not know: shown to its own department only"
            );
        }
    }

    fn snapshot(&self) -> Vec<UnknownCode> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<UnknownCode> = seen
            .iter()
            .map(|((source_id, kind, code), &seen)| UnknownCode {
                source_id: source_id.clone(),
                kind,
                code: code.clone(),
                seen,
            })
            .collect();
        list.sort_by(|a, b| (&a.source_id, a.kind, &a.code).cmp(&(&b.source_id, b.kind, &b.code)));
        list
    }
}

/// A code fit for the log: it comes from a department's system, so only what looks like a code
/// (`SL-141`, `Serviceloven § 99`) is written as sent. A code never holds more than a few
/// digits; a CPR number sent in its place (ten) must not reach the log.
fn loggable(code: &str) -> String {
    let plain = code
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '§' | '/'));
    let digits = code.chars().filter(char::is_ascii_digit).count();
    if code.is_empty() {
        "(none)".to_owned()
    } else if plain && digits <= MAX_CODE_DIGITS && code.chars().count() <= 40 {
        code.to_owned()
    } else {
        "(unprintable)".to_owned()
    }
}

#[derive(Debug, Clone)]
struct SourceFacts {
    owner: String,
    case_types: CaseTypes,
}

impl DisclosurePolicy {
    /// Loads the policy file (or the shipped default) and checks the `[policy]` section against
    /// the catalog. Any unknown source, case type, purpose, field or flag refuses the start.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Self::from_config_for(config, &config.sources)
    }

    /// As [`Self::from_config`], for `sources` instead of the config's `[[sources]]` (sources
    /// held in the process).
    pub fn from_config_for(config: &Config, sources: &[SourceConfig]) -> Result<Self, ConfigError> {
        let text = match &config.policy.file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
            None => Policy::default_source().to_owned(),
        };
        Self::new(&text, sources, config.policy.clone())
    }

    /// The text of the shipped default rules.
    pub fn default_rules() -> &'static str {
        Policy::default_source()
    }

    /// The shipped default rules over `sources`.
    pub fn with_default_rules(
        sources: &[SourceConfig],
        config: PolicyConfig,
    ) -> Result<Self, ConfigError> {
        Self::new(Policy::default_source(), sources, config)
    }

    pub fn new(
        policy_text: &str,
        sources: &[SourceConfig],
        config: PolicyConfig,
    ) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        check_catalog(&config.catalog).map_err(|m| invalid(format!("policy.catalog: {m}")))?;
        let catalog = Catalog {
            sources: sources.iter().map(|s| s.id.clone()).collect(),
            case_types: config
                .catalog
                .case_types
                .iter()
                .map(|t| t.code.clone())
                .collect(),
            purposes: Catalog::PURPOSES.map(str::to_owned).into(),
            flags: config.catalog.flags.clone(),
        };
        // The schema is built from the catalogue, so a rule naming a case type or flag the
        // catalogue lacks fails validation here and the gateway does not start.
        let policy = Policy::load(policy_text, &catalog).map_err(|e| {
            invalid(format!(
                "policy is not valid against the catalogue ([policy.catalog]): {e}"
            ))
        })?;
        let known = |list: &[String], what: &str, value: &str| {
            if list.iter().any(|v| v == value) {
                Ok(())
            } else {
                Err(invalid(format!("policy: unknown {what} {value:?}")))
            }
        };
        let mut source_facts = HashMap::new();
        for s in sources {
            let case_types: Vec<String> = if s.case_types.is_empty() {
                // The types of the source's area; a source outside every area may send any.
                let area: Vec<String> = config
                    .catalog
                    .case_types
                    .iter()
                    .filter(|t| t.area == s.owner())
                    .map(|t| t.code.clone())
                    .collect();
                if area.is_empty() {
                    catalog.case_types.clone()
                } else {
                    area
                }
            } else {
                s.case_types.clone()
            };
            for t in &case_types {
                known(&catalog.case_types, "case type", t)?;
            }
            source_facts.insert(
                s.id.clone(),
                SourceFacts {
                    owner: s.owner().to_owned(),
                    case_types: CaseTypes::new(case_types),
                },
            );
        }
        let mut ids = HashSet::new();
        for statute in &config.statutes {
            if !ids.insert(statute.id.as_str()) {
                return Err(invalid(format!("policy: statute {:?} twice", statute.id)));
            }
            if Tier::from_u8(statute.max_tier).is_none_or(|t| t == Tier::Hidden) {
                return Err(invalid(format!(
                    "policy: statute {:?} has max_tier {}; it must be 1, 2 or 3",
                    statute.id, statute.max_tier
                )));
            }
            for s in &statute.sources {
                known(&catalog.sources, "source", s)?;
            }
            for t in &statute.case_types {
                known(&catalog.case_types, "case type", t)?;
            }
            for p in &statute.purposes {
                known(&catalog.purposes, "purpose", p)?;
            }
        }
        let mut field_sets = HashMap::new();
        for FieldSetConfig {
            source,
            case_types,
            selected,
        } in &config.field_sets
        {
            known(&catalog.sources, "source", source)?;
            for f in selected {
                if !SELECTED_FIELDS.contains(&f.as_str()) {
                    return Err(invalid(format!(
                        "policy: unknown field {f:?} in the field set of {source:?}; fields are {}",
                        SELECTED_FIELDS.join(", ")
                    )));
                }
            }
            let keys: Vec<String> = if case_types.is_empty() {
                vec![String::new()]
            } else {
                case_types.clone()
            };
            for t in keys {
                if !t.is_empty() {
                    known(&catalog.case_types, "case type", &t)?;
                }
                field_sets.insert((source.clone(), t), selected.clone());
            }
        }
        for rule in &config.sensitivity {
            for s in &rule.sources {
                known(&catalog.sources, "source", s)?;
            }
            for t in &rule.case_types {
                known(&catalog.case_types, "case type", t)?;
            }
            for f in &rule.flags {
                known(&catalog.flags, "flag", f)?;
            }
        }
        Ok(DisclosurePolicy {
            policy,
            case_types: catalog.case_types.into_iter().collect(),
            flags: catalog.flags.into_iter().collect(),
            unknown: UnknownCodes::default(),
            config,
            sources: source_facts,
            field_sets,
        })
    }

    /// The codes sources sent that the catalogue does not hold, with how often each was seen.
    pub fn unknown_codes(&self) -> Vec<UnknownCode> {
        self.unknown.snapshot()
    }

    /// The catalogue this policy was loaded with.
    pub fn catalog(&self) -> &CatalogConfig {
        &self.config.catalog
    }

    /// The policy version recorded in every audit record: the hash of the rules and schema.
    pub fn version(&self) -> &str {
        self.policy.version()
    }

    /// The ids of the policy's rules.
    pub fn rule_ids(&self) -> Vec<String> {
        self.policy.rule_ids()
    }

    /// `policy.break_glass_per_day` (0: no limit).
    pub fn break_glass_per_day(&self) -> usize {
        self.config.break_glass_per_day
    }

    pub fn break_glass_min_reason(&self) -> usize {
        self.config.break_glass_min_reason
    }

    pub fn max_grant(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::days(i64::from(self.config.max_grant_days))
    }

    /// The department owning a source's data.
    pub fn owner_of(&self, source_id: &str) -> Option<&str> {
        self.sources.get(source_id).map(|s| s.owner.as_str())
    }

    /// The best statute covering this source (and case type, when known) for the caller.
    fn statute(
        &self,
        source_id: &str,
        case_type: Option<&str>,
        to_department: &str,
        purpose: &str,
    ) -> Option<BasisFact<'_>> {
        let covers = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        self.config
            .statutes
            .iter()
            .filter(|s| {
                covers(&s.sources, source_id)
                    && case_type.is_none_or(|t| covers(&s.case_types, t))
                    && covers(&s.to_departments, to_department)
                    && covers(&s.purposes, purpose)
            })
            .filter_map(|s| {
                Some(BasisFact {
                    id: &s.id,
                    max_tier: Tier::from_u8(s.max_tier)?,
                })
            })
            .max_by_key(|b| b.max_tier)
    }

    /// Flags configured for a source's case type, on top of the source's own.
    fn configured_flags(&self, source_id: &str, case_type: &str) -> impl Iterator<Item = &str> {
        self.config
            .sensitivity
            .iter()
            .filter(move |r| {
                (r.sources.is_empty() || r.sources.iter().any(|s| s == source_id))
                    && r.case_types.iter().any(|t| t == case_type)
            })
            .flat_map(|r| r.flags.iter().map(String::as_str))
    }

    fn selected_fields(&self, source_id: &str, case_type: &str) -> Option<&[String]> {
        if self.field_sets.is_empty() {
            return None;
        }
        self.field_sets
            .get(&(source_id.to_owned(), case_type.to_owned()))
            .or_else(|| self.field_sets.get(&(source_id.to_owned(), String::new())))
            .map(Vec::as_slice)
    }

    /// The highest tier any case of `source_id` could be granted in this lookup: the source is
    /// asked for no more.
    pub fn ceiling(&self, lookup: &LookupFacts<'_>, source_id: &str) -> Tier {
        let Some(source) = self.sources.get(source_id) else {
            return Tier::Hidden;
        };
        let owner = source.owner.as_str();
        let facts = self.facts(lookup, source_id, owner, None, "", "", &[]);
        self.policy.ceiling(&facts, &source.case_types)
    }

    /// The decision for one case.
    pub fn decide(&self, lookup: &LookupFacts<'_>, source_id: &str, case: &Case) -> Decision {
        let owner = self.owner_of(source_id).unwrap_or(source_id);
        let (sent_type, paragraph) = case
            .existence
            .as_ref()
            .and_then(|e| e.case_type.as_ref())
            .map_or(("", ""), |t| (t.code.as_str(), t.legal_paragraph.as_str()));
        // A type or flag outside the catalogue is decided as "unknown", never dropped unseen.
        let case_type = if self.case_types.contains(sent_type) {
            sent_type
        } else {
            self.unknown.count(source_id, "case type", sent_type);
            Catalog::UNKNOWN
        };
        // The case's own flags, borrowed; copied only when one is unknown or configuration adds
        // one.
        let mut flags = Cow::Borrowed(case.sensitivity.as_slice());
        if flags.iter().any(|f| !self.flags.contains(f)) {
            let mut known = Vec::with_capacity(flags.len());
            for f in flags.iter() {
                let f = if self.flags.contains(f) {
                    f.as_str()
                } else {
                    self.unknown.count(source_id, "flag", f);
                    Catalog::UNKNOWN
                };
                if !known.iter().any(|k: &String| k == f) {
                    known.push(f.to_owned());
                }
            }
            flags = Cow::Owned(known);
        }
        for f in self.configured_flags(source_id, case_type) {
            if !flags.iter().any(|x| x == f) {
                flags.to_mut().push(f.to_owned());
            }
        }
        let facts = self.facts(
            lookup,
            source_id,
            owner,
            Some(case.case_id.as_str()),
            case_type,
            paragraph,
            &flags,
        );
        self.policy.decide(&facts)
    }

    #[allow(clippy::too_many_arguments)]
    fn facts<'a>(
        &'a self,
        lookup: &'a LookupFacts<'a>,
        source_id: &'a str,
        owner: &'a str,
        case_id: Option<&str>,
        case_type: &'a str,
        legal_paragraph: &'a str,
        flags: &'a [String],
    ) -> CaseFacts<'a> {
        let caller_department = lookup.caller_department;
        let purpose = lookup.purpose;
        let typed = (!case_type.is_empty()).then_some(case_type);
        CaseFacts {
            caller_id: lookup.caller_id,
            caller_department,
            roles: lookup.roles,
            municipality: lookup.municipality,
            purpose,
            source_id,
            owner_department: owner,
            case_type,
            legal_paragraph,
            flags,
            relation: lookup.relation,
            break_glass: lookup.break_glass,
            statute: self.statute(source_id, typed, caller_department, purpose),
            consent: lookup.registry.consent(owner, lookup),
            refusal: lookup.registry.refusal(owner, lookup),
            grant: lookup.registry.grant(source_id, case_id, lookup),
        }
    }

    /// Filters `case` down to `decision`: drops every part above the tier, the tier-2 fields
    /// the field set does not share and hidden address fields; removes the sensitivity flags and
    /// the subject's CPR; and records the basis and what was withheld. `None` for a hidden case:
    /// it leaves no trace.
    pub fn apply(&self, source_id: &str, mut case: Case, decision: &Decision) -> Option<Case> {
        let tier = wire_tier(decision.tier).min(case.carried_tier());
        if tier == pb::Tier::Hidden {
            return None;
        }
        case.restrict_to(tier);
        let mut withheld = Vec::new();
        let case_type = case
            .existence
            .as_ref()
            .and_then(|e| e.case_type.as_ref())
            .map_or("", |t| t.code.as_str());
        if let Some(selected) = case.selected.as_mut() {
            if let Some(fields) = self.selected_fields(source_id, case_type) {
                keep_selected(selected, |f| fields.iter().any(|x| x == f));
            }
            if !decision.address_visible && !selected.residence.is_empty() {
                keep_selected(selected, |f| !ADDRESS_FIELDS.contains(&f));
                withheld.push(pb::Withheld {
                    part: "selected.residence".into(),
                    tier: pb::Tier::Selected as i32,
                    code: "address-protection".into(),
                    reason: "the citizen's address is protected (name and address protection)"
                        .into(),
                });
            }
        }
        if let Some(w) = &decision.withheld {
            withheld.insert(
                0,
                pb::Withheld {
                    part: match w.tier {
                        Tier::Full => "full",
                        _ => "selected",
                    }
                    .into(),
                    tier: wire_tier(w.tier) as i32,
                    code: w.code.clone(),
                    reason: w.reason.clone(),
                },
            );
        }
        let (basis, basis_id) = decision.basis.as_ref().map_or_else(Default::default, |b| {
            (b.kind().to_owned(), b.id().unwrap_or_default().to_owned())
        });
        case.disclosure = Some(pb::Disclosure {
            basis,
            basis_id,
            rule_ids: decision.rule_ids.to_vec(),
            withheld,
        });
        case.sensitivity.clear();
        case.subject_cpr.clear();
        Some(case)
    }
}

/// What the policy crate cannot see of the catalogue: unique, non-empty departments, case types
/// named and placed in a department of the catalogue. Names as such are checked by the schema.
fn check_catalog(catalog: &CatalogConfig) -> Result<(), String> {
    let mut departments = HashSet::new();
    for d in &catalog.departments {
        if d.id.trim().is_empty() || d.name.trim().is_empty() {
            return Err(format!("department {:?} needs an id and a name", d.id));
        }
        if !departments.insert(d.id.as_str()) {
            return Err(format!("department {:?} is listed twice", d.id));
        }
    }
    for t in &catalog.case_types {
        if t.name.trim().is_empty() || t.legal_paragraph.trim().is_empty() {
            return Err(format!(
                "case type {:?} needs a name and a legal_paragraph",
                t.code
            ));
        }
        if !departments.contains(t.area.as_str()) {
            return Err(format!(
                "case type {:?} has area {:?}, which is not one of the catalogue's departments ({})",
                t.code,
                t.area,
                catalog
                    .departments
                    .iter()
                    .map(|d| d.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

/// Clears the tier-2 fields for which `keep` says no.
fn keep_selected(selected: &mut pb::Selected, keep: impl Fn(&str) -> bool) {
    if !keep("interventions") {
        selected.interventions.clear();
    }
    if !keep("situation") {
        selected.situation.clear();
    }
    if !keep("goals") {
        selected.goals.clear();
    }
    if !keep("next_follow_up_on") {
        selected.next_follow_up_on.clear();
    }
    if !keep("assessment_summary") {
        selected.assessment_summary.clear();
    }
    if !keep("residence") {
        selected.residence.clear();
    }
}

pub fn wire_tier(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Hidden => pb::Tier::Hidden,
        Tier::Existence => pb::Tier::Existence,
        Tier::Selected => pb::Tier::Selected,
        Tier::Full => pb::Tier::Full,
    }
}

pub fn policy_tier(tier: pb::Tier) -> Tier {
    match tier {
        pb::Tier::Hidden => Tier::Hidden,
        pb::Tier::Existence => Tier::Existence,
        pb::Tier::Selected => Tier::Selected,
        pb::Tier::Full => Tier::Full,
    }
}

/// What is known about one lookup before any case is decided.
#[derive(Debug)]
pub struct LookupFacts<'a> {
    pub caller_id: &'a str,
    pub caller_department: &'a str,
    pub roles: &'a [Role],
    pub municipality: &'a str,
    pub purpose: &'a str,
    pub relation: bool,
    pub break_glass: bool,
    pub registry: &'a RegistryFacts,
}

/// The citizen's consents and the caller's grants, read from the store for this lookup.
#[derive(Debug, Default)]
pub struct RegistryFacts {
    pub consents: Vec<Consent>,
    pub grants: Vec<AccessRequest>,
    pub now: DateTime<Utc>,
}

impl RegistryFacts {
    /// The permitting consent with the highest tier that covers the owner's data for the caller.
    fn consent<'a>(&'a self, owner: &str, lookup: &LookupFacts<'_>) -> Option<BasisFact<'a>> {
        self.consents
            .iter()
            .filter(|c| {
                c.kind == ConsentKind::Permit
                    && c.covers(
                        owner,
                        lookup.caller_department,
                        lookup.purpose,
                        lookup.relation,
                        self.now,
                    )
            })
            .filter_map(|c| {
                Some(BasisFact {
                    id: &c.id,
                    max_tier: Tier::from_u8(c.max_tier)?,
                })
            })
            .max_by_key(|b| b.max_tier)
    }

    /// A negative consent covering the owner's data for the caller.
    fn refusal<'a>(&'a self, owner: &str, lookup: &LookupFacts<'_>) -> Option<&'a str> {
        self.consents
            .iter()
            .find(|c| {
                c.kind == ConsentKind::Refuse
                    && c.covers(
                        owner,
                        lookup.caller_department,
                        lookup.purpose,
                        lookup.relation,
                        self.now,
                    )
            })
            .map(|c| c.id.as_str())
    }

    /// The caller's active grant for this case (or, for the ceiling, any case of the source)
    /// and purpose.
    fn grant<'a>(
        &'a self,
        source_id: &str,
        case_id: Option<&str>,
        lookup: &LookupFacts<'_>,
    ) -> Option<BasisFact<'a>> {
        self.grants
            .iter()
            .filter(|g| {
                g.source_id == source_id
                    && case_id.is_none_or(|id| g.case_id == id)
                    && g.requester_id == lookup.caller_id
                    && g.purpose == lookup.purpose
                    && g.grant_active(self.now)
            })
            .filter_map(|g| {
                Some(BasisFact {
                    id: &g.id,
                    max_tier: Tier::from_u8(g.granted_tier?)?,
                })
            })
            .max_by_key(|b| b.max_tier)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::audit::disclosed_fields;
    use proptest::prelude::*;
    use samblik_audit::registry::{Recipients, RequestState};

    /// The example in `deploy/`: its policy section loads over its sources as the gateway would.
    #[test]
    fn the_deploy_examples_policy_loads_over_its_sources() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samblik.example.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let config: Config =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let policy = DisclosurePolicy::from_config(&config)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(policy.version().starts_with("sha256:"));
    }

    const CPR: &str = "0101904321";
    const DEPARTMENTS: [&str; 3] = ["child-welfare", "jobcenter", "integration"];
    const CASE_TYPES: [&str; 4] = ["SL-140", "SL-12a", "LAB-27", "IL-19"];
    const FLAGS: [&str; 3] = [
        "address-protection",
        "police-information",
        "honour-related-conflict",
    ];

    fn policy() -> DisclosurePolicy {
        let sources: Vec<SourceConfig> = DEPARTMENTS
            .iter()
            .map(|id| SourceConfig::new(id, id, ""))
            .collect();
        DisclosurePolicy::with_default_rules(&sources, PolicyConfig::default()).unwrap()
    }

    fn at(days: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + days * 86_400, 0).unwrap()
    }

    fn case(id: usize, case_type: &str, flags: Vec<String>) -> Case {
        Case {
            case_id: format!("C-{id}"),
            subject_cpr: CPR.into(),
            tier: pb::Tier::Full as i32,
            existence: Some(pb::Existence {
                case_type: Some(pb::CaseType {
                    code: case_type.into(),
                    ..Default::default()
                }),
                opened_on: "2026-01-01".into(),
                ..Default::default()
            }),
            selected: Some(pb::Selected {
                situation: "s".into(),
                goals: vec![pb::Goal::default()],
                residence: "Skovvej 1".into(),
                assessment_summary: "a".into(),
                ..Default::default()
            }),
            full: Some(pb::Full {
                documents: vec![pb::Document {
                    document_id: "D-1".into(),
                    ..Default::default()
                }],
            }),
            sensitivity: flags,
            disclosure: None,
        }
    }

    fn consent(i: usize, from: &str, tier: u8, refuse: bool) -> Consent {
        Consent {
            id: format!("c-{i}"),
            cpr: samblik_proto::Cpr::parse(CPR).unwrap(),
            kind: if refuse {
                ConsentKind::Refuse
            } else {
                ConsentKind::Permit
            },
            from_departments: vec![from.into()],
            to: if i.is_multiple_of(2) {
                Recipients::AnyWithCase
            } else {
                Recipients::Departments(vec!["jobcenter".into()])
            },
            max_tier: if refuse { 0 } else { tier },
            purposes: if refuse {
                Vec::new()
            } else {
                vec!["prepare-meeting".into()]
            },
            valid_from: at(-10),
            valid_until: None,
            recorded_by: "cw".into(),
            recorded_at: at(-10),
            document_ref: "doc".into(),
            withdrawn_at: None,
            withdrawn_by: None,
        }
    }

    fn grant(i: usize, source: &str, case: usize, tier: u8) -> AccessRequest {
        AccessRequest {
            id: format!("ar-{i}"),
            cpr: samblik_proto::Cpr::parse(CPR).unwrap(),
            requester_id: "cw-jobcenter-001".into(),
            requester_name: String::new(),
            requester_department: "jobcenter".into(),
            source_id: source.into(),
            owner_department: source.into(),
            case_id: format!("C-{case}"),
            tier_wanted: tier,
            purpose: "prepare-meeting".into(),
            justification: "j".into(),
            filed_at: at(-5),
            state: RequestState::Approved,
            decided_by: Some("x".into()),
            decided_at: Some(at(-4)),
            decision_reason: Some("ok".into()),
            granted_tier: Some(tier),
            granted_until: Some(at(5)),
        }
    }

    /// Everything the caller is shown of every case, by case id.
    fn shown(
        policy: &DisclosurePolicy,
        registry: &RegistryFacts,
        relation: bool,
        break_glass: bool,
        cases: &[(String, Case)],
    ) -> Vec<(String, Vec<String>)> {
        let roles = [Role::Caseworker];
        let facts = LookupFacts {
            caller_id: "cw-jobcenter-001",
            caller_department: "jobcenter",
            roles: &roles,
            municipality: "999",
            purpose: "prepare-meeting",
            relation,
            break_glass,
            registry,
        };
        let mut out = Vec::new();
        for (source, case) in cases {
            let decision = policy.decide(&facts, source, case);
            let ceiling = policy.ceiling(&facts, source);
            if let Some(filtered) = policy.apply(source, case.clone(), &decision) {
                assert!(
                    filtered.carried_tier() <= wire_tier(decision.tier),
                    "fields above the granted tier"
                );
                assert!(filtered.tier <= wire_tier(ceiling) as i32 || source == "jobcenter");
                assert!(filtered.sensitivity.is_empty() && filtered.subject_cpr.is_empty());
                if !decision.address_visible {
                    assert!(
                        filtered
                            .selected
                            .as_ref()
                            .is_none_or(|s| s.residence.is_empty())
                    );
                }
                out.push((filtered.case_id.clone(), disclosed_fields(&filtered)));
            } else {
                assert_eq!(decision.tier, Tier::Hidden);
            }
        }
        out
    }

    fn is_narrower(
        narrow: &[(String, Vec<String>)],
        wide: &[(String, Vec<String>)],
    ) -> Result<(), String> {
        for (id, fields) in narrow {
            let Some((_, wider)) = wide.iter().find(|(w, _)| w == id) else {
                return Err(format!("case {id} appeared"));
            };
            if let Some(f) = fields.iter().find(|f| !wider.contains(f)) {
                return Err(format!("case {id} gained {f}"));
            }
        }
        Ok(())
    }

    prop_compose! {
        fn scenario()(
            cases in prop::collection::vec(
                (0..3usize, 0..CASE_TYPES.len(), prop::collection::vec(0..FLAGS.len(), 0..3)),
                1..6,
            ),
            consents in prop::collection::vec((0..3usize, 1..=3u8, any::<bool>()), 0..4),
            grants in prop::collection::vec((0..3usize, 0..6usize, 1..=3u8), 0..3),
            relation in any::<bool>(),
            break_glass in any::<bool>(),
        ) -> (Vec<(String, Case)>, RegistryFacts, bool, bool) {
            let cases = cases
                .into_iter()
                .enumerate()
                .map(|(i, (s, t, flags))| {
                    let flags = flags.into_iter().map(|f| FLAGS[f].to_owned()).collect();
                    (DEPARTMENTS[s].to_owned(), case(i, CASE_TYPES[t], flags))
                })
                .collect();
            let registry = RegistryFacts {
                consents: consents
                    .into_iter()
                    .enumerate()
                    .map(|(i, (d, tier, refuse))| consent(i, DEPARTMENTS[d], tier, refuse))
                    .collect(),
                grants: grants
                    .into_iter()
                    .enumerate()
                    .map(|(i, (d, c, tier))| grant(i, DEPARTMENTS[d], c, tier))
                    .collect(),
                now: at(0),
            };
            (cases, registry, relation, break_glass)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Withdrawing any one consent or removing any one grant never shows a case, or a field
        /// of one, that was not shown before; no field above its tier or a hidden address ever
        /// leaves, and a hidden case leaves nothing (checked inside `shown`).
        #[test]
        fn removing_a_consent_or_a_grant_never_widens_the_answer(
            (cases, registry, relation, break_glass) in scenario()
        ) {
            let policy = policy();
            let full = shown(&policy, &registry, relation, break_glass, &cases);
            for i in 0..registry.consents.len() {
                let mut fewer = RegistryFacts {
                    consents: registry.consents.clone(),
                    grants: registry.grants.clone(),
                    now: registry.now,
                };
                // Withdrawn, as the store records it (a refusal withdrawn may widen: that is
                // the citizen's decision, so only permits are withdrawn here).
                if fewer.consents[i].kind == ConsentKind::Refuse {
                    continue;
                }
                fewer.consents[i].withdrawn_at = Some(at(-1));
                let narrow = shown(&policy, &fewer, relation, break_glass, &cases);
                prop_assert!(is_narrower(&narrow, &full).is_ok(), "{:?}", is_narrower(&narrow, &full));
            }
            for i in 0..registry.grants.len() {
                let mut fewer = RegistryFacts {
                    consents: registry.consents.clone(),
                    grants: registry.grants.clone(),
                    now: registry.now,
                };
                fewer.grants.remove(i);
                let narrow = shown(&policy, &fewer, relation, break_glass, &cases);
                prop_assert!(is_narrower(&narrow, &full).is_ok(), "{:?}", is_narrower(&narrow, &full));
            }
        }
    }

    #[test]
    fn a_typo_in_a_field_set_refuses_to_start() {
        let mut config = PolicyConfig::default();
        config.field_sets.push(FieldSetConfig {
            source: "jobcenter".into(),
            case_types: Vec::new(),
            selected: vec!["intervention".into()],
        });
        let sources = [SourceConfig::new("jobcenter", "Jobcenter", "")];
        let err = DisclosurePolicy::with_default_rules(&sources, config).unwrap_err();
        assert!(err.to_string().contains("intervention"), "{err}");
    }

    /// The tier `department`'s caseworker, with a relation and a consent up to tier 3 from the
    /// owner, is shown of `case` from `source`.
    fn tier_for(policy: &DisclosurePolicy, department: &str, source: &str, case: &Case) -> Tier {
        let mut consent = consent(0, source, 3, false);
        consent.to = Recipients::AnyWithCase;
        let registry = RegistryFacts {
            consents: vec![consent],
            grants: Vec::new(),
            now: at(0),
        };
        let roles = [Role::Caseworker];
        let facts = LookupFacts {
            caller_id: "cw-1",
            caller_department: department,
            roles: &roles,
            municipality: "999",
            purpose: "prepare-meeting",
            relation: true,
            break_glass: false,
            registry: &registry,
        };
        let decision = policy.decide(&facts, source, case);
        match policy.apply(source, case.clone(), &decision) {
            Some(shown) => policy_tier(shown.carried_tier()),
            None => Tier::Hidden,
        }
    }

    fn four_departments() -> Vec<SourceConfig> {
        ["child-welfare", "jobcenter", "integration", "adult-social"]
            .iter()
            .map(|id| SourceConfig::new(id, id, ""))
            .collect()
    }

    #[test]
    fn a_case_of_an_unknown_type_is_its_departments_alone_and_counted() {
        let policy =
            DisclosurePolicy::with_default_rules(&four_departments(), PolicyConfig::default())
                .unwrap();
        let unknown = case(1, "SL-999", Vec::new());
        assert_eq!(
            tier_for(&policy, "adult-social", "adult-social", &unknown),
            Tier::Full
        );
        for other in ["child-welfare", "jobcenter", "integration"] {
            assert_eq!(
                tier_for(&policy, other, "adult-social", &unknown),
                Tier::Hidden,
                "{other}"
            );
        }
        // A known type under the same consent: the catalogue, not the consent, made the difference.
        let known = case(2, "SL-141", Vec::new());
        assert_eq!(
            tier_for(&policy, "jobcenter", "adult-social", &known),
            Tier::Full
        );
        // An unknown flag holds a known type back in the same way.
        let flagged = case(3, "SL-141", vec!["witness-protection".into()]);
        assert_eq!(
            tier_for(&policy, "jobcenter", "adult-social", &flagged),
            Tier::Hidden
        );
        assert_eq!(
            tier_for(&policy, "adult-social", "adult-social", &flagged),
            Tier::Full
        );
        let untyped = Case {
            existence: Some(pb::Existence::default()),
            ..case(4, "", Vec::new())
        };
        assert_eq!(
            tier_for(&policy, "adult-social", "adult-social", &untyped),
            Tier::Full
        );
        assert_eq!(
            tier_for(&policy, "jobcenter", "adult-social", &untyped),
            Tier::Hidden
        );

        let seen: Vec<(String, &str, String, u64)> = policy
            .unknown_codes()
            .into_iter()
            .map(|u| (u.source_id, u.kind, u.code, u.seen))
            .collect();
        let entry =
            |kind, code: &str, seen| ("adult-social".to_owned(), kind, code.to_owned(), seen);
        assert_eq!(
            seen,
            [
                entry("case type", "(none)", 2),
                entry("case type", "SL-999", 4),
                entry("flag", "witness-protection", 2),
            ]
        );
    }

    #[test]
    fn unknown_codes_are_logged_only_when_they_look_like_codes_and_are_bounded() {
        assert_eq!(loggable("SL-999"), "SL-999");
        assert_eq!(loggable("Serviceloven § 99"), "Serviceloven § 99");
        assert_eq!(loggable(""), "(none)");
        assert_eq!(loggable("0101904321\nforged line"), "(unprintable)");
        for cpr in [
            "0101904321",
            "010190-4321",
            "01 01 90 43 21",
            "SL-0101904321",
        ] {
            assert_eq!(loggable(cpr), "(unprintable)", "{cpr}");
        }
        assert_eq!(loggable(&"X".repeat(41)), "(unprintable)");
        let codes = UnknownCodes::default();
        for i in 0..MAX_UNKNOWN_CODES + 10 {
            codes.count("s", "case type", &format!("T-{i}"));
        }
        let snapshot = codes.snapshot();
        assert_eq!(snapshot.len(), MAX_UNKNOWN_CODES + 1);
        assert!(snapshot.iter().any(|u| u.code == "(other)" && u.seen == 10));
    }

    #[test]
    fn the_catalogue_comes_from_configuration() {
        let text = r#"
            [[catalog.departments]]
            id = "adult-social"
            name = "Voksenområdet"
            [[catalog.departments]]
            id = "jobcenter"
            name = "Jobcenter"
            [[catalog.case_types]]
            code = "SL-12a"
            name = "Handleplan ved æresrelateret konflikt"
            legal_paragraph = "Serviceloven § 12 a"
            area = "adult-social"
            [[catalog.case_types]]
            code = "SL-85"
            name = "Socialpædagogisk støtte"
            legal_paragraph = "Serviceloven § 85"
            area = "adult-social"
            [[catalog.case_types]]
            code = "LAB-27"
            name = "Min Plan"
            legal_paragraph = "Lov om en aktiv beskæftigelsesindsats § 27"
            area = "jobcenter"
        "#;
        let config: PolicyConfig = toml::from_str(text).unwrap();
        let sources = [
            SourceConfig::new("adult-social", "Voksenområdet", ""),
            SourceConfig::new("jobcenter", "Jobcenter", ""),
        ];
        let policy = DisclosurePolicy::with_default_rules(&sources, config.clone()).unwrap();
        assert_eq!(policy.catalog().case_types.len(), 3);
        // The configured type is known: decided as itself, not as unknown; the built-in
        // SL-141, left out of this catalogue, is now unknown.
        let own = case(1, "SL-85", Vec::new());
        assert_eq!(
            tier_for(&policy, "jobcenter", "adult-social", &own),
            Tier::Full
        );
        let dropped = case(2, "SL-141", Vec::new());
        assert_eq!(
            tier_for(&policy, "jobcenter", "adult-social", &dropped),
            Tier::Hidden
        );
        assert_eq!(policy.unknown_codes().len(), 1);
        // A policy may name the configured type…
        let rule = "\n@id(\"sl-85-cap\")\n@code(\"sensitive\")\n@reason(\"r\")\nforbid (principal, action == Action::\"see-full\", resource)\nwhen { resource.case_type == CaseType::\"SL-85\" } unless { context.own_department };\n";
        let rules = format!("{}{rule}", DisclosurePolicy::default_rules());
        let capped = DisclosurePolicy::new(&rules, &sources, config).unwrap();
        assert_eq!(
            tier_for(&capped, "jobcenter", "adult-social", &own),
            Tier::Selected
        );
        // …but not one the catalogue does not hold.
        let err = DisclosurePolicy::new(&rules, &sources, PolicyConfig::default()).unwrap_err();
        assert!(err.to_string().contains("SL-85"), "{err}");
    }

    #[test]
    fn a_catalogue_the_policy_cannot_stand_on_refuses_to_start() {
        // The default policy names SL-12a: a catalogue without it refuses, and says so.
        let mut config = PolicyConfig::default();
        config.catalog.case_types.retain(|t| t.code != "SL-12a");
        config.sensitivity.clear();
        let err = DisclosurePolicy::with_default_rules(&four_departments(), config).unwrap_err();
        assert!(
            err.to_string().contains("SL-12a") && err.to_string().contains("catalogue"),
            "{err}"
        );
        // Nor without the flags it names.
        let mut config = PolicyConfig::default();
        config.catalog.flags.retain(|f| f != "police-information");
        let err = DisclosurePolicy::with_default_rules(&four_departments(), config).unwrap_err();
        assert!(err.to_string().contains("police-information"), "{err}");
        // A case type in an area that is not a department of the catalogue.
        let mut config = PolicyConfig::default();
        config.catalog.case_types[0].area = "adult".into();
        let err = DisclosurePolicy::with_default_rules(&four_departments(), config).unwrap_err();
        assert!(err.to_string().contains("\"adult\""), "{err}");
        // The reserved name, twice-listed codes and departments.
        let mut config = PolicyConfig::default();
        config.catalog.case_types[0].code = "unknown".into();
        let err = DisclosurePolicy::with_default_rules(&four_departments(), config).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        let mut config = PolicyConfig::default();
        let again = config.catalog.departments[0].clone();
        config.catalog.departments.push(again);
        let err = DisclosurePolicy::with_default_rules(&four_departments(), config).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    /// The catalogue example in `docs/configuration.md` loads, so the page cannot rot.
    #[test]
    fn the_documented_catalogue_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let page = std::fs::read_to_string(&path).unwrap();
        let section = page.split("## The catalogue").nth(1).unwrap();
        let example = section
            .split("```toml")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        #[derive(serde::Deserialize)]
        struct Page {
            policy: PolicyConfig,
        }
        let page: Page =
            toml::from_str(example).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let sources = [
            SourceConfig::new("adult-social", "Voksenområdet", ""),
            SourceConfig::new("jobcenter", "Jobcenter", ""),
        ];
        let policy = DisclosurePolicy::with_default_rules(&sources, page.policy).unwrap();
        assert!(
            policy
                .catalog()
                .case_types
                .iter()
                .any(|t| t.code == "SL-85")
        );
    }

    #[test]
    fn a_source_serves_its_areas_case_types() {
        let policy =
            DisclosurePolicy::with_default_rules(&four_departments(), PolicyConfig::default())
                .unwrap();
        let types = |id: &str| policy.sources[id].case_types.as_slice().to_vec();
        assert_eq!(types("adult-social"), ["SL-141", "SL-12a"]);
        assert_eq!(types("child-welfare"), ["SL-54", "SL-57c", "SL-140"]);
        assert_eq!(types("jobcenter"), ["LAB-27", "LAB-30a"]);
        assert_eq!(types("integration"), ["IL-19"]);
    }
}
