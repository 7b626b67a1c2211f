//! TLS for every Samblik listener and for the gateway's connections to sources: rustls with the
//! `ring` provider, certificates and keys from PEM files, reloaded when the files change — no
//! restart, and a half-written or broken file keeps the previous configuration.
//!
//! The server side is an accept loop ([`incoming`]) that hands tonic finished TLS streams (each
//! handshake in its own task, with a timeout, so a slow client cannot stall others); the client
//! side is a connector ([`TlsConnector`]) for `Endpoint::connect_with_connector_lazy`.
//!
//! A client certificate is accepted only if it chains to the configured CA, is within its
//! validity period, is not on the listener's revocation list ([`Revoked`]) and names its holder
//! ([`client_name`]: the subject's common name). Anything else is refused at the handshake. The
//! verified chain reaches each request through tonic's connect info
//! ([`tonic::Request::peer_certs`]).

use hyper_util::rt::TokioIo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use std::collections::HashSet;
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
    #[error(
        "revoked certificate {entry:?}: {message} (write serial:HEX for a serial number or sha256:HEX for a fingerprint)"
    )]
    Revocation { entry: String, message: String },
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

/// How a listener checks client certificates: whether it asks for one, and which of those that
/// chain to its CA it refuses all the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertCheck {
    pub mode: ClientAuth,
    /// Revoked certificates, each `serial:HEX` or `sha256:HEX` (see [`Revoked`]).
    pub revoked: Vec<String>,
    /// More such entries, one per line (`#` starts a comment), re-read whenever the file
    /// changes, like the certificate files.
    pub revoked_file: Option<PathBuf>,
}

impl From<ClientAuth> for ClientCertCheck {
    fn from(mode: ClientAuth) -> Self {
        ClientCertCheck {
            mode,
            ..ClientCertCheck::default()
        }
    }
}

/// Client certificates refused at the handshake although they chain to the CA: by serial number
/// (`serial:0a:1b:…`, as `openssl x509 -serial` prints it; leading zero bytes do not matter) or
/// by the SHA-256 fingerprint of the certificate's DER (`sha256:…`, as `openssl x509
/// -fingerprint -sha256` prints it). Hex digits in either case, with or without colons.
///
/// A serial number is unique only per issuing CA: with several client CAs, one entry refuses
/// that serial from each of them (the safe side). A fingerprint names exactly one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    serials: HashSet<Vec<u8>>,
    fingerprints: HashSet<Vec<u8>>,
}

/// The longest serial number RFC 5280 allows.
const MAX_SERIAL_BYTES: usize = 20;

impl Revoked {
    /// Parses `entries`; the first bad one is the error.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, TlsError> {
        let mut revoked = Revoked::default();
        for entry in entries {
            revoked.add(entry)?;
        }
        Ok(revoked)
    }

    fn add(&mut self, entry: &str) -> Result<(), TlsError> {
        let bad = |message: &str| TlsError::Revocation {
            entry: entry.to_owned(),
            message: message.to_owned(),
        };
        let (kind, digits) = entry
            .trim()
            .split_once(':')
            .ok_or_else(|| bad("no serial: or sha256: prefix"))?;
        let digits: String = digits
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        let mut bytes = hex::decode(&digits).map_err(|_| bad("not hexadecimal"))?;
        match kind.trim().to_ascii_lowercase().as_str() {
            "serial" => {
                bytes = significant(&bytes).to_vec();
                if bytes.is_empty() || bytes.len() > MAX_SERIAL_BYTES {
                    return Err(bad("a serial number is 1 to 20 bytes, not zero"));
                }
                self.serials.insert(bytes);
            }
            "sha256" => {
                if bytes.len() != 32 {
                    return Err(bad("a SHA-256 fingerprint is 32 bytes (64 hex digits)"));
                }
                self.fingerprints.insert(bytes);
            }
            _ => return Err(bad("unknown prefix")),
        }
        Ok(())
    }

    /// Adds the entries of a revocation file: one per line, blank lines and `#` comments
    /// ignored.
    fn add_file(&mut self, path: &Path) -> Result<(), TlsError> {
        let text = String::from_utf8(read(path)?).map_err(|_| TlsError::Invalid {
            path: path.to_owned(),
            message: "not UTF-8 text".into(),
        })?;
        for line in text.lines() {
            let entry = line.split('#').next().unwrap_or_default().trim();
            if !entry.is_empty() {
                self.add(entry).map_err(|e| TlsError::Invalid {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// Whether `cert` is revoked. A certificate that does not parse counts as revoked.
    pub fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        if self.fingerprints.contains(sha256(cert).as_ref()) {
            return true;
        }
        match webpki::EndEntityCert::try_from(cert) {
            Ok(parsed) => self.serials.contains(significant(parsed.serial())),
            Err(_) => true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty() && self.fingerprints.is_empty()
    }
}

/// A big-endian number without its leading zero bytes (DER adds one to keep it positive).
fn significant(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn sha256(cert: &CertificateDer<'_>) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
}

/// A certificate's revocation entry by fingerprint: `sha256:` and the SHA-256 of its DER in
/// lowercase hex.
pub fn sha256_fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(sha256(cert)))
}

/// The longest holder name accepted from a certificate.
const MAX_NAME_CHARS: usize = 128;

/// The name a client certificate gives its holder: the subject's common name (the first, if
/// there are several), as UTF8String, PrintableString or IA5String. `None` if the certificate
/// does not parse, has no such name, or the name is empty, longer than 128 characters or holds
/// control characters.
///
/// The common name rather than a subject alternative name, because that is where the
/// certificates municipalities issue to systems (OCES system and organisation certificates)
/// carry the system's name.
pub fn client_name(cert: &CertificateDer<'_>) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const STRINGS: [u8; 3] = [0x0c, 0x13, 0x16]; // UTF8String, PrintableString, IA5String
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    // The subject is a sequence of sets (relative distinguished names) of sequences (type and
    // value); webpki hands over the outer sequence's content.
    let mut rdns = parsed.subject();
    while !rdns.is_empty() {
        let (tag, mut attributes, rest) = der_tlv(rdns)?;
        rdns = rest;
        if tag != SET {
            return None;
        }
        while !attributes.is_empty() {
            let (tag, attribute, rest) = der_tlv(attributes)?;
            attributes = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der_tlv(attribute)?;
            if tag != OID || oid != COMMON_NAME {
                continue;
            }
            let (tag, text, _) = der_tlv(value)?;
            if !STRINGS.contains(&tag) {
                return None;
            }
            let name = std::str::from_utf8(text).ok()?.trim();
            let valid = !name.is_empty()
                && name.chars().count() <= MAX_NAME_CHARS
                && !name.chars().any(char::is_control);
            return valid.then(|| name.to_owned());
        }
    }
    None
}

/// One DER element at the start of `input`: its tag, its content and what follows it. `None` if
/// `input` does not start with a complete element (single-byte tags, lengths up to 4 bytes).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (digits, rest) = rest.split_at(count);
        let length = digits
            .iter()
            .fold(0usize, |n, digit| (n << 8) | usize::from(*digit));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (content, rest) = rest.split_at(length);
    Some((tag, content, rest))
}

/// rustls's WebPKI client verifier, and then: not revoked, and it names its holder.
#[derive(Debug)]
struct CheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revoked,
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.contains(end_entity) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        if client_name(end_entity).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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

/// A server config from `files`: only TLS 1.2/1.3 with safe defaults, HTTP/2 by ALPN; client
/// certificates as `clients` says.
pub fn server_config(
    files: &TlsFiles,
    clients: &ClientCertCheck,
) -> Result<ServerConfig, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match (clients.mode, &files.ca_file) {
        (ClientAuth::Off, _) => builder.with_no_client_auth(),
        (mode, None) => return Err(TlsError::NoClientCa(mode)),
        (mode, Some(ca)) => {
            let mut revoked = Revoked::parse(clients.revoked.iter().map(String::as_str))?;
            if let Some(file) = &clients.revoked_file {
                revoked.add_file(file)?;
            }
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
            builder.with_client_cert_verifier(Arc::new(CheckedClientVerifier {
                inner: verifier,
                revoked,
            }))
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

fn stamps(paths: &[PathBuf]) -> Stamps {
    paths
        .iter()
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
    /// Every file the config is made of: `files` and any other (a revocation list).
    watched: Vec<PathBuf>,
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
    fn new(
        files: TlsFiles,
        extra: Option<PathBuf>,
        build: Build<C>,
    ) -> Result<Arc<Self>, TlsError> {
        let watched: Vec<PathBuf> = [
            Some(files.cert_file.clone()),
            Some(files.key_file.clone()),
            files.ca_file.clone(),
            extra,
        ]
        .into_iter()
        .flatten()
        .collect();
        let loaded = stamps(&watched);
        let config = build(&files)?;
        Ok(Arc::new(Reloading {
            files,
            watched,
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
        let now = stamps(&self.watched);
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
    /// A listener's config; `clients` is a [`ClientAuth`] or, with a revocation list, a
    /// [`ClientCertCheck`] (whose revocation file is watched with the others).
    pub fn server(
        files: TlsFiles,
        clients: impl Into<ClientCertCheck>,
    ) -> Result<Arc<Self>, TlsError> {
        let clients = clients.into();
        let extra = clients.revoked_file.clone();
        Self::new(files, extra, Box::new(move |f| server_config(f, &clients)))
    }
}

impl Reloading<ClientConfig> {
    pub fn client(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::new(files, None, Box::new(client_config))
    }
}

/// How many connections a listener holds: in all, and from one client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections from one IP address; one more is closed at once, so that one client
    /// cannot take every slot. `usize::MAX`: no cap.
    pub max_per_address: usize,
    /// A connection that has read nothing but HTTP/2 housekeeping (frames no longer than
    /// [`HOUSEKEEPING_BYTES`]: PING, SETTINGS acknowledgements, window updates) for this long is
    /// closed and gives its slot back. `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// Reads no longer than this are housekeeping, not use: a PING or its acknowledgement is 17
/// bytes, a WINDOW_UPDATE 13, a SETTINGS acknowledgement 9; the smallest request is far longer.
pub const HOUSEKEEPING_BYTES: usize = 32;

/// `max_connections` in all, with no cap per address and no idle timeout.
impl From<usize> for ConnectionLimits {
    fn from(max_connections: usize) -> Self {
        ConnectionLimits {
            max_connections,
            max_per_address: usize::MAX,
            idle_timeout: None,
        }
    }
}

/// The connections open per client address; each [`AddressSlot`] is one of them.
type PerAddress = Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// A connection's place under its address's cap, given back when the connection goes.
#[derive(Debug)]
struct AddressSlot {
    open: PerAddress,
    address: std::net::IpAddr,
}

impl AddressSlot {
    /// A slot for `address`, or `None` when it has `cap` connections open already.
    fn take(open: &PerAddress, address: std::net::IpAddr, cap: usize) -> Option<AddressSlot> {
        let mut counts = open.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            open: Arc::clone(open),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// One accepted connection: the stream, and its places under the connection limits.
#[derive(Debug)]
pub struct Conn<S> {
    inner: S,
    _permit: Option<OwnedSemaphorePermit>,
    _address: Option<AddressSlot>,
    idle: Option<Idle>,
}

/// When an idle connection is closed: the timeout, when it was last used, and a timer that is
/// moved on only when it fires (not on every read, which would touch the timer wheel for each).
#[derive(Debug)]
struct Idle {
    after: Duration,
    used: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(idle) = &mut this.idle {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() - before > HOUSEKEEPING_BYTES => {
                    idle.used = tokio::time::Instant::now();
                }
                Poll::Pending => {
                    while idle.timer.as_mut().poll(cx).is_ready() {
                        let until = idle.used + idle.after;
                        if until <= tokio::time::Instant::now() {
                            return Poll::Ready(Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "connection idle",
                            )));
                        }
                        // Used since the timer was set: wait for the rest of the timeout.
                        idle.timer.as_mut().reset(until);
                    }
                }
                _ => {}
            }
        }
        read
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
/// in the kernel's backlog), and at most `max_per_address` from one IP address (one more is
/// closed at once) — with TCP_NODELAY, and, when `tls` is set, completes each TLS handshake with
/// the config current at that moment. Failed handshakes are logged and dropped.
pub fn incoming<S: Send + 'static>(
    listener: TcpListener,
    limits: impl Into<ConnectionLimits>,
    accept: impl Fn(TcpStream) -> Pin<Box<dyn Future<Output = Option<S>> + Send>>
    + Send
    + Sync
    + 'static,
) -> ReceiverStream<Result<Conn<S>, std::io::Error>> {
    let limits = limits.into();
    let (tx, rx) = mpsc::channel(64);
    let limit = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address: PerAddress = Arc::default();
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
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(address) = AddressSlot::take(&per_address, peer.ip(), limits.max_per_address)
            else {
                // Closed before any byte is read; the slot in all goes back at once.
                tracing::info!(peer = %peer.ip(), "connection refused: too many from this address");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tx, accept) = (tx.clone(), Arc::clone(&accept));
            tokio::spawn(async move {
                if let Some(inner) = accept(tcp).await {
                    let _ = tx
                        .send(Ok(Conn {
                            inner,
                            _permit: Some(permit),
                            _address: Some(address),
                            idle: limits.idle_timeout.map(|after| Idle {
                                after,
                                used: tokio::time::Instant::now(),
                                timer: Box::pin(tokio::time::sleep(after)),
                            }),
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
    limits: impl Into<ConnectionLimits>,
    config: Arc<ReloadingServerConfig>,
) -> ReceiverStream<Result<Conn<ServerTlsStream>, std::io::Error>> {
    incoming(listener, limits, move |tcp| {
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
    limits: impl Into<ConnectionLimits>,
) -> ReceiverStream<Result<Conn<TcpStream>, std::io::Error>> {
    incoming(listener, limits, |tcp| Box::pin(async move { Some(tcp) }))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};

    fn cert(edit: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["dubu.kommune.example".to_owned()]).unwrap();
        edit(&mut params);
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone()
    }

    #[test]
    fn a_certificate_is_named_by_its_subject_common_name() {
        let named = cert(|p| {
            p.distinguished_name
                .push(DnType::OrganizationName, "Sønderå Kommune");
            p.distinguished_name.push(DnType::CommonName, "DUBU ærø");
        });
        assert_eq!(client_name(&named).as_deref(), Some("DUBU ærø"));
        let printable = cert(|p| {
            p.distinguished_name.push(
                DnType::CommonName,
                rcgen::DnValue::PrintableString("dubu".try_into().unwrap()),
            );
        });
        assert_eq!(client_name(&printable).as_deref(), Some("dubu"));
        // A subject alternative name is not a name here, and neither is an empty or a
        // control-character one.
        let unnamed = cert(|p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(DnType::OrganizationName, "Sønderå Kommune");
        });
        assert_eq!(client_name(&unnamed), None);
        let sneaky = cert(|p| p.distinguished_name.push(DnType::CommonName, "a\nb"));
        assert_eq!(client_name(&sneaky), None);
        let long = cert(|p| {
            p.distinguished_name
                .push(DnType::CommonName, "x".repeat(MAX_NAME_CHARS + 1))
        });
        assert_eq!(client_name(&long), None);
        assert_eq!(client_name(&CertificateDer::from(vec![0x30, 0x03])), None);
    }

    #[test]
    fn der_elements_are_read_only_when_complete() {
        assert_eq!(
            der_tlv(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((0x04, &[0xaa][..], &[0xbb][..]))
        );
        let long: Vec<u8> = [0x04, 0x81, 0x80].into_iter().chain([7; 0x80]).collect();
        assert_eq!(der_tlv(&long).map(|(_, c, _)| c.len()), Some(0x80));
        for bad in [
            &[][..],
            &[0x04],
            &[0x04, 0x02, 0x00],
            &[0x04, 0x80],
            &[0x1f, 0x00],
            &[0x04, 0x85, 1, 1, 1, 1, 1],
        ] {
            assert_eq!(der_tlv(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn revocation_by_serial_number_or_fingerprint() {
        let serial = cert(|p| p.serial_number = Some(SerialNumber::from(vec![0x00, 0x8a, 0x01])));
        let other = cert(|p| p.serial_number = Some(SerialNumber::from(vec![0x8a, 0x02])));
        for entry in ["serial:8a01", "serial:00:8A:01", " SERIAL: 8a 01 "] {
            let revoked = Revoked::parse([entry]).unwrap();
            assert!(revoked.contains(&serial), "{entry}");
            assert!(!revoked.contains(&other), "{entry}");
        }
        let fingerprint = sha256_fingerprint(&other);
        assert!(fingerprint.starts_with("sha256:") && fingerprint.len() == 7 + 64);
        let revoked = Revoked::parse([fingerprint
            .to_uppercase()
            .replace("SHA256", "sha256")
            .as_str()])
        .unwrap();
        assert!(revoked.contains(&other));
        assert!(!revoked.contains(&serial));
        assert!(!Revoked::default().contains(&serial));
        // What does not parse is refused.
        assert!(Revoked::default().contains(&CertificateDer::from(vec![0x30, 0x00])));
    }

    #[test]
    fn bad_revocation_entries_are_refused_with_the_entry() {
        for bad in [
            "8a01",
            "serial:",
            "serial:00",
            "serial:xyz",
            "md5:00",
            "sha256:abcd",
            &format!("serial:{}", "01".repeat(21)),
        ] {
            let err = Revoked::parse([bad]).unwrap_err();
            assert!(matches!(err, TlsError::Revocation { .. }), "{bad}: {err}");
        }
    }
}
