//! Owned facts for the corpus and the property tests: the policy borrows its facts, tests need
//! to own them.

#![allow(dead_code)]

use samblik_policy::{BasisFact, CaseFacts, Catalog, Policy, Role, Tier};
use serde::Deserialize;

pub const SOURCES: [&str; 4] = ["child-welfare", "jobcenter", "integration", "adult-social"];

pub fn catalog() -> Catalog {
    Catalog::standard(SOURCES.iter().map(|s| (*s).to_owned()).collect())
}

pub fn default_policy() -> Policy {
    Policy::load(Policy::default_source(), &catalog()).expect("the default policy loads")
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnedBasis {
    pub id: String,
    pub max_tier: u8,
}

/// The facts of one case. Every field has a default, so a corpus case lists only what matters
/// to it: by default a jobcenter caseworker with a relation to the citizen looks up a
/// child-welfare SL-140 case with the municipality's tier-1 "existence and contact" statute.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnedFacts {
    pub caller_id: String,
    pub caller_department: String,
    pub roles: Vec<String>,
    pub municipality: String,
    pub purpose: String,
    pub source_id: String,
    pub owner_department: String,
    pub case_type: String,
    pub legal_paragraph: String,
    pub flags: Vec<String>,
    pub relation: bool,
    pub break_glass: bool,
    pub statute: Option<OwnedBasis>,
    pub consent: Option<OwnedBasis>,
    pub refusal: Option<String>,
    pub grant: Option<OwnedBasis>,
}

impl Default for OwnedFacts {
    fn default() -> Self {
        OwnedFacts {
            caller_id: "cw-jc-1".into(),
            caller_department: "jobcenter".into(),
            roles: vec!["caseworker".into()],
            municipality: "0101".into(),
            purpose: "prepare-meeting".into(),
            source_id: "child-welfare".into(),
            owner_department: "child-welfare".into(),
            case_type: "SL-140".into(),
            legal_paragraph: "Serviceloven § 140".into(),
            flags: Vec::new(),
            relation: true,
            break_glass: false,
            statute: Some(OwnedBasis {
                id: "existence-and-contact".into(),
                max_tier: 1,
            }),
            consent: None,
            refusal: None,
            grant: None,
        }
    }
}

fn basis(b: &Option<OwnedBasis>) -> Option<BasisFact<'_>> {
    b.as_ref().map(|b| BasisFact {
        id: &b.id,
        max_tier: Tier::from_u8(b.max_tier).expect("a tier is 0-3"),
    })
}

impl OwnedFacts {
    pub fn roles(&self) -> Vec<Role> {
        self.roles
            .iter()
            .map(|r| Role::parse(r).unwrap_or_else(|| panic!("unknown role {r:?}")))
            .collect()
    }

    /// The borrowed facts; `roles` is the parsed [`OwnedFacts::roles`].
    pub fn facts<'a>(&'a self, roles: &'a [Role]) -> CaseFacts<'a> {
        CaseFacts {
            caller_id: &self.caller_id,
            caller_department: &self.caller_department,
            roles,
            municipality: &self.municipality,
            purpose: &self.purpose,
            source_id: &self.source_id,
            owner_department: &self.owner_department,
            case_type: &self.case_type,
            legal_paragraph: &self.legal_paragraph,
            flags: &self.flags,
            relation: self.relation,
            break_glass: self.break_glass,
            statute: basis(&self.statute),
            consent: basis(&self.consent),
            refusal: self.refusal.as_deref(),
            grant: basis(&self.grant),
        }
    }
}
