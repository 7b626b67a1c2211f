//! Samblik's disclosure policy: facts about one case in one lookup go in, a [`Decision`] comes
//! out — the [`Tier`] to disclose, the legal basis that carries it and the ids of the rules that
//! decided. Pure and synchronous: no I/O, no clock, no gRPC types.
//!
//! This crate currently implements the report's *minimum variation* ("existence and contact"):
//! every caller may see that a case exists and who is responsible for it (tier 1), nothing more.
//! It is a real, safe operating mode, not a placeholder; the rule engine with consent, grants and
//! sensitivity builds on the same [`Decision`] shape.

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

/// What carries a disclosure in law.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LegalBasis {
    /// The municipality's configured basis for sharing existence and contact details, the
    /// report's minimum variation.
    MinimumVariation,
}

impl LegalBasis {
    /// A stable name for the audit record.
    pub fn as_str(&self) -> &'static str {
        match self {
            LegalBasis::MinimumVariation => "minimum-variation",
        }
    }
}

/// The outcome for one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub tier: Tier,
    pub basis: Option<LegalBasis>,
    /// The ids of the rules that decided, for the audit record and for "why this tier?".
    pub rule_ids: Vec<&'static str>,
}

/// Facts about a lookup before any source is asked: enough to tell each source the highest tier
/// it could possibly be granted.
#[derive(Debug, Clone, Copy)]
pub struct LookupFacts<'a> {
    pub caller_department: &'a str,
    pub source_id: &'a str,
}

/// Facts about one case returned by a source.
#[derive(Debug, Clone, Copy)]
pub struct CaseFacts<'a> {
    pub lookup: LookupFacts<'a>,
    /// The plan type's code, e.g. `SL-140`.
    pub case_type: &'a str,
}

/// The version of the policy in force, recorded in every audit record.
pub const POLICY_VERSION: &str = "minimum-variation/v1";

/// The rule id of the minimum variation.
pub const RULE_MINIMUM_VARIATION: &str = "minimum-variation/existence-and-contact";

/// The minimum variation: tier 1 for every case, to every authenticated caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct MinimumVariation;

impl MinimumVariation {
    /// The highest tier any case from this source could be granted in this lookup. The gateway
    /// asks the source for no more than this.
    pub fn ceiling(&self, _facts: &LookupFacts<'_>) -> Tier {
        Tier::Existence
    }

    /// The decision for one case. Never above [`Self::ceiling`] for the same lookup.
    pub fn decide(&self, _facts: &CaseFacts<'_>) -> Decision {
        Decision {
            tier: Tier::Existence,
            basis: Some(LegalBasis::MinimumVariation),
            rule_ids: vec![RULE_MINIMUM_VARIATION],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOKUP: LookupFacts<'static> = LookupFacts {
        caller_department: "jobcenter",
        source_id: "child-welfare",
    };

    #[test]
    fn minimum_variation_discloses_existence_only() {
        let policy = MinimumVariation;
        let d = policy.decide(&CaseFacts {
            lookup: LOOKUP,
            case_type: "SL-140",
        });
        assert_eq!(d.tier, Tier::Existence);
        assert_eq!(d.basis, Some(LegalBasis::MinimumVariation));
        assert_eq!(d.rule_ids, vec![RULE_MINIMUM_VARIATION]);
    }

    #[test]
    fn decision_never_exceeds_ceiling() {
        let policy = MinimumVariation;
        for case_type in ["SL-54", "SL-57c", "SL-140", "LAB-27", "LAB-30a", "IL-19"] {
            let d = policy.decide(&CaseFacts {
                lookup: LOOKUP,
                case_type,
            });
            assert!(d.tier <= policy.ceiling(&LOOKUP));
        }
    }

    #[test]
    fn tiers_are_ordered() {
        assert!(Tier::Hidden < Tier::Existence);
        assert!(Tier::Existence < Tier::Selected);
        assert!(Tier::Selected < Tier::Full);
    }
}
