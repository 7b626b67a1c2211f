//! Where the gateway meets its policy: Rust computes the facts (relation, consents, grants,
//! statutes, sensitivity), the Cedar policy decides the tier, and this module filters each case
//! down to what was decided and says what was withheld and why.
//!
//! Nothing here caches consents or grants: they are read from the store for every lookup, so a
//! withdrawal or an expiry takes effect on the very next one, on every replica.

use crate::config::{Config, ConfigError, FieldSetConfig, PolicyConfig, SourceConfig};
use chrono::{DateTime, Utc};
use samblik_audit::registry::{AccessRequest, Consent, ConsentKind};
use samblik_policy::{BasisFact, CaseFacts, Catalog, Decision, Policy, Role, Tier};
use samblik_proto::v1::{self as pb, Case};
use std::collections::HashMap;

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

/// The standard case types of the reference departments, used for a source's ceiling when its
/// configuration names none.
fn standard_case_types(source_id: &str) -> Option<&'static [&'static str]> {
    match source_id {
        "child-welfare" => Some(&["SL-54", "SL-57c", "SL-140"]),
        "jobcenter" => Some(&["LAB-27", "LAB-30a"]),
        "integration" => Some(&["IL-19"]),
        _ => None,
    }
}

/// The loaded policy with the configuration it decides on.
#[derive(Debug)]
pub struct DisclosurePolicy {
    policy: Policy,
    config: PolicyConfig,
    /// Per source id: its owner department and the case types it serves.
    sources: HashMap<String, SourceFacts>,
    /// Per (source, case type): the selected fields; `(source, "")` is the source's default.
    field_sets: HashMap<(String, String), Vec<String>>,
}

#[derive(Debug, Clone)]
struct SourceFacts {
    owner: String,
    case_types: Vec<String>,
}

impl DisclosurePolicy {
    /// Loads the policy file (or the shipped default) and checks the `[policy]` section against
    /// the catalog. Any unknown source, case type, purpose, field or flag refuses the start.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let text = match &config.policy.file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
            None => Policy::default_source().to_owned(),
        };
        Self::new(&text, &config.sources, config.policy.clone())
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
        let catalog = Catalog::standard(sources.iter().map(|s| s.id.clone()).collect());
        let invalid = |m: String| ConfigError::Invalid(m);
        let policy = Policy::load(policy_text, &catalog)
            .map_err(|e| invalid(format!("policy is not valid: {e}")))?;
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
                standard_case_types(&s.id).map_or_else(
                    || catalog.case_types.clone(),
                    |t| t.iter().map(|t| (*t).to_owned()).collect(),
                )
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
                    case_types,
                },
            );
        }
        let mut ids = std::collections::HashSet::new();
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
            config,
            sources: source_facts,
            field_sets,
        })
    }

    /// The policy version recorded in every audit record: the hash of the rules and schema.
    pub fn version(&self) -> &str {
        self.policy.version()
    }

    /// The ids of the policy's rules.
    pub fn rule_ids(&self) -> Vec<String> {
        self.policy.rule_ids()
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
        let case_types: Vec<&str> = source.case_types.iter().map(String::as_str).collect();
        let owner = source.owner.as_str();
        let facts = self.facts(lookup, source_id, owner, None, "", "", &[]);
        self.policy.ceiling(&facts, &case_types)
    }

    /// The decision for one case.
    pub fn decide(&self, lookup: &LookupFacts<'_>, source_id: &str, case: &Case) -> Decision {
        let owner = self.owner_of(source_id).unwrap_or(source_id);
        let (case_type, paragraph) = case
            .existence
            .as_ref()
            .and_then(|e| e.case_type.as_ref())
            .map_or(("", ""), |t| (t.code.as_str(), t.legal_paragraph.as_str()));
        let mut flags: Vec<String> = case.sensitivity.clone();
        for f in self.configured_flags(source_id, case_type) {
            if !flags.iter().any(|x| x == f) {
                flags.push(f.to_owned());
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
            .map(|t| t.code.clone())
            .unwrap_or_default();
        if let Some(selected) = case.selected.as_mut() {
            if let Some(fields) = self.selected_fields(source_id, &case_type) {
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
            rule_ids: decision.rule_ids.clone(),
            withheld,
        });
        case.sensitivity.clear();
        case.subject_cpr.clear();
        Some(case)
    }
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
