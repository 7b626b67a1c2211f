//! What the policy answers for one case: a [`Decision`].

use std::sync::Arc;

use serde::Serialize;

use crate::facts::Tier;

/// What carries a disclosure in law.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "id")]
pub enum LegalBasis {
    /// The caller's department owns the case.
    OwnDepartment,
    /// A configured statute, by id.
    Statute(String),
    /// The citizen's consent, by id.
    Consent(String),
    /// An approved access request (the owner's necessity assessment), by id.
    Grant(String),
    /// A break-the-glass lookup, flagged for auditor review.
    BreakTheGlass,
}

impl LegalBasis {
    /// A stable name for the kind of basis, as written in a rule's `@basis` annotation.
    pub fn kind(&self) -> &'static str {
        self.basis_kind().as_str()
    }

    /// The id of the statute, consent or grant; `None` for the kinds without one.
    pub fn id(&self) -> Option<&str> {
        match self {
            LegalBasis::Statute(id) | LegalBasis::Consent(id) | LegalBasis::Grant(id) => Some(id),
            LegalBasis::OwnDepartment | LegalBasis::BreakTheGlass => None,
        }
    }

    pub(crate) fn basis_kind(&self) -> BasisKind {
        match self {
            LegalBasis::OwnDepartment => BasisKind::OwnDepartment,
            LegalBasis::Statute(_) => BasisKind::Statute,
            LegalBasis::Consent(_) => BasisKind::Consent,
            LegalBasis::Grant(_) => BasisKind::Grant,
            LegalBasis::BreakTheGlass => BasisKind::BreakTheGlass,
        }
    }
}

/// `own-department`, `break-the-glass`, or `<kind>:<id>` (e.g. `consent:c-17`).
impl std::fmt::Display for LegalBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id() {
            Some(id) => write!(f, "{}:{id}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// The kinds of basis a permit may name in `@basis`, in the order a decision prefers them when
/// several permits carry the same tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum BasisKind {
    OwnDepartment,
    Statute,
    Consent,
    Grant,
    BreakTheGlass,
}

impl BasisKind {
    pub(crate) const ALL: [BasisKind; 5] = [
        BasisKind::OwnDepartment,
        BasisKind::Statute,
        BasisKind::Consent,
        BasisKind::Grant,
        BasisKind::BreakTheGlass,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BasisKind::OwnDepartment => "own-department",
            BasisKind::Statute => "statute",
            BasisKind::Consent => "consent",
            BasisKind::Grant => "grant",
            BasisKind::BreakTheGlass => "break-the-glass",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<BasisKind> {
        BasisKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Why the next tier up was not granted: shown to the caller ("ask for consent") and recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Withheld {
    /// The tier directly above the granted one.
    pub tier: Tier,
    /// A stable code: a forbid's `@code` (e.g. `break-the-glass-cap`, `refused-by-citizen`,
    /// `sensitive`) or [`NEEDS_BASIS`] when no rule carried the tier.
    pub code: String,
    /// Plain English, e.g. "tier 2 needs the citizen's consent or an approved access request".
    pub reason: String,
}

/// The withheld code when no permit carried the next tier (and no forbid denied it).
pub const NEEDS_BASIS: &str = "needs-basis";

/// The rule id reported when a fact names a source, case type, purpose or flag outside the
/// catalog: the case is hidden (fail closed) without asking Cedar.
pub const RULE_UNKNOWN_VOCABULARY: &str = "samblik:unknown-vocabulary";

/// The outcome for one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub tier: Tier,
    /// `Some` exactly when the tier is above [`Tier::Hidden`].
    pub basis: Option<LegalBasis>,
    /// The `@id`s of the rules that decided: the permits that carried the tier and the forbids
    /// that capped it (including an address forbid). Sorted, without duplicates. Shared with
    /// the memoised outcome: a decision costs no copy of it.
    pub rule_ids: Arc<[String]>,
    /// Whether address fields (e.g. `selected.residence`) may be shown. Only meaningful at
    /// [`Tier::Selected`] and above; always `false` below.
    pub address_visible: bool,
    /// Why the next tier up was withheld. `None` at [`Tier::Full`] and at [`Tier::Hidden`]
    /// (hidden cases vanish without a trace). Shared with the memoised outcome.
    pub withheld: Option<Arc<Withheld>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_displays_kind_and_id() {
        assert_eq!(LegalBasis::Consent("c-1".into()).to_string(), "consent:c-1");
        assert_eq!(LegalBasis::Statute("s-1".into()).to_string(), "statute:s-1");
        assert_eq!(LegalBasis::Grant("g-1".into()).to_string(), "grant:g-1");
        assert_eq!(LegalBasis::OwnDepartment.to_string(), "own-department");
        assert_eq!(LegalBasis::BreakTheGlass.to_string(), "break-the-glass");
        assert_eq!(LegalBasis::BreakTheGlass.id(), None);
        assert_eq!(LegalBasis::Grant("g-1".into()).id(), Some("g-1"));
    }

    #[test]
    fn basis_kinds_round_trip() {
        for kind in BasisKind::ALL {
            assert_eq!(BasisKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(BasisKind::parse("minimum-variation"), None);
    }
}
