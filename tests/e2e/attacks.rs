//! Tokens every verifier must reject (and one it must accept, so a rejection means
//! something): `alg: none`, HS256 keyed with the public key, an unknown kid, and an
//! algorithm other than the key's.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyrotor::keys::{Algorithm as KeyAlgorithm, KeyGenerator as _, RsaBits, SystemKeyGenerator};
use serde::Serialize;
use serde_json::{Value, json};

use crate::libproc::LibraryProcess;
use crate::participants::{AUDIENCE, Backend, ISSUER, Verifier, encoding_key, jwt_algorithm};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttackResult {
    pub name: String,
    /// Whether every verifier must accept it (the control) or reject it.
    pub must_accept: bool,
    /// library -> (accepted, rejected)
    pub outcomes: BTreeMap<String, (u64, u64)>,
    /// One rejection message per library.
    pub sample_errors: BTreeMap<String, String>,
    pub passed: bool,
}

fn claims() -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "attacker", "iat": now, "exp": now + 60})
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn unsigned(alg: &str, kid: &str) -> String {
    format!(
        "{}.{}.",
        b64(&json!({"alg": alg, "typ": "JWT", "kid": kid})),
        b64(&claims())
    )
}

fn signed(alg: Algorithm, kid: &str, key: &EncodingKey) -> Result<String, String> {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims(), key).map_err(|e| e.to_string())
}

/// A fresh key for `alg` (never published): PEM and kid.
fn fresh_key(alg: KeyAlgorithm) -> Result<(String, EncodingKey), String> {
    let material = SystemKeyGenerator
        .generate(alg, RsaBits::B2048)
        .map_err(|e| e.to_string())?;
    let pem = material
        .private_jwk()
        .to_pkcs8_pem()
        .map_err(|e| e.to_string())?;
    let jwt_alg = jwt_algorithm(alg.as_str()).ok_or("unsupported algorithm")?;
    Ok((material.kid().to_owned(), encoding_key(jwt_alg, &pem)?))
}

/// Builds the tokens against the policy's Active key.
pub async fn tokens(
    policy_alg: &str,
    active_kid: &str,
    active_pem: &str,
    public_jwk: &Value,
    python: Option<&LibraryProcess>,
) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let Some(alg) = jwt_algorithm(policy_alg) else {
        return out;
    };
    let Ok(real_key) = encoding_key(alg, active_pem) else {
        return out;
    };
    if let Ok(t) = signed(alg, active_kid, &real_key) {
        out.push(("control: valid token, Active key".to_owned(), true, t));
    }
    out.push(("alg none".to_owned(), false, unsigned("none", active_kid)));
    out.push((
        "alg None (mixed case)".to_owned(),
        false,
        unsigned("None", active_kid),
    ));

    // HS256 keyed with public material, the classic algorithm-confusion attack.
    let jwk_text = public_jwk.to_string();
    if let Ok(key) = EncodingKey::from_secret(jwk_text.as_bytes())
        && let Ok(t) = signed(Algorithm::HS256, active_kid, &key)
    {
        out.push(("HS256 keyed with the public JWK".to_owned(), false, t));
    }
    if let Some(python) = python {
        let response = python
            .call(json!({"op": "publicPem", "jwk": public_jwk}))
            .await;
        if let Some(pem) = response["pem"].as_str()
            && let Ok(key) = EncodingKey::from_secret(pem.as_bytes())
            && let Ok(t) = signed(Algorithm::HS256, active_kid, &key)
        {
            out.push(("HS256 keyed with the public key PEM".to_owned(), false, t));
        }
    }

    // A well-formed token from a key nobody published.
    if let Ok(policy_key_alg) = policy_alg.parse::<KeyAlgorithm>()
        && let Ok((kid, key)) = fresh_key(policy_key_alg)
        && let Ok(t) = signed(alg, &kid, &key)
    {
        out.push(("unknown kid (unpublished key)".to_owned(), false, t));
    }

    // The Active kid with a different algorithm: the same RSA key under the other RSA
    // scheme, else a fresh key of that algorithm.
    for other in KeyAlgorithm::ALL {
        if other.as_str() == policy_alg {
            continue;
        }
        let Some(other_jwt) = jwt_algorithm(other.as_str()) else {
            continue;
        };
        let same_family = other.is_rsa() && policy_alg.starts_with(['R', 'P']);
        let token = if same_family {
            signed(other_jwt, active_kid, &real_key).ok()
        } else {
            fresh_key(other)
                .ok()
                .and_then(|(_, key)| signed(other_jwt, active_kid, &key).ok())
        };
        if let Some(t) = token {
            let how = if same_family {
                "signed by the Active key"
            } else {
                "signed by another key"
            };
            out.push((
                format!(
                    "alg {} on the {policy_alg} key's kid ({how})",
                    other.as_str()
                ),
                false,
                t,
            ));
        }
    }
    out
}

/// Sends every token to every verifier.
pub async fn run(
    tokens: Vec<(String, bool, String)>,
    verifiers: &mut [Verifier],
    policy_alg: &str,
) -> Vec<AttackResult> {
    let mut results = Vec::new();
    for (name, must_accept, token) in tokens {
        let mut outcomes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut sample_errors = BTreeMap::new();
        for verifier in verifiers.iter_mut() {
            let (accepted, error) = match &mut verifier.backend {
                Backend::Rust(v) => match v.verify(&token, chrono::Utc::now()) {
                    Ok(_) => (true, None),
                    Err(e) => (false, Some(e)),
                },
                Backend::Process(p) => {
                    let r = p
                        .call(json!({"op": "verify", "verifier": verifier.id, "token": token, "alg": policy_alg}))
                        .await;
                    (
                        r["ok"].as_bool() == Some(true),
                        r["error"].as_str().map(str::to_owned),
                    )
                }
            };
            let entry = outcomes.entry(verifier.library.to_owned()).or_default();
            if accepted {
                entry.0 += 1;
            } else {
                entry.1 += 1;
                if let Some(e) = error {
                    sample_errors
                        .entry(verifier.library.to_owned())
                        .or_insert(e);
                }
            }
        }
        let passed = !outcomes.is_empty()
            && outcomes
                .values()
                .all(|(a, r)| if must_accept { *r == 0 } else { *a == 0 });
        results.push(AttackResult {
            name,
            must_accept,
            outcomes,
            sample_errors,
            passed,
        });
    }
    results
}
