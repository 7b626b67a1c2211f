//! The gateway's transport security: TLS on its gRPC port (client certificates off, optional or
//! required), mutual TLS to every source, both reloaded from their files on change (the
//! machinery is in [`samblik_adapters::tls`]).

use crate::config::{Config, SourceConfig, SourceTlsConfig, TlsConfig};
use samblik_adapters::tls::{
    ClientCertCheck, ReloadingClientConfig, ReloadingServerConfig, TlsConnector, TlsError, TlsFiles,
};

use std::sync::Arc;
use std::time::Duration;

pub use samblik_adapters::tls::install_crypto_provider;

/// The gateway listener's TLS config from `config`, watched for changes.
pub fn server_tls(config: &TlsConfig) -> Result<Arc<ReloadingServerConfig>, TlsError> {
    install_crypto_provider();
    let tls = ReloadingServerConfig::server(
        TlsFiles {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            ca_file: config.client_ca_file.clone(),
        },
        ClientCertCheck {
            mode: config.client_certs,
            revoked: config.revoked.clone(),
            revoked_file: config.revoked_file.clone(),
        },
    )?;
    tls.watch(Duration::from_millis(config.reload_ms));
    Ok(tls)
}

/// The TLS of the gateway's listener if `config` has one: loaded (so bad files fail before the
/// port is bound) and watched.
pub fn listener_tls(config: &Config) -> Result<Option<Arc<ReloadingServerConfig>>, TlsError> {
    config.server.tls.as_ref().map(server_tls).transpose()
}

/// The mutual-TLS connector for `source`, watched for changes. The server name defaults to the
/// endpoint's host.
pub fn source_connector(
    source: &SourceConfig,
    tls: &SourceTlsConfig,
) -> Result<TlsConnector, TlsError> {
    install_crypto_provider();
    let config = ReloadingClientConfig::client(TlsFiles {
        cert_file: tls.cert_file.clone(),
        key_file: tls.key_file.clone(),
        ca_file: Some(tls.ca_file.clone()),
    })?;
    config.watch(Duration::from_millis(tls.reload_ms));
    let host = source
        .endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()));
    let name = tls.server_name.clone().or(host).unwrap_or_default();
    TlsConnector::new(config, &name)
}
