//! TLS for every Samblik listener and for the gateway's connections to sources: rustls with the
//! `ring` provider, certificates and keys from PEM files, reloaded when the files change — no
//! restart, and a half-written or broken file keeps the previous configuration.
//!
//! The server side is an accept loop ([`incoming`]) that hands tonic finished TLS streams (each
//! handshake in its own task, with a timeout, so a slow client cannot stall others); the client
//! side is a connector ([`TlsConnector`]) for `Endpoint::connect_with_connector_lazy`.

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("client certificates are {0:?} but no CA file is configured to check them")]
    NoClientCa(ClientAuth),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// Whether a listener asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    Off,
    /// A certificate is checked if presented; clients without one are let in (and must then
    /// authenticate otherwise, e.g. with a token).
    Optional,
    /// No certificate from the configured CA, no connection.
    Required,
}

/// The PEM files one side of a TLS connection is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain.
    pub cert_file: PathBuf,
    /// This side's private key.
    pub key_file: PathBuf,
    /// The CA(s) the other side's certificate must chain to.
    pub ca_file: Option<PathBuf>,
}

/// Installs `ring` as the process's rustls provider, once. Every config here names its
/// provider explicitly; this is for any library that asks for the default.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A server config from `files`: only TLS 1.2/1.3 with safe defaults, HTTP/2 by ALPN.
pub fn server_config(files: &TlsFiles, client_auth: ClientAuth) -> Result<ServerConfig, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match (client_auth, &files.ca_file) {
        (ClientAuth::Off, _) => builder.with_no_client_auth(),
        (_, None) => return Err(TlsError::NoClientCa(client_auth)),
        (mode, Some(ca)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider());
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::Invalid {
                path: ca.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_single_cert(read_certs(&files.cert_file)?, read_key(&files.key_file)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client config from `files`: the server must chain to `ca_file`; `cert_file`/`key_file` are
/// this client's certificate (mutual TLS).
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let ca = files.ca_file.as_ref().ok_or_else(|| TlsError::Empty {
        path: files.cert_file.clone(),
        what: "CA file to check the server with (none configured)",
    })?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(read_roots(ca)?)
        .with_client_auth_cert(read_certs(&files.cert_file)?, read_key(&files.key_file)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What the files looked like when last loaded: a change of any means "reload".
type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamps(files: &TlsFiles) -> Stamps {
    [
        Some(&files.cert_file),
        Some(&files.key_file),
        files.ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

type Build<C> = Box<dyn Fn(&TlsFiles) -> Result<C, TlsError> + Send + Sync>;

/// A TLS config that follows its files: [`Reloading::current`] is always the last config that
/// loaded without error.
pub struct Reloading<C> {
    files: TlsFiles,
    build: Build<C>,
    current: RwLock<Arc<C>>,
    loaded: Mutex<Stamps>,
}

impl<C> std::fmt::Debug for Reloading<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl<C: Send + Sync + 'static> Reloading<C> {
    fn new(files: TlsFiles, build: Build<C>) -> Result<Arc<Self>, TlsError> {
        let loaded = stamps(&files);
        let config = build(&files)?;
        Ok(Arc::new(Reloading {
            files,
            build,
            current: RwLock::new(Arc::new(config)),
            loaded: Mutex::new(loaded),
        }))
    }

    /// The config to use for the next connection.
    pub fn current(&self) -> Arc<C> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads if any file changed since the last load. `Ok(true)` if a new config is in use;
    /// on error the previous one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        let mut loaded = match self.loaded.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *loaded == now {
            return Ok(false);
        }
        // Remember the attempt either way: a broken file is reported once, not every tick.
        *loaded = now;
        let config = (self.build)(&self.files)?;
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(config),
        }
        Ok(true)
    }

    /// Checks the files every `interval` for as long as this config is in use.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { break };
                match this.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %this.files.cert_file.display(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones")
                    }
                }
            }
        });
    }
}

/// A listener's TLS config that follows its files.
pub type ReloadingServerConfig = Reloading<ServerConfig>;
/// A client's TLS config that follows its files.
pub type ReloadingClientConfig = Reloading<ClientConfig>;

impl Reloading<ServerConfig> {
    pub fn server(files: TlsFiles, client_auth: ClientAuth) -> Result<Arc<Self>, TlsError> {
        Self::new(files, Box::new(move |f| server_config(f, client_auth)))
    }
}

impl Reloading<ClientConfig> {
    pub fn client(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::new(files, Box::new(client_config))
    }
}

/// One accepted connection: the stream, and its place under the connection limit.
#[derive(Debug)]
pub struct Conn<S> {
    inner: S,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for Conn<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A server-side TLS stream, as tonic sees it.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;
/// What tonic's request extensions hold for a TLS connection ([`tonic::Request::peer_certs`]).
pub type ServerTlsInfo = TlsConnectInfo<TcpConnectInfo>;

/// Accepts connections on `listener` — at most `max_connections` at a time (further ones wait
/// in the kernel's backlog) — with TCP_NODELAY, and, when `tls` is set, completes each TLS
/// handshake with the config current at that moment. Failed handshakes are logged and dropped.
pub fn incoming<S: Send + 'static>(
    listener: TcpListener,
    max_connections: usize,
    accept: impl Fn(TcpStream) -> Pin<Box<dyn Future<Output = Option<S>> + Send>>
    + Send
    + Sync
    + 'static,
) -> ReceiverStream<Result<Conn<S>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let accept = Arc::new(accept);
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                () = tx.closed() => break,
                permit = Arc::clone(&limit).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let tcp = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (tx, accept) = (tx.clone(), Arc::clone(&accept));
            tokio::spawn(async move {
                if let Some(inner) = accept(tcp).await {
                    let _ = tx
                        .send(Ok(Conn {
                            inner,
                            _permit: Some(permit),
                        }))
                        .await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// [`incoming`] with TLS from `config`.
pub fn tls_incoming(
    listener: TcpListener,
    max_connections: usize,
    config: Arc<ReloadingServerConfig>,
) -> ReceiverStream<Result<Conn<ServerTlsStream>, std::io::Error>> {
    incoming(listener, max_connections, move |tcp| {
        let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
        Box::pin(async move {
            let peer = tcp.peer_addr().ok();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(e)) => {
                    tracing::info!(peer = ?peer, error = %e, "TLS handshake refused");
                    None
                }
                Err(_) => {
                    tracing::info!(peer = ?peer, "TLS handshake timed out");
                    None
                }
            }
        })
    })
}

/// [`incoming`] without TLS.
pub fn plain_incoming(
    listener: TcpListener,
    max_connections: usize,
) -> ReceiverStream<Result<Conn<TcpStream>, std::io::Error>> {
    incoming(listener, max_connections, |tcp| {
        Box::pin(async move { Some(tcp) })
    })
}

/// Dials a source over mutual TLS with the client config current at each (re)connect. The
/// server's certificate must be valid for `server_name` and chain to the configured CA.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    config: Arc<ReloadingClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsConnector {
    pub fn new(config: Arc<ReloadingClientConfig>, server_name: &str) -> Result<Self, TlsError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
        Ok(TlsConnector {
            config,
            server_name,
        })
    }
}

type ConnectFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                    std::io::Error,
                >,
            > + Send,
    >,
>;

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.current());
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
