//! Self-signed X.509 certificates around a key (rcgen), for `tls.crt`, `x5c` and
//! `x5t#S256`.
//!
//! The certificate is signed with the key itself through deterministic signature
//! schemes (RFC 6979 ECDSA, Ed25519, RSA PKCS#1 v1.5 with SHA-256 for both RS256 and
//! PS256 keys: the certificate's signature algorithm need not be the JWT `alg`), and
//! the serial number is derived from the kid, so the same key, subject and validity
//! always give the same certificate bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyUsagePurpose, PublicKeyData, SerialNumber,
    SignatureAlgorithm, SigningKey,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::KeyError;
use super::algorithm::Algorithm;
use super::convert;
use super::jwk::{PrivateJwk, b64std, b64url};

/// A DER certificate with its PEM form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

impl Certificate {
    /// Wraps DER bytes.
    pub fn from_der(der: Vec<u8>) -> Self {
        Certificate { der }
    }

    /// Parses a single-certificate PEM (`-----BEGIN CERTIFICATE-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let invalid = || KeyError::Certificate("not a PEM certificate".into());
        let body = pem
            .trim()
            .strip_prefix("-----BEGIN CERTIFICATE-----")
            .and_then(|rest| rest.strip_suffix("-----END CERTIFICATE-----"))
            .ok_or_else(invalid)?;
        let base64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let der = STANDARD.decode(base64).map_err(|_| invalid())?;
        Ok(Certificate { der })
    }

    /// DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM (`CERTIFICATE`, 64-character lines, LF endings).
    pub fn pem(&self) -> String {
        convert::pem_encode("CERTIFICATE", &self.der)
    }

    /// The `x5c` entry: standard base64 with padding of the DER (RFC 7517 section 4.7).
    pub fn x5c(&self) -> String {
        b64std(&self.der)
    }

    /// The `x5t#S256` value: base64url SHA-256 of the DER (RFC 7517 section 4.9).
    pub fn x5t_s256(&self) -> String {
        b64url(&Sha256::digest(&self.der))
    }
}

/// Issues a self-signed certificate for `key` with subject `CN=<subject>, O=keyrotor`,
/// valid from `not_before` to `not_after` (whole seconds, rounded outwards).
pub fn self_signed(
    key: &PrivateJwk,
    subject: &str,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<Certificate, KeyError> {
    let signer = JwkSigner::new(key)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, subject);
    name.push(DnType::OrganizationName, "keyrotor");
    params.distinguished_name = name;
    params.not_before = to_offset(not_before, false)?;
    params.not_after = to_offset(not_after, true)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A positive 16-byte serial derived from the kid: unique per key, deterministic.
    let mut serial = Sha256::digest(key.kid.as_bytes())[..16].to_vec();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params
        .self_signed(&signer)
        .map_err(|e| KeyError::Certificate(format!("cannot issue certificate: {e}")))?;
    Ok(Certificate {
        der: cert.der().to_vec(),
    })
}

fn to_offset(t: DateTime<Utc>, round_up: bool) -> Result<OffsetDateTime, KeyError> {
    let mut secs = t.timestamp();
    if round_up && t.timestamp_subsec_nanos() > 0 {
        secs += 1;
    }
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| KeyError::Certificate("certificate validity out of range".into()))
}

enum SignerKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(Box<rsa::pkcs1v15::SigningKey<sha2::Sha256>>),
}

/// Adapts a private JWK to rcgen's signing interface.
struct JwkSigner {
    key: SignerKey,
    public_key: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl JwkSigner {
    fn new(jwk: &PrivateJwk) -> Result<Self, KeyError> {
        Ok(match jwk.alg {
            Algorithm::ES256 => {
                let key = convert::p256_signing_key(jwk)?;
                let public_key = key.verifying_key().to_sec1_point(false).as_bytes().to_vec();
                JwkSigner {
                    key: SignerKey::P256(key),
                    public_key,
                    algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
                }
            }
            Algorithm::ES384 => {
                let key = convert::p384_signing_key(jwk)?;
                let public_key = key.verifying_key().to_sec1_point(false).as_bytes().to_vec();
                JwkSigner {
                    key: SignerKey::P384(key),
                    public_key,
                    algorithm: &rcgen::PKCS_ECDSA_P384_SHA384,
                }
            }
            Algorithm::EdDSA => {
                let key = convert::ed25519_signing_key(jwk)?;
                let public_key = key.verifying_key().as_bytes().to_vec();
                JwkSigner {
                    key: SignerKey::Ed25519(key),
                    public_key,
                    algorithm: &rcgen::PKCS_ED25519,
                }
            }
            Algorithm::RS256 | Algorithm::PS256 => {
                use rsa::pkcs1::EncodeRsaPublicKey as _;
                let key = convert::rsa_secret(jwk)?;
                let public_key = key
                    .to_public_key()
                    .to_pkcs1_der()
                    .map_err(|_| KeyError::Certificate("cannot encode RSA public key".into()))?
                    .as_bytes()
                    .to_vec();
                JwkSigner {
                    key: SignerKey::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(key))),
                    public_key,
                    algorithm: &rcgen::PKCS_RSA_SHA256,
                }
            }
        })
    }
}

impl PublicKeyData for JwkSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl SigningKey for JwkSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        Ok(match &self.key {
            SignerKey::P256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(msg);
                signature.to_der().as_bytes().to_vec()
            }
            SignerKey::P384(key) => {
                let signature: p384::ecdsa::Signature = key.sign(msg);
                signature.to_der().as_bytes().to_vec()
            }
            SignerKey::Ed25519(key) => key.sign(msg).to_bytes().to_vec(),
            SignerKey::Rsa(key) => key.sign(msg).to_vec(),
        })
    }
}
