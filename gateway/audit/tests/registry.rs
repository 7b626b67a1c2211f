//! The consent / access-request registry over a real SQLite file and a real PostgreSQL: every
//! change is applied and audited in one transaction, refusals are audited and change nothing,
//! reads are never stale, and a request is decided once even by racing replicas.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use samblik_audit::Cpr;
use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
use samblik_audit::testing::FaultInjecting;
use samblik_audit::testing::cpr as cpr_of;
use samblik_audit::verify::verify_store;
use samblik_audit::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;

const CPR: &str = "0101901235";
const OTHER_CPR: &str = "0202902346";

mod common;
use common::{TestStore, runtime, spawn_append, test_stores, wait_until};

struct Setup {
    store: TestStore,
    /// Every registry opened on this store: a change is made visible to each, as the gateway
    /// does after writing it (a no-op for PostgreSQL, which every read asks).
    registries: std::cell::RefCell<Vec<Registry>>,
}

impl Setup {
    fn store(&self) -> Box<dyn AuditStore> {
        self.store.store()
    }

    fn registry(&self) -> Registry {
        let registry = self.store.registry();
        self.registries.borrow_mut().push(registry.clone());
        registry
    }

    fn log(&self, chain: &str, store: Box<dyn AuditStore>) -> AuditLog {
        let signer = CheckpointSigner::load_or_create(&self.store.key).unwrap();
        let mut options = WriterOptions::new(chain);
        options.checkpoint_every = 5;
        AuditLog::start(store, signer, options).unwrap()
    }

    fn verify(&self) -> Vec<verify::ChainSummary> {
        let key = load_verifying_key(&public_key_path(&self.store.key)).unwrap();
        verify_store(&mut *self.store(), &key).unwrap()
    }

    /// The stored record at `seq` of `chain`.
    fn record(&self, chain: &str, seq: u64) -> AuditRecord {
        let stored = self.store().records(chain, seq - 1, 1).unwrap();
        assert_eq!(stored.len(), 1, "no record {seq} in {chain}");
        AuditRecord::from_stored(&stored[0].body, &stored[0].hash).unwrap()
    }

    fn record_count(&self, chain: &str) -> usize {
        self.store().records(chain, 0, 100_000).unwrap().len()
    }
}

/// One setup per backend, each with an empty store.
fn setups() -> Vec<Setup> {
    test_stores("registry")
        .into_iter()
        .map(|store| Setup {
            store,
            registries: Default::default(),
        })
        .collect()
}

fn t(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap()
}

fn event(caller: &str, department: &str) -> AuditEvent {
    AuditEvent {
        request_id: format!("req-{caller}"),
        // The writer sets the action from the change.
        action: Action::Lookup,
        actor: Actor {
            caller_id: caller.into(),
            name: "Test".into(),
            department: department.into(),
            municipality: "999".into(),
            system: None,
        },
        cpr: None,
        purpose: None,
        break_glass_reason: None,
        outcome: Outcome::Answered,
        detail: None,
        reason: None,
        sources: vec![],
        policy_version: "test".into(),
    }
}

fn consent(id: &str, cpr: &str, recorded_at: DateTime<Utc>) -> Consent {
    Consent {
        id: id.into(),
        cpr: cpr_of(cpr),
        kind: ConsentKind::Permit,
        from_departments: vec!["child-welfare".into()],
        to: Recipients::Departments(vec!["jobcenter".into()]),
        max_tier: 2,
        purposes: vec!["prepare-meeting".into()],
        valid_from: t(1),
        valid_until: Some(t(28)),
        recorded_by: "cw-jobcenter-1".into(),
        // Sub-second precision must survive the store.
        recorded_at: recorded_at + Duration::nanoseconds(123_456_789),
        document_ref: format!("doc/{id}"),
        withdrawn_at: None,
        withdrawn_by: None,
    }
}

fn request(id: &str, cpr: &str, requester: &str) -> AccessRequest {
    AccessRequest {
        id: id.into(),
        cpr: cpr_of(cpr),
        requester_id: requester.into(),
        requester_name: "Test Caseworker".into(),
        requester_department: "jobcenter".into(),
        source_id: "child-welfare".into(),
        owner_department: "child-welfare".into(),
        case_id: format!("BF-{id}"),
        tier_wanted: 2,
        purpose: "prepare-meeting".into(),
        justification: "joint meeting with the family".into(),
        filed_at: t(2),
        state: RequestState::Pending,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        granted_tier: None,
        granted_until: None,
    }
}

fn decide(id: &str, department: &str, approve: bool) -> RegistryChange {
    RegistryChange::DecideRequest {
        id: id.into(),
        by: format!("leader-{department}"),
        by_department: department.into(),
        approve,
        tier: approve.then_some(2),
        until: approve.then(|| t(20)),
        reason: "necessity assessed".into(),
        at: t(3),
    }
}

fn withdraw(id: &str, cpr: &str) -> RegistryChange {
    RegistryChange::WithdrawConsent {
        id: id.into(),
        cpr: cpr_of(cpr),
        by: "cw-jobcenter-1".into(),
        at: t(5),
    }
}

fn change(
    rt: &tokio::runtime::Runtime,
    s: &Setup,
    log: &AuditLog,
    change: RegistryChange,
) -> ChangeOutcome {
    let outcome = rt
        .block_on(log.change(event("cw-jobcenter-1", "jobcenter"), change.clone()))
        .unwrap()
        .0;
    if outcome == ChangeOutcome::Applied {
        for r in s.registries.borrow().iter() {
            rt.block_on(r.refresh(&change));
        }
    }
    outcome
}

#[test]
fn consents_are_recorded_listed_and_withdrawn_and_the_next_read_sees_it() {
    for s in setups() {
        let rt = runtime();
        let log = s.log("replica-a", s.store());
        // Opened before any change: a replica's reader must never serve what it saw earlier.
        let registry = s.registry();
        let other_replica = s.registry();
        let first = consent("c-1", CPR, t(1));
        let second = consent("c-2", CPR, t(2));
        let c = |c: &Consent| RegistryChange::RecordConsent(c.clone());
        assert_eq!(change(&rt, &s, &log, c(&first)), ChangeOutcome::Applied);
        assert_eq!(change(&rt, &s, &log, c(&second)), ChangeOutcome::Applied);
        assert_eq!(
            change(&rt, &s, &log, c(&consent("c-3", OTHER_CPR, t(1)))),
            ChangeOutcome::Applied
        );
        // The same id again changes nothing.
        let mut clash = consent("c-1", CPR, t(9));
        clash.max_tier = 3;
        assert_eq!(change(&rt, &s, &log, c(&clash)), ChangeOutcome::AlreadyDone);

        let listed = rt.block_on(registry.consents_for(&cpr_of(CPR))).unwrap();
        assert_eq!(listed, vec![second.clone(), first.clone()], "newest first");
        assert_eq!(
            rt.block_on(registry.consent("c-1")).unwrap(),
            Some(first.clone())
        );
        assert_eq!(rt.block_on(registry.consent("c-404")).unwrap(), None);
        assert!(
            rt.block_on(registry.consents_for(&cpr_of("1111111118")))
                .unwrap()
                .is_empty()
        );

        assert_eq!(
            change(&rt, &s, &log, withdraw("c-1", OTHER_CPR)),
            ChangeOutcome::NotFound
        );
        assert_eq!(
            change(&rt, &s, &log, withdraw("c-404", CPR)),
            ChangeOutcome::NotFound
        );
        assert_eq!(
            rt.block_on(other_replica.consent("c-1")).unwrap(),
            Some(first.clone())
        );
        assert_eq!(
            change(&rt, &s, &log, withdraw("c-1", CPR)),
            ChangeOutcome::Applied
        );
        for r in [&registry, &other_replica] {
            let now = rt.block_on(r.consent("c-1")).unwrap().unwrap();
            assert_eq!(now.withdrawn_at, Some(t(5)));
            assert_eq!(now.withdrawn_by.as_deref(), Some("cw-jobcenter-1"));
            assert!(!now.is_active(t(6)));
            let listed = rt.block_on(r.consents_for(&cpr_of(CPR))).unwrap();
            assert_eq!(listed.len(), 2, "withdrawn consents are still listed");
            assert!(
                listed
                    .iter()
                    .filter(|c| c.is_active(t(6)))
                    .all(|c| c.id == "c-2")
            );
        }
        assert_eq!(
            change(&rt, &s, &log, withdraw("c-1", CPR)),
            ChangeOutcome::AlreadyDone
        );
        // The second withdrawal kept the first one's time.
        let now = rt.block_on(registry.consent("c-1")).unwrap().unwrap();
        assert_eq!(now.withdrawn_at, Some(t(5)));
        log.close();
        s.verify();
    }
}

#[test]
fn requests_are_filed_and_decided_once_by_their_owner() {
    for s in setups() {
        let rt = runtime();
        let log = s.log("replica-a", s.store());
        let registry = s.registry();
        for r in [
            request("ar-1", CPR, "cw-1"),
            request("ar-2", CPR, "cw-2"),
            request("ar-3", CPR, "cw-1"),
            request("ar-4", OTHER_CPR, "cw-1"),
        ] {
            assert_eq!(
                change(&rt, &s, &log, RegistryChange::FileRequest(r)),
                ChangeOutcome::Applied
            );
        }
        assert_eq!(
            rt.block_on(registry.request("ar-1")).unwrap(),
            Some(request("ar-1", CPR, "cw-1"))
        );

        // Someone outside the owning department: refused, and nothing changed.
        assert_eq!(
            change(&rt, &s, &log, decide("ar-1", "jobcenter", true)),
            ChangeOutcome::WrongDepartment
        );
        assert_eq!(
            rt.block_on(registry.request("ar-1")).unwrap(),
            Some(request("ar-1", CPR, "cw-1"))
        );
        assert_eq!(
            change(&rt, &s, &log, decide("ar-404", "child-welfare", true)),
            ChangeOutcome::NotFound
        );

        assert_eq!(
            change(&rt, &s, &log, decide("ar-1", "child-welfare", true)),
            ChangeOutcome::Applied
        );
        assert_eq!(
            change(&rt, &s, &log, decide("ar-4", "child-welfare", true)),
            ChangeOutcome::Applied
        );
        assert_eq!(
            change(&rt, &s, &log, decide("ar-2", "child-welfare", false)),
            ChangeOutcome::Applied
        );
        let approved = rt.block_on(registry.request("ar-1")).unwrap().unwrap();
        assert_eq!(approved.state, RequestState::Approved);
        assert_eq!(approved.granted_tier, Some(2));
        assert_eq!(approved.granted_until, Some(t(20)));
        assert_eq!(approved.decided_by.as_deref(), Some("leader-child-welfare"));
        assert_eq!(approved.decided_at, Some(t(3)));
        assert!(approved.grant_active(t(10)));
        let denied = rt.block_on(registry.request("ar-2")).unwrap().unwrap();
        assert_eq!(denied.state, RequestState::Denied);
        assert_eq!(denied.granted_tier, None);

        // Deciding again: refused, the first decision stands.
        assert_eq!(
            change(&rt, &s, &log, decide("ar-1", "child-welfare", false)),
            ChangeOutcome::AlreadyDone
        );
        assert_eq!(
            rt.block_on(registry.request("ar-1")).unwrap(),
            Some(approved.clone())
        );

        // Grants: approved only, for exactly that requester and citizen.
        let grants = rt
            .block_on(registry.grants_for(&cpr_of(CPR), "cw-1"))
            .unwrap();
        assert_eq!(grants, vec![approved]);
        assert!(
            rt.block_on(registry.grants_for(&cpr_of(CPR), "cw-2"))
                .unwrap()
                .is_empty()
        );
        let ids = |v: Vec<AccessRequest>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(rt
                .block_on(registry.grants_for(&cpr_of(OTHER_CPR), "cw-1"))
                .unwrap()),
            ["ar-4"]
        );

        // The owner's inbox and the requester's list.
        let inbox = RequestFilter {
            owner_department: Some("child-welfare".into()),
            state: Some(RequestState::Pending),
            ..RequestFilter::default()
        };
        assert_eq!(
            ids(rt.block_on(registry.requests(inbox, 10)).unwrap()),
            ["ar-3"]
        );
        let mine = RequestFilter {
            requester_id: Some("cw-1".into()),
            cpr: Some(cpr_of(CPR)),
            ..RequestFilter::default()
        };
        let mut mine = ids(rt.block_on(registry.requests(mine, 10)).unwrap());
        mine.sort();
        assert_eq!(mine, ["ar-1", "ar-3"]);
        assert_eq!(
            rt.block_on(registry.requests(RequestFilter::default(), 3))
                .unwrap()
                .len(),
            3
        );
        let elsewhere = RequestFilter {
            owner_department: Some("jobcenter".into()),
            ..RequestFilter::default()
        };
        assert!(
            rt.block_on(registry.requests(elsewhere, 10))
                .unwrap()
                .is_empty()
        );
        log.close();
        s.verify();
    }
}

#[test]
fn every_change_and_every_refusal_leaves_one_record_in_a_chain_that_verifies() {
    for s in setups() {
        let rt = runtime();
        let log = s.log("replica-a", s.store());
        let registry = s.registry();
        // Ordinary records before and between: old-style records and change records share the
        // chain.
        let lookup = || {
            let mut e = event("cw-jobcenter-1", "jobcenter");
            e.cpr = Some(cpr_of(CPR));
            e
        };
        rt.block_on(log.append(lookup())).unwrap();
        let mut invalid = consent("c-bad", CPR, t(1));
        invalid.purposes.clear();
        let mut decision = event("leader-child-welfare", "child-welfare");
        decision.cpr = Some(cpr_of(CPR));
        let steps: Vec<(AuditEvent, RegistryChange, ChangeOutcome, Action, Outcome)> = vec![
            (
                event("cw-jobcenter-1", "jobcenter"),
                RegistryChange::RecordConsent(consent("c-1", CPR, t(1))),
                ChangeOutcome::Applied,
                Action::ConsentRecorded,
                Outcome::Answered,
            ),
            (
                event("cw-jobcenter-1", "jobcenter"),
                RegistryChange::RecordConsent(invalid),
                ChangeOutcome::Invalid,
                Action::ConsentRecorded,
                Outcome::Invalid,
            ),
            (
                event("cw-jobcenter-1", "jobcenter"),
                withdraw("c-1", CPR),
                ChangeOutcome::Applied,
                Action::ConsentWithdrawn,
                Outcome::Answered,
            ),
            (
                event("cw-jobcenter-1", "jobcenter"),
                withdraw("c-1", CPR),
                ChangeOutcome::AlreadyDone,
                Action::ConsentWithdrawn,
                Outcome::Refused,
            ),
            (
                event("cw-jobcenter-1", "jobcenter"),
                RegistryChange::FileRequest(request("ar-1", CPR, "cw-jobcenter-1")),
                ChangeOutcome::Applied,
                Action::AccessRequested,
                Outcome::Answered,
            ),
            (
                event("cw-jobcenter-1", "jobcenter"),
                decide("ar-1", "jobcenter", true),
                ChangeOutcome::WrongDepartment,
                Action::AccessDecided,
                Outcome::Denied,
            ),
            (
                decision.clone(),
                decide("ar-1", "child-welfare", true),
                ChangeOutcome::Applied,
                Action::AccessDecided,
                Outcome::Answered,
            ),
            (
                decision,
                decide("ar-1", "child-welfare", false),
                ChangeOutcome::AlreadyDone,
                Action::AccessDecided,
                Outcome::Refused,
            ),
            (
                event("leader-child-welfare", "child-welfare"),
                decide("ar-404", "child-welfare", false),
                ChangeOutcome::NotFound,
                Action::AccessDecided,
                Outcome::Refused,
            ),
        ];
        let mut last_seq = 2;
        for (i, (event, registry_change, expected, action, outcome)) in
            steps.into_iter().enumerate()
        {
            let (got, receipt) = rt
                .block_on(log.change(event.clone(), registry_change.clone()))
                .unwrap();
            assert_eq!(got, expected, "step {i}");
            assert_eq!(
                receipt.seq,
                last_seq + 1,
                "one record per change (step {i})"
            );
            last_seq = receipt.seq;
            let record = s.record("replica-a", receipt.seq);
            assert_eq!(record.hash, receipt.hash);
            assert_eq!(record.action, action, "step {i}");
            assert_eq!(record.outcome, outcome, "step {i}");
            assert_eq!(record.actor, event.actor);
            assert_eq!(
                record.change,
                Some(serde_json::to_value(&registry_change).unwrap()),
                "the change is in the record's body (step {i})"
            );
            // A change's own CPR is indexed; a decision carries the one the gateway set.
            let cpr = registry_change.cpr().cloned().or(event.cpr.clone());
            assert_eq!(record.cpr, cpr, "step {i}");
            if !matches!(registry_change, RegistryChange::DecideRequest { .. }) {
                assert_eq!(record.cpr.as_ref().map(Cpr::as_str), Some(CPR), "step {i}");
            }
            // The change, its record and what the registry reads back never print the CPR.
            let printed = format!(
                "{registry_change:?} {record:?} {:?} {:?}",
                rt.block_on(registry.consents_for(&cpr_of(CPR))).unwrap(),
                rt.block_on(registry.requests(RequestFilter::default(), 10))
                    .unwrap()
            );
            assert!(
                !printed.contains(CPR),
                "a CPR number was printed (step {i})"
            );
            match expected {
                ChangeOutcome::Applied => {
                    assert_eq!((&record.detail, &record.reason), (&None, &None))
                }
                _ => assert!(record.detail.is_some(), "a refusal says why (step {i})"),
            }
            let reason = match expected {
                ChangeOutcome::Applied => None,
                ChangeOutcome::NotFound => Some("ITEM_NOT_FOUND"),
                ChangeOutcome::AlreadyDone => Some("ALREADY_DONE"),
                ChangeOutcome::WrongDepartment => Some("WRONG_DEPARTMENT"),
                ChangeOutcome::Invalid => Some("FIELD_INVALID"),
            };
            assert_eq!(record.reason.as_deref(), reason, "step {i}");
            if i == 1 {
                rt.block_on(log.append(lookup())).unwrap();
                last_seq += 1;
            }
        }
        // The invalid consent was not recorded; the other refusals changed nothing.
        assert_eq!(rt.block_on(registry.consent("c-bad")).unwrap(), None);
        let decided = rt.block_on(registry.request("ar-1")).unwrap().unwrap();
        assert_eq!(decided.state, RequestState::Approved);
        assert_eq!(
            rt.block_on(registry.consent("c-1"))
                .unwrap()
                .unwrap()
                .withdrawn_at,
            Some(t(5))
        );
        log.close();
        let summary = s.verify();
        assert_eq!(summary.len(), 1);
        // And the clean-stop record.
        assert_eq!(summary[0].records, last_seq + 1);
        // Records without a change are encoded as before: no `change` key at all.
        let stored = s.store().records("replica-a", 1, 1).unwrap();
        assert!(!stored[0].body.contains("\"change\""));
    }
}

#[test]
fn a_failing_store_refuses_changes_keeps_nothing_and_recovers() {
    for s in setups() {
        let rt = runtime();
        let store = FaultInjecting::new(s.store());
        let failing = Arc::clone(&store.failing);
        let log = s.log("replica-a", Box::new(store));
        let health = log.health();
        let registry = s.registry();
        change(
            &rt,
            &s,
            &log,
            RegistryChange::FileRequest(request("ar-1", CPR, "cw-1")),
        );
        let records = s.record_count("replica-a");

        failing.store(true, Ordering::SeqCst);
        let recorded = RegistryChange::RecordConsent(consent("c-1", CPR, t(1)));
        assert!(
            rt.block_on(log.change(event("cw-1", "jobcenter"), recorded.clone()))
                .is_err()
        );
        assert!(!*health.borrow());
        assert!(
            rt.block_on(log.change(
                event("leader", "child-welfare"),
                decide("ar-1", "child-welfare", true)
            ))
            .is_err()
        );
        // Applied inside the transaction, rolled back with it: nothing is left.
        assert_eq!(rt.block_on(registry.consent("c-1")).unwrap(), None);
        assert_eq!(
            rt.block_on(registry.request("ar-1"))
                .unwrap()
                .unwrap()
                .state,
            RequestState::Pending
        );
        assert_eq!(s.record_count("replica-a"), records);

        failing.store(false, Ordering::SeqCst);
        let (outcome, receipt) = rt
            .block_on(log.change(event("cw-1", "jobcenter"), recorded))
            .unwrap();
        assert_eq!(outcome, ChangeOutcome::Applied);
        assert!(*health.borrow());
        // The recovery is recorded first; then no gap.
        assert_eq!(receipt.seq, u64::try_from(records).unwrap() + 2, "no gap");
        assert_eq!(
            change(&rt, &s, &log, decide("ar-1", "child-welfare", true)),
            ChangeOutcome::Applied
        );
        assert!(rt.block_on(registry.consent("c-1")).unwrap().is_some());
        log.close();
        s.verify();
    }
}

#[test]
fn racing_replicas_decide_a_request_exactly_once() {
    for s in setups() {
        let rt = runtime();
        // Two gateway replicas: two writers, two chains, one store.
        let a = Arc::new(s.log("replica-a", s.store()));
        let b = Arc::new(s.log("replica-b", s.store()));
        let registry = s.registry();
        let n = 20;
        for i in 0..n {
            change(
                &rt,
                &s,
                &a,
                RegistryChange::FileRequest(request(&format!("ar-{i}"), CPR, "cw-1")),
            );
        }
        let outcomes = rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..n {
                for (log, approve) in [(&a, true), (&b, false)] {
                    let log = Arc::clone(log);
                    tasks.push(tokio::spawn(async move {
                        let id = format!("ar-{i}");
                        let (outcome, _) = log
                            .change(
                                event("leader", "child-welfare"),
                                decide(&id, "child-welfare", approve),
                            )
                            .await
                            .unwrap();
                        (id, approve, outcome)
                    }));
                }
            }
            let mut outcomes = Vec::new();
            for t in tasks {
                outcomes.push(t.await.unwrap());
            }
            outcomes
        });
        for i in 0..n {
            let id = format!("ar-{i}");
            let mine: Vec<_> = outcomes.iter().filter(|(r, _, _)| *r == id).collect();
            let applied: Vec<_> = mine
                .iter()
                .filter(|(_, _, o)| *o == ChangeOutcome::Applied)
                .collect();
            assert_eq!(applied.len(), 1, "{id}: {mine:?}");
            assert!(
                mine.iter()
                    .any(|(_, _, o)| *o == ChangeOutcome::AlreadyDone),
                "{id}: {mine:?}"
            );
            // The stored decision is the one that was applied.
            let stored = rt.block_on(registry.request(&id)).unwrap().unwrap();
            let expected = if applied[0].1 {
                RequestState::Approved
            } else {
                RequestState::Denied
            };
            assert_eq!(stored.state, expected, "{id}");
        }
        Arc::try_unwrap(a).unwrap().close();
        Arc::try_unwrap(b).unwrap().close();
        let mut chains: Vec<_> = s.verify().into_iter().map(|c| c.chain).collect();
        chains.sort();
        assert_eq!(chains, ["replica-a", "replica-b"]);
    }
}

#[test]
fn a_registry_can_be_opened_before_the_audit_log() {
    for s in setups() {
        let rt = runtime();
        let registry = s.registry();
        assert!(
            rt.block_on(registry.consents_for(&cpr_of(CPR)))
                .unwrap()
                .is_empty()
        );
        let log = s.log("replica-a", s.store());
        assert_eq!(
            change(
                &rt,
                &s,
                &log,
                RegistryChange::RecordConsent(consent("c-1", CPR, t(1)))
            ),
            ChangeOutcome::Applied
        );
        assert_eq!(
            rt.block_on(registry.consents_for(&cpr_of(CPR)))
                .unwrap()
                .len(),
            1
        );
        // Dropping a registry on a runtime thread must not panic (a blocking PostgreSQL client
        // may not be closed there).
        rt.block_on(async move { drop(registry) });
        log.close();
    }
}

#[test]
fn a_registry_opened_after_changes_sees_them_all() {
    for s in setups() {
        let rt = runtime();
        let log = s.log("replica-a", s.store());
        for (id, cpr) in [("c-1", CPR), ("c-2", CPR), ("c-3", OTHER_CPR)] {
            let c = RegistryChange::RecordConsent(consent(id, cpr, t(1)));
            assert_eq!(change(&rt, &s, &log, c), ChangeOutcome::Applied);
        }
        change(&rt, &s, &log, withdraw("c-2", CPR));
        change(
            &rt,
            &s,
            &log,
            RegistryChange::FileRequest(request("ar-1", CPR, "cw-1")),
        );
        change(&rt, &s, &log, decide("ar-1", "child-welfare", true));
        // A gateway restarting reads the whole registry (SQLite: into its mirror).
        let later = s.registry();
        let consents = rt.block_on(later.consents_for(&cpr_of(CPR))).unwrap();
        assert_eq!(consents.len(), 2);
        assert!(
            consents
                .iter()
                .any(|c| c.id == "c-2" && c.withdrawn_at.is_some())
        );
        assert_eq!(
            rt.block_on(later.consents_for(&cpr_of(OTHER_CPR)))
                .unwrap()
                .len(),
            1
        );
        let grants = rt.block_on(later.grants_for(&cpr_of(CPR), "cw-1")).unwrap();
        assert_eq!(grants.len(), 1);
        assert!(
            rt.block_on(later.grants_for(&cpr_of(CPR), "cw-2"))
                .unwrap()
                .is_empty()
        );
        log.close();
    }
}

#[test]
fn pruning_the_audit_log_keeps_every_consent_and_access_request() {
    for s in setups() {
        let rt = runtime();
        let log = s.log("replica-a", s.store());
        let c = RegistryChange::RecordConsent(consent("c-1", CPR, t(1)));
        assert_eq!(change(&rt, &s, &log, c), ChangeOutcome::Applied);
        change(
            &rt,
            &s,
            &log,
            RegistryChange::FileRequest(request("ar-1", CPR, "cw-1")),
        );
        change(&rt, &s, &log, decide("ar-1", "child-welfare", true));
        // A clean stop signs the head (5), the next start-up (6) is signed at once: with a
        // cutoff a second from now, the prune cuts there.
        log.close();
        let log = s.log("replica-a", s.store());
        let report = rt
            .block_on(log.prune(Utc::now() + Duration::seconds(1), "test"))
            .unwrap()
            .unwrap();
        assert_eq!((report.from_seq, report.through_seq), (1, 6));
        log.close();
        assert_eq!(s.verify()[0].first_seq, 7, "the change records were pruned");
        let later = s.registry();
        assert_eq!(
            rt.block_on(later.consents_for(&cpr_of(CPR))).unwrap().len(),
            1
        );
        assert_eq!(
            rt.block_on(later.grants_for(&cpr_of(CPR), "cw-1"))
                .unwrap()
                .len(),
            1
        );
    }
}

#[test]
fn sqlite_a_change_is_answered_only_after_every_record_committed_before_it() {
    let s = Setup {
        store: common::sqlite_store("registry"),
        registries: Default::default(),
    };
    let rt = runtime();
    let store = FaultInjecting::new(s.store());
    let (commits, failing_syncs, late_error) = (
        Arc::clone(&store.commits),
        Arc::clone(&store.failing_syncs),
        Arc::clone(&store.failing_sync_hold),
    );
    let log = Arc::new(s.log("replica-a", Box::new(store)));
    // A lookup's record is committed; its fsync will fail, late.
    let late = late_error.lock().unwrap();
    failing_syncs.store(1, Ordering::SeqCst);
    let before = commits.load(Ordering::SeqCst);
    let lookup = spawn_append(&rt, &log, event("cw-1", "jobcenter"));
    wait_until(
        "the lookup's record is committed and its fsync began",
        || commits.load(Ordering::SeqCst) > before && failing_syncs.load(Ordering::SeqCst) == 0,
    );
    // A change made durable inline comes after it in the log, so it waits for its fsync…
    let recorded = rt.spawn({
        let log = Arc::clone(&log);
        async move {
            log.change(
                event("cw-1", "jobcenter"),
                RegistryChange::RecordConsent(consent("c-1", CPR, t(1))),
            )
            .await
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        !recorded.is_finished(),
        "a change was answered while a record before it was still being fsync'ed"
    );
    // …and after that fsync failed, it is applied only once the store has recovered.
    drop(late);
    assert!(rt.block_on(lookup).unwrap().is_err());
    let (outcome, _) = rt.block_on(recorded).unwrap().unwrap();
    assert_eq!(outcome, ChangeOutcome::Applied);
    drop(rt);
    Arc::try_unwrap(log).unwrap().close();
    assert_eq!(s.verify().len(), 1);
}

/// Citizens no other test names, so a scan of a shared PostgreSQL server's files sees only
/// this test's writes.
const AT_REST_CPRS: [&str; 2] = ["2412881357", "1703770246"];

/// The files of a store: the SQLite file's directory (the database, its -wal and -shm), or the
/// PostgreSQL database's own files and the server's WAL, after a checkpoint has written every
/// page out.
fn files_of(s: &TestStore) -> Vec<std::path::PathBuf> {
    let listed = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect()
    };
    match &s.backend {
        common::Backend::Sqlite(db) => listed(db.parent().unwrap()),
        common::Backend::Postgres(url) => {
            let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
            client.batch_execute("CHECKPOINT").unwrap();
            let row = client
                .query_one(
                    "SELECT current_setting('data_directory'),
                            (SELECT oid FROM pg_database WHERE datname = current_database())::text",
                    &[],
                )
                .unwrap();
            let data = std::path::PathBuf::from(row.get::<_, String>(0));
            let mut files = listed(&data.join("base").join(row.get::<_, String>(1)));
            files.extend(listed(&data.join("pg_wal")));
            files
        }
    }
}

#[test]
fn no_cpr_is_in_clear_in_either_stores_files() {
    let rt = runtime();
    for s in setups() {
        let registry = s.registry();
        let log = s.log("replica-a", s.store());
        let [looked_up, consenting] = AT_REST_CPRS;
        let mut lookup = event("cw-jobcenter-1", "jobcenter");
        lookup.cpr = Some(cpr_of(looked_up));
        lookup.break_glass_reason = Some(format!("about {looked_up}, urgent"));
        rt.block_on(log.append(lookup)).unwrap();
        let mut given = consent("c-rest", consenting, t(2));
        given.document_ref = format!("signed by {consenting}");
        change(&rt, &s, &log, RegistryChange::RecordConsent(given));
        change(&rt, &s, &log, withdraw("c-rest", consenting));
        let mut filed = request("r-rest", looked_up, "cw-jobcenter-1");
        filed.justification = format!("{}-{} needs it", &looked_up[..6], &looked_up[6..]);
        change(&rt, &s, &log, RegistryChange::FileRequest(filed));
        change(&rt, &s, &log, decide("r-rest", "child-welfare", true));
        log.close();

        // Nothing in clear in the store's files.
        let files = files_of(&s.store);
        assert!(!files.is_empty());
        for cpr in AT_REST_CPRS {
            let dashed = format!("{}-{}", &cpr[..6], &cpr[6..]);
            for file in &files {
                let bytes = std::fs::read(file).unwrap();
                for form in [cpr, dashed.as_str()] {
                    assert!(
                        !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                        "a CPR in clear in {}",
                        file.display()
                    );
                }
            }
        }
        // Everything reads back whole, by CPR.
        let consents = rt
            .block_on(registry.consents_for(&cpr_of(consenting)))
            .unwrap();
        assert_eq!(consents[0].document_ref, format!("signed by {consenting}"));
        assert!(consents[0].withdrawn_at.is_some());
        let grants = rt
            .block_on(registry.grants_for(&cpr_of(looked_up), "cw-jobcenter-1"))
            .unwrap();
        assert!(grants[0].justification.ends_with("needs it"));
        assert_eq!(
            grants[0].decision_reason.as_deref(),
            Some("necessity assessed")
        );
        let found = rt
            .block_on(registry.search(
                search::AuditQuery {
                    cpr: Some(cpr_of(looked_up)),
                    ..search::AuditQuery::default()
                },
                100,
            ))
            .unwrap();
        assert_eq!(found.len(), 2, "the lookup and the request");
        s.verify();
    }
}

#[test]
fn a_rotated_data_key_seals_from_then_on_and_the_old_one_still_opens() {
    let rt = runtime();
    for mut s in setups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-data.keys");
        AtRestKeys::create(&path).unwrap();
        s.store.keys = Arc::new(AtRestKeys::load(&path).unwrap());
        let log = s.log("replica-a", s.store());
        change(
            &rt,
            &s,
            &log,
            RegistryChange::RecordConsent(consent("c-1", CPR, t(2))),
        );
        log.close();

        // Rotated: a new data key seals; the index key and the old data key stay.
        assert_eq!(AtRestKeys::add_data_key(&path).unwrap(), "2");
        s.store.keys = Arc::new(AtRestKeys::load(&path).unwrap());
        assert_eq!(s.store.keys.sealing_key_id(), "2");
        let log = s.log("replica-a", s.store());
        change(
            &rt,
            &s,
            &log,
            RegistryChange::RecordConsent(consent("c-2", CPR, t(3))),
        );
        log.close();
        let before = s.record_count("replica-a");
        s.verify();
        let registry = s.registry();
        let ids: Vec<String> = rt
            .block_on(registry.consents_for(&cpr_of(CPR)))
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["c-2", "c-1"]);

        // Without the old data key, what it sealed no longer opens, and verification says
        // where; what the new key sealed still does.
        let text = std::fs::read_to_string(&path).unwrap();
        let without_old: String = text
            .lines()
            .filter(|l| !l.starts_with("data 1 "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, without_old).unwrap();
        s.store.keys = Arc::new(AtRestKeys::load(&path).unwrap());
        let key = load_verifying_key(&public_key_path(&s.store.key)).unwrap();
        let broken = match verify_store(&mut *s.store(), &key) {
            Err(verify::VerifyError::Broken(b)) => b,
            other => panic!("expected unreadable records, got {other:?}"),
        };
        assert_eq!(broken.first.seq, 1);
        assert_eq!(s.record_count("replica-a"), before);
        let newest = s.record("replica-a", u64::try_from(before).unwrap());
        assert_eq!(newest.action, Action::AuditMaintenance);
    }
}

#[test]
fn a_store_refuses_another_index_key_and_a_store_written_before_sealing() {
    for s in setups() {
        let log = s.log("replica-a", s.store());
        log.close();
        let other = Arc::new(AtRestKeys::generate().unwrap());
        let refused = match &s.store.backend {
            common::Backend::Sqlite(db) => {
                sqlite::SqliteStore::open(db, Durability::Full, other).map(drop)
            }
            common::Backend::Postgres(url) => {
                postgres::PostgresStore::connect(url, other).map(drop)
            }
        };
        let err = refused.unwrap_err().to_string();
        assert!(err.contains("index key is not the one"), "{err}");

        // A store holding records but no index key check was written in clear: refused.
        s.store.sql("DELETE FROM audit_at_rest");
        let refused = match &s.store.backend {
            common::Backend::Sqlite(db) => {
                sqlite::SqliteStore::open(db, Durability::Full, s.store.keys()).map(drop)
            }
            common::Backend::Postgres(url) => {
                postgres::PostgresStore::connect(url, s.store.keys()).map(drop)
            }
        };
        let err = refused.unwrap_err().to_string();
        assert!(
            err.contains("written before CPR numbers were sealed"),
            "{err}"
        );
    }
}
