//! Properties of the generated municipality: determinism, synthetic CPR numbers, referential
//! integrity, dates, and the report's proportions at the size of its average municipality.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_proto::Cpr;
use samblik_synth::{
    CaseState, Dataset, Department, DocumentKind, PlanType, SynthConfig, SynthError, generate,
    store,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// The report's average municipality (42,813 inhabitants), generated once for all tests.
fn average_municipality() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| generate(&SynthConfig::new(2017, 43_000)).expect("generates"))
}

fn plans_per_citizen(data: &Dataset) -> BTreeMap<&str, Vec<PlanType>> {
    let mut held: BTreeMap<&str, Vec<PlanType>> = BTreeMap::new();
    for case in &data.cases {
        held.entry(case.cpr.as_str())
            .or_default()
            .push(case.plan_type);
    }
    held
}

fn all_department_citizens(data: &Dataset) -> usize {
    let mut departments: BTreeMap<&str, BTreeSet<Department>> = BTreeMap::new();
    for case in &data.cases {
        departments
            .entry(&case.cpr)
            .or_default()
            .insert(case.department());
    }
    departments
        .values()
        .filter(|d| d.len() == Department::ALL.len())
        .count()
}

#[test]
fn the_same_config_gives_the_same_data() {
    let config = SynthConfig::new(7, 3_000);
    let first = generate(&config).unwrap();
    assert_eq!(first, generate(&config).unwrap());
    assert!(!first.cases.is_empty());
}

#[test]
fn different_seeds_give_different_data() {
    let a = generate(&SynthConfig::new(7, 3_000)).unwrap();
    let b = generate(&SynthConfig::new(8, 3_000)).unwrap();
    assert_ne!(a.citizens, b.citizens);
    assert_ne!(a.cases, b.cases);
    assert_eq!(b.municipality.seed, 8);
}

#[test]
fn zero_citizens_is_refused() {
    let err = generate(&SynthConfig::new(1, 0)).unwrap_err();
    assert!(matches!(err, SynthError::TooFewCitizens { min: 1 }));
}

#[test]
fn cpr_numbers_are_unique_synthetic_and_match_the_citizen() {
    let data = average_municipality();
    assert_eq!(data.citizens.len(), 43_000);
    let mut seen = BTreeSet::new();
    for citizen in &data.citizens {
        assert!(seen.insert(citizen.cpr.as_str()), "duplicate CPR number");
        let cpr = Cpr::parse(&citizen.cpr).unwrap();
        assert_eq!(cpr.birth_date(), citizen.birth_date);
        // The guarantee that no generated number was ever issued before 2007.
        assert!(
            !cpr.satisfies_modulus_11(),
            "a CPR number passes modulus 11"
        );
    }
    let males = data
        .citizens
        .iter()
        .filter(|c| c.cpr.bytes().last().is_some_and(|d| d % 2 == 1))
        .count();
    assert!((20_500..=22_500).contains(&males), "{males} men");
}

#[test]
fn ages_are_shaped_like_denmark() {
    let data = average_municipality();
    let today = data.municipality.reference_date;
    let ages: Vec<u32> = data
        .citizens
        .iter()
        .map(|c| today.years_since(c.birth_date).unwrap())
        .collect();
    let children = ages.iter().filter(|&&a| a < 18).count() as f64 / ages.len() as f64;
    assert!((0.19..=0.23).contains(&children), "{children:.3} aged 0–17");
    assert!(ages.iter().all(|&a| a <= 96));
    assert!(ages.iter().any(|&a| a >= 90));
    let protected = data.citizens.iter().filter(|c| c.address_protected).count();
    assert!((100..=350).contains(&protected), "{protected} protected");
}

#[test]
fn plans_fit_the_age_of_their_holder() {
    let data = average_municipality();
    let today = data.municipality.reference_date;
    let birth: BTreeMap<&str, _> = data
        .citizens
        .iter()
        .map(|c| (c.cpr.as_str(), c.birth_date))
        .collect();
    for case in &data.cases {
        let age = today.years_since(birth[case.cpr.as_str()]).unwrap();
        let (youngest, oldest) = match case.plan_type {
            PlanType::Sl140 => (0, 22),
            PlanType::Sl57c => (12, 17),
            PlanType::Sl54 => (25, 55),
            PlanType::Lab27 => (16, 66),
            PlanType::Lab30a => (18, 64),
            PlanType::Il19 => (18, 55),
            PlanType::Sl141 => (18, 66),
            PlanType::Sl12a => (18, 40),
        };
        assert!(
            (youngest..=oldest).contains(&age),
            "{:?} at {age}",
            case.plan_type
        );
        assert!(case.opened_on > birth[case.cpr.as_str()]);
    }
}

#[test]
fn every_case_belongs_to_a_citizen_and_a_caseworker_of_its_department() {
    let data = average_municipality();
    let citizens: BTreeSet<&str> = data.citizens.iter().map(|c| c.cpr.as_str()).collect();
    let caseworkers: BTreeMap<&str, _> = data
        .caseworkers
        .iter()
        .map(|c| (c.id.as_str(), c))
        .collect();
    for case in &data.cases {
        assert!(
            citizens.contains(case.cpr.as_str()),
            "{} has no citizen",
            case.case_id
        );
        let responsible = caseworkers[case.responsible.as_str()];
        assert_eq!(
            responsible.department,
            case.department(),
            "{}",
            case.case_id
        );
        match case.plan_type {
            PlanType::Lab30a => assert_eq!(responsible.unit, "Rehabiliteringsteamet"),
            PlanType::Sl57c => assert_eq!(responsible.unit, "Ungeenheden"),
            _ => {}
        }
    }
}

#[test]
fn caseworkers_are_staffed_from_the_caseload() {
    let data = average_municipality();
    let domain = format!("@{}", data.municipality.mail_domain);
    let mut emails = BTreeSet::new();
    for worker in &data.caseworkers {
        let prefix = format!("cw-{}-", worker.department.id());
        let number = worker.id.strip_prefix(&prefix).unwrap();
        assert!(
            number.len() == 3 && number.bytes().all(|b| b.is_ascii_digit()),
            "{}",
            worker.id
        );
        assert!(
            worker.email.ends_with(&domain) && worker.email.is_ascii(),
            "{}",
            worker.email
        );
        assert!(
            emails.insert(worker.email.as_str()),
            "duplicate {}",
            worker.email
        );
        assert!(
            worker.phone.starts_with("+45 7") && worker.phone.len() == 15,
            "{}",
            worker.phone
        );
    }
    for (department, per_worker) in [
        (Department::ChildWelfare, 25.0),
        (Department::Jobcenter, 90.0),
        (Department::Integration, 40.0),
        (Department::AdultSocial, 35.0),
    ] {
        let workers = data
            .caseworkers
            .iter()
            .filter(|w| w.department == department)
            .count();
        let cases = data
            .cases
            .iter()
            .filter(|c| c.department() == department)
            .count();
        let load = cases as f64 / workers as f64;
        assert!(workers >= 2);
        assert!(
            (0.6 * per_worker..=per_worker).contains(&load),
            "{department}: {load:.0}"
        );
    }
}

#[test]
fn proportions_match_the_report_at_its_average_municipality() {
    let data = average_municipality();
    let total = data.cases.len();
    let count = |plan| data.cases.iter().filter(|c| c.plan_type == plan).count();
    let held = plans_per_citizen(data);
    let in_overlap: usize = held.values().map(Vec::len).filter(|&n| n >= 2).sum();
    let in_three: usize = held.values().map(Vec::len).filter(|&n| n >= 3).sum();
    let share = |n: usize| n as f64 / total as f64;
    let all_departments = all_department_citizens(data);
    eprintln!(
        "43,000 citizens: {total} plans, LAB-27 {:.1} %, ≥2 plans {:.1} %, ≥3 plans {:.1} %, \
         {all_departments} citizens in all four departments",
        100.0 * share(count(PlanType::Lab27)),
        100.0 * share(in_overlap),
        100.0 * share(in_three),
    );
    assert!((6_000..=7_500).contains(&total), "{total} plans");
    assert!(share(count(PlanType::Lab27)) >= 0.70);
    assert!((0.09..=0.12).contains(&share(in_overlap)));
    assert!((0.02..=0.04).contains(&share(in_three)));
    assert!(all_departments >= 1);
    // The adult-social area: about 30,000 § 141 plans nationally, 225 here, a quarter or more
    // beside a Min Plan (the report's largest § 141 overlap); § 12 a (about 50 a year
    // nationally) is kept at one case, held beside the jobcenter.
    assert!((200..=250).contains(&count(PlanType::Sl141)));
    let with = |a, b| {
        held.values()
            .filter(|p| p.contains(&a) && p.contains(&b))
            .count()
    };
    assert!(with(PlanType::Sl141, PlanType::Lab27) >= 50);
    assert_eq!(count(PlanType::Sl12a), 1);
    assert_eq!(with(PlanType::Sl12a, PlanType::Lab27), 1);
    // The report finds no citizen with both a Min Plan and a rehabilitation plan.
    assert!(
        !held
            .values()
            .any(|p| p.contains(&PlanType::Lab27) && p.contains(&PlanType::Lab30a))
    );
    let open = data
        .cases
        .iter()
        .filter(|c| c.state == CaseState::Open)
        .count();
    assert!((0.80..=0.92).contains(&share(open)), "{open} open");
}

#[test]
fn small_municipalities_still_have_a_citizen_in_all_four_departments() {
    // Below about 7,000 inhabitants the four-department profile does not round up to a whole
    // citizen, nor § 12 a anywhere near an average municipality.
    for (seed, citizens) in [(0, 300), (1, 800), (2, 2_000), (3, 2_000)] {
        let data = generate(&SynthConfig::new(seed, citizens)).unwrap();
        assert!(
            all_department_citizens(&data) >= 1,
            "{citizens} citizens, seed {seed}"
        );
        assert!(
            data.cases.iter().any(|c| c.plan_type == PlanType::Sl12a),
            "{citizens} citizens, seed {seed}"
        );
    }
}

#[test]
fn dates_are_consistent() {
    let data = average_municipality();
    let today = data.municipality.reference_date;
    for case in &data.cases {
        let id = &case.case_id;
        assert!(case.opened_on <= today, "{id}");
        assert!(case.opened_on >= today - chrono::Days::new(5 * 366), "{id}");
        let until = match (case.state, case.closed_on) {
            (CaseState::Open, None) => {
                assert!(case.next_follow_up_on.is_some_and(|d| d > today), "{id}");
                today
            }
            (CaseState::Closed, Some(closed)) => {
                assert!(closed > case.opened_on && closed < today, "{id}");
                assert_eq!(case.next_follow_up_on, None, "{id}");
                closed
            }
            _ => panic!("{id}: state and closing date disagree"),
        };
        for document in &case.documents {
            assert!(
                (case.opened_on..=until).contains(&document.dated_on),
                "{id}"
            );
        }
        for intervention in &case.interventions {
            assert!(
                (case.opened_on..=until).contains(&intervention.start_on),
                "{id}"
            );
            assert!(
                intervention
                    .end_on
                    .is_none_or(|end| end >= intervention.start_on),
                "{id}"
            );
            if let Some(closed) = case.closed_on {
                assert!(intervention.end_on.is_some_and(|end| end <= closed), "{id}");
            }
        }
        assert!(
            case.goals
                .iter()
                .all(|g| g.target_on.is_some_and(|t| t > case.opened_on))
        );
    }
}

#[test]
fn cases_carry_plausible_content() {
    let data = average_municipality();
    for case in &data.cases {
        let id = &case.case_id;
        let sentences = case.situation.matches(". ").count() + 1;
        assert!((2..=5).contains(&sentences), "{id}: {}", case.situation);
        if case.plan_type == PlanType::Sl12a {
            // Immediate safety, no specific goals; always the police's risk information.
            assert!(case.goals.is_empty(), "{id}");
            assert!(
                case.sensitivity
                    .iter()
                    .any(|f| f == "honour-related-conflict")
                    && case.sensitivity.iter().any(|f| f == "police-information"),
                "{id}"
            );
        } else {
            assert!((1..=3).contains(&case.goals.len()), "{id}");
        }
        assert!((1..=4).contains(&case.interventions.len()), "{id}");
        assert!((1..=5).contains(&case.documents.len()), "{id}");
        assert!(!case.assessment_summary.is_empty(), "{id}");
        if case.plan_type == PlanType::Il19 {
            assert!(case.situation.contains("uddannelsespålæg"), "{id}");
            assert!(case.situation.contains("koordinerer"), "{id}");
        }
        if case.plan_type == PlanType::Sl57c {
            assert!(
                case.documents
                    .iter()
                    .any(|d| d.kind == DocumentKind::PoliceStatement)
            );
        }
        for document in &case.documents {
            let outside = matches!(
                document.kind,
                DocumentKind::MedicalStatement | DocumentKind::PoliceStatement
            );
            assert!(!outside || document.third_party_origin.is_some(), "{id}");
        }
    }
    let medical_share = |plan| {
        let cases: Vec<_> = data.cases.iter().filter(|c| c.plan_type == plan).collect();
        let medical = cases
            .iter()
            .filter(|c| {
                c.documents
                    .iter()
                    .any(|d| d.kind == DocumentKind::MedicalStatement)
            })
            .count();
        medical as f64 / cases.len() as f64
    };
    let rehabilitation = medical_share(PlanType::Lab30a);
    assert!(
        (0.33..=0.47).contains(&rehabilitation),
        "{rehabilitation:.2}"
    );
    assert!(medical_share(PlanType::Lab27) > 0.05);
    assert!(medical_share(PlanType::Il19) > 0.3);
}

#[test]
fn case_and_document_ids_are_unique_and_well_formed() {
    let data = average_municipality();
    let mut case_ids = BTreeSet::new();
    let mut document_ids = BTreeSet::new();
    for case in &data.cases {
        assert!(
            case_ids.insert(case.case_id.as_str()),
            "duplicate {}",
            case.case_id
        );
        let prefix = format!(
            "{}-{}-",
            case.department().case_prefix(),
            chrono::Datelike::year(&case.opened_on)
        );
        let counter = case.case_id.strip_prefix(&prefix).unwrap();
        assert!(
            counter.len() == 6 && counter.bytes().all(|b| b.is_ascii_digit()),
            "{}",
            case.case_id
        );
        for document in &case.documents {
            assert!(document_ids.insert(document.document_id.as_str()));
            assert!(
                document
                    .document_id
                    .starts_with(&format!("{}-D", case.case_id))
            );
        }
    }
}

#[test]
fn store_round_trips_a_data_set() {
    let data = generate(&SynthConfig::new(3, 500)).unwrap();
    let dir = std::env::temp_dir().join(format!("samblik-synth-roundtrip-{}", std::process::id()));
    store::write(&dir, &data).unwrap();
    assert!(store::exists(&dir));
    let read = store::read(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    // Exact equality, order included: the store reads department files in the order the
    // generator sorts cases (by department, then opening date).
    assert_eq!(read.unwrap(), data);
}

/// Run with `cargo test --release -p samblik-synth -- --ignored --nocapture`. Ignored by default
/// so that no CI run depends on the speed of its machine.
#[test]
#[ignore = "timing check; run on demand in release mode"]
fn generates_an_average_municipality_quickly() {
    let started = std::time::Instant::now();
    let data = generate(&SynthConfig::new(1, 43_000)).unwrap();
    let elapsed = started.elapsed();
    eprintln!("43,000 citizens, {} cases in {elapsed:?}", data.cases.len());
    assert!(elapsed < std::time::Duration::from_secs(3), "{elapsed:?}");
}
