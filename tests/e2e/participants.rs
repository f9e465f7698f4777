//! Token issuers and verifiers. Each participant sees a new version of the Secret or
//! the ConfigMap only after its own random delay (a kubelet volume sync), and the
//! verifiers cache the JWKS on top of that like the real libraries do. Every token is
//! verified when issued and again shortly before it expires, by one verifier of each
//! library.

use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use rand::rngs::ChaCha20Rng;
use rand::{RngExt as _, SeedableRng as _};
use serde::Serialize;
use serde_json::{Value, json};

use crate::history::History;
use crate::libproc::LibraryProcess;
use crate::model::{JwksView, SecretView, Time};

pub const AUDIENCE: &str = "keyrotor-e2e";
pub const ISSUER: &str = "keyrotor-e2e-issuer";
/// Share of propagationDelay the model spends on a participant's file sync and on its
/// JWKS cache; the rest covers the harness's own watch latency.
pub const SYNC_SHARE: f64 = 0.45;
pub const CACHE_SHARE: f64 = 0.45;
/// Re-verification happens this long before `exp`.
pub const REVERIFY_BEFORE_EXP: f64 = 0.75;

pub fn jwt_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "RS256" => Algorithm::RS256,
        "PS256" => Algorithm::PS256,
        _ => return None,
    })
}

pub fn encoding_key(alg: Algorithm, pem: &str) -> Result<EncodingKey, String> {
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    };
    key.map_err(|e| format!("cannot load the signing key: {e}"))
}

/// A deterministic random delay per (participant, version).
#[derive(Clone, Copy, Debug)]
pub struct Delays {
    seed: u64,
    max: f64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Delays {
    pub fn new(seed: u64, max: f64) -> Self {
        Delays { seed, max }
    }

    pub fn get(&self, version: usize) -> f64 {
        let r = splitmix(self.seed ^ splitmix(version as u64));
        (r >> 11) as f64 / (1u64 << 53) as f64 * self.max
    }

    /// The newest version this participant sees at `now`.
    pub fn visible<T>(&self, versions: &[(Time, Arc<T>)], now: Time) -> Option<usize> {
        (0..versions.len()).rev().find(|&i| {
            let ready = versions[i].0 + chrono::Duration::microseconds((self.get(i) * 1e6) as i64);
            ready <= now
        })
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenMeta {
    pub seq: u64,
    pub issuer: usize,
    pub kid: String,
    pub signed_at: Time,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Check {
    AtIssue,
    BeforeExpiry,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub library: &'static str,
    pub verifier: String,
    pub check: Check,
    pub token: TokenMeta,
    pub verified_at: Time,
    pub error: String,
    /// kids of the JWKS document the verifier was served at the time.
    pub served_kids: Vec<String>,
    /// Filled in by the report: why this failure was expected, if it was.
    pub expected: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LibraryStats {
    pub verified_at_issue: u64,
    pub verified_before_expiry: u64,
    pub failed_at_issue: u64,
    pub failed_before_expiry: u64,
    /// Answered only after `exp` because the harness or the process lagged: not a
    /// verdict on the keys.
    pub late: u64,
    /// Not sent because the process was too far behind.
    pub skipped_busy: u64,
    /// Longest time from sending a token to the process until its answer, seconds.
    pub max_latency_seconds: f64,
}

#[derive(Debug, Default)]
pub struct Results {
    pub issued: u64,
    pub issue_errors: BTreeMap<String, u64>,
    pub libraries: BTreeMap<&'static str, LibraryStats>,
    pub failures: Vec<Failure>,
}

pub type SharedResults = Arc<Mutex<Results>>;

fn record(
    results: &SharedResults,
    library: &'static str,
    check: Check,
    outcome: Outcome,
    latency: f64,
) {
    let Ok(mut r) = results.lock() else { return };
    let stats = r.libraries.entry(library).or_default();
    stats.max_latency_seconds = stats.max_latency_seconds.max(latency);
    match (&outcome, check) {
        (Outcome::Ok, Check::AtIssue) => stats.verified_at_issue += 1,
        (Outcome::Ok, Check::BeforeExpiry) => stats.verified_before_expiry += 1,
        (Outcome::Late, _) => stats.late += 1,
        (Outcome::Failed(_), Check::AtIssue) => stats.failed_at_issue += 1,
        (Outcome::Failed(_), Check::BeforeExpiry) => stats.failed_before_expiry += 1,
    }
    if let Outcome::Failed(failure) = outcome {
        r.failures.push(*failure);
    }
}

enum Outcome {
    Ok,
    Late,
    Failed(Box<Failure>),
}

/// The Rust verifier: jsonwebtoken, with a JWK Set cache that behaves like jose's
/// remote set (max age, refresh on an unknown kid after a cooldown). The cache ages on
/// the harness's clock (the `now` its served document was chosen for), as the process
/// verifiers' caches do: a stalled harness thread must not stretch a cache's age.
pub struct RustVerifier {
    alg: Algorithm,
    served: Option<Arc<JwksView>>,
    cache: Option<(Time, JwkSet)>,
    max_age: Duration,
    cooldown: Duration,
}

impl RustVerifier {
    pub fn new(alg: Algorithm, max_age: Duration, cooldown: Duration) -> Self {
        RustVerifier {
            alg,
            served: None,
            cache: None,
            max_age,
            cooldown,
        }
    }

    pub fn serve(&mut self, doc: Option<Arc<JwksView>>) {
        self.served = doc;
    }

    fn reload(&mut self, now: Time) -> Result<(), String> {
        let text = self
            .served
            .as_ref()
            .and_then(|d| d.text.clone())
            .ok_or("no JWKS document served yet")?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("JWKS rejected: {e}"))?;
        self.cache = Some((now, set));
        Ok(())
    }

    pub fn verify(&mut self, token: &str, now: Time) -> Result<String, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        if header.alg != self.alg {
            return Err(format!("algorithm {:?} not allowed", header.alg));
        }
        let kid = header.kid.ok_or("no kid")?;
        let age = |cache: &Option<(Time, JwkSet)>| {
            cache
                .as_ref()
                .map(|(at, _)| (now - *at).to_std().unwrap_or_default())
        };
        if age(&self.cache).is_none_or(|age| age >= self.max_age) {
            self.reload(now)?;
        }
        let mut jwk = self
            .cache
            .as_ref()
            .and_then(|(_, set)| set.find(&kid).cloned());
        if jwk.is_none() && age(&self.cache).is_none_or(|age| age >= self.cooldown) {
            self.reload(now)?;
            jwk = self
                .cache
                .as_ref()
                .and_then(|(_, set)| set.find(&kid).cloned());
        }
        let jwk = jwk.ok_or_else(|| format!("no key with kid {kid}"))?;
        if let Some(key_alg) = jwk.common.key_algorithm
            && format!("{key_alg:?}") != format!("{:?}", self.alg)
        {
            return Err(format!("key {kid} is for {key_alg:?}, not {:?}", self.alg));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("key {kid}: {e}"))?;
        let mut validation = Validation::new(self.alg);
        validation.leeway = 0;
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| format!("{e}"))?;
        Ok(kid)
    }
}

pub enum Backend {
    Rust(Box<RustVerifier>),
    Process(Arc<LibraryProcess>),
}

pub struct Verifier {
    pub library: &'static str,
    pub id: String,
    pub delays: Delays,
    pub backend: Backend,
    served: Option<usize>,
    served_kids: Vec<String>,
}

impl Verifier {
    pub async fn new(
        library: &'static str,
        id: String,
        delays: Delays,
        backend: Backend,
        cache_seconds: f64,
    ) -> Verifier {
        if let Backend::Process(process) = &backend {
            process
                .call(json!({"op": "create", "verifier": id, "cacheSeconds": cache_seconds, "cooldownSeconds": cache_seconds}))
                .await;
        }
        Verifier {
            library,
            id,
            delays,
            backend,
            served: None,
            served_kids: Vec::new(),
        }
    }

    /// Serves the verifier the newest document it can see at `now`.
    fn sync(&mut self, docs: &[(Time, Arc<JwksView>)], now: Time) {
        let visible = self.delays.visible(docs, now);
        if visible == self.served {
            return;
        }
        let Some(index) = visible else { return };
        self.served = visible;
        let doc = docs[index].1.clone();
        self.served_kids = doc.kids.clone();
        match &mut self.backend {
            Backend::Rust(v) => v.serve(Some(doc)),
            Backend::Process(p) => p.send(
                json!({"op": "publish", "verifier": self.id, "jwks": doc.text}),
                |_| {},
            ),
        }
    }

    /// Forces the newest document (for the attack checks, which are not about timing).
    pub fn serve_now(&mut self, docs: &[(Time, Arc<JwksView>)]) {
        if docs.is_empty() {
            return;
        }
        let index = docs.len() - 1;
        self.served = Some(index);
        let doc = docs[index].1.clone();
        self.served_kids = doc.kids.clone();
        match &mut self.backend {
            Backend::Rust(v) => v.serve(Some(doc)),
            Backend::Process(p) => p.send(
                json!({"op": "publish", "verifier": self.id, "jwks": doc.text}),
                |_| {},
            ),
        }
    }

    fn check(
        &mut self,
        token: &str,
        meta: &TokenMeta,
        check: Check,
        alg: &str,
        now: Time,
        results: &SharedResults,
    ) {
        let library = self.library;
        let exp = meta.exp;
        let verifier = self.id.clone();
        let served_kids = self.served_kids.clone();
        let meta = meta.clone();
        let failure = move |error: String, at: Time| {
            Outcome::Failed(Box::new(Failure {
                library,
                verifier,
                check,
                token: meta,
                verified_at: at,
                error,
                served_kids,
                expected: None,
            }))
        };
        match &mut self.backend {
            Backend::Rust(v) => {
                let outcome = match v.verify(token, now) {
                    Ok(_) => Outcome::Ok,
                    // The thread was starved past `exp`: a verdict on the clock.
                    Err(_) if Utc::now().timestamp() >= exp => Outcome::Late,
                    Err(e) => failure(e, Utc::now()),
                };
                record(results, library, check, outcome, 0.0);
            }
            Backend::Process(p) => {
                if p.in_flight() > 4000 {
                    if let Ok(mut r) = results.lock() {
                        r.libraries.entry(library).or_default().skipped_busy += 1;
                    }
                    return;
                }
                let results = results.clone();
                let sent = Instant::now();
                p.send(
                    // `now`: the library's JWKS cache runs on the harness's clock, so a
                    // backlog in the verifier process cannot stretch its cache's age.
                    json!({"op": "verify", "verifier": self.id, "token": token, "alg": alg,
                           "now": now.timestamp_micros() as f64 / 1e6}),
                    move |response| {
                        let at_secs = response["at"].as_f64().unwrap_or(0.0);
                        let at = chrono::DateTime::from_timestamp_micros((at_secs * 1e6) as i64)
                            .unwrap_or_else(Utc::now);
                        let outcome = if response["ok"].as_bool() == Some(true) {
                            Outcome::Ok
                        } else if at_secs >= exp as f64 {
                            Outcome::Late
                        } else {
                            let error = response["error"].as_str().unwrap_or("?").to_owned();
                            failure(error, at)
                        };
                        record(
                            &results,
                            library,
                            check,
                            outcome,
                            sent.elapsed().as_secs_f64(),
                        );
                    },
                );
            }
        }
    }
}

pub struct Issuer {
    pub id: usize,
    pub delays: Delays,
    /// Sign with the newest key of the ring, Next included: what an operator without
    /// pre-publication would make issuers do (the negative control).
    pub newest_key: bool,
    cached: Option<(usize, Arc<(String, EncodingKey)>)>,
}

impl Issuer {
    pub fn new(id: usize, delays: Delays, newest_key: bool) -> Self {
        Issuer {
            id,
            delays,
            newest_key,
            cached: None,
        }
    }

    fn key(
        &mut self,
        secrets: &[(Time, Arc<SecretView>)],
        now: Time,
        alg: Algorithm,
    ) -> Result<Arc<(String, EncodingKey)>, String> {
        let index = self
            .delays
            .visible(secrets, now)
            .ok_or("no Secret visible yet")?;
        if let Some((cached, key)) = &self.cached
            && *cached == index
        {
            return Ok(key.clone());
        }
        let secret = &secrets[index].1;
        let (kid, pem) = match (&secret.next_private_pem, self.newest_key) {
            (Some((kid, pem)), true) => (kid.clone(), pem.clone()),
            _ => (
                secret.kid.clone().ok_or("Secret has no kid")?,
                secret
                    .private_pem
                    .clone()
                    .ok_or("Secret has no private.pem")?,
            ),
        };
        let key = Arc::new((kid, encoding_key(alg, &pem)?));
        self.cached = Some((index, key.clone()));
        Ok(key)
    }
}

#[derive(PartialEq, Eq)]
struct Due {
    at: Time,
    token: String,
    meta: TokenMeta,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .at
            .cmp(&self.at)
            .then(other.meta.seq.cmp(&self.meta.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for TokenMeta {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}
impl Eq for TokenMeta {}

pub struct TokenTraffic {
    pub alg: String,
    pub secret_name: String,
    pub config_map_name: String,
    pub max_token_lifetime: i64,
    pub interval: Duration,
    pub issuers: Vec<Issuer>,
    pub verifiers: Vec<Verifier>,
    pub results: SharedResults,
    pub seed: u64,
}

impl TokenTraffic {
    /// Issues and verifies until `stop` is set, then keeps re-verifying until every
    /// issued token has had its check before expiry.
    pub async fn run(
        mut self,
        history: Arc<History>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> TokenTraffic {
        let Some(alg) = jwt_algorithm(&self.alg) else {
            return self;
        };
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let mut due: BinaryHeap<Due> = BinaryHeap::new();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut seq = 0u64;
        let mut issuing = true;
        let libraries: Vec<&'static str> = {
            let mut l: Vec<&'static str> = self.verifiers.iter().map(|v| v.library).collect();
            l.dedup();
            l
        };
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed(), if issuing => {}
            }
            if *stop.borrow() {
                issuing = false;
            }
            if !issuing && due.is_empty() {
                break;
            }
            let now = Utc::now();
            let (secrets, docs) = (
                history.secret_versions(&self.secret_name),
                history.jwks_versions(&self.config_map_name),
            );
            if issuing {
                let issuer_index = (seq as usize) % self.issuers.len().max(1);
                let issuer = &mut self.issuers[issuer_index];
                match issuer.key(&secrets, now, alg) {
                    Err(e) => {
                        if let Ok(mut r) = self.results.lock() {
                            *r.issue_errors.entry(e).or_default() += 1;
                        }
                    }
                    Ok(key) => {
                        let iat = now.timestamp();
                        let lifetime = rng.random_range(2..=self.max_token_lifetime.max(2));
                        let exp = iat + lifetime;
                        let meta = TokenMeta {
                            seq,
                            issuer: issuer.id,
                            kid: key.0.clone(),
                            signed_at: now,
                            iat,
                            exp,
                        };
                        let mut header = Header::new(alg);
                        header.kid = Some(key.0.clone());
                        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": format!("issuer-{}", issuer.id), "iat": iat, "exp": exp, "jti": seq.to_string()});
                        match jsonwebtoken::encode(&header, &claims, &key.1) {
                            Err(e) => {
                                if let Ok(mut r) = self.results.lock() {
                                    *r.issue_errors.entry(format!("signing: {e}")).or_default() +=
                                        1;
                                }
                            }
                            Ok(token) => {
                                if let Ok(mut r) = self.results.lock() {
                                    r.issued += 1;
                                }
                                for library in &libraries {
                                    self.verify_with(
                                        &mut rng,
                                        library,
                                        &docs,
                                        now,
                                        &token,
                                        &meta,
                                        Check::AtIssue,
                                    );
                                }
                                let at = chrono::DateTime::from_timestamp_micros(
                                    ((exp as f64 - REVERIFY_BEFORE_EXP) * 1e6) as i64,
                                )
                                .unwrap_or(now);
                                due.push(Due { at, token, meta });
                            }
                        }
                        seq += 1;
                    }
                }
            }
            while due.peek().is_some_and(|d| d.at <= now) {
                let Some(d) = due.pop() else { break };
                if now.timestamp_micros() as f64 / 1e6 >= d.meta.exp as f64 - 0.05 {
                    // The harness itself fell behind: this check would be about the clock.
                    if let Ok(mut r) = self.results.lock() {
                        for library in &libraries {
                            r.libraries.entry(library).or_default().late += 1;
                        }
                    }
                    continue;
                }
                for library in &libraries {
                    self.verify_with(
                        &mut rng,
                        library,
                        &docs,
                        now,
                        &d.token,
                        &d.meta,
                        Check::BeforeExpiry,
                    );
                }
            }
        }
        self
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_with(
        &mut self,
        rng: &mut ChaCha20Rng,
        library: &str,
        docs: &[(Time, Arc<JwksView>)],
        now: Time,
        token: &str,
        meta: &TokenMeta,
        check: Check,
    ) {
        let candidates: Vec<usize> = (0..self.verifiers.len())
            .filter(|&i| self.verifiers[i].library == library)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let pick = candidates[rng.random_range(0..candidates.len())];
        let verifier = &mut self.verifiers[pick];
        verifier.sync(docs, now);
        verifier.check(token, meta, check, &self.alg, now, &self.results);
    }
}
