//! Transport security end to end: TLS on the gateway's port (client certificates optional or
//! required), mutual TLS between gateway and sources, certificates reloaded without a restart.
//! Certificates come from the demo's PKI generator, as `samblik demo` makes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_adapters::tls::{ClientAuth, ReloadingServerConfig, TlsFiles};
use samblik_gateway::config::{Config, TlsConfig};
use samblik_gateway::tls::{CertPair, DemoPki, demo_server_tls, demo_source_tls};
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{LookupResponse, Purpose, SourceStatus};
use samblik_synth::Department;
use samblik_tests::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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
    for department in Department::ALL {
        let tls = source_tls(source_pki.unwrap_or(&pki), department.id(), &pki.ca);
        let running = start_source_tls(reference(department), tls).await;
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
        gateway: start_gateway_from_config(config).await,
        pki,
        _dir: dir,
        _sources: sources,
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

async fn connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<&CertPair>,
) -> Result<LookupServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(read(&pair.cert), read(&pair.key)));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(LookupServiceClient::new(channel))
}

async fn lookup(
    client: &mut LookupServiceClient<tonic::transport::Channel>,
) -> Result<LookupResponse, tonic::Status> {
    client
        .lookup(request(
            three_department_citizen(),
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
        three_department_citizen(),
        Purpose::PrepareMeeting,
        Some(&token(Department::Jobcenter)),
        None,
    );
    req.get_mut().break_glass_reason = BREAK_GLASS_REASON.into();
    let answer = client.lookup(req).await.unwrap().into_inner();
    assert_eq!(answer.sources.len(), 3);
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
