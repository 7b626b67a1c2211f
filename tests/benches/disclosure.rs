//! The policy's share of a lookup: for a realistic lookup — three sources and about ten cases of
//! the synthetic municipality — the ceiling of each source, a decision per case and the
//! filtering of each case down to it, with the citizen's consents and the caller's grants as
//! facts. No network and no audit: exactly the work `decide` and `filter` add.
//!
//! `cargo bench -p samblik-tests --bench disclosure`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use samblik_adapters::{CaseQuery, Source};
use samblik_audit::registry::{Consent, ConsentKind, Recipients};
use samblik_gateway::config::{PolicyConfig, SourceConfig};
use samblik_gateway::disclosure::{DisclosurePolicy, LookupFacts, RegistryFacts};
use samblik_policy::Role;
use samblik_proto::Cpr;
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::{Case, Tier};
use samblik_reference::ReferenceSource;
use samblik_synth::store::DepartmentData;
use samblik_synth::{Department, SynthConfig};
use std::collections::BTreeMap;
use std::hint::black_box;

// The allocator the `samblik` program runs (`--no-default-features`: the system's).
samblik::global_allocator!();

/// One lookup's worth of input: a citizen's cases per source, and a consent.
struct Lookup {
    caller: String,
    cases: Vec<(String, Case)>,
    registry: RegistryFacts,
}

fn lookups() -> Vec<Lookup> {
    let data = samblik_synth::generate(&SynthConfig::new(2017, 43_000)).unwrap();
    let sources: Vec<ReferenceSource> = Department::ALL
        .iter()
        .map(|d| ReferenceSource::new(DepartmentData::slice(&data, *d)).unwrap())
        .collect();
    let mut by_citizen: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &data.cases {
        *by_citizen.entry(c.cpr.as_str()).or_default() += 1;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let jobcenter: Vec<&str> = data
        .caseworkers
        .iter()
        .filter(|w| w.department == Department::Jobcenter)
        .map(|w| w.id.as_str())
        .collect();
    // Citizens with several plans (the ones Samblik is for); a lookup holds ten cases, the
    // citizen's own topped up with other citizens' cases from the three departments.
    let many: Vec<&str> = by_citizen
        .iter()
        .filter(|(_, n)| **n >= 2)
        .map(|(cpr, _)| *cpr)
        .collect();
    let cases_of = |cpr: &str| {
        let mut cases = Vec::new();
        for (d, source) in Department::ALL.iter().zip(&sources) {
            let answer = runtime
                .block_on(source.find_cases(
                    CaseQuery {
                        cpr: Cpr::parse(cpr).unwrap(),
                        max_tier: Tier::Full,
                        deadline: None,
                    },
                    CallerContext::default(),
                ))
                .unwrap();
            cases.extend(answer.cases.into_iter().map(|c| (d.id().to_owned(), c)));
        }
        cases
    };
    many.iter()
        .take(200)
        .enumerate()
        .map(|(i, cpr)| {
            let mut cases = cases_of(cpr);
            let mut next = i + 1;
            while cases.len() < 10 {
                for (source, mut case) in cases_of(many[next % many.len()]) {
                    case.subject_cpr = (*cpr).to_owned();
                    cases.push((source, case));
                }
                next += 1;
            }
            cases.truncate(10);
            let now = chrono::Utc::now();
            let consent = Consent {
                id: format!("c-{i}"),
                cpr: Cpr::parse(cpr).unwrap(),
                kind: ConsentKind::Permit,
                from_departments: vec!["child-welfare".into()],
                to: Recipients::AnyWithCase,
                max_tier: 2,
                purposes: vec!["prepare-meeting".into()],
                valid_from: now - chrono::TimeDelta::days(1),
                valid_until: None,
                recorded_by: "cw".into(),
                recorded_at: now,
                document_ref: "doc".into(),
                withdrawn_at: None,
                withdrawn_by: None,
            };
            Lookup {
                caller: jobcenter[i % jobcenter.len()].to_owned(),
                cases,
                registry: RegistryFacts {
                    consents: if i.is_multiple_of(2) {
                        vec![consent]
                    } else {
                        Vec::new()
                    },
                    grants: Vec::new(),
                    now,
                },
            }
        })
        .collect()
}

fn policy() -> DisclosurePolicy {
    let sources: Vec<SourceConfig> = Department::ALL
        .iter()
        .map(|d| SourceConfig::new(d.id(), d.display_name(), ""))
        .collect();
    DisclosurePolicy::with_default_rules(&sources, PolicyConfig::default()).unwrap()
}

/// A jobcenter caseworker's lookup, with a relation, preparing a meeting.
fn facts<'a>(lookup: &'a Lookup, roles: &'a [Role]) -> LookupFacts<'a> {
    LookupFacts {
        caller_id: &lookup.caller,
        caller_department: "jobcenter",
        roles,
        municipality: "999",
        purpose: "prepare-meeting",
        relation: true,
        break_glass: false,
        registry: &lookup.registry,
    }
}

/// One lookup: three ceilings, then decide and filter every case (the cases are the source's
/// answer, owned, as in the pipeline).
fn run(policy: &DisclosurePolicy, lookup: &Lookup, cases: Vec<(String, Case)>) -> usize {
    let roles = [Role::Caseworker];
    let facts = facts(lookup, &roles);
    let mut tier = 0;
    for d in Department::ALL {
        tier += policy.ceiling(&facts, d.id()) as usize;
    }
    let mut shown = 0;
    for (source, case) in cases {
        let decision = policy.decide(&facts, &source, &case);
        if policy.apply(&source, case, &decision).is_some() {
            shown += 1;
        }
    }
    tier + shown
}

fn bench(c: &mut Criterion) {
    let mut lookups = lookups();
    let policy = policy();
    // A source sends nothing above the tier it is asked for (the policy's ceiling).
    for l in &mut lookups {
        let roles = [Role::Caseworker];
        let facts = facts(l, &roles);
        let ceilings: Vec<(String, Tier)> = Department::ALL
            .iter()
            .map(|d| {
                let tier = samblik_gateway::disclosure::wire_tier(policy.ceiling(&facts, d.id()));
                (d.id().to_owned(), tier)
            })
            .collect();
        for (source, case) in &mut l.cases {
            if let Some((_, tier)) = ceilings.iter().find(|(s, _)| s == source) {
                case.restrict_to((*tier).max(Tier::Existence));
            }
        }
    }
    let cases: usize = lookups.iter().map(|l| l.cases.len()).sum();
    eprintln!(
        "{} lookups, {:.1} cases each, {} allocator",
        lookups.len(),
        cases as f64 / lookups.len() as f64,
        samblik::ALLOCATOR_NAME
    );
    let mut i = 0;
    c.bench_function(
        "decide+filter, realistic lookup (200 lookups, cycling)",
        |b| {
            b.iter_batched(
                || {
                    i = (i + 1) % lookups.len();
                    (i, lookups[i].cases.clone())
                },
                |(i, cases)| black_box(run(&policy, &lookups[i], cases)),
                BatchSize::SmallInput,
            );
        },
    );
    // The same lookup over and over: the floor.
    c.bench_function("decide+filter, one lookup repeated", |b| {
        b.iter_batched(
            || lookups[0].cases.clone(),
            |cases| black_box(run(&policy, &lookups[0], cases)),
            BatchSize::SmallInput,
        );
    });
    // Only the filtering (restrict to tier, field set, address, disclosure), no decision.
    let decided: Vec<_> = {
        let l = &lookups[0];
        let roles = [Role::Caseworker];
        let facts = facts(l, &roles);
        l.cases
            .iter()
            .map(|(s, c)| (s.clone(), c.clone(), policy.decide(&facts, s, c)))
            .collect()
    };
    c.bench_function("filter only, one lookup", |b| {
        b.iter_batched(
            || decided.clone(),
            |decided| {
                decided
                    .into_iter()
                    .filter_map(|(s, c, d)| policy.apply(&s, c, &d))
                    .count()
            },
            BatchSize::SmallInput,
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
