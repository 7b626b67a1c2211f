//! What the policy is told: the vocabulary ([`Catalog`]) the schema is built from, and the facts
//! ([`CaseFacts`]) about one case in one lookup. Rust computes these facts; Cedar decides.

use serde::Serialize;

/// How much of a case is disclosed. Ordered: a higher tier includes everything below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Nothing; the case does not exist in the answer.
    Hidden = 0,
    /// Case type, state, dates and the responsible caseworker.
    Existence = 1,
    /// Tier 1 plus the selected fields (interventions, situation, goals, follow-up, assessment).
    Selected = 2,
    /// Everything, including documents from third parties.
    Full = 3,
}

impl Tier {
    /// Every tier, lowest first.
    pub const ALL: [Tier; 4] = [Tier::Hidden, Tier::Existence, Tier::Selected, Tier::Full];

    /// The tier with this number (0–3), as stored in configuration and audit records.
    pub fn from_u8(n: u8) -> Option<Tier> {
        Tier::ALL.get(usize::from(n)).copied()
    }

    /// The tier's number (0–3).
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The tier directly above this one, if any.
    pub fn next(self) -> Option<Tier> {
        Tier::from_u8(self.as_u8() + 1)
    }
}

/// A caller's role, as carried in the caller's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Caseworker,
    DepartmentLeader,
    Auditor,
    Admin,
    Citizen,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 5] = [
        Role::Caseworker,
        Role::DepartmentLeader,
        Role::Auditor,
        Role::Admin,
        Role::Citizen,
    ];

    /// The role's name in tokens, configuration and the Cedar schema (`Role::"caseworker"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Caseworker => "caseworker",
            Role::DepartmentLeader => "department-leader",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Citizen => "citizen",
        }
    }

    /// The role with this name, if any.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The vocabulary the schema is built from; the gateway fills it from its configuration. A rule
/// that names a source, case type, purpose or flag outside the catalog is refused at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Source ids, e.g. `child-welfare`, `jobcenter`, `integration`, `adult-social`.
    pub sources: Vec<String>,
    /// Case type codes, e.g. `SL-140`, `LAB-27`. The schema adds [`Catalog::UNKNOWN`].
    pub case_types: Vec<String>,
    /// Lookup purposes, e.g. `prepare-meeting`.
    pub purposes: Vec<String>,
    /// Sensitivity flags on a case or a citizen, e.g. `address-protection`. The schema adds
    /// [`Catalog::UNKNOWN`].
    pub flags: Vec<String>,
}

impl Catalog {
    /// The case type and the flag a case reaches the policy with when its source sent a code the
    /// catalog does not hold: a rule can then decide about "a type nobody configured" instead
    /// of the case vanishing. Part of every schema; a catalog may not list it itself.
    pub const UNKNOWN: &'static str = "unknown";
    /// The standard case types: the report's eight municipal plans.
    pub const CASE_TYPES: [&'static str; 8] = [
        "SL-54", "SL-57c", "SL-140", "SL-141", "SL-12a", "LAB-27", "LAB-30a", "IL-19",
    ];
    /// The standard lookup purposes.
    pub const PURPOSES: [&'static str; 4] =
        ["prepare-meeting", "draft-plan", "follow-up", "coordinate"];
    /// The standard sensitivity flags.
    pub const FLAGS: [&'static str; 3] = [
        "honour-related-conflict",
        "address-protection",
        "police-information",
    ];

    /// The standard case types, purposes and flags with these sources.
    pub fn standard(sources: Vec<String>) -> Catalog {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        Catalog {
            sources,
            case_types: owned(&Catalog::CASE_TYPES),
            purposes: owned(&Catalog::PURPOSES),
            flags: owned(&Catalog::FLAGS),
        }
    }
}

/// A legal basis that some fact supplies, with the highest tier it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BasisFact<'a> {
    /// The id of the statute, consent or grant, recorded in the decision's [`crate::LegalBasis`].
    pub id: &'a str,
    pub max_tier: Tier,
}

/// Everything the policy may consider about one case in one lookup.
#[derive(Debug, Clone, Copy)]
pub struct CaseFacts<'a> {
    pub caller_id: &'a str,
    pub caller_department: &'a str,
    pub roles: &'a [Role],
    pub municipality: &'a str,
    /// The lookup's purpose, one of the catalog's purposes.
    pub purpose: &'a str,
    /// The source the case comes from, one of the catalog's sources.
    pub source_id: &'a str,
    /// The department owning the source.
    pub owner_department: &'a str,
    /// The case type code, e.g. `SL-140`, one of the catalog's case types.
    pub case_type: &'a str,
    /// e.g. `Serviceloven § 140`.
    pub legal_paragraph: &'a str,
    /// Sensitivity flags on the case or the citizen, each one of the catalog's flags.
    pub flags: &'a [String],
    /// The caller's own department holds an open case for the citizen.
    pub relation: bool,
    /// The lookup carries a break-the-glass reason.
    pub break_glass: bool,
    /// The best configured statutory basis covering source, case type, caller department and
    /// purpose.
    pub statute: Option<BasisFact<'a>>,
    /// The best valid consent covering this.
    pub consent: Option<BasisFact<'a>>,
    /// The id of a negative consent ("never share X with Y") covering this.
    pub refusal: Option<&'a str>,
    /// An approved access request (grant) for exactly this caller and case.
    pub grant: Option<BasisFact<'a>>,
}

impl CaseFacts<'_> {
    /// Whether the caller belongs to the department owning the case.
    pub fn own_department(&self) -> bool {
        self.caller_department == self.owner_department
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_ordered_and_numbered() {
        assert!(Tier::Hidden < Tier::Existence);
        assert!(Tier::Existence < Tier::Selected);
        assert!(Tier::Selected < Tier::Full);
        for tier in Tier::ALL {
            assert_eq!(Tier::from_u8(tier.as_u8()), Some(tier));
        }
        assert_eq!(Tier::from_u8(4), None);
        assert_eq!(Tier::Selected.next(), Some(Tier::Full));
        assert_eq!(Tier::Full.next(), None);
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(
            Role::parse("department-leader"),
            Some(Role::DepartmentLeader)
        );
        assert_eq!(Role::parse("Caseworker"), None);
    }
}
