//! Transport security end to end: TLS on the gateway's port (client certificates optional or
//! required), mutual TLS between gateway and sources, certificates reloaded without a restart;
//! the calling system named by its client certificate in every audit record and held to its
//! configured sources and purposes; expired, revoked and foreign client certificates refused at
//! the handshake. Certificates come from the demo's PKI generator, as `samblik demo` makes them,
//! and from the tests' own CA for the client certificates the demo never makes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik::pki::{CertPair, DEMO_FAGSYSTEM, DemoPki, demo_server_tls, demo_source_tls};
use samblik_adapters::tls::{ClientAuth, ReloadingServerConfig, TlsFiles, sha256_fingerprint};
use samblik_gateway::auth::PANEL_SYSTEM;
use samblik_gateway::config::{Config, SystemConfig, TlsConfig};
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::audit_service_client::AuditServiceClient;
use samblik_proto::v1::consent_service_client::ConsentServiceClient;
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{
    ListConsentsRequest, LookupResponse, Purpose, ReviewQueueRequest, SourceStatus,
};
use samblik_synth::Department;
use samblik_tests::idp::TestPki;
use samblik_tests::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn pki(dir: &tempfile::TempDir) -> DemoPki {
    let ids: Vec<&str> = Department::ALL.iter().map(|d| d.id()).collect();
    DemoPki::create(dir.path(), &ids).unwrap()
}

/// A source's server TLS: its certificate from `pki`, the gateway's client certificate required
/// (checked against `client_ca`).
fn source_tls(pki: &DemoPki, id: &str, client_ca: &Path) -> Arc<ReloadingServerConfig> {
    let pair = pki.source(id);
    ReloadingServerConfig::server(
        TlsFiles {
            cert_file: pair.cert,
            key_file: pair.key,
            ca_file: Some(client_ca.to_owned()),
        },
        ClientAuth::Required,
    )
    .unwrap()
}

/// The three reference sources over mutual TLS (certificates from `source_pki`, trusting the
/// gateway's client certificates from `pki`), and a gateway over them with `pki`'s certificates.
struct Secure {
    _dir: tempfile::TempDir,
    pki: DemoPki,
    gateway: RunningGateway,
    _sources: Vec<RunningSource>,
    /// Every call that reached each source, by source id.
    seen: HashMap<&'static str, Arc<Mutex<Vec<CallerContext>>>>,
}

impl Secure {
    /// Looks up for `purpose` with `client`, which must be refused with PERMISSION_DENIED
    /// before any source is asked; the request's id.
    async fn denied_unasked(
        &self,
        client: &mut LookupServiceClient<Channel>,
        purpose: Purpose,
    ) -> String {
        let refused = client
            .lookup(lookup_request(purpose, &[], None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let id = request_id_of(refused.metadata());
        assert!(Department::ALL.iter().all(|d| !self.asked(d.id(), &id)));
        id
    }

    /// Whether request `request_id` asked source `id` anything.
    fn asked(&self, id: &str, request_id: &str) -> bool {
        self.seen[id]
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.request_id == request_id)
    }
}

async fn start_secure(
    client_certs: ClientAuth,
    configure: impl FnOnce(&mut Config, &DemoPki),
    source_pki: Option<&DemoPki>,
) -> Secure {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&dir);
    let mut sources = Vec::new();
    let mut specs = Vec::new();
    let mut seen = HashMap::new();
    for department in Department::ALL {
        let tls = source_tls(source_pki.unwrap_or(&pki), department.id(), &pki.ca);
        let calls = Arc::new(Mutex::new(Vec::new()));
        seen.insert(department.id(), Arc::clone(&calls));
        let recording = Arc::new(Recording {
            inner: reference(department),
            seen: calls,
        });
        let running = start_source_tls(recording, tls).await;
        let mut spec = SourceSpec::at(department.id(), running.addr);
        spec.endpoint = format!("https://{}", running.addr);
        specs.push(spec);
        sources.push(running);
    }
    let mut config = gateway_config(&specs, 3_000);
    for source in &mut config.sources {
        source.tls = Some(demo_source_tls(&pki));
    }
    let mut tls = demo_server_tls(&pki);
    tls.client_certs = client_certs;
    config.server.tls = Some(tls);
    configure(&mut config, &pki);
    Secure {
        gateway: TestGateway::from_config(config).start().await,
        pki,
        _dir: dir,
        _sources: sources,
        seen,
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

async fn channel(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<&CertPair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(read(&pair.cert), read(&pair.key)));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
}

async fn connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<&CertPair>,
) -> Result<LookupServiceClient<Channel>, tonic::transport::Error> {
    Ok(LookupServiceClient::new(channel(addr, ca, identity).await?))
}

async fn lookup(
    client: &mut LookupServiceClient<Channel>,
) -> Result<LookupResponse, tonic::Status> {
    client
        .lookup(request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            Some(&token(Department::Jobcenter)),
            None,
        ))
        .await
        .map(tonic::Response::into_inner)
}

fn statuses(response: &LookupResponse) -> Vec<(String, SourceStatus)> {
    response
        .sources
        .iter()
        .map(|s| (s.source_id.clone(), s.status()))
        .collect()
}

#[tokio::test]
async fn the_gateway_serves_tls_and_reaches_every_source_over_mutual_tls() {
    let s = start_secure(ClientAuth::Optional, |_, _| {}, None).await;
    // A plain TLS client (no certificate) that trusts the CA.
    let mut client = connect(s.gateway.addr, &s.pki.ca, None).await.unwrap();
    let answer = lookup(&mut client).await.unwrap();
    assert_eq!(
        statuses(&answer),
        Department::ALL
            .iter()
            .map(|d| (d.id().to_owned(), SourceStatus::Ok))
            .collect::<Vec<_>>()
    );
    // The sample fagsystem, with its client certificate.
    let mut fagsystem = connect(s.gateway.addr, &s.pki.ca, Some(&s.pki.fagsystem))
        .await
        .unwrap();
    lookup(&mut fagsystem).await.unwrap();

    // A plaintext client gets nothing.
    let mut plain = s.gateway.client().await;
    assert!(lookup(&mut plain).await.is_err());
    // Nor does a client that does not trust the gateway's CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other = pki(&other_dir);
    let refused = match connect(s.gateway.addr, &other.ca, None).await {
        Ok(mut c) => lookup(&mut c).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a client accepted a certificate from a CA it does not trust"
    );
}

/// Whether a TLS client with `identity` gets an answer from the gateway.
async fn answered(s: &Secure, identity: Option<&CertPair>) -> bool {
    match connect(s.gateway.addr, &s.pki.ca, identity).await {
        Ok(mut client) => lookup(&mut client).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn required_client_certificates_refuse_strangers_at_the_handshake() {
    let s = start_secure(ClientAuth::Required, |_, _| {}, None).await;
    assert!(answered(&s, Some(&s.pki.fagsystem)).await);
    assert!(
        !answered(&s, None).await,
        "no client certificate, yet answered"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other = pki(&other_dir);
    assert!(
        !answered(&s, Some(&other.fagsystem)).await,
        "a client certificate from an unknown CA was accepted"
    );
    // A server certificate is not a client certificate (extended key usage).
    assert!(
        !answered(&s, Some(&s.pki.gateway)).await,
        "a server-only certificate was accepted as a client certificate"
    );
    // Optional: strangers without a certificate are let in, strangers with a bad one are not.
    let optional = start_secure(ClientAuth::Optional, |_, _| {}, None).await;
    assert!(answered(&optional, None).await);
    assert!(!answered(&optional, Some(&other.fagsystem)).await);
}

#[tokio::test]
async fn a_source_with_a_wrong_certificate_is_unavailable_and_nothing_from_it_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let impostor = pki(&dir);
    // Every source presents a certificate from a CA the gateway does not trust.
    let s = start_secure(ClientAuth::Optional, |_, _| {}, Some(&impostor)).await;
    let mut client = connect(s.gateway.addr, &s.pki.ca, None).await.unwrap();
    // The caller's own department cannot be reached either, so the relation cannot be
    // established: nothing is disclosed, and the reason is not the certificate.
    let refused = lookup(&mut client).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(!refused.message().contains("certificate"));
    // Breaking the glass, each source is reported unavailable.
    let mut req = request(
        all_department_citizen(),
        Purpose::PrepareMeeting,
        Some(&token(Department::Jobcenter)),
        None,
    );
    req.get_mut().break_glass_reason = BREAK_GLASS_REASON.into();
    let answer = client.lookup(req).await.unwrap().into_inner();
    assert_eq!(answer.sources.len(), Department::ALL.len());
    for source in &answer.sources {
        assert_eq!(source.status(), SourceStatus::Unavailable, "{source:?}");
        assert!(source.cases.is_empty());
        // The reason stays in the log.
        assert!(
            !source.detail.contains("certificate"),
            "{:?}",
            source.detail
        );
    }
}

#[tokio::test]
async fn sources_refuse_callers_without_the_gateways_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&dir);
    let source = start_source_tls(
        reference(Department::Jobcenter),
        source_tls(&pki, "jobcenter", &pki.ca),
    )
    .await;
    let connect = |identity: Option<CertPair>| {
        let ca = pki.ca.clone();
        async move {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca)));
            if let Some(pair) = identity {
                tls = tls.identity(Identity::from_pem(read(&pair.cert), read(&pair.key)));
            }
            let channel = Endpoint::from_shared(format!("https://{}", source.addr))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            anyhow::Ok(())
        }
    };
    assert!(connect(Some(pki.gateway_client.clone())).await.is_ok());
    assert!(
        connect(None).await.is_err(),
        "a source answered a caller without a certificate"
    );
    assert!(
        connect(Some(pki.fagsystem.clone())).await.is_ok(),
        "control: any certificate of the CA is let in (the CA is the gateway's)"
    );
}

#[tokio::test]
async fn the_gateway_certificate_is_reloaded_without_a_restart() {
    let s = start_secure(
        ClientAuth::Optional,
        |config, _| {
            if let Some(TlsConfig { reload_ms, .. }) = config.server.tls.as_mut() {
                *reload_ms = 100;
            }
        },
        None,
    )
    .await;
    assert!(answered(&s, None).await);

    // Operations replaces the certificate and key with ones from a new CA.
    let new_dir = tempfile::tempdir().unwrap();
    let new = pki(&new_dir);
    // Key first, then certificate: in between, the pair does not match and must not be used.
    std::fs::copy(&new.gateway.key, &s.pki.gateway.key).unwrap();
    std::fs::copy(&new.gateway.cert, &s.pki.gateway.cert).unwrap();

    let trusts_new = |ca: std::path::PathBuf| {
        let addr = s.gateway.addr;
        async move {
            match connect(addr, &ca, None).await {
                Ok(mut c) => lookup(&mut c).await.is_ok(),
                Err(_) => false,
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut switched = false;
    while Instant::now() < deadline && !switched {
        switched = trusts_new(new.ca.clone()).await;
        if !switched {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(switched, "the new certificate was not picked up");
    assert!(
        !trusts_new(s.pki.ca.clone()).await,
        "the old certificate is still served"
    );
}

/// The system recorded in each audit record of `request_id` (at least one record).
fn recorded_systems(s: &Secure, request_id: &str) -> Vec<Option<String>> {
    let records = s.gateway.audit_records_of(request_id);
    assert!(!records.is_empty(), "no audit record for {request_id}");
    records.into_iter().map(|r| r.actor.system).collect()
}

/// A lookup by a jobcenter caseworker of the three-department citizen, for `purpose`, limited to
/// `sources` when given, with `x-system` metadata when given.
fn lookup_request(
    purpose: Purpose,
    sources: &[&str],
    x_system: Option<&str>,
) -> tonic::Request<samblik_proto::v1::LookupRequest> {
    let mut req = request(
        all_department_citizen(),
        purpose,
        Some(&token(Department::Jobcenter)),
        None,
    );
    req.get_mut().sources = sources.iter().map(|s| (*s).to_owned()).collect();
    if let Some(name) = x_system {
        req.metadata_mut().insert("x-system", name.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn every_audit_record_names_the_system_of_the_client_certificate_and_never_a_header() {
    let s = start_secure(ClientAuth::Optional, |_, _| {}, None).await;
    let mut fagsystem = connect(s.gateway.addr, &s.pki.ca, Some(&s.pki.fagsystem))
        .await
        .unwrap();
    let mut plain = connect(s.gateway.addr, &s.pki.ca, None).await.unwrap();
    let system = Some(DEMO_FAGSYSTEM.to_owned());

    for rpc in ["Lookup", "LookupStream"] {
        for (client, expected) in [(&mut fagsystem, &system), (&mut plain, &None)] {
            // A header naming another system changes nothing.
            for x_system in [None, Some("kmd-momentum")] {
                let req = lookup_request(Purpose::PrepareMeeting, &[], x_system);
                let request_id = if rpc == "Lookup" {
                    client.lookup(req).await.unwrap().into_inner().request_id
                } else {
                    let response = client.lookup_stream(req).await.unwrap();
                    let id = request_id_of(response.metadata());
                    let mut stream = response.into_inner();
                    while stream.message().await.unwrap().is_some() {}
                    id
                };
                let recorded = recorded_systems(&s, &request_id);
                assert!(
                    recorded.iter().all(|r| r == expected),
                    "{rpc} with x-system {x_system:?}: {recorded:?}"
                );
            }
        }
    }

    // A refusal names the system too, and so do the other services.
    let refused = fagsystem
        .lookup(request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            None,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let id = request_id_of(refused.metadata());
    assert_eq!(recorded_systems(&s, &id), std::slice::from_ref(&system));
    let mut consents = ConsentServiceClient::new(
        channel(s.gateway.addr, &s.pki.ca, Some(&s.pki.fagsystem))
            .await
            .unwrap(),
    );
    let listed = consents
        .list_consents(authed(
            ListConsentsRequest {
                cpr: all_department_citizen().to_owned(),
            },
            &token(Department::Jobcenter),
        ))
        .await
        .unwrap();
    let id = request_id_of(listed.metadata());
    assert_eq!(recorded_systems(&s, &id), [system]);
}

#[tokio::test]
async fn a_restricted_system_asks_only_its_sources_and_only_for_its_purposes() {
    let s = start_secure(
        ClientAuth::Optional,
        |config, _| {
            let tls = config.server.tls.as_mut().unwrap();
            tls.require_listed_systems = true;
            tls.systems = vec![SystemConfig {
                name: DEMO_FAGSYSTEM.to_owned(),
                sources: Some(vec!["jobcenter".into(), "integration".into()]),
                purposes: Some(vec!["prepare-meeting".into()]),
            }];
        },
        None,
    )
    .await;
    let mut fagsystem = connect(s.gateway.addr, &s.pki.ca, Some(&s.pki.fagsystem))
        .await
        .unwrap();

    // Every department is in the answer; the one the system may not ask is DENIED, unasked.
    let answer = fagsystem
        .lookup(lookup_request(Purpose::PrepareMeeting, &[], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses(&answer),
        [
            ("child-welfare".to_owned(), SourceStatus::Denied),
            ("jobcenter".to_owned(), SourceStatus::Ok),
            ("integration".to_owned(), SourceStatus::Ok),
            ("adult-social".to_owned(), SourceStatus::Denied),
        ]
    );
    assert!(answer.sources[0].cases.is_empty());
    assert!(!answer.sources[2].cases.is_empty());
    assert!(!s.asked("child-welfare", &answer.request_id));
    assert!(s.asked("integration", &answer.request_id));
    let record = &s.gateway.audit_records_of(&answer.request_id)[0];
    assert_eq!(record.actor.system.as_deref(), Some(DEMO_FAGSYSTEM));
    assert_eq!(record.sources[0].status, "denied");
    assert!(record.sources[0].cases.is_empty());

    // Naming the excluded source does not get it asked either.
    let answer = fagsystem
        .lookup(lookup_request(
            Purpose::PrepareMeeting,
            &["child-welfare"],
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses(&answer),
        [("child-welfare".to_owned(), SourceStatus::Denied)]
    );
    assert!(!s.asked("child-welfare", &answer.request_id));

    // Another purpose is refused before any source is asked, and audited.
    let id = s.denied_unasked(&mut fagsystem, Purpose::FollowUp).await;
    let record = &s.gateway.audit_records_of(&id)[0];
    assert_eq!(record.outcome, samblik_audit::Outcome::Denied);
    assert_eq!(record.actor.system.as_deref(), Some(DEMO_FAGSYSTEM));
    assert_eq!(record.purpose.as_deref(), Some("follow-up"));

    // A certificate of the CA whose name is not listed is refused (only listed systems here),
    // and recorded with its name.
    let mut unlisted = connect(s.gateway.addr, &s.pki.ca, Some(&s.pki.gateway_client))
        .await
        .unwrap();
    let id = s
        .denied_unasked(&mut unlisted, Purpose::PrepareMeeting)
        .await;
    assert_eq!(
        recorded_systems(&s, &id),
        [Some("samblik-gateway".to_owned())]
    );

    // A client without a certificate is no system at all: the caseworker's token decides.
    let mut plain = connect(s.gateway.addr, &s.pki.ca, None).await.unwrap();
    let answer = plain
        .lookup(lookup_request(Purpose::FollowUp, &[], Some(DEMO_FAGSYSTEM)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer
            .sources
            .iter()
            .all(|r| r.status() == SourceStatus::Ok)
    );
    assert_eq!(recorded_systems(&s, &answer.request_id), [None]);
}

#[tokio::test]
async fn refusals_of_a_system_or_its_purpose_are_not_refusals_for_lack_of_relation() {
    let s = start_secure(
        ClientAuth::Optional,
        |config, _| {
            let tls = config.server.tls.as_mut().unwrap();
            tls.require_listed_systems = true;
            tls.systems = vec![SystemConfig {
                name: DEMO_FAGSYSTEM.to_owned(),
                sources: None,
                purposes: Some(vec!["prepare-meeting".into()]),
            }];
            config.audit.review.max_denied_per_day = 1;
        },
        None,
    )
    .await;
    let jobcenter = token(Department::Jobcenter);
    let strangers = citizens_without_cases();
    let refuse = async |client: &mut LookupServiceClient<Channel>, cpr: &str, purpose| {
        let refused = client
            .lookup(request(cpr, purpose, Some(&jobcenter), None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    };
    // Three citizens the caseworker has no case for, each refused — but for a purpose the
    // system may not use, or for a system that is not admitted, never for lack of relation.
    let mut fagsystem = connect(s.gateway.addr, &s.pki.ca, Some(&s.pki.fagsystem))
        .await
        .unwrap();
    refuse(&mut fagsystem, strangers[0], Purpose::FollowUp).await;
    refuse(&mut fagsystem, strangers[1], Purpose::FollowUp).await;
    let mut unlisted = connect(s.gateway.addr, &s.pki.ca, Some(&s.pki.gateway_client))
        .await
        .unwrap();
    refuse(&mut unlisted, strangers[2], Purpose::PrepareMeeting).await;
    let denied = s
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.outcome == samblik_audit::Outcome::Denied)
        .count();
    assert_eq!(denied, 3);

    let auditor = staff_token("aud-test", "auditor");
    let mut audit =
        AuditServiceClient::new(channel(s.gateway.addr, &s.pki.ca, None).await.unwrap());
    let items = audit
        .review_queue(authed(ReviewQueueRequest::default(), &auditor))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(items.iter().all(|i| i.kind != "many-denied"), "{items:#?}");
}

#[tokio::test]
async fn a_client_certificate_cannot_pass_for_the_panel() {
    let ca = TestPki::new();
    let (valid, _) = ca.client_cert("valid", "kmd-momentum", |_| {});
    let (impostor, _) = ca.client_cert("impostor", PANEL_SYSTEM, |_| {});
    let s = start_secure(
        ClientAuth::Optional,
        |config, _| {
            config.server.tls.as_mut().unwrap().client_ca_file = Some(ca.ca_file.clone());
        },
        None,
    )
    .await;
    assert!(
        answered(&s, Some(&valid)).await,
        "control: an unlisted system may call"
    );
    let mut client = connect(s.gateway.addr, &s.pki.ca, Some(&impostor))
        .await
        .unwrap();
    let id = s.denied_unasked(&mut client, Purpose::PrepareMeeting).await;
    assert_eq!(
        recorded_systems(&s, &id),
        [Some(format!(
            "{PANEL_SYSTEM} (client certificate, refused)"
        ))],
        "the refusal must not read as the panel's own lookup"
    );
}

#[tokio::test]
async fn expired_revoked_unnamed_and_foreign_client_certificates_are_refused_at_the_handshake() {
    let ca = TestPki::new();
    let revoked_file = ca.dir.path().join("revoked.txt");
    std::fs::write(&revoked_file, "# revoked fagsystem certificates\n").unwrap();
    let (valid, _) = ca.client_cert("valid", "kmd-momentum", |_| {});
    let (expired, _) = ca.client_cert("expired", "kmd-momentum", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (by_serial, _) = ca.client_cert("by-serial", "kmd-momentum", |p| {
        p.serial_number = Some(rcgen::SerialNumber::from(vec![0x5a, 0x11, 0x0c]));
    });
    let (unnamed, _) = ca.client_cert("unnamed", "", |_| {});
    let (later, later_der) = ca.client_cert("later", "kmd-momentum", |_| {});
    let foreign_ca = TestPki::new();
    let (foreign, _) = foreign_ca.client_cert("foreign", "kmd-momentum", |_| {});

    let s = start_secure(
        ClientAuth::Optional,
        |config, _| {
            let tls = config.server.tls.as_mut().unwrap();
            tls.client_ca_file = Some(ca.ca_file.clone());
            tls.revoked = vec!["serial:5A:11:0C".into()];
            tls.revoked_file = Some(revoked_file.clone());
            tls.reload_ms = 100;
        },
        None,
    )
    .await;
    assert!(
        answered(&s, Some(&valid)).await,
        "control: a valid certificate"
    );
    assert!(
        answered(&s, None).await,
        "control: no certificate (optional)"
    );
    assert!(answered(&s, Some(&later)).await);
    for (what, pair) in [
        ("expired", &expired),
        ("revoked by serial number", &by_serial),
        ("without a name", &unnamed),
        ("from an unknown CA", &foreign),
    ] {
        assert!(
            !answered(&s, Some(pair)).await,
            "a client certificate {what} was accepted"
        );
    }

    // Revoked by fingerprint in the revocation file: refused from the next handshake on, no
    // restart; the others are not affected.
    std::fs::write(
        &revoked_file,
        format!("# revoked\n{}\n", sha256_fingerprint(&later_der)),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = false;
    while Instant::now() < deadline && !refused {
        refused = !answered(&s, Some(&later)).await;
        if !refused {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(refused, "the revocation file was not picked up");
    assert!(answered(&s, Some(&valid)).await);
}
