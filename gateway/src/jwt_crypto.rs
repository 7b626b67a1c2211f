//! Signature verification for access tokens with `ring` — the crypto library the TLS stack
//! already uses — plugged into `jsonwebtoken` as its process-wide provider.
//!
//! Why: `jsonwebtoken`'s pure-Rust backend re-parses the public key on every verification, about
//! four times `ring`'s cost per ES256 token (`docs/benchmark-history.md`, "Token verification").
//! Signing (the demo issuer only) and JWK helpers stay with the pure-Rust backend. Symmetric
//! algorithms have no verifier at all: the gateway never checks an HMAC.

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self as ring_sig, RsaPublicKeyComponents, UnparsedPublicKey};
use std::sync::LazyLock;

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    verifier_factory: verifier,
    ..jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.clone()
});

/// Makes `ring` the verifier of every token in this process. Call before the first use of
/// `jsonwebtoken`; later calls (and calls after another provider was chosen) change nothing.
pub fn install() {
    // An error means a provider is already in place; either one verifies correctly.
    let _ = LazyLock::force(&PROVIDER).install_default();
}

struct RingVerifier {
    algorithm: Algorithm,
    key: Key,
}

enum Key {
    /// SEC1 point (EC), PKCS#1 DER (RSA) or raw Ed25519 key, as `DecodingKey` holds them.
    Bytes(&'static dyn ring_sig::VerificationAlgorithm, Vec<u8>),
    /// RSA modulus and exponent, as a JWK gives them.
    Components(&'static ring_sig::RsaParameters, Vec<u8>, Vec<u8>),
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    use DecodingKeyKind::{RsaModulusExponent, SecretOrDer};
    let rsa = |params: &'static ring_sig::RsaParameters| match key.kind() {
        SecretOrDer(der) => Key::Bytes(params, der.clone()),
        RsaModulusExponent { n, e } => Key::Components(params, n.clone(), e.clone()),
    };
    let bytes = |alg: &'static dyn ring_sig::VerificationAlgorithm| match key.kind() {
        SecretOrDer(b) => Ok(Key::Bytes(alg, b.clone())),
        RsaModulusExponent { .. } => Err(jsonwebtoken::errors::Error::from(
            ErrorKind::InvalidKeyFormat,
        )),
    };
    let key = match algorithm {
        Algorithm::ES256 => bytes(&ring_sig::ECDSA_P256_SHA256_FIXED)?,
        Algorithm::ES384 => bytes(&ring_sig::ECDSA_P384_SHA384_FIXED)?,
        Algorithm::EdDSA => bytes(&ring_sig::ED25519)?,
        Algorithm::RS256 => rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => rsa(&ring_sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => rsa(&ring_sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => rsa(&ring_sig::RSA_PSS_2048_8192_SHA512),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        key,
    }))
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        let ok = match &self.key {
            Key::Bytes(alg, key) => UnparsedPublicKey::new(*alg, key)
                .verify(message, signature)
                .is_ok(),
            Key::Components(params, n, e) => RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
