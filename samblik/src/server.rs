//! The one place a gateway is wired together: `samblik serve`, `samblik demo` and the end-to-end
//! tests all go through [`Listeners::bind`] → [`Gateway::open`] → [`Gateway::serve`].
//!
//! The order is the contract: ports are bound first and keys, certificates, the policy and the
//! panel's sign-in are checked next, all before the audit store is opened, so a refused start-up
//! writes nothing to the store.

use samblik_adapters::tls::ReloadingServerConfig;
use samblik_gateway::config::{Config, LimitsConfig};
use samblik_gateway::lookup::LookupPipeline;
use samblik_gateway::server::{Parts, ServerError, pipeline_with, serve_configured};
use samblik_panel::{OidcClient, Panel, PanelError, SignIn};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Panel(#[from] PanelError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The gateway's ports, bound: the gRPC API's and, with `[panel]`, the panel's.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub panel: Option<TcpListener>,
}

impl Listeners {
    /// Binds `server.listen` and, with `[panel]`, `panel.listen`.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let grpc = listen(config.server.listen).await?;
        let panel = match &config.panel {
            Some(panel) => Some(listen(panel.listen).await?),
            None => None,
        };
        Ok(Self { grpc, panel })
    }
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

/// How the panel's users sign in.
#[derive(Debug)]
pub enum PanelSignIn {
    /// As `[panel.oidc]` says: the only choice a config file has.
    Configured,
    /// Any other (the demo's page of demo users).
    Given(SignIn),
}

/// The panel's half of a gateway: the panel and where it serves.
#[derive(Debug)]
struct PanelServer {
    panel: Arc<Panel>,
    listener: TcpListener,
    tls: Option<Arc<ReloadingServerConfig>>,
}

/// A gateway on its bound ports with its pipeline (and audit store) open, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    pipeline: Arc<LookupPipeline>,
    listener: TcpListener,
    tls: Option<Arc<ReloadingServerConfig>>,
    limits: LimitsConfig,
    panel: Option<PanelServer>,
}

impl Gateway {
    /// Checks the listener's TLS, the panel's TLS and sign-in, then opens the audit store and
    /// builds the pipeline, and the panel on it. `listeners.panel` must be bound exactly when
    /// `config.panel` is set.
    pub fn open(
        config: &Config,
        listeners: Listeners,
        sign_in: PanelSignIn,
    ) -> Result<Self, StartError> {
        Self::open_with(config, listeners, sign_in, Parts::default())
    }

    /// As [`Self::open`], with `parts` (sources held in the process, an audit log already open)
    /// instead of what the config says.
    pub fn open_with(
        config: &Config,
        listeners: Listeners,
        sign_in: PanelSignIn,
        parts: Parts,
    ) -> Result<Self, StartError> {
        let tls = samblik_gateway::tls::listener_tls(config).map_err(ServerError::from)?;
        let panel = match (&config.panel, listeners.panel) {
            (Some(panel_config), Some(listener)) => {
                let sign_in = match sign_in {
                    PanelSignIn::Given(sign_in) => sign_in,
                    PanelSignIn::Configured => {
                        let oidc = panel_config.oidc.as_ref().ok_or_else(|| {
                            PanelError::Config("[panel] needs [panel.oidc]".into())
                        })?;
                        SignIn::Oidc(Box::new(OidcClient::from_config(oidc)?))
                    }
                };
                let tls = samblik_panel::panel_tls(config).map_err(ServerError::from)?;
                Some((panel_config.clone(), sign_in, listener, tls))
            }
            (None, None) => None,
            _ => {
                return Err(PanelError::Config(
                    "the panel's port is bound exactly when [panel] is configured".into(),
                )
                .into());
            }
        };
        let pipeline = Arc::new(pipeline_with(config, parts)?);
        let panel = match panel {
            Some((panel_config, sign_in, listener, tls)) => Some(PanelServer {
                panel: Arc::new(Panel::new(Arc::clone(&pipeline), panel_config, sign_in)?),
                listener,
                tls,
            }),
            None => None,
        };
        Ok(Self {
            pipeline,
            listener: listeners.grpc,
            tls,
            limits: config.server.limits.clone(),
            panel,
        })
    }

    /// The gRPC API's address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The panel's address, with `[panel]`.
    pub fn panel_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.panel.as_ref().map(|p| p.listener.local_addr())
    }

    /// The pipeline every request goes through.
    pub fn pipeline(&self) -> &Arc<LookupPipeline> {
        &self.pipeline
    }

    /// Serves the gRPC API and the panel until `shutdown` is cancelled; then closes the audit
    /// log (its signed clean-stop record) once neither holds the pipeline any more.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let Gateway {
            pipeline,
            listener,
            tls,
            limits,
            panel,
        } = self;
        let audit = Arc::clone(pipeline.audit_log());
        let max_connections = limits.max_connections;
        let stop = shutdown.clone();
        let panel = async move {
            match panel {
                Some(p) => {
                    samblik_panel::serve(
                        p.panel,
                        p.listener,
                        p.tls,
                        max_connections,
                        stop.cancelled_owned(),
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let grpc = serve_configured(pipeline, listener, tls, &limits, shutdown.cancelled_owned());
        let (grpc, panel) = tokio::join!(grpc, panel);
        if let Ok(log) = Arc::try_unwrap(audit) {
            log.close();
        }
        grpc?;
        panel?;
        Ok(())
    }
}
