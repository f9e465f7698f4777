//! What the suite observes and does, as plain data: the checker, the participants and
//! the report all read these.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyrotor::ring::{ActivationException, KeyState, Ring};
use serde::Serialize;
use zeroize::Zeroizing;

pub type Time = DateTime<Utc>;

/// Seconds between two instants (negative when `b` is before `a`).
pub fn secs(a: Time, b: Time) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// One key of a ring, public facts only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFacts {
    pub kid: String,
    pub state: KeyState,
    pub published_at: Option<Time>,
    pub activated_at: Option<Time>,
    pub retired_at: Option<Time>,
    pub exception: Option<ActivationException>,
}

/// The signing Secret as one participant or the checker sees it.
#[derive(Clone)]
pub struct SecretView {
    /// `kid` data key: the Active key.
    pub kid: Option<String>,
    /// `alg` data key.
    pub alg: Option<String>,
    /// `private.pem`: handed to issuers only, never printed.
    pub private_pem: Option<Zeroizing<String>>,
    /// PKCS#8 PEM of the Next key from ring.json (for the negative control only).
    pub next_private_pem: Option<(String, Zeroizing<String>)>,
    /// The ring's keys, or why ring.json could not be read.
    pub ring: Result<Vec<KeyFacts>, String>,
}

impl fmt::Debug for SecretView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretView")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field(
                "private_pem",
                &self.private_pem.as_ref().map(|_| "[redacted]"),
            )
            .field("ring", &self.ring)
            .finish()
    }
}

impl SecretView {
    pub fn from_data(data: &std::collections::BTreeMap<String, Vec<u8>>) -> SecretView {
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(v).trim().to_owned())
        };
        let ring = match data.get(keyrotor::secret::RING_JSON) {
            None => Err("no ring.json".to_owned()),
            Some(bytes) => Ring::parse(bytes).map_err(|e| e.to_string()),
        };
        let next_private_pem = ring.as_ref().ok().and_then(|ring| {
            let next = ring.next()?;
            let pem = next.private_jwk.as_ref()?.to_pkcs8_pem().ok()?;
            Some((next.kid.clone(), pem))
        });
        SecretView {
            kid: text(keyrotor::secret::KID),
            alg: text(keyrotor::secret::ALG),
            private_pem: data
                .get(keyrotor::secret::PRIVATE_PEM)
                .map(|v| Zeroizing::new(String::from_utf8_lossy(v).into_owned())),
            next_private_pem,
            ring: ring.map(|ring| ring.keys.iter().map(facts).collect()),
        }
    }

    pub fn key(&self, kid: &str) -> Option<&KeyFacts> {
        self.ring.as_ref().ok()?.iter().find(|k| k.kid == kid)
    }

    pub fn next_kid(&self) -> Option<&str> {
        self.ring
            .as_ref()
            .ok()?
            .iter()
            .find(|k| k.state == KeyState::Next)
            .map(|k| k.kid.as_str())
    }
}

fn facts(key: &keyrotor::ring::RingKey) -> KeyFacts {
    KeyFacts {
        kid: key.kid.clone(),
        state: key.state,
        published_at: key.published_at,
        activated_at: key.activated_at,
        retired_at: key.retired_at,
        exception: key.activated_without_prepublication,
    }
}

/// A JWKS ConfigMap's document.
#[derive(Clone, Debug)]
pub struct JwksView {
    /// The raw `jwks.json` text (None: the key is missing).
    pub text: Option<String>,
    /// kids in document order.
    pub kids: Vec<String>,
    /// Why the document is not a JWKS, if it is not.
    pub parse_error: Option<String>,
    /// The `keyrotor.dev/sources` annotation.
    pub sources: Option<String>,
}

impl JwksView {
    pub fn from_text(text: Option<String>, sources: Option<String>) -> JwksView {
        let mut kids = Vec::new();
        let mut parse_error = None;
        match &text {
            None => parse_error = Some("no JWKS key in the ConfigMap".to_owned()),
            Some(t) => match keyrotor::jwks::parse(t.as_bytes()) {
                Err(e) => parse_error = Some(e.to_string()),
                Ok(_) => {
                    // Document order matters (Active first): read it from the raw JSON.
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(t) {
                        for key in value["keys"].as_array().into_iter().flatten() {
                            if let Some(kid) = key["kid"].as_str() {
                                kids.push(kid.to_owned());
                            }
                        }
                    }
                }
            },
        }
        JwksView {
            text,
            kids,
            parse_error,
            sources,
        }
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.kids.iter().any(|k| k == kid)
    }
}

/// The JwtSigningKey as observed.
#[derive(Clone, Debug, Default)]
pub struct PolicyView {
    pub revoked: Vec<String>,
    /// The `keyrotor.dev/rotate-request` annotation.
    pub rotate_request: Option<String>,
}

/// One change of one object, as the watch delivered it.
#[derive(Clone, Debug)]
pub enum Change {
    Secret(Option<Arc<SecretView>>),
    ConfigMap(Option<Arc<JwksView>>),
    Policy(Option<Arc<PolicyView>>),
    /// A watch of `kind` ("Secret", "ConfigMap", "Policy") had to list again: between
    /// `open: true` and `open: false` its object's state is unknown and changes may
    /// have been missed.
    Gap {
        kind: &'static str,
        open: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Observation {
    /// When the harness received it.
    pub at: Time,
    /// The object's resourceVersion (an etcd revision: one order across objects).
    pub rv: u64,
    /// Object name.
    pub name: String,
    pub change: Change,
}

/// Something the harness did.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ActionKind {
    RotateRequested {
        policy: String,
        value: String,
    },
    Revoked {
        policy: String,
        kid: String,
    },
    SecretDeleted {
        policy: String,
    },
    #[serde(rename_all = "camelCase")]
    ConfigMapEdited {
        policy: String,
        removed: Vec<String>,
        added: Vec<String>,
    },
    OperatorStarted {
        replica: usize,
        pid: u32,
    },
    OperatorKilled {
        replica: usize,
        pid: u32,
        trigger: String,
    },
    #[serde(rename_all = "camelCase")]
    ComponentRestarted {
        component: String,
        seconds: f64,
        ok: bool,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Action {
    pub at: Time,
    #[serde(flatten)]
    pub kind: ActionKind,
}

/// The timing of one policy, in seconds.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTiming {
    pub name: String,
    pub secret_name: String,
    pub config_map_name: String,
    pub rotation_interval: f64,
    pub propagation_delay: f64,
    pub max_token_lifetime: f64,
}
