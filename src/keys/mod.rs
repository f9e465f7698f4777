//! Keys: algorithms, generation (behind [`KeyGenerator`]), public and private JWKs, the
//! RFC 7638 thumbprint, PKCS#8 PEM and optional self-signed certificates.
//!
//! Everything here is pure apart from [`SystemKeyGenerator`], which reads the operating
//! system's random number generator. Errors never carry private key material.

mod algorithm;
pub mod certificate;
mod convert;
mod generate;
mod jwk;

pub use algorithm::{Algorithm, Curve, KeyType, RsaBits, UnknownAlgorithm};
pub use certificate::Certificate;
pub use generate::{KeyGenerator, KeyMaterial, SeededKeyGenerator, SystemKeyGenerator};
pub use jwk::{KeyUse, PRIVATE_MEMBERS, PrivateJwk, PublicJwk, Redacted, thumbprint};

/// Why a key could not be generated, encoded or checked. Messages name members and
/// kids, never private values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The JWK is malformed.
    #[error("invalid JWK: {0}")]
    InvalidJwk(String),
    /// The key type or curve does not fit the algorithm.
    #[error("key does not match algorithm {alg}: found {found}")]
    AlgorithmMismatch {
        /// The declared algorithm.
        alg: Algorithm,
        /// What the key actually is.
        found: String,
    },
    /// The `kid` is not the RFC 7638 thumbprint of the key.
    #[error("kid {kid:?} is not the key's RFC 7638 thumbprint {thumbprint:?}")]
    KidMismatch {
        /// The declared kid.
        kid: String,
        /// The computed thumbprint.
        thumbprint: String,
    },
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    Generation(String),
    /// PKCS#8 or PEM encoding failed.
    #[error("encoding failed: {0}")]
    Encoding(String),
    /// The certificate could not be issued or read.
    #[error("certificate: {0}")]
    Certificate(String),
}
