//! JWKS documents (RFC 7517 section 5): deterministic rendering, merging the keys of
//! several policies into one document, a size guard, and parsing what a ConfigMap
//! currently holds.
//!
//! Rendered bytes are compact JSON `{"keys":[…]}` with each key's members in a fixed
//! order, so the same keys always give byte-identical output.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::keys::{KeyError, PRIVATE_MEMBERS, PublicJwk};

/// Largest JWKS keyrotor writes: well below the 1 MiB ConfigMap limit, leaving room
/// for the rest of the object (metadata, the `keyrotor.dev/sources` annotation).
pub const MAX_JWKS_BYTES: usize = 768 * 1024;

/// Why a JWKS could not be rendered or parsed. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The rendered document would exceed [`MAX_JWKS_BYTES`]; nothing is returned.
    #[error("JWKS of {keys} keys would be {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// How many keys it would hold.
        keys: usize,
        /// Its size in bytes.
        size: usize,
        /// [`MAX_JWKS_BYTES`].
        limit: usize,
    },
    /// Not JSON.
    #[error("JWKS is not valid JSON (line {line}, column {column})")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// JSON, but not a JWKS.
    #[error("not a JWKS: {0}")]
    NotAJwks(String),
    /// A key in the document carries private members.
    #[error("JWKS key {index} (kid {kid:?}) contains private key members")]
    PrivateMaterial {
        /// Position in `keys`.
        index: usize,
        /// Its kid, if it has one.
        kid: Option<String>,
    },
}

#[derive(Serialize)]
struct Document<'a> {
    keys: Vec<&'a PublicJwk>,
}

/// Renders keys as a JWKS in the order given, dropping later duplicates of a kid.
///
/// Pass a ring's keys in JWKS order ([`crate::ring::Ring::public_jwks`] or
/// [`crate::plan::Plan::publish`]): Active first, then Next, then Retired newest first.
/// Returns [`JwksError::TooLarge`] rather than a truncated document.
pub fn render(keys: &[PublicJwk]) -> Result<Vec<u8>, JwksError> {
    let mut seen = BTreeSet::new();
    let keys: Vec<&PublicJwk> = keys
        .iter()
        .filter(|k| seen.insert(k.kid.as_str()))
        .collect();
    let count = keys.len();
    // Serialising strings and enums cannot fail.
    let bytes = serde_json::to_vec(&Document { keys }).unwrap_or_default();
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge {
            keys: count,
            size: bytes.len(),
            limit: MAX_JWKS_BYTES,
        });
    }
    Ok(bytes)
}

/// The keys one source contributes to a merged JWKS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksSource {
    /// Stable name of the source, e.g. `"<namespace>/<name>"` of a policy, or a name for
    /// static keys. Sources are ordered by this name.
    pub name: String,
    /// The source's keys in its own JWKS order.
    pub keys: Vec<PublicJwk>,
}

/// A merged JWKS and which source each kid came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedJwks {
    /// The rendered document.
    pub document: Vec<u8>,
    /// Source name → kids it contributed, in document order (for the
    /// `keyrotor.dev/sources` annotation). A kid offered by several sources is credited
    /// to the first (by name).
    pub sources: BTreeMap<String, Vec<String>>,
}

/// Merges several sources into one JWKS: sources ordered by name (then by position for
/// equal names), each source's keys in its own order, duplicate kids kept once.
pub fn merge(sources: &[JwksSource]) -> Result<MergedJwks, JwksError> {
    let mut ordered: Vec<&JwksSource> = sources.iter().collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = BTreeSet::new();
    let mut keys = Vec::new();
    let mut credited: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for source in ordered {
        let entry = credited.entry(source.name.clone()).or_default();
        for key in &source.keys {
            if seen.insert(key.kid.clone()) {
                entry.push(key.kid.clone());
                keys.push(key.clone());
            }
        }
    }
    let document = render(&keys)?;
    Ok(MergedJwks {
        document,
        sources: credited,
    })
}

/// A JWKS as read back from a ConfigMap. Keys keyrotor did not write (other
/// algorithms, extra members) are kept as raw JSON objects.
#[derive(Clone, Debug, PartialEq)]
pub struct JwksDocument {
    keys: Vec<Map<String, Value>>,
}

/// Parses a JWKS. Fails on anything that is not `{"keys":[{…},…]}` and on any key
/// carrying private members, so private material is never passed along.
pub fn parse(bytes: &[u8]) -> Result<JwksDocument, JwksError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Malformed {
        line: e.line(),
        column: e.column(),
    })?;
    let Value::Object(mut top) = value else {
        return Err(JwksError::NotAJwks("top level is not an object".into()));
    };
    let Some(Value::Array(entries)) = top.remove("keys") else {
        return Err(JwksError::NotAJwks("no \"keys\" array".into()));
    };
    let mut keys = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let Value::Object(key) = entry else {
            return Err(JwksError::NotAJwks(format!("key {index} is not an object")));
        };
        if PRIVATE_MEMBERS.iter().any(|m| key.contains_key(*m)) {
            return Err(JwksError::PrivateMaterial {
                index,
                kid: key.get("kid").and_then(Value::as_str).map(str::to_owned),
            });
        }
        keys.push(key);
    }
    Ok(JwksDocument { keys })
}

impl JwksDocument {
    /// Every `kid` in the document.
    pub fn kids(&self) -> BTreeSet<String> {
        self.keys
            .iter()
            .filter_map(|k| k.get("kid").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// Number of keys (including keys without a kid).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the document has no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key with this kid as a validated [`PublicJwk`]: `None` if absent, an error if
    /// it is not a valid keyrotor key (wrong shape, kid not its thumbprint, …).
    pub fn public_jwk(&self, kid: &str) -> Option<Result<PublicJwk, KeyError>> {
        let raw = self
            .keys
            .iter()
            .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))?;
        Some(to_public_jwk(raw))
    }

    /// Every key that is a valid keyrotor public JWK, in document order.
    pub fn public_jwks(&self) -> Vec<PublicJwk> {
        self.keys
            .iter()
            .filter_map(|k| to_public_jwk(k).ok())
            .collect()
    }
}

fn to_public_jwk(raw: &Map<String, Value>) -> Result<PublicJwk, KeyError> {
    let jwk: PublicJwk = serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|_| KeyError::InvalidJwk("not a supported public JWK".into()))?;
    jwk.validate()?;
    Ok(jwk)
}
