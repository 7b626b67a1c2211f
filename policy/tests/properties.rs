//! Invariants of the default policy over generated facts: less consent, fewer grants and more
//! refusals never widen an answer; a case never exceeds its source's ceiling; break-the-glass
//! without a relation never shows more than existence; no decision exceeds its best basis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::LazyLock;

use common::{OwnedBasis, OwnedFacts, SOURCES, default_policy};
use proptest::prelude::*;
use samblik_policy::{CaseTypes, Catalog, Policy, Tier};

static POLICY: LazyLock<Policy> = LazyLock::new(default_policy);

const DEPARTMENTS: [&str; 4] = ["child-welfare", "jobcenter", "integration", "housing"];

fn basis(prefix: &'static str) -> impl Strategy<Value = Option<OwnedBasis>> {
    proptest::option::of((0u8..=3).prop_map(move |max_tier| OwnedBasis {
        id: format!("{prefix}-1"),
        max_tier,
    }))
}

prop_compose! {
    fn arb_facts()(
        caller in proptest::sample::select(&DEPARTMENTS[..]),
        owner in proptest::sample::select(&DEPARTMENTS[..3]),
        source in proptest::sample::select(&SOURCES[..]),
        case_type in proptest::sample::select(&Catalog::CASE_TYPES[..]),
        purpose in proptest::sample::select(&Catalog::PURPOSES[..]),
        flags in proptest::sample::subsequence(&Catalog::FLAGS[..], 0..=3),
        roles in proptest::sample::subsequence(
            &["caseworker", "department-leader", "auditor", "admin", "citizen"][..], 0..=2),
        relation in any::<bool>(),
        break_glass in any::<bool>(),
        statute in basis("statute"),
        consent in basis("consent"),
        refusal in proptest::option::of(Just("never-share-1".to_owned())),
        grant in basis("grant"),
    ) -> OwnedFacts {
        OwnedFacts {
            caller_department: caller.to_owned(),
            owner_department: owner.to_owned(),
            source_id: source.to_owned(),
            case_type: case_type.to_owned(),
            purpose: purpose.to_owned(),
            flags: flags.into_iter().map(str::to_owned).collect(),
            roles: roles.into_iter().map(str::to_owned).collect(),
            relation,
            break_glass,
            statute,
            consent,
            refusal,
            grant,
            ..OwnedFacts::default()
        }
    }
}

fn tier(f: &OwnedFacts) -> Tier {
    let roles = f.roles();
    POLICY.decide(&f.facts(&roles)).tier
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn withdrawing_consent_never_widens(f in arb_facts()) {
        let without = OwnedFacts { consent: None, ..f.clone() };
        prop_assert!(tier(&without) <= tier(&f));
    }

    #[test]
    fn losing_a_grant_never_widens(f in arb_facts()) {
        let without = OwnedFacts { grant: None, ..f.clone() };
        prop_assert!(tier(&without) <= tier(&f));
    }

    #[test]
    fn a_refusal_never_widens(f in arb_facts()) {
        let refused = OwnedFacts { refusal: Some("never-share-2".to_owned()), ..f.clone() };
        prop_assert!(tier(&refused) <= tier(&f));
    }

    #[test]
    fn a_decision_never_exceeds_the_ceiling(f in arb_facts()) {
        let roles = f.roles();
        let facts = f.facts(&roles);
        let decided = POLICY.decide(&facts).tier;
        prop_assert!(decided <= POLICY.ceiling(&facts, &CaseTypes::new([facts.case_type])));
        prop_assert!(decided <= POLICY.ceiling(&facts, &CaseTypes::new(Catalog::CASE_TYPES.iter().copied())));
    }

    #[test]
    fn break_the_glass_without_relation_shows_existence_at_most(f in arb_facts()) {
        prop_assume!(f.caller_department != f.owner_department);
        let f = OwnedFacts { break_glass: true, relation: false, ..f };
        prop_assert!(tier(&f) <= Tier::Existence);
    }

    #[test]
    fn outside_the_owner_no_decision_exceeds_its_best_basis(f in arb_facts()) {
        prop_assume!(f.caller_department != f.owner_department);
        let roles = f.roles();
        let d = POLICY.decide(&f.facts(&roles));
        let best = [&f.statute, &f.consent, &f.grant]
            .into_iter()
            .flatten()
            .map(|b| b.max_tier)
            .chain(f.break_glass.then_some(1))
            .max()
            .unwrap_or(0);
        prop_assert!(d.tier.as_u8() <= best);
        if let Some(basis) = &d.basis {
            let fact = match basis.kind() {
                "statute" => &f.statute,
                "consent" => &f.consent,
                "grant" => &f.grant,
                "break-the-glass" => {
                    prop_assert_eq!(d.tier, Tier::Existence);
                    return Ok(());
                }
                other => panic!("{other} basis outside the owning department"),
            };
            let fact = fact.as_ref().expect("the named basis was among the facts");
            prop_assert!(d.tier.as_u8() <= fact.max_tier);
            prop_assert_eq!(basis.id(), Some(fact.id.as_str()));
        }
    }
}
