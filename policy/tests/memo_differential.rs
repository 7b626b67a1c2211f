//! The memo changes no answer: over 100,000 random lookups, every decision [`Policy::decide`]
//! gives through the memo equals Cedar's answer for the same facts evaluated afresh (no memo),
//! and every ceiling equals the best fresh decision over its case types.
//!
//! Each fact is drawn from a few values, now and then one outside the catalog. Most lookups
//! repeat an earlier one; a new one is usually an earlier lookup with one fact drawn again, so
//! the memo answers it from an entry made for facts that differ in exactly one place: where a
//! key missing that fact gives a wrong answer. The last tests show that it would be caught: a
//! memo made to forget any one fact of its key fails the same check.
//!
//! Cedar takes 0.25–0.5 ms a decision in a debug build, too slow to evaluate 100,000 lookups
//! afresh in a test run: about one lookup in 50 is new (some 2,000), each is evaluated afresh
//! once, and every memo answer is compared with the fresh answer for exactly its facts.
//! `every_lookup_new` (ignored; run it with `--release`) draws every lookup new.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use common::{OwnedBasis, OwnedFacts, catalog, default_policy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use samblik_policy::{CaseTypes, Decision, Policy, Role, Tier};

/// The value space of each fact.
const CALLERS: [&str; 3] = ["cw-1", "cw-2", "cw-3"];
const DEPARTMENTS: [&str; 4] = ["child-welfare", "jobcenter", "integration", "housing"];
const OWNERS: [&str; 3] = ["child-welfare", "jobcenter", "integration"];
const ROLES: [&str; 3] = ["caseworker", "department-leader", "auditor"];
const MUNICIPALITIES: [&str; 2] = ["0101", "0851"];
const PURPOSES: [&str; 2] = ["prepare-meeting", "coordinate"];
const SOURCES: [&str; 3] = ["child-welfare", "jobcenter", "integration"];
const CASE_TYPES: [&str; 4] = ["SL-140", "SL-12a", "LAB-27", "SL-54"];
const PARAGRAPHS: [&str; 2] = ["Serviceloven § 140", "Serviceloven § 12 a"];
const FLAGS: [&str; 3] = [
    "honour-related-conflict",
    "address-protection",
    "police-information",
];
const BASIS_IDS: [&str; 2] = ["b-1", "b-2"];
const REFUSALS: [&str; 2] = ["never-1", "never-2"];
/// Outside the catalog: the case is hidden without asking Cedar. Drawn one time in
/// [`UNKNOWN_ONE_IN`], so most lookups reach Cedar.
const UNKNOWN: &str = "not-in-the-catalog";
const UNKNOWN_ONE_IN: u32 = 16;

/// The case type lists ceilings are asked for (a source's case types). The first two begin
/// alike and differ in their ceilings (outside the owner, § 12 a cases are hidden).
const CASE_TYPE_LISTS: [&[&str]; 3] = [
    &["SL-12a"],
    &["SL-12a", "SL-140"],
    &["LAB-27", "SL-54", UNKNOWN],
];

const DRAWS: usize = 100_000;
/// One draw in this many is a new lookup; the rest repeat one. Each new lookup costs a few
/// fresh evaluations (its own, its ceilings', the memo's miss), which bounds the test's time.
const NEW_ONE_IN: u32 = 50;
/// A memo that forgets a fact is caught by a new lookup that differs from an earlier one in
/// that fact; the forgetful runs draw mostly new lookups, to be caught sooner.
const FORGETFUL_NEW_ONE_IN: u32 = 2;
const SEED: u64 = 31;

/// One fact of a lookup: how to draw it and how to show it.
struct Fact {
    name: &'static str,
    draw: fn(&mut ChaCha8Rng, &mut OwnedFacts),
    show: fn(&OwnedFacts) -> String,
}

fn pick(rng: &mut ChaCha8Rng, values: &[&str]) -> String {
    values[rng.random_range(..values.len())].to_owned()
}

/// One of `values`, or now and then a value outside the catalog.
fn pick_or_unknown(rng: &mut ChaCha8Rng, values: &[&str]) -> String {
    if rng.random_ratio(1, UNKNOWN_ONE_IN) {
        UNKNOWN.to_owned()
    } else {
        pick(rng, values)
    }
}

/// Up to two values, none half the time, repeats and either order allowed (the memo keys flags
/// as a list and roles as a set).
fn few(rng: &mut ChaCha8Rng, values: &[&str]) -> Vec<String> {
    let count = [0, 0, 1, 2][rng.random_range(..4usize)];
    (0..count).map(|_| pick(rng, values)).collect()
}

fn basis(rng: &mut ChaCha8Rng) -> Option<OwnedBasis> {
    rng.random_bool(0.5).then(|| OwnedBasis {
        id: pick(rng, &BASIS_IDS),
        max_tier: rng.random_range(0..=3),
    })
}

/// The [`Fact`] of the field `$field`, drawn with `$rng` by `$draw`.
macro_rules! fact {
    ($field:ident, |$rng:ident| $draw:expr) => {
        Fact {
            name: stringify!($field),
            draw: |$rng, f| f.$field = $draw,
            show: |f| format!("{:?}", f.$field),
        }
    };
}

/// Every field of [`OwnedFacts`], hence of [`samblik_policy::CaseFacts`].
const FACTS: [Fact; 16] = [
    fact!(caller_id, |r| pick(r, &CALLERS)),
    fact!(caller_department, |r| pick(r, &DEPARTMENTS)),
    fact!(roles, |r| few(r, &ROLES)),
    fact!(municipality, |r| pick(r, &MUNICIPALITIES)),
    fact!(purpose, |r| pick_or_unknown(r, &PURPOSES)),
    fact!(source_id, |r| pick_or_unknown(r, &SOURCES)),
    fact!(owner_department, |r| pick(r, &OWNERS)),
    fact!(case_type, |r| pick_or_unknown(r, &CASE_TYPES)),
    fact!(legal_paragraph, |r| pick(r, &PARAGRAPHS)),
    fact!(flags, |r| {
        let mut flags = few(r, &FLAGS);
        if r.random_ratio(1, UNKNOWN_ONE_IN) {
            flags.push(UNKNOWN.to_owned());
        }
        flags
    }),
    fact!(relation, |r| r.random_ratio(3, 4)),
    fact!(break_glass, |r| r.random_ratio(1, 4)),
    fact!(statute, |r| basis(r)),
    fact!(consent, |r| basis(r)),
    fact!(refusal, |r| r
        .random_ratio(1, 4)
        .then(|| pick(r, &REFUSALS))),
    fact!(grant, |r| basis(r)),
];

fn show(f: &OwnedFacts) -> String {
    FACTS
        .iter()
        .map(|fact| format!("{}: {}", fact.name, (fact.show)(f)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The facts in which `a` and `b` differ, each with its two values.
fn differences(a: &OwnedFacts, b: &OwnedFacts) -> String {
    let differ: Vec<String> = FACTS
        .iter()
        .filter(|fact| (fact.show)(a) != (fact.show)(b))
        .map(|fact| {
            format!(
                "{} ({} here, {} there)",
                fact.name,
                (fact.show)(a),
                (fact.show)(b)
            )
        })
        .collect();
    if differ.is_empty() {
        "nothing".to_owned()
    } else {
        differ.join("; ")
    }
}

/// A lookup, with what the check needs of it worked out once.
struct Lookup {
    facts: OwnedFacts,
    roles: Vec<Role>,
    /// The case type list (of [`CASE_TYPE_LISTS`]) its ceiling is asked for.
    list: usize,
    /// Cedar's decision and ceiling for exactly these facts, evaluated without the memo.
    fresh: Option<(Decision, Tier)>,
}

/// A reproducible sequence of lookups, drawn as far as it is read, with their fresh answers:
/// several runs against memos of one policy replay it and evaluate each lookup afresh once.
struct Lookups {
    rng: ChaCha8Rng,
    new_one_in: u32,
    /// Every lookup drawn new, in the order drawn.
    seen: Vec<Lookup>,
    /// The sequence: indices into `seen`.
    order: Vec<usize>,
    /// Fresh decisions of lookups without flags, shared by the ceilings that ask for them.
    unflagged: HashMap<OwnedFacts, Tier>,
    evaluations: usize,
}

impl Lookups {
    /// One lookup in `new_one_in` is new.
    fn new(new_one_in: u32) -> Lookups {
        Lookups {
            rng: ChaCha8Rng::seed_from_u64(SEED),
            new_one_in,
            seen: Vec::new(),
            order: Vec::new(),
            unflagged: HashMap::new(),
            evaluations: 0,
        }
    }

    /// The index in `seen` of the `n`th lookup of the sequence.
    fn nth(&mut self, n: usize) -> usize {
        while self.order.len() <= n {
            let next = self.draw();
            self.order.push(next);
        }
        self.order[n]
    }

    /// One time in `new_one_in` a new lookup: one drawn whole, or more often an earlier one
    /// with one fact drawn again (perhaps to the same value). Otherwise an earlier one again.
    fn draw(&mut self) -> usize {
        let rng = &mut self.rng;
        if !self.seen.is_empty() && !rng.random_ratio(1, self.new_one_in) {
            return rng.random_range(..self.seen.len());
        }
        let (facts, list) = if self.seen.is_empty() || rng.random_ratio(1, 8) {
            let mut f = OwnedFacts::default();
            for fact in &FACTS {
                (fact.draw)(rng, &mut f);
            }
            (f, rng.random_range(..CASE_TYPE_LISTS.len()))
        } else {
            let earlier = &self.seen[rng.random_range(..self.seen.len())];
            let (mut f, mut list) = (earlier.facts.clone(), earlier.list);
            // The case type list is one more fact, for the ceilings' memo.
            match FACTS.get(rng.random_range(..=FACTS.len())) {
                Some(fact) => (fact.draw)(rng, &mut f),
                None => list = rng.random_range(..CASE_TYPE_LISTS.len()),
            }
            (f, list)
        };
        self.seen.push(Lookup {
            roles: facts.roles(),
            facts,
            list,
            fresh: None,
        });
        self.seen.len() - 1
    }

    fn afresh(&mut self, policy: &Policy, owned: &OwnedFacts) -> Decision {
        self.evaluations += 1;
        policy.decide_afresh(&owned.facts(&owned.roles()))
    }

    /// The fresh decision of lookup `i`, and its fresh ceiling: what [`Policy::ceiling`]
    /// promises, the best fresh decision over the case types with no flags.
    fn fresh(&mut self, policy: &Policy, i: usize) -> (Decision, Tier) {
        if let Some(fresh) = &self.seen[i].fresh {
            return fresh.clone();
        }
        let owned = self.seen[i].facts.clone();
        let decision = self.afresh(policy, &owned);
        let mut ceiling = Tier::Hidden;
        for case_type in CASE_TYPE_LISTS[self.seen[i].list] {
            let unflagged = OwnedFacts {
                case_type: (*case_type).to_owned(),
                flags: Vec::new(),
                ..owned.clone()
            };
            let tier = match self.unflagged.get(&unflagged) {
                Some(tier) => *tier,
                None => {
                    let tier = self.afresh(policy, &unflagged).tier;
                    self.unflagged.insert(unflagged, tier);
                    tier
                }
            };
            ceiling = ceiling.max(tier);
        }
        self.seen[i].fresh = Some((decision.clone(), ceiling));
        (decision, ceiling)
    }
}

/// Checks one policy's memoised answers against fresh ones, counting how many the memo gave.
struct Differential<'a> {
    policy: &'a Policy,
    /// Their fresh answers are this policy's: [`Policy::decide_afresh`] never reads the memo,
    /// so a policy made to forget a fact shares them.
    sequence: &'a mut Lookups,
    lists: Vec<CaseTypes>,
    counts: Counts,
    /// The lookup each decision in the memo was made for, by the address of its rule ids (a
    /// memoised outcome shares them with every decision it gives): a wrong answer names the
    /// facts it was remembered for. Emptied when the memo starts over, so no address is stale.
    made_for: HashMap<usize, usize>,
}

/// Lookups checked, and how many of them the memo answered.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    lookups: usize,
    hits: usize,
    /// Memo answers from an entry made for other facts: the hits that test the key.
    hits_for_others: usize,
    ceiling_hits: usize,
}

fn address(d: &Decision) -> usize {
    Arc::as_ptr(&d.rule_ids).cast::<()>() as usize
}

impl<'a> Differential<'a> {
    fn new(policy: &'a Policy, sequence: &'a mut Lookups) -> Self {
        Differential {
            policy,
            sequence,
            lists: CASE_TYPE_LISTS
                .iter()
                .map(|list| CaseTypes::new(list.iter().copied()))
                .collect(),
            counts: Counts::default(),
            made_for: HashMap::new(),
        }
    }

    /// Decides lookup `i` through the memo and compares the decision with a fresh one; then the
    /// same for its ceiling. A difference is an error naming the facts.
    fn check(&mut self, i: usize) -> Result<(), String> {
        let p = self.policy;
        let (fresh, fresh_ceiling) = self.sequence.fresh(p, i);
        let seen = &self.sequence.seen;
        let lookup = &seen[i];
        let facts = lookup.facts.facts(&lookup.roles);

        let (before, _) = p.memoised();
        let memo = p.decide(&facts);
        let (after, _) = p.memoised();
        self.counts.lookups += 1;
        let hit = after == before;
        if after < before {
            self.made_for.clear();
        }
        let made_for = if hit {
            self.counts.hits += 1;
            let made_for = self.made_for.get(&address(&memo)).copied();
            self.counts.hits_for_others +=
                usize::from(made_for.is_some_and(|m| seen[m].facts != lookup.facts));
            made_for
        } else {
            self.made_for.insert(address(&memo), i);
            None
        };
        if memo != fresh {
            let origin = match made_for {
                Some(m) => format!(
                    "the memo's entry was made for a lookup that differs in: {}",
                    differences(&lookup.facts, &seen[m].facts)
                ),
                None if hit => "the memo's entry was made by a ceiling".to_owned(),
                None => "the memo computed it just now".to_owned(),
            };
            return Err(format!(
                "lookup {}: the memo's decision differs from a fresh one\n  facts: {}\n  memo:  \
                 {memo:?}\n  fresh: {fresh:?}\n  {origin}",
                self.counts.lookups,
                show(&lookup.facts)
            ));
        }

        let (decisions, before) = p.memoised();
        let memo = p.ceiling(&facts, &self.lists[lookup.list]);
        let (after_decisions, after) = p.memoised();
        self.counts.ceiling_hits += usize::from(after == before);
        if after_decisions < decisions {
            self.made_for.clear();
        }
        if memo != fresh_ceiling {
            return Err(format!(
                "lookup {}: the memo's ceiling over {:?} is {memo:?}, a fresh one \
                 {fresh_ceiling:?}\n  facts: {}",
                self.counts.lookups,
                CASE_TYPE_LISTS[lookup.list],
                show(&lookup.facts)
            ));
        }
        Ok(())
    }

    /// Checks the first `draws` lookups of the sequence, stopping at the first difference.
    fn run(&mut self, draws: usize) -> Result<(), String> {
        for n in 0..draws {
            let i = self.sequence.nth(n);
            self.check(i)?;
        }
        Ok(())
    }

    fn report(&self, name: &str) -> String {
        format!(
            "{name}: {} lookups ({} drawn new), {} answered by the memo ({} from an entry made \
             for other facts), {} ceilings by the memo; {} fresh evaluations",
            self.counts.lookups,
            self.sequence.seen.len(),
            self.counts.hits,
            self.counts.hits_for_others,
            self.counts.ceiling_hits,
            self.sequence.evaluations
        )
    }
}

/// The default policy and rules that read every other fact of a lookup, so every fact is in the
/// memo key and each changes some answer.
fn all_seeing_policy() -> Policy {
    let extra = r#"
@id("named-caller-cap")
@code("named-caller")
@reason("this caller sees no case in full")
forbid (principal == Caller::"cw-3", action == Action::"see-full", resource);

@id("integration-statute")
@basis("statute")
permit (principal, action in [Action::"see-existence", Action::"see-selected"], resource)
when { context.relation && principal.department == "integration" };

@id("auditor-only")
@code("role")
@reason("an auditor who is not a caseworker sees no other department's cases")
forbid (principal, action, resource)
when {
  principal.roles.contains(Role::"auditor") && !principal.roles.contains(Role::"caseworker")
}
unless { context.own_department };

@id("no-coordination-in-0851")
@code("municipality")
@reason("0851 shares no cases for coordination")
forbid (principal, action, resource)
when { principal.municipality == "0851" && context.purpose == Purpose::"coordinate" }
unless { context.own_department };

@id("integration-source-cap")
@code("source")
@reason("integration cases show existence only outside the owner")
forbid (principal, action in [Action::"see-selected", Action::"see-full"], resource)
when { resource.source == Source::"integration" }
unless { context.own_department };

@id("jobcenter-owned-cap")
@code("owner")
@reason("jobcenter cases are shown in full to the jobcenter only")
forbid (principal, action == Action::"see-full", resource)
when { resource.owner == "jobcenter" }
unless { context.own_department };

@id("paragraph-12a-cap")
@code("paragraph")
@reason("§ 12 a cases show neither the address nor everything outside the owner")
forbid (principal, action in [Action::"see-full", Action::"see-address"], resource)
when { resource.legal_paragraph like "*12 a*" }
unless { context.own_department };
"#;
    let source = format!("{}\n{extra}", Policy::default_source());
    Policy::load(&source, &catalog()).expect("the all-seeing policy loads")
}

/// Checks `DRAWS` lookups of `policy`, one in `new_one_in` new, and reports on them.
/// Checks the first `DRAWS` lookups of a sequence with one in `new_one_in` new, and says how
/// many the memo answered.
fn differential(name: &str, policy: &Policy, new_one_in: u32) -> Counts {
    let start = Instant::now();
    let mut sequence = Lookups::new(new_one_in);
    let mut check = Differential::new(policy, &mut sequence);
    if let Err(difference) = check.run(DRAWS) {
        panic!("{difference}");
    }
    eprintln!("{} ({:.1?})", check.report(name), start.elapsed());
    assert_eq!(check.counts.lookups, DRAWS);
    check.counts
}

/// A memo that never answers proves nothing, nor one that answers only exact repeats.
fn assert_the_memo_answered(counts: Counts, min_for_others: usize) {
    assert!(counts.hits * 10 >= DRAWS * 9, "{counts:?}");
    assert!(counts.ceiling_hits * 10 >= DRAWS * 9, "{counts:?}");
    assert!(counts.hits_for_others >= min_for_others, "{counts:?}");
}

#[test]
fn the_default_policys_memo_answers_as_a_fresh_evaluation_would() {
    let counts = differential("default policy", &default_policy(), NEW_ONE_IN);
    // The default policy reads neither the caller nor the citizen: lookups by other callers
    // about other citizens share an entry.
    assert_the_memo_answered(counts, 20_000);
}

#[test]
fn a_memo_keyed_on_every_fact_answers_as_a_fresh_evaluation_would() {
    let policy = all_seeing_policy();
    assert_eq!(policy.memo_key().len(), 17, "{:?}", policy.memo_key());
    let counts = differential("all-seeing policy", &policy, NEW_ONE_IN);
    // Only lookups that differ in a basis id, or in the order or repeats of their roles, share
    // an entry.
    assert_the_memo_answered(counts, 500);
}

/// The same check with every lookup new: 100,000 distinct lookups, each evaluated afresh. Too
/// slow for a debug build (Cedar takes about 0.3 ms a decision there); run it in release:
/// `cargo test --release -p samblik-policy --test memo_differential -- --ignored`.
#[test]
#[ignore = "minutes in a debug build; run it with --release"]
fn every_lookup_new() {
    differential("default policy, every lookup new", &default_policy(), 1);
    differential(
        "all-seeing policy, every lookup new",
        &all_seeing_policy(),
        1,
    );
}

/// A memo that forgets each of `facts` in turn is caught: some lookup's decision or ceiling
/// differs from the fresh one. The runs replay one sequence, evaluated afresh once.
fn forgetting_each_fact_is_caught(policy: fn() -> Policy, facts: &[&str]) {
    let mut sequence = Lookups::new(FORGETFUL_NEW_ONE_IN);
    for fact in facts {
        let forgetful = policy().forgetting(fact).unwrap();
        assert!(!forgetful.memo_key().contains(fact));
        let mut check = Differential::new(&forgetful, &mut sequence);
        let caught = check.run(DRAWS).is_err();
        assert!(
            caught,
            "a memo without {fact} in its key went unnoticed: {}",
            check.report("forgetful")
        );
        eprintln!(
            "forgetting {fact}: caught at lookup {}",
            check.counts.lookups
        );
    }
}

#[test]
fn a_memo_that_forgets_a_fact_of_the_default_policy_is_caught() {
    let key = default_policy().memo_key();
    // The seven context facts its rules read, case type and flags, and the source and purpose
    // the catalog check reads.
    assert_eq!(key.len(), 11, "{key:?}");
    forgetting_each_fact_is_caught(default_policy, &key);
}

#[test]
fn a_memo_that_forgets_any_fact_a_rule_reads_is_caught() {
    let mut key = all_seeing_policy().memo_key();
    assert_eq!(key.len(), 17, "{key:?}");
    // With the caller's and the owner's department both in the key, whether they are the same
    // is implied: forgetting `own_department` is harmless.
    key.retain(|fact| *fact != "own_department");
    forgetting_each_fact_is_caught(all_seeing_policy, &key);
}

#[test]
fn a_wrong_answer_names_the_facts_the_memo_confused() {
    let forgetful = default_policy().forgetting("break_glass").unwrap();
    let mut sequence = Lookups::new(FORGETFUL_NEW_ONE_IN);
    let difference = Differential::new(&forgetful, &mut sequence)
        .run(DRAWS)
        .unwrap_err();
    eprintln!("{difference}");
    assert!(
        difference.contains("break_glass (true here, false there)")
            || difference.contains("break_glass (false here, true there)"),
        "{difference}"
    );
}
