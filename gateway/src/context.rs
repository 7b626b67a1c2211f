//! What a request brings besides its message, taken once from the tonic request: the
//! credentials it is authenticated by, the panel's in-process mark, and the claim on its audit
//! record.

use crate::auth::AuthError;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tonic::metadata::MetadataMap;

/// What a request is authenticated by: its metadata (the caseworker's bearer token) and the
/// client certificate chain its TLS connection was verified with (the calling system). Its
/// `Debug` never shows the metadata, which holds the token.
#[derive(Clone)]
pub struct Credentials<'a> {
    pub metadata: &'a MetadataMap,
    /// The verified chain, leaf first; `None` without TLS or without a client certificate.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The call came from Samblik's own lookup panel, in this process ([`ViaPanel`]).
    pub via_panel: bool,
    /// The request's record, to be claimed by the handler's audit draft
    /// ([`RecordClaim`]); `None` for calls that did not come through the gRPC
    /// server (the panel's).
    pub record: Option<RecordClaim>,
}

/// Marks a request the panel makes of the gateway's services in its own process. It lives in
/// the request's extensions, which nothing on the wire can set.
#[derive(Debug, Clone, Copy)]
pub struct ViaPanel;

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "peer_certs",
                &self.peer_certs.as_ref().map_or(0, |chain| chain.len()),
            )
            .field("via_panel", &self.via_panel)
            .finish_non_exhaustive()
    }
}

impl<'a> Credentials<'a> {
    /// The credentials `request` arrived with.
    pub fn of<T>(request: &'a tonic::Request<T>) -> Self {
        Credentials {
            metadata: request.metadata(),
            peer_certs: request.peer_certs(),
            via_panel: request.extensions().get::<ViaPanel>().is_some(),
            record: request.extensions().get::<RecordClaim>().cloned(),
        }
    }

    /// The calling system's name: its verified client certificate's subject common name.
    /// `Ok(None)` when no certificate was presented; an error when one was but names no one
    /// (the handshake refuses those, so this is a second line).
    pub fn system_name(&self) -> Result<Option<String>, AuthError> {
        let Some(leaf) = self.peer_certs.as_ref().and_then(|chain| chain.first()) else {
            return Ok(None);
        };
        samblik_adapters::tls::client_name(leaf)
            .map(Some)
            .ok_or(AuthError::UnnamedCertificate)
    }
}

/// Whether a handler has taken on an audited request's record: set when it opens the request's
/// audit draft ([`crate::audit::AuditDraft::for_request`]), which from then on records the request on every
/// path, its drop included. [`crate::unread::UnreadAudit`] puts one in each audited request's extensions, which
/// nothing on the wire can set.
#[derive(Debug, Clone, Default)]
pub struct RecordClaim(Arc<AtomicBool>);

impl RecordClaim {
    pub fn claim(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_claimed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::PANEL_SYSTEM;

    #[test]
    fn no_certificate_is_no_system_and_an_unnamed_one_is_refused() {
        let metadata = MetadataMap::new();
        let none = Credentials {
            metadata: &metadata,
            peer_certs: None,
            via_panel: false,
            record: None,
        };
        assert_eq!(none.system_name(), Ok(None));
        let garbage = Credentials {
            metadata: &metadata,
            peer_certs: Some(Arc::new(vec![CertificateDer::from(vec![0x30, 0x00])])),
            via_panel: false,
            record: None,
        };
        assert_eq!(garbage.system_name(), Err(AuthError::UnnamedCertificate));
    }

    #[test]
    fn credentials_print_without_the_token() {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", "Bearer secret-token".parse().unwrap());
        let credentials = Credentials {
            metadata: &metadata,
            peer_certs: None,
            via_panel: false,
            record: None,
        };
        let printed = format!("{credentials:?}");
        assert!(!printed.contains("secret-token"), "{printed}");
    }

    #[test]
    fn only_the_panels_own_mark_makes_a_call_the_panels() {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("x-samblik-via", PANEL_SYSTEM.parse().unwrap());
        assert!(
            !Credentials::of(&request).via_panel,
            "a header claimed the panel"
        );
        request.extensions_mut().insert(ViaPanel);
        assert!(Credentials::of(&request).via_panel);
    }
}
