//! The signature algorithms keyrotor supports and the key shapes behind them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JWS signature algorithm (RFC 7518 section 3, RFC 8037 for EdDSA).
///
/// Only asymmetric signature algorithms: no `HS*`, no `none`. Serialised as the JOSE
/// `alg` string (`"ES256"`, `"ES384"`, `"EdDSA"`, `"RS256"`, `"PS256"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256.
    ES256,
    /// ECDSA with P-384 and SHA-384.
    ES384,
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256 and MGF1 with SHA-256.
    PS256,
}

impl Algorithm {
    /// Every supported algorithm, in a stable order.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::RS256,
        Algorithm::PS256,
    ];

    /// The JOSE `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }

    /// The JWK `kty` of keys for this algorithm.
    pub fn key_type(self) -> KeyType {
        match self {
            Algorithm::ES256 | Algorithm::ES384 => KeyType::EC,
            Algorithm::EdDSA => KeyType::OKP,
            Algorithm::RS256 | Algorithm::PS256 => KeyType::RSA,
        }
    }

    /// The JWK `crv` of keys for this algorithm (`None` for RSA).
    pub fn curve(self) -> Option<Curve> {
        match self {
            Algorithm::ES256 => Some(Curve::P256),
            Algorithm::ES384 => Some(Curve::P384),
            Algorithm::EdDSA => Some(Curve::Ed25519),
            Algorithm::RS256 | Algorithm::PS256 => None,
        }
    }

    /// Whether keys for this algorithm are RSA keys (and so take [`RsaBits`]).
    pub fn is_rsa(self) -> bool {
        self.key_type() == KeyType::RSA
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that names no supported algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported algorithm {0:?} (supported: ES256, ES384, EdDSA, RS256, PS256)")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str() == s)
            .ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

/// JWK key type (`kty`, RFC 7518 section 6.1 and RFC 8037).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum KeyType {
    /// Elliptic curve (P-256, P-384).
    EC,
    /// Octet key pair (Ed25519).
    OKP,
    /// RSA.
    RSA,
}

impl KeyType {
    /// The JOSE `kty` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EC => "EC",
            KeyType::OKP => "OKP",
            KeyType::RSA => "RSA",
        }
    }
}

/// JWK curve (`crv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Curve {
    /// NIST P-256.
    #[serde(rename = "P-256")]
    P256,
    /// NIST P-384.
    #[serde(rename = "P-384")]
    P384,
    /// Ed25519 (an OKP curve).
    Ed25519,
}

impl Curve {
    /// The JOSE `crv` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::Ed25519 => "Ed25519",
        }
    }

    /// Length in bytes of a coordinate (EC) or of the public key (OKP).
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::Ed25519 => 32,
        }
    }
}

/// RSA modulus size. Only these three sizes are generated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RsaBits {
    /// 2048-bit modulus.
    B2048,
    /// 3072-bit modulus.
    #[default]
    B3072,
    /// 4096-bit modulus.
    B4096,
}

impl RsaBits {
    /// The modulus size in bits.
    pub fn bits(self) -> u32 {
        match self {
            RsaBits::B2048 => 2048,
            RsaBits::B3072 => 3072,
            RsaBits::B4096 => 4096,
        }
    }

    /// The size for a bit count, if it is one of the supported sizes.
    pub fn from_bits(bits: u32) -> Option<RsaBits> {
        match bits {
            2048 => Some(RsaBits::B2048),
            3072 => Some(RsaBits::B3072),
            4096 => Some(RsaBits::B4096),
            _ => None,
        }
    }
}

impl Serialize for RsaBits {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.bits())
    }
}

impl<'de> Deserialize<'de> for RsaBits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bits = u32::deserialize(deserializer)?;
        RsaBits::from_bits(bits).ok_or_else(|| {
            serde::de::Error::custom(format!("rsaBits must be 2048, 3072 or 4096, not {bits}"))
        })
    }
}
