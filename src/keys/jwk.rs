//! Public and private JWKs (RFC 7517, 7518, 8037) and the RFC 7638 thumbprint.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::KeyError;
use super::algorithm::{Algorithm, Curve, KeyType};

/// The JWK `use` member. keyrotor keys only sign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyUse {
    /// `"sig"`: the key verifies signatures.
    #[default]
    #[serde(rename = "sig")]
    Sig,
}

/// The public half of a key as a JWK.
///
/// Holds only RFC 7517/7518/8037 members: `kty`, `crv`, `x`, `y` (EC/OKP) or `n`, `e`
/// (RSA), plus `kid` (the RFC 7638 thumbprint), `alg`, `use: "sig"`, and with a
/// certificate `x5c` and `x5t#S256`. It cannot carry private members, so rendering it
/// never leaks private material. Serialisation is deterministic (fixed member order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// Key type.
    pub kty: KeyType,
    /// Curve (EC and OKP keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<Curve>,
    /// x coordinate (EC) or public key (OKP), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// y coordinate (EC), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Key ID: the RFC 7638 SHA-256 thumbprint.
    pub kid: String,
    /// The algorithm this key is for.
    pub alg: Algorithm,
    /// Always `"sig"`.
    #[serde(rename = "use")]
    pub key_use: KeyUse,
    /// Certificate chain: standard base64 (with padding) DER, RFC 7517 section 4.7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
    /// base64url SHA-256 of the DER certificate, RFC 7517 section 4.9.
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

/// A private JWK member value: zeroised on drop, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(Zeroizing<String>);

impl Redacted {
    /// Wraps a base64url value.
    pub fn new(value: String) -> Self {
        Redacted(Zeroizing::new(value))
    }

    /// The wrapped value. Handle with care: it is private key material.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Redacted {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Redacted {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Redacted::new)
    }
}

/// A private key as a JWK: the public members plus `d` (and for RSA `p`, `q`, `dp`,
/// `dq`, `qi`). `Debug` redacts every private member. PKCS#8 is derived from it
/// ([`PrivateJwk::to_pkcs8_der`]), so it is the only form the ring stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateJwk {
    /// Key type.
    pub kty: KeyType,
    /// Curve (EC and OKP keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<Curve>,
    /// x coordinate (EC) or public key (OKP), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// y coordinate (EC), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Private scalar (EC), private key seed (OKP) or private exponent (RSA).
    pub d: Redacted,
    /// RSA first prime factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<Redacted>,
    /// RSA second prime factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<Redacted>,
    /// RSA first factor CRT exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<Redacted>,
    /// RSA second factor CRT exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dq: Option<Redacted>,
    /// RSA first CRT coefficient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qi: Option<Redacted>,
    /// Key ID: the RFC 7638 thumbprint of the public members.
    pub kid: String,
    /// The algorithm this key is for.
    pub alg: Algorithm,
    /// Always `"sig"`.
    #[serde(rename = "use")]
    pub key_use: KeyUse,
}

/// Names of JWK members that carry private key material (RFC 7518 section 6).
pub const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// base64url without padding, as JOSE uses.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; the error names the member, never its value.
pub(crate) fn b64url_decode(member: &str, value: &str) -> Result<Vec<u8>, KeyError> {
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| KeyError::InvalidJwk(format!("member {member:?} is not base64url")))
}

/// Standard base64 with padding, as `x5c` uses.
pub(crate) fn b64std(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic
/// order with no whitespace, base64url without padding.
///
/// Required members: EC `crv`, `kty`, `x`, `y`; OKP `crv`, `kty`, `x` (RFC 8037
/// section 2); RSA `e`, `kty`, `n`.
pub fn thumbprint(
    kty: KeyType,
    crv: Option<Curve>,
    x: Option<&str>,
    y: Option<&str>,
    n: Option<&str>,
    e: Option<&str>,
) -> Result<String, KeyError> {
    let missing = |m: &str| KeyError::InvalidJwk(format!("{} key without {m:?}", kty.as_str()));
    // Values are checked to be base64url (or a known curve name), so no JSON escaping
    // is ever needed and the string below is the canonical JSON.
    let canonical = match kty {
        KeyType::EC => {
            let crv = crv.ok_or_else(|| missing("crv"))?;
            let x = x.ok_or_else(|| missing("x"))?;
            let y = y.ok_or_else(|| missing("y"))?;
            check_b64url("x", x)?;
            check_b64url("y", y)?;
            format!(
                r#"{{"crv":"{}","kty":"EC","x":"{x}","y":"{y}"}}"#,
                crv.as_str()
            )
        }
        KeyType::OKP => {
            let crv = crv.ok_or_else(|| missing("crv"))?;
            let x = x.ok_or_else(|| missing("x"))?;
            check_b64url("x", x)?;
            format!(r#"{{"crv":"{}","kty":"OKP","x":"{x}"}}"#, crv.as_str())
        }
        KeyType::RSA => {
            let n = n.ok_or_else(|| missing("n"))?;
            let e = e.ok_or_else(|| missing("e"))?;
            check_b64url("n", n)?;
            check_b64url("e", e)?;
            format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#)
        }
    };
    Ok(b64url(&Sha256::digest(canonical.as_bytes())))
}

fn check_b64url(member: &str, value: &str) -> Result<(), KeyError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidJwk(format!(
            "member {member:?} is not base64url"
        )))
    }
}

impl PublicJwk {
    /// The RFC 7638 thumbprint of this key's required members.
    pub fn thumbprint(&self) -> Result<String, KeyError> {
        thumbprint(
            self.kty,
            self.crv,
            self.x.as_deref(),
            self.y.as_deref(),
            self.n.as_deref(),
            self.e.as_deref(),
        )
    }

    /// The modulus size of an RSA key in bits (`None` for other key types or a
    /// malformed modulus).
    pub fn rsa_modulus_bits(&self) -> Option<u32> {
        let n = URL_SAFE_NO_PAD.decode(self.n.as_deref()?).ok()?;
        let first = n.iter().position(|b| *b != 0)?;
        let significant = &n[first..];
        let leading = significant[0].leading_zeros();
        Some(significant.len() as u32 * 8 - leading)
    }

    /// Checks the JWK is well formed for its algorithm: the members its `kty` needs and
    /// no others, the right curve and sizes, `kid` equal to the thumbprint, and a
    /// consistent `x5t#S256` when `x5c` is present.
    pub fn validate(&self) -> Result<(), KeyError> {
        check_shape(
            self.alg,
            self.kty,
            self.crv,
            [&self.x, &self.y, &self.n, &self.e],
        )?;
        let expected = self.thumbprint()?;
        if self.kid != expected {
            return Err(KeyError::KidMismatch {
                kid: self.kid.clone(),
                thumbprint: expected,
            });
        }
        match (&self.x5c, &self.x5t_s256) {
            (None, None) => {}
            (Some(chain), Some(x5t)) => {
                let leaf = chain
                    .first()
                    .ok_or_else(|| KeyError::InvalidJwk("empty x5c".into()))?;
                let der = STANDARD
                    .decode(leaf)
                    .map_err(|_| KeyError::InvalidJwk("x5c is not base64".into()))?;
                if *x5t != b64url(&Sha256::digest(&der)) {
                    return Err(KeyError::InvalidJwk(
                        "x5t#S256 does not match the x5c certificate".into(),
                    ));
                }
            }
            _ => {
                return Err(KeyError::InvalidJwk(
                    "x5c and x5t#S256 must be present together".into(),
                ));
            }
        }
        Ok(())
    }

    /// This JWK without certificate members.
    pub fn without_certificate(&self) -> PublicJwk {
        PublicJwk {
            x5c: None,
            x5t_s256: None,
            ..self.clone()
        }
    }
}

/// Checks which members are present for the algorithm, and their sizes.
fn check_shape(
    alg: Algorithm,
    kty: KeyType,
    crv: Option<Curve>,
    [x, y, n, e]: [&Option<String>; 4],
) -> Result<(), KeyError> {
    if kty != alg.key_type() {
        return Err(KeyError::AlgorithmMismatch {
            alg,
            found: kty.as_str().to_owned(),
        });
    }
    if crv != alg.curve() {
        return Err(KeyError::AlgorithmMismatch {
            alg,
            found: format!(
                "{} key on curve {}",
                kty.as_str(),
                crv.map_or("(none)", Curve::as_str)
            ),
        });
    }
    let present = |m: &Option<String>| m.is_some();
    let shape_ok = match kty {
        KeyType::EC => present(x) && present(y) && !present(n) && !present(e),
        KeyType::OKP => present(x) && !present(y) && !present(n) && !present(e),
        KeyType::RSA => !present(x) && !present(y) && present(n) && present(e),
    };
    if !shape_ok {
        return Err(KeyError::InvalidJwk(format!(
            "{} key with the wrong set of members",
            kty.as_str()
        )));
    }
    if let (Some(curve), Some(x)) = (crv, x) {
        let len = b64url_decode("x", x)?.len();
        let y_len = y
            .as_deref()
            .map(|y| b64url_decode("y", y).map(|v| v.len()))
            .transpose()?;
        if len != curve.coordinate_len() || y_len.is_some_and(|l| l != curve.coordinate_len()) {
            return Err(KeyError::InvalidJwk(format!(
                "{} coordinates must be {} bytes",
                curve.as_str(),
                curve.coordinate_len()
            )));
        }
    }
    if let (Some(n), Some(e)) = (n, e) {
        let n = b64url_decode("n", n)?;
        let e = b64url_decode("e", e)?;
        if n.first() == Some(&0) || e.first() == Some(&0) {
            return Err(KeyError::InvalidJwk(
                "RSA n and e must be minimal big-endian integers".into(),
            ));
        }
        if n.len() * 8 < 2048 {
            return Err(KeyError::InvalidJwk(
                "RSA modulus shorter than 2048 bits".into(),
            ));
        }
        if e.is_empty() || e.len() > 8 {
            return Err(KeyError::InvalidJwk("RSA exponent out of range".into()));
        }
    }
    Ok(())
}

impl PrivateJwk {
    /// The public half (without certificate members).
    pub fn public(&self) -> PublicJwk {
        PublicJwk {
            kty: self.kty,
            crv: self.crv,
            x: self.x.clone(),
            y: self.y.clone(),
            n: self.n.clone(),
            e: self.e.clone(),
            kid: self.kid.clone(),
            alg: self.alg,
            key_use: self.key_use,
            x5c: None,
            x5t_s256: None,
        }
    }

    /// Checks the public members (as [`PublicJwk::validate`]), that the private members
    /// the key type needs are present, and that the private key really belongs to the
    /// public members (by deriving the public key from it).
    pub fn validate(&self) -> Result<(), KeyError> {
        self.public().validate()?;
        let rsa_members = [&self.p, &self.q, &self.dp, &self.dq, &self.qi];
        match self.kty {
            KeyType::RSA if rsa_members.iter().any(|m| m.is_none()) => {
                return Err(KeyError::InvalidJwk(
                    "RSA private key without all of p, q, dp, dq, qi".into(),
                ));
            }
            KeyType::EC | KeyType::OKP if rsa_members.iter().any(|m| m.is_some()) => {
                return Err(KeyError::InvalidJwk(format!(
                    "{} private key with RSA members",
                    self.kty.as_str()
                )));
            }
            _ => {}
        }
        let derived = super::convert::public_from_private(self)?;
        if derived != self.public() {
            return Err(KeyError::InvalidJwk(format!(
                "private key {} does not match its public members",
                self.kid
            )));
        }
        Ok(())
    }

    /// The PKCS#8 DER encoding (RFC 5208 `PrivateKeyInfo`, version 1).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        super::convert::to_pkcs8_der(self)
    }

    /// The PKCS#8 PEM encoding (`-----BEGIN PRIVATE KEY-----`, LF line endings).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        super::convert::to_pkcs8_pem(self)
    }

    /// Deterministic JSON of the private JWK (for the Secret's `private.jwk`).
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        // Serialising plain strings and enums into a Vec cannot fail.
        Zeroizing::new(serde_json::to_vec(self).unwrap_or_default())
    }
}
