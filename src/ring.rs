//! The key ring: every key of one policy with its state and times. It is stored as
//! `ring.json` in the signing Secret, the single source of truth, and is self-contained
//! (readable without the controller).
//!
//! Document shape (version 1), members in this order:
//!
//! ```json
//! {"version":1,"lastRotateRequest":"2026-12-01","keys":[
//!   {"kid":"…","alg":"ES256","state":"Active","createdAt":"…","publishedAt":"…",
//!    "activatedAt":"…","activatedWithoutPrepublication":"FirstKey",
//!    "publicJwk":{…},"privateJwk":{…},"certificate":{"pem":"…","notBefore":"…","notAfter":"…"}},
//!   {"kid":"…","state":"Next",…},
//!   {"kid":"…","state":"Retired","retiredAt":"…","removesAt":"…","publicJwk":{…}}]}
//! ```
//!
//! Keys are kept in a canonical order: Active, then Next, then Retired newest first.
//! Private JWKs are present exactly while a key is Next or Active.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::{Algorithm, Certificate, KeyError, PrivateJwk, PublicJwk};

/// The ring document version this build writes and reads.
pub const RING_VERSION: u32 = 1;

/// Lifecycle state of a key. States only move forward: Next → Active → Retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyState {
    /// Generated and published, not signing yet.
    Next,
    /// The one key that signs.
    Active,
    /// No longer signing; private half erased; still published until `removesAt`.
    Retired,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyState::Next => "Next",
            KeyState::Active => "Active",
            KeyState::Retired => "Retired",
        })
    }
}

/// Why a key became Active without having been published for `propagationDelay`
/// first (the only allowed exceptions to pre-publication).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ActivationException {
    /// The very first key of a ring.
    FirstKey,
    /// The Active key was revoked and no fully published successor existed.
    Revocation,
    /// The ring was lost or unreadable and had to be rebuilt.
    Recovery,
}

impl fmt::Display for ActivationException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActivationException::FirstKey => "FirstKey",
            ActivationException::Revocation => "Revocation",
            ActivationException::Recovery => "Recovery",
        })
    }
}

/// A key's certificate, with its validity (whole seconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyCertificate {
    /// PEM of the self-signed certificate.
    pub pem: String,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
}

/// One key of the ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingKey {
    /// RFC 7638 thumbprint; equals `public_jwk.kid`.
    pub kid: String,
    /// Algorithm; equals `public_jwk.alg`.
    pub alg: Algorithm,
    /// Lifecycle state.
    pub state: KeyState,
    /// When the key was generated (or, for a recovered key, found again).
    pub created_at: DateTime<Utc>,
    /// When every target JWKS was first observed to contain the key (cleared again for
    /// a Next key if a target is observed without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
    /// When the key became Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<DateTime<Utc>>,
    /// When the key was retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<DateTime<Utc>>,
    /// When a Retired key leaves the ring and the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removes_at: Option<DateTime<Utc>>,
    /// Set when the key became Active without pre-publication, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_without_prepublication: Option<ActivationException>,
    /// The key was recovered from a JWKS after the ring was lost (public half only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// The public JWK as published (with `x5c`/`x5t#S256` when it has a certificate).
    pub public_jwk: PublicJwk,
    /// The private JWK: present exactly while Next or Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_jwk: Option<PrivateJwk>,
    /// The self-signed certificate, when certificates are enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<KeyCertificate>,
}

/// The key ring document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ring {
    /// Document version, [`RING_VERSION`].
    pub version: u32,
    /// The last `keyrotor.dev/rotate-request` value that was honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// Set when the ring was rebuilt after it was lost or unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuilt: Option<RingRebuild>,
    /// The keys, in canonical order (see [`Ring::canonicalize`]).
    pub keys: Vec<RingKey>,
}

/// When and why a ring was rebuilt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingRebuild {
    /// When.
    pub at: DateTime<Utc>,
    /// Why (a description without key material).
    pub cause: String,
}

/// Why a stored ring could not be used. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Not valid JSON, or JSON of the wrong shape.
    #[error("ring.json is malformed at line {line}, column {column}: {problem}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What kind of problem (never the offending value).
        problem: String,
    },
    /// No `version` member.
    #[error("ring.json has no version")]
    MissingVersion,
    /// Written by a newer keyrotor: do not touch it.
    #[error("ring.json has version {found}, newer than the supported version {supported}")]
    NewerVersion {
        /// The version found.
        found: u64,
        /// [`RING_VERSION`].
        supported: u32,
    },
    /// A version this build never wrote.
    #[error("ring.json has unsupported version {0}")]
    UnsupportedVersion(u64),
    /// A key's JWK is invalid (including a kid that is not the thumbprint).
    #[error("key {kid:?}: {source}")]
    InvalidKey {
        /// The key's kid.
        kid: String,
        /// What is wrong.
        source: KeyError,
    },
    /// The ring entry's kid or alg differs from its JWK's.
    #[error("key {kid:?}: {problem}")]
    Inconsistent {
        /// The key's kid.
        kid: String,
        /// What does not match.
        problem: String,
    },
    /// A Retired key still holds its private half.
    #[error("retired key {0:?} still holds a private key")]
    PrivateOnRetired(String),
    /// A Next or Active key lacks its private half.
    #[error("{state} key {kid:?} has no private key")]
    MissingPrivate {
        /// The key's kid.
        kid: String,
        /// Its state.
        state: KeyState,
    },
    /// More than one key in a state that allows only one.
    #[error("more than one {state} key: {kids:?}")]
    TooMany {
        /// The state.
        state: KeyState,
        /// The kids in that state.
        kids: Vec<String>,
    },
    /// No Active key.
    #[error("ring has no Active key")]
    NoActive,
    /// The same kid twice.
    #[error("duplicate kid {0:?}")]
    DuplicateKid(String),
    /// A time the key's state requires is missing.
    #[error("{state} key {kid:?} has no {field}")]
    MissingTime {
        /// The key's kid.
        kid: String,
        /// Its state.
        state: KeyState,
        /// The missing member.
        field: &'static str,
    },
    /// `x5c` does not match the stored certificate.
    #[error("key {0:?}: certificate does not match x5c/x5t#S256")]
    CertificateMismatch(String),
}

impl RingError {
    /// Whether the ring must be left alone (a newer keyrotor wrote it) rather than
    /// rebuilt.
    pub fn is_newer_version(&self) -> bool {
        matches!(self, RingError::NewerVersion { .. })
    }
}

/// Maps a serde_json error to a message with position and category only: serde's own
/// messages can quote the offending value, which may be private key material.
fn malformed(e: &serde_json::Error) -> RingError {
    use serde_json::error::Category;
    let problem = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "invalid JSON syntax",
        Category::Data => "a member has the wrong type or value",
        Category::Eof => "unexpected end of input",
    };
    RingError::Malformed {
        line: e.line(),
        column: e.column(),
        problem: problem.to_owned(),
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    version: Option<serde_json::Value>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring::new()
    }
}

impl Ring {
    /// An empty ring (no keys yet).
    pub fn new() -> Self {
        Ring {
            version: RING_VERSION,
            last_rotate_request: None,
            rebuilt: None,
            keys: Vec::new(),
        }
    }

    /// Parses and validates a stored ring.
    ///
    /// Rejects malformed JSON, a missing or newer version, JWKs that are invalid or do
    /// not match their algorithm, a kid that is not the thumbprint, duplicate kids, a
    /// private half on a Retired key (or none on a Next/Active key), more than one
    /// Active or Next key, no Active key, missing times, and certificates that do not
    /// match `x5c`. Unknown members are ignored (forward compatibility within version 1).
    pub fn parse(bytes: &[u8]) -> Result<Ring, RingError> {
        let probe: VersionProbe = serde_json::from_slice(bytes).map_err(|e| malformed(&e))?;
        let version = match probe.version {
            None => return Err(RingError::MissingVersion),
            Some(v) => v.as_u64().ok_or(RingError::Malformed {
                line: 1,
                column: 1,
                problem: "version is not a non-negative integer".into(),
            })?,
        };
        if version > u64::from(RING_VERSION) {
            return Err(RingError::NewerVersion {
                found: version,
                supported: RING_VERSION,
            });
        }
        if version != u64::from(RING_VERSION) {
            return Err(RingError::UnsupportedVersion(version));
        }
        let mut ring: Ring = serde_json::from_slice(bytes).map_err(|e| malformed(&e))?;
        ring.validate()?;
        ring.canonicalize();
        Ok(ring)
    }

    /// Checks every rule [`Ring::parse`] enforces.
    pub fn validate(&self) -> Result<(), RingError> {
        let mut seen = BTreeSet::new();
        for key in &self.keys {
            if !seen.insert(key.kid.as_str()) {
                return Err(RingError::DuplicateKid(key.kid.clone()));
            }
            key.validate()?;
        }
        for state in [KeyState::Active, KeyState::Next] {
            let kids: Vec<String> = self
                .keys
                .iter()
                .filter(|k| k.state == state)
                .map(|k| k.kid.clone())
                .collect();
            if kids.len() > 1 {
                return Err(RingError::TooMany { state, kids });
            }
        }
        if self.active().is_none() {
            return Err(RingError::NoActive);
        }
        Ok(())
    }

    /// Deterministic bytes: the same ring always serialises identically.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut ring = self.clone();
        ring.canonicalize();
        // Plain strings, numbers and enums: serialisation cannot fail.
        serde_json::to_vec(&ring).unwrap_or_default()
    }

    /// Sorts keys into the canonical order: Active, Next, then Retired newest first
    /// (by `retiredAt`, then kid).
    pub fn canonicalize(&mut self) {
        self.keys
            .sort_by(|a, b| canonical_order(a).cmp(&canonical_order(b)));
    }

    /// The Active key.
    pub fn active(&self) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }

    /// The Next key.
    pub fn next(&self) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.state == KeyState::Next)
    }

    /// Retired keys, newest first.
    pub fn retired(&self) -> impl Iterator<Item = &RingKey> {
        let mut keys: Vec<&RingKey> = self
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Retired)
            .collect();
        keys.sort_by(|a, b| canonical_order(a).cmp(&canonical_order(b)));
        keys.into_iter()
    }

    /// The key with this kid.
    pub fn get(&self, kid: &str) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Public JWKs of every key in the ring in JWKS order: Active, Next, then Retired
    /// newest first.
    pub fn public_jwks(&self) -> Vec<PublicJwk> {
        let mut keys: Vec<&RingKey> = self.keys.iter().collect();
        keys.sort_by(|a, b| canonical_order(a).cmp(&canonical_order(b)));
        keys.into_iter().map(|k| k.public_jwk.clone()).collect()
    }
}

/// Sort key: state rank, then newest retirement first, then kid.
fn canonical_order(key: &RingKey) -> (u8, std::cmp::Reverse<Option<DateTime<Utc>>>, &str) {
    let rank = match key.state {
        KeyState::Active => 0,
        KeyState::Next => 1,
        KeyState::Retired => 2,
    };
    (rank, std::cmp::Reverse(key.retired_at), key.kid.as_str())
}

impl RingKey {
    /// Checks one key's rules (see [`Ring::parse`]).
    pub fn validate(&self) -> Result<(), RingError> {
        let invalid = |source| RingError::InvalidKey {
            kid: self.kid.clone(),
            source,
        };
        let inconsistent = |problem: String| RingError::Inconsistent {
            kid: self.kid.clone(),
            problem,
        };
        self.public_jwk.validate().map_err(invalid)?;
        if self.public_jwk.kid != self.kid {
            return Err(inconsistent(format!(
                "JWK kid is {:?}",
                self.public_jwk.kid
            )));
        }
        if self.public_jwk.alg != self.alg {
            return Err(inconsistent(format!(
                "ring says {} but the JWK says {}",
                self.alg, self.public_jwk.alg
            )));
        }
        match (self.state, &self.private_jwk) {
            (KeyState::Retired, Some(_)) => {
                return Err(RingError::PrivateOnRetired(self.kid.clone()));
            }
            (KeyState::Next | KeyState::Active, None) => {
                return Err(RingError::MissingPrivate {
                    kid: self.kid.clone(),
                    state: self.state,
                });
            }
            (_, Some(private)) => {
                private.validate().map_err(invalid)?;
                if private.public() != self.public_jwk.without_certificate() {
                    return Err(inconsistent(
                        "private JWK does not belong to the public JWK".into(),
                    ));
                }
            }
            (KeyState::Retired, None) => {}
        }
        let missing = |field| RingError::MissingTime {
            kid: self.kid.clone(),
            state: self.state,
            field,
        };
        match self.state {
            KeyState::Next => {}
            KeyState::Active => {
                self.activated_at.ok_or_else(|| missing("activatedAt"))?;
            }
            KeyState::Retired => {
                self.retired_at.ok_or_else(|| missing("retiredAt"))?;
                self.removes_at.ok_or_else(|| missing("removesAt"))?;
            }
        }
        match (&self.certificate, &self.public_jwk.x5c) {
            (None, None) => {}
            (Some(cert), Some(x5c)) => {
                let parsed = Certificate::from_pem(&cert.pem)
                    .map_err(|_| RingError::CertificateMismatch(self.kid.clone()))?;
                if x5c.len() != 1 || x5c[0] != parsed.x5c() {
                    return Err(RingError::CertificateMismatch(self.kid.clone()));
                }
            }
            _ => return Err(RingError::CertificateMismatch(self.kid.clone())),
        }
        Ok(())
    }
}
