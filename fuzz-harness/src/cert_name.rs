//! The client certificate's holder name (`tls::client_name`) and the revocation list
//! (`tls::Revoked`), as the TLS verifier and `Credentials::system_name` call them.
//!
//! The input is tried twice: as a whole certificate (DER), and as the content of the subject of
//! an otherwise valid certificate, so that the name walk gets past webpki's own parsing, which
//! random bytes seldom do.

use rustls::pki_types::CertificateDer;
use samblik_adapters::tls::{Revoked, client_name, sha256_fingerprint};
use std::sync::OnceLock;

pub fn run(data: &[u8]) {
    check(&CertificateDer::from(data.to_vec()));
    if let Some(der) = with_subject(template(), data) {
        check(&CertificateDer::from(der));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // A revocation list from config: any entry either parses or is refused, never panics.
        let _ = Revoked::parse(text.lines());
    }
}

fn check(cert: &CertificateDer<'_>) {
    if let Some(name) = client_name(cert) {
        assert!(!name.is_empty(), "an empty holder name");
        assert_eq!(name.trim(), name, "an untrimmed holder name");
        assert!(name.chars().count() <= 128, "a holder name over 128 chars");
        assert!(!name.chars().any(char::is_control), "a control character");
    }
    // A certificate's own fingerprint always revokes it, parsed or not.
    let revoked = Revoked::parse([sha256_fingerprint(cert).as_str()]).expect("fingerprint entry");
    assert!(revoked.contains(cert), "its fingerprint does not revoke it");
    // A certificate that webpki parses is revoked by its serial number, and by nothing else
    // that is empty.
    assert!(!Revoked::default().contains(cert) || webpki_rejects(cert));
    if let Ok(parsed) = webpki::EndEntityCert::try_from(cert) {
        let serial = parsed.serial();
        let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
        let significant = &serial[start..];
        if !significant.is_empty() && significant.len() <= 20 {
            let entry = format!("serial:{}", hex(serial));
            let revoked = Revoked::parse([entry.as_str()]).expect("serial entry");
            assert!(
                revoked.contains(cert),
                "its serial number does not revoke it"
            );
        }
    }
}

fn webpki_rejects(cert: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert).is_err()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A self-signed certificate to splice subjects into.
fn template() -> &'static [u8] {
    static TEMPLATE: OnceLock<Vec<u8>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Fuzz System");
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    })
}

/// `cert` with its subject's content replaced by `subject`; `None` if `cert` is not shaped as
/// a certificate.
pub fn with_subject(cert: &[u8], subject: &[u8]) -> Option<Vec<u8>> {
    let (_, outer, _) = tlv(cert)?;
    let (tbs_tag, tbs, after_tbs) = tlv(outer)?;
    // version, serial, signature, issuer, validity come before the subject.
    let mut rest = tbs;
    for _ in 0..5 {
        rest = tlv(rest)?.2;
    }
    let head = &tbs[..tbs.len() - rest.len()];
    let after_subject = tlv(rest)?.2;
    let mut new_tbs = head.to_vec();
    new_tbs.extend(encode(0x30, subject));
    new_tbs.extend_from_slice(after_subject);
    let mut body = encode(tbs_tag, &new_tbs);
    body.extend_from_slice(after_tbs);
    Some(encode(0x30, &body))
}

/// One DER element: tag, content, rest. The harness's own, not `tls`'s: the template is built
/// without the code under test.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (digits, rest) = rest.split_at(n);
        (
            digits.iter().fold(0, |a, d| (a << 8) | usize::from(*d)),
            rest,
        )
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}
