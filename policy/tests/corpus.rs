//! The policy corpus: every file in `tests/corpus/*.json` is a list of cases, each the facts of
//! one case in one lookup and the decision the default policy must reach. A second test removes
//! each rule of the default policy in turn and checks that some case notices: no rule is dead
//! weight, and no rule goes untested.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{OwnedFacts, catalog, default_policy};
use samblik_policy::{CaseTypes, Decision, Policy, Tier};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    facts: OwnedFacts,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// 0–3.
    tier: u8,
    /// The basis kind (`statute`, ...), `null` when hidden.
    basis: Option<String>,
    /// The basis id, when the case cares.
    #[serde(default)]
    basis_id: Option<String>,
    /// The withheld code, `null` when nothing is withheld.
    withheld: Option<String>,
    #[serde(default)]
    address_visible: Option<bool>,
    /// The deciding rule ids, when the case cares (sorted).
    #[serde(default)]
    rule_ids: Option<Vec<String>>,
}

fn corpus() -> Vec<(String, Case)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {}", dir.display());
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let list: Vec<Case> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{name}: not a list of cases: {e}"));
        cases.extend(list.into_iter().map(|c| (name.clone(), c)));
    }
    cases
}

/// What differs between the decision and the case's expectation; empty when it matches.
/// `with_rule_ids` also compares the deciding rule ids (the mutation test leaves them out: a
/// rule must matter to what is disclosed, not only to the explanation).
fn mismatches(case: &Case, d: &Decision, with_rule_ids: bool) -> Vec<String> {
    let e = &case.expect;
    let mut out = Vec::new();
    if d.tier.as_u8() != e.tier {
        out.push(format!("tier {} (expected {})", d.tier.as_u8(), e.tier));
    }
    let kind = d.basis.as_ref().map(|b| b.kind().to_owned());
    if kind != e.basis {
        out.push(format!("basis {kind:?} (expected {:?})", e.basis));
    }
    if let Some(id) = &e.basis_id {
        let got = d.basis.as_ref().and_then(|b| b.id());
        if got != Some(id.as_str()) {
            out.push(format!("basis id {got:?} (expected {id:?})"));
        }
    }
    let withheld = d.withheld.as_ref().map(|w| w.code.clone());
    if withheld != e.withheld {
        out.push(format!("withheld {withheld:?} (expected {:?})", e.withheld));
    }
    if let Some(visible) = e.address_visible
        && d.address_visible != visible
    {
        out.push(format!("address_visible {}", d.address_visible));
    }
    if with_rule_ids
        && let Some(ids) = &e.rule_ids
        && d.rule_ids[..] != ids[..]
    {
        out.push(format!("rule_ids {:?} (expected {ids:?})", d.rule_ids));
    }
    out
}

fn failures(policy: &Policy, cases: &[(String, Case)], with_rule_ids: bool) -> Vec<String> {
    cases
        .iter()
        .filter_map(|(file, case)| {
            let roles = case.facts.roles();
            let d = policy.decide(&case.facts.facts(&roles));
            let wrong = mismatches(case, &d, with_rule_ids);
            (!wrong.is_empty()).then(|| format!("{file}: {}: {}", case.name, wrong.join(", ")))
        })
        .collect()
}

#[test]
fn the_default_policy_decides_every_corpus_case_as_expected() {
    let cases = corpus();
    let failed = failures(&default_policy(), &cases, true);
    assert!(failed.is_empty(), "corpus failures:\n{}", failed.join("\n"));
}

#[test]
fn corpus_decisions_keep_their_invariants() {
    let policy = default_policy();
    for (file, case) in corpus() {
        let roles = case.facts.roles();
        let facts = case.facts.facts(&roles);
        let d = policy.decide(&facts);
        let name = format!("{file}: {}", case.name);
        assert_eq!(d.basis.is_some(), d.tier > Tier::Hidden, "{name}");
        assert_eq!(
            d.withheld.is_some(),
            d.tier > Tier::Hidden && d.tier < Tier::Full,
            "{name}"
        );
        if let Some(w) = &d.withheld {
            assert_eq!(Some(w.tier), d.tier.next(), "{name}");
            assert!(!w.reason.is_empty(), "{name}");
        }
        assert!(!d.address_visible || d.tier >= Tier::Selected, "{name}");
        assert!(d.rule_ids.windows(2).all(|w| w[0] < w[1]), "{name}");
        assert!(
            d.tier <= policy.ceiling(&facts, &CaseTypes::new([facts.case_type])),
            "{name}"
        );
    }
}

#[test]
fn every_rule_of_the_default_policy_is_needed_by_some_corpus_case() {
    let cases = corpus();
    let ids = default_policy().rule_ids();
    assert!(ids.len() >= 10, "{ids:?}");
    let unneeded: Vec<_> = ids
        .iter()
        .filter(|id| {
            let without = Policy::without_rule(Policy::default_source(), &catalog(), id).unwrap();
            failures(&without, &cases, false).is_empty()
        })
        .collect();
    assert!(
        unneeded.is_empty(),
        "no corpus case notices when these rules are removed: {unneeded:?}"
    );
}

#[test]
fn every_rule_is_named_by_some_corpus_case() {
    let cases = corpus();
    let policy = default_policy();
    for id in policy.rule_ids() {
        let named = cases.iter().any(|(_, case)| {
            let roles = case.facts.roles();
            policy
                .decide(&case.facts.facts(&roles))
                .rule_ids
                .contains(&id)
        });
        assert!(named, "no corpus case is decided by rule `{id}`");
    }
}
