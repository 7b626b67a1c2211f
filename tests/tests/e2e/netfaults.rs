//! Real network faults between the gateway and a source: the integration department's reference
//! source listens in a network namespace of the test's own, reached over a veth pair on which the
//! kernel adds latency, loss or a partition (`samblik_tests::netns`; docs/network-faults.md).
//! Whatever the path does, the lookup is answered within the caller's deadline, the sick source
//! is marked, and the departments on a healthy path are served.
//!
//! Where no namespace can be made (not root, no iproute2 or iptables) each test prints a SKIP
//! line and passes, unless `SAMBLIK_REQUIRE_NETNS=1` (set by `scripts/test`) fails it instead.

use samblik_gateway::config::SourceConfig;
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{LookupResponse, Purpose, SourceResult, SourceStatus};
use samblik_synth::Department;
use samblik_tests::netns::{NetPath, path_or_skip};
use samblik_tests::*;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The source behind the faulty path.
const SICK: Department = Department::Integration;
/// What every lookup here gives the gateway (`grpc-timeout`).
const CALLER_DEADLINE: Duration = Duration::from_secs(3);

/// A gateway over every reference source, the integration one behind a [`NetPath`].
struct Setup {
    // Dropped in this order: the gateway and the servers stop before the namespace goes.
    gateway: RunningGateway,
    client: LookupServiceClient<Channel>,
    _sources: Vec<RunningSource>,
    path: NetPath,
}

/// Starts the setup for `test` with the sick source's config adjusted by `adjust`, or `None`
/// where no namespace can be made (see the module's header).
async fn setup(test: &str, adjust: impl FnOnce(&mut SourceConfig)) -> Option<Setup> {
    let path = path_or_skip(test)?;
    let mut sources = Vec::new();
    let mut specs = Vec::new();
    for department in Department::ALL {
        let running = if department == SICK {
            start_source_on(reference(department), path.listen().unwrap())
        } else {
            start_source(reference(department)).await
        };
        specs.push(SourceSpec::at(department.id(), running.addr));
        sources.push(running);
    }
    assert_eq!(
        sources[2].addr.ip(),
        path.addr,
        "the sick source is behind the path"
    );
    let mut config = gateway_config(&specs, 3_000);
    let sick = config
        .sources
        .iter_mut()
        .find(|s| s.id == SICK.id())
        .unwrap();
    adjust(sick);
    let gateway = TestGateway::from_config(config).start().await;
    let client = gateway.client().await;
    Some(Setup {
        gateway,
        client,
        _sources: sources,
        path,
    })
}

impl Setup {
    /// One lookup of a citizen with cases in every department; the answer (which must come, and
    /// within the caller's deadline) and how long it took. The healthy departments are served.
    async fn lookup(&mut self) -> (SourceResult, Duration) {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            CALLER_DEADLINE + Duration::from_secs(5),
            self.client.lookup(request(
                all_department_citizen(),
                Purpose::PrepareMeeting,
                Some(&token(Department::Jobcenter)),
                Some(CALLER_DEADLINE),
            )),
        )
        .await
        .expect("the gateway answers")
        .expect("the lookup is answered, not failed")
        .into_inner();
        let elapsed = started.elapsed();
        assert!(
            elapsed < CALLER_DEADLINE,
            "answered after {elapsed:?}, past the caller's deadline"
        );
        (sick_result(&answer), elapsed)
    }
}

/// The sick source's result; every other department was served.
fn sick_result(answer: &LookupResponse) -> SourceResult {
    for department in Department::ALL.into_iter().filter(|d| *d != SICK) {
        let result = answer
            .sources
            .iter()
            .find(|s| s.source_id == department.id())
            .unwrap();
        assert_eq!(result.status(), SourceStatus::Ok, "{}", department.id());
        assert!(!result.cases.is_empty(), "{}", department.id());
    }
    answer
        .sources
        .iter()
        .find(|s| s.source_id == SICK.id())
        .unwrap()
        .clone()
}

/// A source over the path with no fault on it is served like any other: the control for the
/// tests below, and proof that the source's traffic goes through the veth pair.
#[tokio::test]
async fn a_source_across_a_healthy_network_path_is_served() {
    let Some(mut s) = setup("a_source_across_a_healthy_network_path_is_served", |_| {}).await
    else {
        return;
    };
    let before = s.path.packets();
    let (sick, elapsed) = s.lookup().await;
    assert_eq!(sick.status(), SourceStatus::Ok, "{sick:?}");
    assert!(!sick.cases.is_empty());
    assert!(
        s.path.packets() > before,
        "the lookup did not cross the veth pair"
    );
    eprintln!("healthy path: answered in {elapsed:?}");
}

/// Latency the source's timeout can absorb slows its answer; latency beyond it marks the source
/// TIMEOUT at its timeout, long before the caller's deadline.
#[tokio::test]
async fn latency_beyond_the_source_timeout_marks_it_timed_out_within_the_deadline() {
    const TIMEOUT: Duration = Duration::from_millis(1_000);
    let Some(mut s) = setup(
        "latency_beyond_the_source_timeout_marks_it_timed_out_within_the_deadline",
        |c| c.timeout_ms = 1_000,
    )
    .await
    else {
        return;
    };
    // Connected first, so what follows measures the path, not the connection's set-up.
    assert_eq!(s.lookup().await.0.status(), SourceStatus::Ok);

    s.path.delay(Duration::from_millis(150)).unwrap();
    let (sick, elapsed) = s.lookup().await;
    assert_eq!(sick.status(), SourceStatus::Ok, "{sick:?}");
    eprintln!("latency 150 ms each way: answered in {elapsed:?}, the source served");
    assert!(
        elapsed >= Duration::from_millis(300),
        "a round trip over the delayed path took only {elapsed:?}: the delay is not on the path"
    );

    s.path.delay(Duration::from_millis(1_500)).unwrap();
    let (sick, elapsed) = s.lookup().await;
    assert_eq!(sick.status(), SourceStatus::Timeout, "{sick:?}");
    assert!(sick.cases.is_empty() && !sick.detail.is_empty());
    assert!(
        elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_millis(700),
        "the source's timeout is {TIMEOUT:?}, the lookup took {elapsed:?}"
    );
    eprintln!("latency 1.5 s each way: answered in {elapsed:?}, the source marked TIMEOUT");
}

/// Over a path that loses 30 % of the packets each way, every lookup is answered within the
/// caller's deadline, the source either answering (TCP resent what was lost) or marked.
#[tokio::test]
async fn lossy_path_answers_within_the_deadline() {
    let Some(mut s) = setup("lossy_path_answers_within_the_deadline", |c| {
        c.timeout_ms = 800;
    })
    .await
    else {
        return;
    };
    assert_eq!(s.lookup().await.0.status(), SourceStatus::Ok);
    s.path.lose(30).unwrap();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..6 {
        let (sick, elapsed) = s.lookup().await;
        let status = sick.status();
        assert!(
            matches!(
                status,
                SourceStatus::Ok | SourceStatus::Timeout | SourceStatus::Unavailable
            ),
            "{sick:?}"
        );
        assert!(
            elapsed < Duration::from_millis(800 + 700),
            "the source's timeout is 800 ms, the lookup took {elapsed:?}"
        );
        *seen.entry(status.as_str_name()).or_default() += 1;
    }
    let dropped = s.path.dropped().unwrap();
    eprintln!("30 % loss each way: {dropped} packets dropped; the source was {seen:?}");
    assert!(dropped > 0, "the loss rules dropped nothing");
}

/// A partition (every packet silently dropped): the lookups in flight time out at the source's
/// timeout; after `breaker_failures` of them the circuit opens and the source is answered at
/// once as UNAVAILABLE, visibly in health; once the path heals, a probe finds it again and it is
/// served as before.
#[tokio::test]
async fn partition_opens_the_circuit_and_healing_closes_it() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    const TIMEOUT: Duration = Duration::from_millis(500);
    let Some(mut s) = setup("partition_opens_the_circuit_and_healing_closes_it", |c| {
        c.timeout_ms = 500;
        c.breaker_failures = 2;
        c.breaker_cool_down_ms = 1_000;
    })
    .await
    else {
        return;
    };
    let mut health = HealthClient::new(s.gateway.channel().await);
    let name = samblik_gateway::server::source_health_name(SICK.id());
    let mut source_health = async || {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    assert_eq!(s.lookup().await.0.status(), SourceStatus::Ok);
    assert_eq!(source_health().await, ServingStatus::Serving as i32);

    s.path.partition().unwrap();
    for _ in 0..2 {
        let (sick, elapsed) = s.lookup().await;
        assert_eq!(sick.status(), SourceStatus::Timeout, "{sick:?}");
        assert!(
            elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_millis(700),
            "the source's timeout is {TIMEOUT:?}, the lookup took {elapsed:?}"
        );
    }
    assert!(
        s.path.dropped().unwrap() > 0,
        "the partition dropped nothing"
    );
    // The circuit is open: the source is not waited for any more.
    let (sick, elapsed) = s.lookup().await;
    assert_eq!(sick.status(), SourceStatus::Unavailable, "{sick:?}");
    assert!(sick.detail.contains("not asked again"), "{sick:?}");
    assert!(
        elapsed < Duration::from_millis(250),
        "an open circuit answered after {elapsed:?}"
    );
    eprintln!("partition: with the circuit open, answered in {elapsed:?}");
    assert_eq!(source_health().await, ServingStatus::NotServing as i32);

    s.path.heal().unwrap();
    let healed = Instant::now();
    let mut statuses = Vec::new();
    loop {
        let (sick, _) = s.lookup().await;
        statuses.push(sick.status().as_str_name());
        if sick.status() == SourceStatus::Ok {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "the source never came back after the partition healed: {statuses:?}"
        );
        // The circuit answers at once while open; give the cool-down time to pass.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "partition healed: served again after {:?} ({statuses:?})",
        healed.elapsed()
    );
    assert_eq!(source_health().await, ServingStatus::Serving as i32);
    let (sick, _) = s.lookup().await;
    assert_eq!(sick.status(), SourceStatus::Ok);
}
