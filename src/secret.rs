//! The signing Secret's data, derived from the ring.
//!
//! Data keys (issuers mount these):
//!
//! | key | content |
//! | --- | --- |
//! | `private.pem` | the Active key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) |
//! | `private.jwk` | the Active key as a private JWK (JSON, with `kid`, `alg`, `use`) |
//! | `kid` | the Active key's kid (RFC 7638 thumbprint), no newline |
//! | `alg` | the Active key's JOSE algorithm (`ES256`, …), no newline |
//! | `ring.json` | the whole key ring ([`crate::ring`]), the source of truth |
//! | `tls.crt` | with certificates: the Active key's self-signed certificate (PEM) |
//! | `tls.key` | with certificates: same bytes as `private.pem` |
//!
//! With certificates the Secret can be of type `kubernetes.io/tls`. Signers should
//! re-read the files when they change (the kubelet updates mounted Secrets in place)
//! and put `kid` in the JWS header.

use std::collections::BTreeMap;

use crate::keys::KeyError;
use crate::plan::StoredRing;
use crate::ring::Ring;

/// `private.pem`: PKCS#8 PEM of the Active key.
pub const PRIVATE_PEM: &str = "private.pem";
/// `private.jwk`: private JWK of the Active key.
pub const PRIVATE_JWK: &str = "private.jwk";
/// `kid`: the Active kid.
pub const KID: &str = "kid";
/// `alg`: the Active key's algorithm.
pub const ALG: &str = "alg";
/// `ring.json`: the ring document.
pub const RING_JSON: &str = "ring.json";
/// `tls.crt`: the Active key's certificate (with certificates enabled).
pub const TLS_CRT: &str = "tls.crt";
/// `tls.key`: the Active key's PKCS#8 PEM (with certificates enabled).
pub const TLS_KEY: &str = "tls.key";

/// Why the Secret's data cannot be rendered. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The ring has no Active key (an incomplete plan).
    #[error("the key ring has no Active key")]
    NoActiveKey,
    /// The Active key has no private half.
    #[error("Active key {0:?} has no private key")]
    NoPrivateKey(String),
    /// Certificates are enabled but the Active key has none.
    #[error("Active key {0:?} has no certificate")]
    NoCertificate(String),
    /// Encoding the key failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Renders the Secret's data from the ring. Deterministic: the same ring gives the same
/// bytes. With `certificate`, adds `tls.crt` and `tls.key`.
pub fn secret_data(
    ring: &Ring,
    certificate: bool,
) -> Result<BTreeMap<String, Vec<u8>>, SecretError> {
    let active = ring.active().ok_or(SecretError::NoActiveKey)?;
    let private = active
        .private_jwk
        .as_ref()
        .ok_or_else(|| SecretError::NoPrivateKey(active.kid.clone()))?;
    let pem = private.to_pkcs8_pem()?;
    let mut data = BTreeMap::new();
    data.insert(PRIVATE_PEM.to_owned(), pem.as_bytes().to_vec());
    data.insert(PRIVATE_JWK.to_owned(), private.to_json().to_vec());
    data.insert(KID.to_owned(), active.kid.as_bytes().to_vec());
    data.insert(ALG.to_owned(), active.alg.as_str().as_bytes().to_vec());
    data.insert(RING_JSON.to_owned(), ring.to_bytes());
    if certificate {
        let cert = active
            .certificate
            .as_ref()
            .ok_or_else(|| SecretError::NoCertificate(active.kid.clone()))?;
        data.insert(TLS_CRT.to_owned(), cert.pem.as_bytes().to_vec());
        data.insert(TLS_KEY.to_owned(), pem.as_bytes().to_vec());
    }
    Ok(data)
}

/// Reads the ring from a Secret's data (`None`: no Secret).
pub fn stored_ring(data: Option<&BTreeMap<String, Vec<u8>>>) -> StoredRing {
    StoredRing::from_bytes(data.and_then(|d| d.get(RING_JSON)).map(Vec::as_slice))
}
