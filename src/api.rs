//! The `JwtSigningKey` custom resource (`keyrotor.dev/v1alpha1`).
//!
//! Validation lives in the schema (OpenAPI patterns, enums, bounds and CEL rules), so a
//! bad policy is rejected by the API server with a message that names the field.
//! [`JwtSigningKeySpec::resolve`] repeats the same checks in Rust: the controller never
//! trusts that the installed CRD is the one this binary was built with.

use std::fmt;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of every keyrotor resource.
pub const GROUP: &str = "keyrotor.dev";
/// Annotation that requests a graceful rotation; each distinct value is honoured once.
pub const ROTATE_REQUEST_ANNOTATION: &str = "keyrotor.dev/rotate-request";

/// Shortest allowed `rotationInterval`. Short enough for a demo schedule measured in
/// seconds; production schedules are hours or days.
pub const MIN_ROTATION_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest allowed `propagationDelay` and `maxTokenLifetime`.
pub const MIN_DELAY: Duration = Duration::from_secs(1);
/// Longest allowed value of any duration field (one year).
pub const MAX_DURATION: Duration = Duration::from_secs(8760 * 3600);
/// `maxTokenLifetime` may exceed `rotationInterval` (long-lived tokens with frequent
/// rotation), but each retired key stays published for its token lifetime, so the ratio
/// bounds how many keys a JWKS holds at once.
pub const MAX_TOKEN_LIFETIME_PER_INTERVAL: u32 = 10;
/// Longest `revokedKeyIDs` list.
pub const MAX_REVOKED_KEY_IDS: usize = 64;

/// Kubernetes-style duration: one or more of `<n>h`, `<n>m`, `<n>s`, in that order
/// (`90s`, `15m`, `24h`, `1h30m`). The digit limits keep every value inside what CEL's
/// `duration()` accepts. The CEL rules repeat it as a guard, so a malformed duration is
/// reported once, by the pattern, not again as a CEL conversion error.
const DURATION_PATTERN: &str = r"^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$";
/// RFC 1123 DNS subdomain, the rule for Secret and ConfigMap names.
const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A ConfigMap data key.
const CONFIG_MAP_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// An RFC 7638 SHA-256 thumbprint in base64url without padding: the only kind of kid
/// keyrotor issues.
const KID_PATTERN: &str = r"^[A-Za-z0-9_-]{43}$";

/// A policy for one JWT signing key ring: which algorithm, how often to rotate, and
/// where the private key (Secret) and the public keys (JWKS ConfigMap) live.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keyrotor.dev",
    version = "v1alpha1",
    kind = "JwtSigningKey",
    plural = "jwtsigningkeys",
    shortname = "jwtkey",
    shortname = "jsk",
    namespaced,
    status = "JwtSigningKeyStatus",
    derive = "PartialEq",
    doc = "A JWT signing key policy: keyrotor generates the key, stores it in a Secret, publishes the public keys as a JWKS ConfigMap and rotates on schedule.",
    printcolumn(name = "ALG", type_ = "string", json_path = ".spec.algorithm"),
    printcolumn(name = "ACTIVE-KID", type_ = "string", json_path = ".status.activeKeyID"),
    printcolumn(
        name = "NEXT-ROTATION",
        type_ = "string",
        json_path = ".status.nextRotationTime"
    ),
    printcolumn(name = "KEYS", type_ = "integer", json_path = ".status.keyCount"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "(has(self.spec.secretName) ? self.spec.secretName : self.metadata.name + '-signing-key') == (has(oldSelf.spec.secretName) ? oldSelf.spec.secretName : oldSelf.metadata.name + '-signing-key')"
    )
    .message("spec.secretName is immutable: the Secret holds the key ring, a new name would start a new ring")
    .field_path(".spec.secretName"),
    validation = Rule::new(
        "has(self.spec.secretName) || size(self.metadata.name) <= 241"
    )
    .message("metadata.name is too long for the default spec.secretName (<name>-signing-key); set spec.secretName")
    .field_path(".spec.secretName"),
    validation = Rule::new(
        "has(self.spec.jwks.configMapName) || size(self.metadata.name) <= 248"
    )
    .message("metadata.name is too long for the default spec.jwks.configMapName (<name>-jwks); set spec.jwks.configMapName")
    .field_path(".spec.jwks.configMapName"),
)]
#[x_kube(
    validation = Rule::new("!self.propagationDelay.matches('^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$') || !self.rotationInterval.matches('^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$') || duration(self.propagationDelay) < duration(self.rotationInterval)")
        .message("spec.propagationDelay must be shorter than spec.rotationInterval")
        .field_path(".propagationDelay"),
    validation = Rule::new(
        "!self.maxTokenLifetime.matches('^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$') || !self.rotationInterval.matches('^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$') || duration(self.maxTokenLifetime).getSeconds() <= 10 * duration(self.rotationInterval).getSeconds()"
    )
    .message("spec.maxTokenLifetime must be at most 10 times spec.rotationInterval")
    .field_path(".maxTokenLifetime"),
    validation = Rule::new("!has(self.rsaBits) || self.algorithm in ['RS256', 'PS256']")
        .message("spec.rsaBits is only allowed with algorithm RS256 or PS256")
        .field_path(".rsaBits"),
)]
#[serde(rename_all = "camelCase")]
pub struct JwtSigningKeySpec {
    /// Signature algorithm of every key in the ring. Immutable.
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("self == oldSelf")
            .message("spec.algorithm is immutable: create a new JwtSigningKey to change the algorithm")
    )]
    pub algorithm: Algorithm,

    /// RSA modulus size in bits (RS256 and PS256 only; default 3072). A change applies
    /// from the next generated key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [2048, 3072, 4096]))]
    pub rsa_bits: Option<i32>,

    /// How long each key signs before its successor takes over, e.g. `24h`. Minimum 10s.
    #[serde(default = "default_rotation_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 2, max = 32))]
    #[x_kube(
        validation = Rule::new("!self.matches('^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$') || duration(self) >= duration('10s') && duration(self) <= duration('8760h')")
            .message("spec.rotationInterval must be between 10s and 8760h")
    )]
    pub rotation_interval: String,

    /// Longest lifetime (`exp - iat`) of any token signed with these keys, e.g. `1h`.
    /// A retired key stays in the JWKS this long (plus `propagationDelay`). Minimum 1s.
    #[serde(default = "default_max_token_lifetime")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 2, max = 32))]
    #[x_kube(
        validation = Rule::new("!self.matches('^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$') || duration(self) >= duration('1s') && duration(self) <= duration('8760h')")
            .message("spec.maxTokenLifetime must be between 1s and 8760h")
    )]
    pub max_token_lifetime: String,

    /// Worst-case time for a Secret or ConfigMap update to reach every pod and every
    /// verifier's JWKS cache (kubelet sync + JWKS cache TTL + clock skew), e.g. `15m`.
    /// A new key is published this long before it signs. Minimum 1s.
    #[serde(default = "default_propagation_delay")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 2, max = 32))]
    #[x_kube(
        validation = Rule::new("!self.matches('^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$') || duration(self) >= duration('1s') && duration(self) <= duration('8760h')")
            .message("spec.propagationDelay must be between 1s and 8760h")
    )]
    pub propagation_delay: String,

    /// Name of the Secret holding the private key and the ring (default
    /// `<name>-signing-key`). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub secret_name: Option<String>,

    /// Where the public keys are published.
    #[serde(default)]
    pub jwks: JwksTarget,

    /// Wrap each key in a self-signed X.509 certificate. Immutable (it decides the
    /// Secret type).
    #[serde(default)]
    pub certificate: CertificateSpec,

    /// Stop scheduled rotation; keys keep being published and requested rotations and
    /// revocations still apply.
    #[serde(default)]
    pub paused: bool,

    /// Emergency revocation: these kids leave the JWKS at once; if one is the active
    /// key, a new key becomes active at once (verifiers may reject its tokens until the
    /// new JWKS has propagated).
    #[serde(
        default,
        rename = "revokedKeyIDs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = KID_PATTERN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub revoked_key_ids: Vec<String>,
}

/// The JWKS ConfigMap a policy publishes to. Several policies naming the same ConfigMap
/// are merged into one JWKS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwksTarget {
    /// ConfigMap name (default `<name>-jwks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub config_map_name: Option<String>,

    /// Data key holding the JWKS document (default `jwks.json`).
    #[serde(default = "default_jwks_key")]
    #[schemars(regex(pattern = CONFIG_MAP_KEY_PATTERN), length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self != '.' && !self.startsWith('..')")
            .message("spec.jwks.key must be a valid ConfigMap key: not '.' and not starting with '..'")
    )]
    pub key: String,
}

impl Default for JwksTarget {
    fn default() -> Self {
        JwksTarget {
            config_map_name: None,
            key: default_jwks_key(),
        }
    }
}

/// Self-signed X.509 certificates around each key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// Adds `tls.crt`/`tls.key` to the Secret (type `kubernetes.io/tls`) and `x5c` plus
    /// `x5t#S256` to each JWK.
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("self == oldSelf")
            .message("spec.certificate.enabled is immutable: it decides the Secret type")
    )]
    pub enabled: bool,
}

/// JWS signature algorithm (RFC 7518; EdDSA is Ed25519, RFC 8037).
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256.
    #[default]
    ES256,
    /// ECDSA with P-384 and SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }

    /// Whether the algorithm uses RSA keys (and so takes `rsaBits`).
    pub fn is_rsa(self) -> bool {
        matches!(self, Algorithm::RS256 | Algorithm::PS256)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_rotation_interval() -> String {
    "24h".to_owned()
}
fn default_max_token_lifetime() -> String {
    "1h".to_owned()
}
fn default_propagation_delay() -> String {
    "15m".to_owned()
}
fn default_jwks_key() -> String {
    DEFAULT_JWKS_KEY.to_owned()
}

/// Default RSA modulus size.
pub const DEFAULT_RSA_BITS: u32 = 3072;
/// Default JWKS data key.
pub const DEFAULT_JWKS_KEY: &str = "jwks.json";

/// Observed state of a `JwtSigningKey`: public facts only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JwtSigningKeyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kid (RFC 7638 thumbprint) of the key that signs now.
    #[serde(
        default,
        rename = "activeKeyID",
        skip_serializing_if = "Option::is_none"
    )]
    pub active_key_id: Option<String>,
    /// kid of the published successor, not yet signing.
    #[serde(default, rename = "nextKeyID", skip_serializing_if = "Option::is_none")]
    pub next_key_id: Option<String>,
    /// When the next key is due to become active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
    /// Number of keys in the ring (the KEYS column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i32>,
    /// Every key in the ring, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// The last `keyrotor.dev/rotate-request` value honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// `Ready`, `KeyPublished` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Public facts about one key of the ring.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// RFC 7638 thumbprint (SHA-256, base64url).
    pub kid: String,
    /// Where the key is in its life.
    pub state: KeyState,
    /// When the key was first seen in every target JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<Time>,
    /// When a Next key is due to become active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activates_at: Option<Time>,
    /// When the key became active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<Time>,
    /// When the Active key is due to retire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<Time>,
    /// When the key stopped signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Time>,
    /// When a Retired key leaves the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<Time>,
    /// Set when the key became active without a full pre-publication (the first key
    /// of a ring, a revocation, a recovery): verifiers may not have known it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_without_prepublication: Option<String>,
    /// Set on a public key recovered from a JWKS after the ring was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// The life of a key: Next → Active → Retired → removed.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// The one key that signs.
    Active,
    /// No longer signing; still published until its last token has expired.
    Retired,
}

/// A spec field that fails validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A duration string that does not parse.
    #[error("spec.{field}: {reason} (got {value:?}; expected e.g. 90s, 15m, 24h, 1h30m)")]
    InvalidDuration {
        field: &'static str,
        value: String,
        reason: DurationError,
    },
    /// A value outside its allowed range or combination.
    #[error("spec.{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// Why a duration string does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("a number must precede each unit")]
    MissingNumber,
    #[error("missing unit after the number (use h, m or s)")]
    MissingUnit,
    #[error("unknown unit (use h, m or s)")]
    UnknownUnit,
    #[error("units must appear at most once, in the order h, m, s")]
    UnitOrder,
    #[error("duration too large")]
    TooLarge,
}

/// Parses a Kubernetes-style duration: `<n>h`, `<n>m`, `<n>s` parts in that order, each
/// at most once (`90s`, `15m`, `24h`, `1h30m`). The same language as the CRD pattern.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    // Units seen so far, as an index into "hms": each must come after the last.
    let mut next_unit = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::MissingNumber);
        }
        let (number, after) = rest.split_at(digits);
        let mut chars = after.chars();
        let (unit_index, seconds_per_unit) = match chars.next() {
            None => return Err(DurationError::MissingUnit),
            Some('h') => (0, 3600),
            Some('m') => (1, 60),
            Some('s') => (2, 1),
            Some(_) => return Err(DurationError::UnknownUnit),
        };
        if unit_index < next_unit {
            return Err(DurationError::UnitOrder);
        }
        next_unit = unit_index + 1;
        let value: u64 = number.parse().map_err(|_| DurationError::TooLarge)?;
        total = value
            .checked_mul(seconds_per_unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or(DurationError::TooLarge)?;
        rest = chars.as_str();
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `90s` → `1m30s`).
pub fn format_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || out.is_empty() {
        out.push_str(&format!("{seconds}s"));
    }
    out
}

/// A policy with every default filled in and every rule checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPolicy {
    pub algorithm: Algorithm,
    /// Set for RSA algorithms only.
    pub rsa_bits: Option<u32>,
    pub rotation_interval: Duration,
    pub max_token_lifetime: Duration,
    pub propagation_delay: Duration,
    pub secret_name: String,
    pub config_map_name: String,
    pub jwks_key: String,
    pub certificate: bool,
    pub paused: bool,
    pub revoked_key_ids: Vec<String>,
}

impl JwtSigningKeySpec {
    /// Fills in the defaults that depend on the policy name and checks every rule the
    /// CRD schema checks.
    pub fn resolve(&self, policy_name: &str) -> Result<ResolvedPolicy, SpecError> {
        let duration = |field: &'static str, value: &str, min: Duration| {
            let parsed = parse_duration(value).map_err(|reason| SpecError::InvalidDuration {
                field,
                value: value.to_owned(),
                reason,
            })?;
            if parsed < min || parsed > MAX_DURATION {
                return Err(SpecError::Invalid {
                    field,
                    message: format!(
                        "must be between {} and {} (got {value})",
                        format_duration(min),
                        format_duration(MAX_DURATION)
                    ),
                });
            }
            Ok(parsed)
        };
        let rotation_interval = duration(
            "rotationInterval",
            &self.rotation_interval,
            MIN_ROTATION_INTERVAL,
        )?;
        let max_token_lifetime = duration("maxTokenLifetime", &self.max_token_lifetime, MIN_DELAY)?;
        let propagation_delay = duration("propagationDelay", &self.propagation_delay, MIN_DELAY)?;
        if propagation_delay >= rotation_interval {
            return Err(SpecError::Invalid {
                field: "propagationDelay",
                message: "must be shorter than spec.rotationInterval".to_owned(),
            });
        }
        if max_token_lifetime > rotation_interval * MAX_TOKEN_LIFETIME_PER_INTERVAL {
            return Err(SpecError::Invalid {
                field: "maxTokenLifetime",
                message: format!(
                    "must be at most {MAX_TOKEN_LIFETIME_PER_INTERVAL} times spec.rotationInterval"
                ),
            });
        }
        let rsa_bits = match (self.algorithm.is_rsa(), self.rsa_bits) {
            (true, None) => Some(DEFAULT_RSA_BITS),
            (true, Some(bits @ (2048 | 3072 | 4096))) => Some(bits.unsigned_abs()),
            (true, Some(bits)) => {
                return Err(SpecError::Invalid {
                    field: "rsaBits",
                    message: format!("must be 2048, 3072 or 4096 (got {bits})"),
                });
            }
            (false, None) => None,
            (false, Some(_)) => {
                return Err(SpecError::Invalid {
                    field: "rsaBits",
                    message: "is only allowed with algorithm RS256 or PS256".to_owned(),
                });
            }
        };
        let secret_name = self
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{policy_name}-signing-key"));
        check_dns_subdomain("secretName", &secret_name)?;
        let config_map_name = self
            .jwks
            .config_map_name
            .clone()
            .unwrap_or_else(|| format!("{policy_name}-jwks"));
        check_dns_subdomain("jwks.configMapName", &config_map_name)?;
        let jwks_key = self.jwks.key.clone();
        check_config_map_key(&jwks_key)?;
        if self.revoked_key_ids.len() > MAX_REVOKED_KEY_IDS {
            return Err(SpecError::Invalid {
                field: "revokedKeyIDs",
                message: format!("must have at most {MAX_REVOKED_KEY_IDS} items"),
            });
        }
        if let Some(bad) = self.revoked_key_ids.iter().find(|kid| !is_kid(kid)) {
            return Err(SpecError::Invalid {
                field: "revokedKeyIDs",
                message: format!("{bad:?} is not a key ID (43 base64url characters)"),
            });
        }
        Ok(ResolvedPolicy {
            algorithm: self.algorithm,
            rsa_bits,
            rotation_interval,
            max_token_lifetime,
            propagation_delay,
            secret_name,
            config_map_name,
            jwks_key,
            certificate: self.certificate.enabled,
            paused: self.paused,
            revoked_key_ids: self.revoked_key_ids.clone(),
        })
    }
}

fn check_dns_subdomain(field: &'static str, name: &str) -> Result<(), SpecError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(SpecError::Invalid {
            field,
            message: format!(
                "{name:?} is not a valid name (lowercase RFC 1123 subdomain, at most 253 characters)"
            ),
        });
    }
    Ok(())
}

fn check_config_map_key(key: &str) -> Result<(), SpecError> {
    let chars_ok = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if key.is_empty() || key.len() > 253 || !chars_ok || key == "." || key.starts_with("..") {
        return Err(SpecError::Invalid {
            field: "jwks.key",
            message: format!("{key:?} is not a valid ConfigMap key"),
        });
    }
    Ok(())
}

fn is_kid(kid: &str) -> bool {
    kid.len() == 43
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn spec() -> JwtSigningKeySpec {
        serde_json::from_value(serde_json::json!({})).expect("empty spec takes defaults")
    }

    #[test]
    fn durations_parse_like_the_schema_pattern() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("h"), Err(DurationError::MissingNumber));
        assert_eq!(parse_duration("10"), Err(DurationError::MissingUnit));
        assert_eq!(parse_duration("10d"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("1.5h"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("30s1m"), Err(DurationError::UnitOrder));
        assert_eq!(parse_duration("1m1m"), Err(DurationError::UnitOrder));
        assert_eq!(parse_duration("-5s"), Err(DurationError::MissingNumber));
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::TooLarge)
        );
    }

    #[test]
    fn format_round_trips() {
        for text in ["1s", "59s", "1m", "1m30s", "1h", "1h30m", "24h", "1h0m1s"] {
            let parsed = parse_duration(text).expect("valid");
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn defaults_resolve() {
        let policy = spec().resolve("api-tokens").expect("defaults are valid");
        assert_eq!(policy.algorithm, Algorithm::ES256);
        assert_eq!(policy.rsa_bits, None);
        assert_eq!(policy.rotation_interval, Duration::from_secs(86_400));
        assert_eq!(policy.max_token_lifetime, Duration::from_secs(3600));
        assert_eq!(policy.propagation_delay, Duration::from_secs(900));
        assert_eq!(policy.secret_name, "api-tokens-signing-key");
        assert_eq!(policy.config_map_name, "api-tokens-jwks");
        assert_eq!(policy.jwks_key, "jwks.json");
        assert!(!policy.certificate && !policy.paused);
    }

    #[test]
    fn rsa_bits_default_and_rules() {
        let mut rsa = spec();
        rsa.algorithm = Algorithm::PS256;
        assert_eq!(rsa.resolve("a").map(|p| p.rsa_bits), Ok(Some(3072)));
        rsa.rsa_bits = Some(1024);
        assert!(matches!(
            rsa.resolve("a"),
            Err(SpecError::Invalid {
                field: "rsaBits",
                ..
            })
        ));
        let mut ec = spec();
        ec.rsa_bits = Some(2048);
        assert!(matches!(
            ec.resolve("a"),
            Err(SpecError::Invalid {
                field: "rsaBits",
                ..
            })
        ));
    }

    #[test]
    fn duration_rules_name_the_field() {
        let mut s = spec();
        s.propagation_delay = "24h".into();
        let err = s.resolve("a").expect_err("delay == interval");
        assert!(
            err.to_string().starts_with("spec.propagationDelay"),
            "{err}"
        );

        let mut s = spec();
        s.rotation_interval = "5s".into();
        s.propagation_delay = "1s".into();
        s.max_token_lifetime = "1s".into();
        let err = s.resolve("a").expect_err("interval below minimum");
        assert!(
            err.to_string().starts_with("spec.rotationInterval"),
            "{err}"
        );

        let mut s = spec();
        s.max_token_lifetime = "241h".into();
        let err = s.resolve("a").expect_err("lifetime > 10x interval");
        assert!(
            err.to_string().starts_with("spec.maxTokenLifetime"),
            "{err}"
        );

        let mut s = spec();
        s.max_token_lifetime = "1d".into();
        let err = s.resolve("a").expect_err("bad unit");
        assert!(err.to_string().contains("spec.maxTokenLifetime"), "{err}");
    }

    #[test]
    fn names_keys_and_kids_are_checked() {
        let mut s = spec();
        s.secret_name = Some("Bad_Name".into());
        assert!(s.resolve("a").is_err());
        let mut s = spec();
        s.jwks.key = "..data".into();
        assert!(s.resolve("a").is_err());
        let mut s = spec();
        s.revoked_key_ids = vec!["short".into()];
        assert!(s.resolve("a").is_err());
        s.revoked_key_ids = vec!["a".repeat(43)];
        assert!(s.resolve("a").is_ok());
    }

    #[test]
    fn fast_demo_schedule_is_allowed() {
        let mut s = spec();
        s.rotation_interval = "20s".into();
        s.propagation_delay = "5s".into();
        s.max_token_lifetime = "5s".into();
        assert!(s.resolve("demo").is_ok());
    }

    #[test]
    fn crd_has_names_columns_and_rules() {
        let crd = serde_json::to_value(JwtSigningKey::crd()).expect("crd serializes");
        let names = &crd["spec"]["names"];
        assert_eq!(names["plural"], "jwtsigningkeys");
        assert_eq!(names["shortNames"], serde_json::json!(["jwtkey", "jsk"]));
        let version = &crd["spec"]["versions"][0];
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            ["ALG", "ACTIVE-KID", "NEXT-ROTATION", "KEYS", "READY", "AGE"]
        );
        let text = crd.to_string();
        for needle in [
            "spec.propagationDelay must be shorter than spec.rotationInterval",
            "spec.algorithm is immutable",
            "spec.rsaBits is only allowed",
            "spec.secretName is immutable",
            "spec.certificate.enabled is immutable",
        ] {
            assert!(text.contains(needle), "missing rule: {needle}");
        }
    }
}
