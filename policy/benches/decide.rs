//! A realistic lookup through the policy: three sources, ten cases. One `ceiling` per source
//! over its case types, then one `decide` per case — what the gateway does per lookup.
//!
//! Run: `cargo bench -p samblik-policy`.
//!
//! - "first-after-load": the lookup on a freshly loaded policy, nothing memoized (load excluded).
//! - "cold": every lookup by a caller never seen before, about the same citizen.
//! - "warm": the same lookup again and again.
//! - "steady-state": what a municipality sees: 1000 callers in three departments and two
//!   municipalities, 1000 citizens with their own consent ids and paragraphs, some without a
//!   relation, cycling.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use samblik_policy::{BasisFact, CaseFacts, CaseTypes, Catalog, Policy, Role, Tier};

struct Source {
    id: &'static str,
    owner: &'static str,
    /// Built once, as the gateway builds them at load.
    case_types: CaseTypes,
    /// (case type, legal paragraph, flags)
    cases: Vec<(&'static str, &'static str, Vec<String>)>,
}

fn sources() -> Vec<Source> {
    vec![
        Source {
            id: "child-welfare",
            owner: "child-welfare",
            case_types: CaseTypes::new(["SL-54", "SL-140", "SL-12a"]),
            cases: vec![
                ("SL-140", "Serviceloven § 140", vec![]),
                ("SL-54", "Serviceloven § 54", vec![]),
                ("SL-12a", "Serviceloven § 12 a", vec![]),
                (
                    "SL-140",
                    "Serviceloven § 140",
                    vec!["address-protection".to_owned()],
                ),
            ],
        },
        Source {
            id: "jobcenter",
            owner: "jobcenter",
            case_types: CaseTypes::new(["LAB-27", "LAB-30a"]),
            cases: vec![
                ("LAB-27", "LAB § 27", vec![]),
                ("LAB-27", "LAB § 27", vec![]),
                ("LAB-30a", "LAB § 30 a", vec![]),
            ],
        },
        Source {
            id: "integration",
            owner: "integration",
            case_types: CaseTypes::new(["IL-19", "SL-57c"]),
            cases: vec![
                ("IL-19", "Integrationsloven § 19", vec![]),
                (
                    "IL-19",
                    "Integrationsloven § 19",
                    vec!["police-information".to_owned()],
                ),
                ("SL-57c", "Serviceloven § 57 c", vec![]),
            ],
        },
    ]
}

/// Who looks up whom.
struct Who<'a> {
    caller_id: &'a str,
    department: &'a str,
    municipality: &'a str,
    relation: bool,
    consent_id: &'a str,
    paragraph_suffix: &'a str,
}

impl Who<'_> {
    /// A jobcenter caseworker with a relation to the citizen.
    fn jobcenter(caller_id: &str) -> Who<'_> {
        Who {
            caller_id,
            department: "jobcenter",
            municipality: "0101",
            relation: true,
            consent_id: "consent-1",
            paragraph_suffix: "",
        }
    }
}

/// One lookup: a tier-1 statute everywhere and the citizen's consent to tier 2 for child
/// welfare.
fn lookup(policy: &Policy, sources: &[Source], who: &Who<'_>) -> usize {
    let roles = [Role::Caseworker];
    let mut disclosed = 0;
    for source in sources {
        let consent = (source.id == "child-welfare").then_some(BasisFact {
            id: who.consent_id,
            max_tier: Tier::Selected,
        });
        let base = CaseFacts {
            caller_id: who.caller_id,
            caller_department: who.department,
            roles: &roles,
            municipality: who.municipality,
            purpose: "prepare-meeting",
            source_id: source.id,
            owner_department: source.owner,
            case_type: &source.case_types.as_slice()[0],
            legal_paragraph: "",
            flags: &[],
            relation: who.relation,
            break_glass: false,
            statute: Some(BasisFact {
                id: "existence-and-contact",
                max_tier: Tier::Existence,
            }),
            consent,
            refusal: None,
            grant: None,
        };
        let ceiling = policy.ceiling(&base, &source.case_types);
        if ceiling == Tier::Hidden {
            continue;
        }
        for (case_type, paragraph, flags) in &source.cases {
            // Only the steady state varies the paragraph; the others allocate nothing here.
            let paragraph: Cow<'_, str> = if who.paragraph_suffix.is_empty() {
                Cow::Borrowed(paragraph)
            } else {
                Cow::Owned(format!("{paragraph}{}", who.paragraph_suffix))
            };
            let decision = policy.decide(&CaseFacts {
                case_type,
                legal_paragraph: &paragraph,
                flags,
                ..base
            });
            disclosed += usize::from(decision.tier > Tier::Hidden);
        }
    }
    disclosed
}

fn bench(c: &mut Criterion) {
    let catalog = Catalog::standard(vec![
        "child-welfare".into(),
        "jobcenter".into(),
        "integration".into(),
    ]);
    let load = || Policy::load(Policy::default_source(), &catalog).expect("default policy loads");
    let policy = load();
    let sources = sources();

    let callers: Vec<String> = (0..1000).map(|n| format!("caller-{n}")).collect();
    let citizens: Vec<(String, String)> = (0..1000)
        .map(|n| (format!("consent-{n}"), format!(", stk. {}", n % 7)))
        .collect();
    let who = |n: usize| Who {
        caller_id: &callers[n % callers.len()],
        department: ["jobcenter", "integration", "housing"][n % 3],
        municipality: ["0101", "0851"][n % 2],
        relation: !n.is_multiple_of(5),
        consent_id: &citizens[(n * 7) % citizens.len()].0,
        paragraph_suffix: &citizens[(n * 7) % citizens.len()].1,
    };

    let mut group = c.benchmark_group("lookup-3-sources-10-cases");
    group.bench_function("first-after-load", |b| {
        b.iter_batched(
            load,
            |fresh| {
                let disclosed = lookup(&fresh, &sources, &Who::jobcenter("caller-first"));
                // Returned so dropping the policy is not timed.
                (fresh, black_box(disclosed))
            },
            BatchSize::PerIteration,
        )
    });
    let mut n = 0u64;
    group.bench_function("cold", |b| {
        b.iter(|| {
            n += 1;
            let caller = format!("caller-{n}");
            black_box(lookup(
                &policy,
                &sources,
                &Who::jobcenter(black_box(&caller)),
            ))
        })
    });
    group.bench_function("warm", |b| {
        b.iter(|| {
            black_box(lookup(
                &policy,
                &sources,
                &Who::jobcenter(black_box("caller-warm")),
            ))
        })
    });
    let mut n = 0usize;
    group.bench_function("steady-state", |b| {
        b.iter(|| {
            n += 1;
            black_box(lookup(&policy, &sources, black_box(&who(n))))
        })
    });
    group.finish();

    let f = CaseFacts {
        caller_id: "caller-single",
        caller_department: "jobcenter",
        roles: &[Role::Caseworker],
        municipality: "0101",
        purpose: "prepare-meeting",
        source_id: "child-welfare",
        owner_department: "child-welfare",
        case_type: "SL-140",
        legal_paragraph: "Serviceloven § 140",
        flags: &[],
        relation: true,
        break_glass: false,
        statute: Some(BasisFact {
            id: "existence-and-contact",
            max_tier: Tier::Existence,
        }),
        consent: None,
        refusal: None,
        grant: None,
    };
    c.bench_function("decide-warm", |b| {
        b.iter(|| black_box(policy.decide(black_box(&f))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
