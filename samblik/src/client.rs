//! `samblik lookup`: a small gRPC client that prints a readable overview.

use anyhow::Context;
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{Case, CaseState, LookupRequest, LookupResponse, SourceStatus};
use std::fmt::Write;
use std::time::Duration;

/// How `samblik lookup` reaches an `https://` gateway.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA the gateway's certificate must chain to.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and key for mutual TLS.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The name the server's certificate must carry, where it is not the address's host (a
    /// probe inside a container dials 127.0.0.1; the certificate names the service).
    pub server_name: Option<String>,
}

/// Connects to the gateway at `addr` (e.g. `https://127.0.0.1:50051`).
pub async fn connect(addr: &str, tls: &ClientTls) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())?;
    if addr.starts_with("https://") {
        samblik_gateway::tls::install_crypto_provider();
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &tls.ca_file {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?,
            ));
        }
        if let Some(name) = &tls.server_name {
            config = config.domain_name(name.clone());
        }
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(tonic::transport::Identity::from_pem(
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?,
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?,
            ));
        }
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint.connect().await?)
}

/// The grpc.health.v1 status of `service` at `addr`; an error when there is no answer within
/// `timeout` (a refused connection, a failed handshake, an unknown service).
pub async fn health(
    addr: &str,
    tls: &ClientTls,
    service: String,
    timeout: Duration,
) -> anyhow::Result<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let ask = async {
        let mut client = HealthClient::new(connect(addr, tls).await?);
        let answer = client.check(HealthCheckRequest { service }).await?;
        anyhow::Ok(answer.into_inner().status())
    };
    tokio::time::timeout(timeout, ask)
        .await
        .with_context(|| format!("no answer from {addr} within {} ms", timeout.as_millis()))?
}

/// `message` with the caller's bearer token and a deadline.
pub fn authorized<T>(
    message: T,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// Calls `Lookup` on the gateway at `addr`.
pub async fn lookup(
    addr: &str,
    tls: &ClientTls,
    token: &str,
    request: LookupRequest,
    timeout: Duration,
) -> anyhow::Result<LookupResponse> {
    let mut client = LookupServiceClient::new(connect(addr, tls).await?);
    Ok(client
        .lookup(authorized(request, token, timeout)?)
        .await?
        .into_inner())
}

/// A readable overview of a lookup answer.
pub fn render(response: &LookupResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Lookup {}", response.request_id);
    for source in &response.sources {
        let status = source.status();
        let as_of = source
            .as_of
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
        let _ = write!(out, "\n{} [{}] — ", source.department, source.source_id);
        match (status, as_of) {
            (SourceStatus::Ok, Some(as_of)) => {
                let _ = writeln!(out, "{} case(s), data as of {as_of}", source.cases.len());
            }
            (status, _) => {
                let _ = writeln!(out, "{}: {}", status.as_str_name(), source.detail);
            }
        }
        for case in &source.cases {
            render_case(&mut out, case);
        }
    }
    out
}

/// A readable policy explanation.
pub fn render_explanation(response: &samblik_proto::v1::ExplainResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Policy {}", response.policy_version);
    let _ = writeln!(
        out,
        "Relation to the citizen: {}",
        if response.relation {
            "yes (an open case in the caller's own department)"
        } else {
            "no"
        }
    );
    if !response.refusal.is_empty() {
        let _ = writeln!(
            out,
            "The lookup would be refused ({}): {}",
            response.refusal_reason, response.refusal
        );
    }
    for case in &response.cases {
        let case_type = case.case_type.as_ref().map_or("", |t| t.code.as_str());
        let _ = write!(
            out,
            "\n{} {} ({case_type}): tier {}",
            case.source_id, case.case_id, case.tier
        );
        match &case.disclosure {
            Some(d) if case.tier > 0 => {
                let _ = writeln!(out, " on basis {} {}", d.basis, d.basis_id);
                let _ = writeln!(out, "  rules: {}", d.rule_ids.join(", "));
                for w in &d.withheld {
                    let _ = writeln!(out, "  withheld {}: {} [{}]", w.part, w.reason, w.code);
                }
            }
            Some(d) => {
                let _ = writeln!(out, " — hidden (the caller would not learn it exists)");
                let _ = writeln!(out, "  rules: {}", d.rule_ids.join(", "));
            }
            None => {
                let _ = writeln!(out);
            }
        }
    }
    for s in &response.unavailable {
        let _ = writeln!(
            out,
            "\n{} [{}]: {} — {}",
            s.department,
            s.source_id,
            s.status().as_str_name(),
            s.detail
        );
    }
    out
}

fn render_case(out: &mut String, case: &Case) {
    let Some(existence) = &case.existence else {
        return;
    };
    let (name, paragraph) = existence
        .case_type
        .as_ref()
        .map_or(("", ""), |t| (t.name.as_str(), t.legal_paragraph.as_str()));
    let state = match existence.state() {
        CaseState::Open => format!("open since {}", existence.opened_on),
        CaseState::Closed => format!(
            "closed {} (opened {})",
            existence.closed_on, existence.opened_on
        ),
        CaseState::Unspecified => "state unknown".to_owned(),
    };
    let _ = writeln!(
        out,
        "  {}  {} ({}) — {} — tier {}",
        case.case_id, name, paragraph, state, case.tier
    );
    if let Some(d) = &case.disclosure {
        let basis = if d.basis_id.is_empty() {
            d.basis.clone()
        } else {
            format!("{} {}", d.basis, d.basis_id)
        };
        let _ = writeln!(
            out,
            "      basis: {basis} (rules: {})",
            d.rule_ids.join(", ")
        );
        for w in &d.withheld {
            let _ = writeln!(out, "      withheld {}: {}", w.part, w.reason);
        }
    }
    if let Some(r) = &existence.responsible {
        let _ = writeln!(
            out,
            "      responsible: {}, {}, {}, {}",
            r.name, r.unit, r.phone, r.email
        );
    }
    if let Some(selected) = &case.selected {
        for i in &selected.interventions {
            let _ = writeln!(
                out,
                "      intervention: {} ({}) by {}, {}, {} – {}",
                i.description, i.legal_paragraph, i.provider, i.scope, i.start_on, i.end_on
            );
        }
        for g in &selected.goals {
            let _ = writeln!(out, "      goal: {}", g.description);
        }
        if !selected.situation.is_empty() {
            let _ = writeln!(out, "      situation: {}", selected.situation);
        }
        if !selected.next_follow_up_on.is_empty() {
            let _ = writeln!(out, "      next follow-up: {}", selected.next_follow_up_on);
        }
    }
    if let Some(full) = &case.full {
        for d in &full.documents {
            let _ = writeln!(out, "      document: {} ({})", d.title, d.dated_on);
        }
    }
}
