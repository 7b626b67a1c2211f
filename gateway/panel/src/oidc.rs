//! The panel as an OpenID Connect client: the authorisation-code flow with PKCE (S256) and a
//! `state` bound to the browser's session. The access token from the token endpoint is the
//! session's identity; it is verified by the gateway's authenticator like any bearer token
//! (issuer, audience, algorithm allow-list, `typ`), so an ID token is never accepted as one.

use super::PanelError;
use super::session::{OidcPending, random_token};
use axum::body::Bytes;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use samblik_gateway::config::{OidcConfig, PanelConfig};
use std::time::Duration;

/// The largest token response read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// A token answer without `expires_in` is trusted this long (the token's own `exp` still
/// applies on every call).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The configured OpenID Connect client.
pub struct OidcClient {
    config: OidcConfig,
    secret: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("client_id", &self.config.client_id)
            .field("token_endpoint", &self.config.token_endpoint)
            .finish_non_exhaustive()
    }
}

/// What the token endpoint answered.
#[derive(Debug)]
pub(crate) struct Tokens {
    pub access_token: String,
    pub expires_in: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("token request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("token endpoint answered HTTP {0}")]
    Status(http::StatusCode),
    #[error("token response unreadable: {0}")]
    Body(String),
    #[error("token response is not a bearer access token")]
    NotBearer,
    #[error("token endpoint timed out")]
    Timeout,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl OidcClient {
    /// Sets up the client; reads the client secret from its environment variable.
    pub fn from_config(config: &OidcConfig) -> Result<Self, PanelError> {
        let secret = match &config.client_secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                PanelError::Config(format!(
                    "panel.oidc.client_secret_env names {var}, which is not set"
                ))
            })?),
            None => None,
        };
        let client = samblik_gateway::jwks::https_client(config.ca_file.as_ref())
            .map_err(|e| PanelError::Config(format!("panel.oidc: {e}")))?;
        Ok(OidcClient {
            config: config.clone(),
            secret,
            client,
        })
    }

    fn redirect_uri(panel: &PanelConfig) -> String {
        format!("{}/log-ind/retur", panel.origin())
    }

    /// Where to send the browser, and what the session keeps to check the answer.
    pub(crate) fn authorization_url(&self, panel: &PanelConfig) -> (OidcPending, String) {
        let pending = OidcPending {
            state: random_token(),
            verifier: random_token(),
        };
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            pending.verifier.as_bytes(),
        ));
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &Self::redirect_uri(panel))
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &pending.state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if self.config.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{separator}{query}", self.config.authorization_endpoint);
        (pending, url)
    }

    /// Trades an authorisation code for tokens at the token endpoint.
    pub(crate) async fn exchange(
        &self,
        panel: &PanelConfig,
        code: &str,
        verifier: &str,
    ) -> Result<Tokens, ExchangeError> {
        // The serializer is not `Send`: it must not live across an `.await`.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &Self::redirect_uri(panel))
                .append_pair("client_id", &self.config.client_id)
                .append_pair("code_verifier", verifier);
            if let Some(secret) = &self.secret {
                form.append_pair("client_secret", secret);
            }
            form.finish()
        };
        let request = http::Request::post(&self.config.token_endpoint)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| ExchangeError::Body(e.to_string()))?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        if response.status() != http::StatusCode::OK {
            return Err(ExchangeError::Status(response.status()));
        }
        let body = tokio::time::timeout(
            timeout,
            Limited::new(response.into_body(), MAX_TOKEN_RESPONSE_BYTES).collect(),
        )
        .await
        .map_err(|_| ExchangeError::Timeout)?
        .map_err(|e| ExchangeError::Body(e.to_string()))?
        .to_bytes();
        let answer: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| ExchangeError::Body(e.to_string()))?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") || answer.access_token.is_empty() {
            return Err(ExchangeError::NotBearer);
        }
        Ok(Tokens {
            access_token: answer.access_token,
            expires_in: answer
                .expires_in
                .map_or(DEFAULT_TOKEN_TTL, Duration::from_secs),
        })
    }
}
