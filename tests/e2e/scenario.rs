//! One scenario: a namespace, a JwtSigningKey, the operator process(es), issuers and
//! verifiers, the scenario's faults, then the checker, the attack tokens and the
//! conformance check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use rand::rngs::ChaCha20Rng;
use rand::{RngExt as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::attacks::{self, AttackResult};
use crate::checker::{self, Cause, Exception, Rotation, TOLERANCE, Violation};
use crate::cluster::{self, FIELD_MANAGER};
use crate::conformance::{self, Conformance};
use crate::faults::{self, Actions, Fault, FaultContext};
use crate::history::{self, History, policy_resource};
use crate::libproc::LibraryProcess;
use crate::model::{Action, ActionKind, PolicyTiming, SecretView, Time, secs};
use crate::operator::OperatorSet;
use crate::participants::{
    self, Backend, CACHE_SHARE, Delays, Failure, Issuer, LibraryStats, RustVerifier, SYNC_SHARE,
    TokenTraffic, Verifier,
};
use keyrotor::ring::ActivationException;

pub const POLICY: &str = "tokens";
pub const JWKS_KEY: &str = "jwks.json";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Expect {
    /// No failed verification, no violation.
    #[default]
    Clean,
    /// Failures allowed only where the report can explain them (revocation, a lost
    /// Secret).
    Explained,
    /// The negative control: the suite must see failures.
    Failures,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    pub algorithm: Option<String>,
    pub rsa_bits: Option<u32>,
    pub certificate: Option<bool>,
    pub rotation_interval: Option<String>,
    pub propagation_delay: Option<String>,
    pub max_token_lifetime: Option<String>,
    pub rotations: Option<usize>,
    pub token_interval_ms: Option<u64>,
    pub issuers: Option<usize>,
    pub verifiers_per_library: Option<usize>,
    pub timeout_seconds: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioDef {
    pub name: String,
    pub description: String,
    /// Scenarios of one phase run at the same time; phases run one after another.
    pub phase: u32,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub expect: Expect,
    /// Issuers sign with the newest key of the ring (Next included): pre-publication off.
    #[serde(default)]
    pub issuers_sign_with_newest_key: bool,
    #[serde(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Suite {
    pub defaults: Settings,
    pub scenarios: Vec<ScenarioDef>,
}

/// A scenario with every default filled in.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub name: String,
    pub description: String,
    pub phase: u32,
    pub faults: Vec<Fault>,
    pub expect: Expect,
    pub issuers_sign_with_newest_key: bool,
    pub algorithm: String,
    pub rsa_bits: Option<u32>,
    pub certificate: bool,
    pub rotation_interval: String,
    pub propagation_delay: String,
    pub max_token_lifetime: String,
    pub rotations: usize,
    pub token_interval_ms: u64,
    pub issuers: usize,
    pub verifiers_per_library: usize,
    pub timeout_seconds: u64,
}

pub fn resolve(suite: &Suite) -> Result<Vec<Resolved>, String> {
    let d = &suite.defaults;
    suite
        .scenarios
        .iter()
        .map(|s| {
            let o = &s.settings;
            let pick = |a: &Option<String>, b: &Option<String>, what: &str| {
                a.clone()
                    .or_else(|| b.clone())
                    .ok_or_else(|| format!("scenario {}: no {what}", s.name))
            };
            Ok(Resolved {
                name: s.name.clone(),
                description: s.description.clone(),
                phase: s.phase,
                faults: s.faults.clone(),
                expect: s.expect,
                issuers_sign_with_newest_key: s.issuers_sign_with_newest_key,
                algorithm: pick(&o.algorithm, &d.algorithm, "algorithm")?,
                rsa_bits: o.rsa_bits.or(d.rsa_bits),
                certificate: o.certificate.or(d.certificate).unwrap_or(false),
                rotation_interval: pick(
                    &o.rotation_interval,
                    &d.rotation_interval,
                    "rotationInterval",
                )?,
                propagation_delay: pick(
                    &o.propagation_delay,
                    &d.propagation_delay,
                    "propagationDelay",
                )?,
                max_token_lifetime: pick(
                    &o.max_token_lifetime,
                    &d.max_token_lifetime,
                    "maxTokenLifetime",
                )?,
                rotations: o.rotations.or(d.rotations).unwrap_or(50),
                token_interval_ms: o.token_interval_ms.or(d.token_interval_ms).unwrap_or(10),
                issuers: o.issuers.or(d.issuers).unwrap_or(3).max(1),
                verifiers_per_library: o
                    .verifiers_per_library
                    .or(d.verifiers_per_library)
                    .unwrap_or(2)
                    .max(1),
                timeout_seconds: o.timeout_seconds.or(d.timeout_seconds).unwrap_or(600),
            })
        })
        .collect()
}

/// A Kubernetes-style duration (`90s`, `1m30s`, `2h`) in seconds.
pub fn seconds_of(text: &str) -> Result<f64, String> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: u64 = number
                    .parse()
                    .map_err(|_| format!("bad duration {text:?}"))?;
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => return Err(format!("bad duration {text:?}")),
        }
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!("bad duration {text:?}"));
    }
    Ok(total as f64)
}

#[derive(Clone)]
pub struct Env {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub operator: PathBuf,
    pub repo: PathBuf,
    pub out: PathBuf,
    pub python: PathBuf,
    pub node: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationCounts {
    pub target: usize,
    /// Scheduled, requested and revocation rotations (recoveries are the fault itself).
    pub completed: usize,
    pub scheduled: usize,
    pub requested: usize,
    pub revocation: usize,
    pub recovery: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureSummary {
    pub unexpected: usize,
    pub expected: usize,
    pub expected_by_reason: BTreeMap<String, usize>,
    /// The first unexpected failures, then the first expected ones.
    pub samples: Vec<Failure>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioReport {
    pub name: String,
    pub description: String,
    pub settings: Option<Resolved>,
    pub seed: u64,
    pub seconds: f64,
    pub rotations: RotationCounts,
    pub tokens_issued: u64,
    pub issue_errors: BTreeMap<String, u64>,
    pub libraries: BTreeMap<String, LibraryStats>,
    pub failures: FailureSummary,
    pub invariant_violations: Vec<Violation>,
    pub prepublication_exceptions: Vec<Exception>,
    pub min_prepublication_margin_seconds: Option<f64>,
    pub min_retention_margin_seconds: Option<f64>,
    /// Every rotation the checker saw, in order.
    pub rotation_log: Vec<Rotation>,
    pub max_activation_lag_seconds: Option<f64>,
    pub observation_gaps: usize,
    /// Checks skipped because a watch was relisting (the state was unknown).
    pub unverifiable_checks: usize,
    pub watch_errors: u64,
    pub faults_injected: BTreeMap<String, usize>,
    pub kills_between_secret_and_configmap_write: u64,
    pub restarts: Vec<Action>,
    pub operator_crashes: Vec<String>,
    /// Operator log lines that look like private key material (invariant 4).
    pub private_material_log_lines: usize,
    pub attacks: Vec<AttackResult>,
    pub conformance: Conformance,
    pub passed: bool,
    pub problems: Vec<String>,
}

fn count_rotations(versions: &[(Time, Arc<SecretView>)]) -> usize {
    let mut count = 0;
    let mut previous: Option<&str> = None;
    for (_, secret) in versions {
        let kid = secret.kid.as_deref();
        if let (Some(p), Some(k)) = (previous, kid)
            && p != k
            && secret
                .key(k)
                .is_some_and(|f| f.exception != Some(ActivationException::Recovery))
        {
            count += 1;
        }
        if kid.is_some() {
            previous = kid;
        }
    }
    count
}

/// Why a failed verification was expected, if it was.
pub fn explain(
    failure: &Failure,
    actions: &[Action],
    exceptions: &[Exception],
    pd: f64,
) -> Option<String> {
    let kid = &failure.token.kid;
    for action in actions {
        if let ActionKind::Revoked { kid: revoked, .. } = &action.kind
            && revoked == kid
            && secs(action.at, failure.verified_at) > -TOLERANCE
        {
            return Some(
                "signed by a key that was explicitly revoked (spec.revokedKeyIDs) before the check"
                    .into(),
            );
        }
    }
    for exception in exceptions {
        // Verifiers can know the key only once it is both Active and published.
        let known_from = exception
            .published_at
            .map_or(exception.at, |p| p.max(exception.at));
        if &exception.kid == kid && secs(known_from, failure.token.signed_at) < pd + TOLERANCE {
            return Some(format!(
                "signed by a key that became Active without pre-publication ({}) less than propagationDelay after it was both Active and published: verifiers could not know it yet",
                exception.reason.split(':').next().unwrap_or("exception")
            ));
        }
    }
    None
}

/// Everything the watches saw and the harness did, one JSON line each in time order
/// (public facts only), for reading a failure after the fact.
fn write_timeline(
    path: &std::path::Path,
    observations: &[crate::model::Observation],
    actions: &[Action],
) {
    use crate::model::Change;
    let mut lines: Vec<(Time, String)> = Vec::new();
    for o in observations {
        let entry = match &o.change {
            Change::Secret(None) => json!({"secretDeleted": o.name}),
            Change::Secret(Some(s)) => json!({
                "secret": o.name,
                "active": s.kid,
                "ring": s.ring.as_ref().map(|keys| keys.iter().map(|k| json!({
                    "kid": k.kid, "state": k.state.to_string(), "publishedAt": k.published_at,
                    "activatedAt": k.activated_at, "retiredAt": k.retired_at,
                    "exception": k.exception.map(|e| e.to_string()),
                })).collect::<Vec<_>>()).map_err(|e| e.clone()),
            }),
            Change::ConfigMap(None) => json!({"configMapDeleted": o.name}),
            Change::ConfigMap(Some(d)) => {
                json!({"jwks": o.name, "kids": d.kids, "error": d.parse_error})
            }
            Change::Policy(p) => {
                json!({
                    "policy": o.name,
                    "revoked": p.as_ref().map(|p| p.revoked.clone()),
                    "rotateRequest": p.as_ref().map(|p| p.rotate_request.clone()),
                })
            }
            Change::Gap { kind, open } => json!({"watchGap": kind, "open": open}),
        };
        let mut entry = entry;
        entry["at"] = json!(o.at);
        entry["rv"] = json!(o.rv);
        lines.push((o.at, entry.to_string()));
    }
    for a in actions {
        if let Ok(mut value) = serde_json::to_value(a) {
            value["action"] = json!(true);
            lines.push((a.at, value.to_string()));
        }
    }
    lines.sort_by_key(|(at, _)| *at);
    let text: String = lines.into_iter().map(|(_, l)| l + "\n").collect();
    let _ = std::fs::write(path, text);
}

async fn apply_policy(client: &Client, namespace: &str, s: &Resolved) -> Result<(), String> {
    let mut spec = json!({
        "algorithm": s.algorithm,
        "rotationInterval": s.rotation_interval,
        "propagationDelay": s.propagation_delay,
        "maxTokenLifetime": s.max_token_lifetime,
        "certificate": {"enabled": s.certificate},
    });
    if let Some(bits) = s.rsa_bits {
        spec["rsaBits"] = json!(bits);
    }
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "keyrotor.dev/v1alpha1",
        "kind": "JwtSigningKey",
        "metadata": {"name": POLICY, "namespace": namespace},
        "spec": spec,
    }))
    .map_err(|e| e.to_string())?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &policy_resource());
    api.patch(
        POLICY,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(|e| format!("applying the JwtSigningKey: {e}"))?;
    Ok(())
}

async fn request_rotation(client: &Client, namespace: &str, value: &str) -> bool {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &policy_resource());
    let patch = json!({"metadata": {"annotations": {"keyrotor.dev/rotate-request": value}}});
    api.patch(POLICY, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .is_ok()
}

pub async fn run(env: Env, s: Resolved, seed: u64) -> ScenarioReport {
    let started = Instant::now();
    let mut report = ScenarioReport {
        name: s.name.clone(),
        description: s.description.clone(),
        settings: Some(s.clone()),
        seed,
        ..ScenarioReport::default()
    };
    if let Err(problem) = run_into(&env, &s, seed, &mut report).await {
        report.problems.push(problem);
    }
    report.seconds = started.elapsed().as_secs_f64();
    judge(&s, &mut report);
    report
}

fn judge(s: &Resolved, report: &mut ScenarioReport) {
    let r = report;
    if r.rotations.completed < r.rotations.target {
        r.problems.push(format!(
            "{} rotations, fewer than {}",
            r.rotations.completed, r.rotations.target
        ));
    }
    if r.tokens_issued == 0 {
        r.problems.push("no token was issued".into());
    }
    for library in ["rust", "python", "node"] {
        let verified = r
            .libraries
            .get(library)
            .map_or(0, |l| l.verified_at_issue + l.verified_before_expiry);
        if verified == 0 && s.expect != Expect::Failures {
            r.problems
                .push(format!("the {library} verifiers verified no token"));
        }
    }
    match s.expect {
        Expect::Clean if r.failures.expected + r.failures.unexpected > 0 => {
            r.problems.push(format!(
                "{} failed verifications ({} of them of the explainable kind)",
                r.failures.expected + r.failures.unexpected,
                r.failures.expected
            ))
        }
        Expect::Explained if r.failures.unexpected > 0 => r.problems.push(format!(
            "{} failed verifications that nothing explains",
            r.failures.unexpected
        )),
        Expect::Failures if r.failures.unexpected + r.failures.expected == 0 => r.problems.push(
            "the negative control saw no failed verification: the suite cannot see the problem"
                .into(),
        ),
        _ => {}
    }
    if !r.invariant_violations.is_empty() {
        r.problems.push(format!(
            "{} invariant violations",
            r.invariant_violations.len()
        ));
    }
    for attack in &r.attacks {
        if !attack.passed {
            r.problems
                .push(format!("attack token not handled right: {}", attack.name));
        }
    }
    if r.attacks.is_empty() {
        r.problems.push("the attack tokens were not checked".into());
    }
    if r.conformance.documents_checked == 0 {
        r.problems
            .push("no JWKS document was checked for conformance".into());
    }
    if !r.conformance.problems.is_empty() {
        r.problems.push(format!(
            "{} kinds of JWKS conformance problems",
            r.conformance.problems.len()
        ));
    }
    if r.private_material_log_lines > 0 {
        r.problems.push(format!(
            "{} operator log lines look like private key material",
            r.private_material_log_lines
        ));
    }
    if !r.operator_crashes.is_empty() {
        r.problems.push(format!(
            "the operator exited by itself {} times",
            r.operator_crashes.len()
        ));
    }
    r.passed = r.problems.is_empty();
}

async fn run_into(
    env: &Env,
    s: &Resolved,
    seed: u64,
    report: &mut ScenarioReport,
) -> Result<(), String> {
    let namespace = format!("e2e-{}", s.name);
    let dir = env.out.join(&s.name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let timing = PolicyTiming {
        name: POLICY.to_owned(),
        secret_name: format!("{POLICY}-signing-key"),
        config_map_name: format!("{POLICY}-jwks"),
        rotation_interval: seconds_of(&s.rotation_interval)?,
        propagation_delay: seconds_of(&s.propagation_delay)?,
        max_token_lifetime: seconds_of(&s.max_token_lifetime)?,
    };
    report.rotations.target = s.rotations;
    let pd = timing.propagation_delay;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);

    cluster::fresh_namespace(&env.client, &namespace).await?;
    let history = History::new();
    let (stop_watch_tx, stop_watch) = tokio::sync::watch::channel(false);
    let watches = history::start(
        &env.kubeconfig,
        &namespace,
        JWKS_KEY,
        history.clone(),
        stop_watch,
    );

    let verifier_dir = env.repo.join("tests/e2e/verifiers");
    let python = LibraryProcess::start(
        &env.python,
        &verifier_dir.join("verifier.py"),
        &dir.join("python.log"),
    )?;
    let node = LibraryProcess::start(
        &env.node,
        &verifier_dir.join("verifier.mjs"),
        &dir.join("node.log"),
    )?;
    let alg = participants::jwt_algorithm(&s.algorithm)
        .ok_or_else(|| format!("unknown algorithm {}", s.algorithm))?;
    let cache = CACHE_SHARE * pd;
    let mut verifiers = Vec::new();
    for library in ["rust", "python", "node"] {
        for i in 0..s.verifiers_per_library {
            let delays = Delays::new(rng.random(), SYNC_SHARE * pd);
            let backend = match library {
                "rust" => Backend::Rust(Box::new(RustVerifier::new(
                    alg,
                    Duration::from_secs_f64(cache),
                    Duration::from_secs_f64(cache),
                ))),
                "python" => Backend::Process(python.clone()),
                _ => Backend::Process(node.clone()),
            };
            verifiers.push(
                Verifier::new(library, format!("{library}-{i}"), delays, backend, cache).await,
            );
        }
    }
    let issuers = (0..s.issuers)
        .map(|i| {
            Issuer::new(
                i,
                Delays::new(rng.random(), (SYNC_SHARE + CACHE_SHARE) * pd),
                s.issuers_sign_with_newest_key,
            )
        })
        .collect();

    let replicas = if s.faults.contains(&Fault::SecondReplica) {
        2
    } else {
        1
    };
    let operators = Arc::new(tokio::sync::Mutex::new(OperatorSet::new(
        &env.operator,
        &env.kubeconfig,
        &namespace,
        &dir,
        false,
    )));
    let actions: Actions = Arc::new(Mutex::new(Vec::new()));
    for replica in 0..replicas {
        let pid = operators.lock().await.start(replica)?;
        faults::record(
            &actions,
            Utc::now(),
            ActionKind::OperatorStarted { replica, pid },
        );
    }
    apply_policy(&env.client, &namespace, s).await?;

    // The first key: Secret and JWKS both there.
    let deadline = Instant::now() + Duration::from_secs(90);
    while history.secret_versions(&timing.secret_name).is_empty()
        || history.jwks_versions(&timing.config_map_name).is_empty()
    {
        if Instant::now() > deadline {
            operators.lock().await.stop_all().await;
            return Err("the operator wrote no Secret and JWKS within 90s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Services start once the first key is out: its FirstKey exception (no
    // pre-publication possible) is not what the scenario measures.
    let first_published = history.jwks_versions(&timing.config_map_name)[0].0;
    let warm = secs(first_published, Utc::now());
    if warm < pd + 0.2 {
        tokio::time::sleep(Duration::from_secs_f64(pd + 0.2 - warm)).await;
    }
    let results = participants::SharedResults::default();
    let traffic = TokenTraffic {
        alg: s.algorithm.clone(),
        secret_name: timing.secret_name.clone(),
        config_map_name: timing.config_map_name.clone(),
        max_token_lifetime: timing.max_token_lifetime as i64,
        interval: Duration::from_millis(s.token_interval_ms),
        issuers,
        verifiers,
        results: results.clone(),
        seed: rng.random(),
    };
    let (stop_traffic_tx, stop_traffic) = tokio::sync::watch::channel(false);
    // The traffic runs on a thread of its own: signing and verifying are CPU work.
    let traffic_history = history.clone();
    let traffic_task = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(traffic.run(traffic_history, stop_traffic)))
            .map_err(|e| e.to_string())
    });

    let ctx = FaultContext {
        client: env.client.clone(),
        repo: env.repo.clone(),
        namespace: namespace.clone(),
        policy: POLICY.to_owned(),
        secret_name: timing.secret_name.clone(),
        config_map_name: timing.config_map_name.clone(),
        jwks_key: JWKS_KEY.to_owned(),
        history: history.clone(),
        actions: actions.clone(),
        operators: operators.clone(),
        written: Arc::default(),
        kills_between_writes: Arc::default(),
        rotation_interval: timing.rotation_interval,
        propagation_delay: timing.propagation_delay,
    };
    let (stop_faults_tx, stop_faults) = tokio::sync::watch::channel(false);
    let fault_tasks: Vec<_> = s
        .faults
        .iter()
        .map(|f| {
            tokio::spawn(faults::run(
                *f,
                ctx.clone(),
                rng.random(),
                stop_faults.clone(),
            ))
        })
        .collect();

    // Drive rotations: mostly rotate requests (some before the Next key is ready), now
    // and then a wait long enough for the schedule to rotate by itself.
    let deadline = Instant::now() + Duration::from_secs(s.timeout_seconds);
    let mut request = 0u64;
    let mut crashes = Vec::new();
    while count_rotations(&history.secret_versions(&timing.secret_name)) < s.rotations
        && Instant::now() < deadline
    {
        let roll: f64 = rng.random();
        let (gap, ask) = if roll < 0.2 {
            (rng.random_range(0.3..1.0) * pd, true)
        } else if roll < 0.92 {
            (rng.random_range(1.2..2.5) * pd + 0.3, true)
        } else {
            (timing.rotation_interval + 0.5, false)
        };
        tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        if ask {
            request += 1;
            let value = format!("e2e-{request}");
            let at = Utc::now();
            if request_rotation(&env.client, &namespace, &value).await {
                faults::record(
                    &actions,
                    at,
                    ActionKind::RotateRequested {
                        policy: POLICY.to_owned(),
                        value,
                    },
                );
            }
        }
        for (replica, status) in operators.lock().await.crashed() {
            crashes.push(format!("replica {replica} exited: {status}"));
        }
    }
    let _ = stop_faults_tx.send(true);
    for task in fault_tasks {
        let _ = task.await;
    }
    {
        let mut ops = operators.lock().await;
        for (replica, status) in ops.crashed() {
            crashes.push(format!("replica {replica} exited: {status}"));
        }
        for replica in 0..replicas {
            if !ops.running(replica) {
                let _ = ops.start(replica);
            }
        }
    }
    cluster::wait_ready(&env.client, Duration::from_secs(60)).await;
    // Let the last rotation settle, then drain: every token gets its check before expiry.
    tokio::time::sleep(Duration::from_secs_f64(pd + 0.5)).await;
    let _ = stop_traffic_tx.send(true);
    let mut traffic = tokio::task::spawn_blocking(move || traffic_task.join())
        .await
        .map_err(|e| format!("token traffic: {e}"))?
        .map_err(|_| "the token traffic thread panicked".to_owned())??;
    let drain = Instant::now() + Duration::from_secs(60);
    while (python.in_flight() > 0 || node.in_flight() > 0) && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Attack tokens against the Active key, every verifier on the newest document.
    let docs = history.jwks_versions(&timing.config_map_name);
    for verifier in traffic.verifiers.iter_mut() {
        verifier.serve_now(&docs);
    }
    if let Some(secret) = history.latest_secret(&timing.secret_name)
        && let (Some(kid), Some(pem)) = (secret.kid.clone(), secret.private_pem.clone())
    {
        let public_jwk = docs
            .last()
            .and_then(|(_, d)| d.text.as_deref())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| {
                v["keys"]
                    .as_array()
                    .and_then(|keys| keys.iter().find(|k| k["kid"] == json!(kid)).cloned())
            });
        if let Some(public_jwk) = public_jwk {
            let tokens =
                attacks::tokens(&s.algorithm, &kid, &pem, &public_jwk, Some(&python)).await;
            report.attacks = attacks::run(tokens, &mut traffic.verifiers, &s.algorithm).await;
        }
    }

    operators.lock().await.stop_all().await;
    report.private_material_log_lines = (0..replicas)
        .filter_map(|r| std::fs::read_to_string(dir.join(format!("operator-{r}.log"))).ok())
        .map(|log| {
            log.lines()
                .filter(|l| {
                    l.contains("PRIVATE KEY")
                        || l.contains("\"d\":\"")
                        || l.contains("\\\"d\\\":\\\"")
                })
                .count()
        })
        .sum();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_watch_tx.send(true);
    match tokio::task::spawn_blocking(move || watches.join()).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => report.problems.push(format!("the watches failed: {e}")),
        _ => report.problems.push("the watch thread panicked".into()),
    }
    let observations = history.observations();
    let actions: Vec<Action> = actions.lock().map(|a| a.clone()).unwrap_or_default();

    write_timeline(&dir.join("timeline.jsonl"), &observations, &actions);
    let written = ctx.written.lock().map(|w| w.clone()).unwrap_or_default();
    let foreign: BTreeSet<String> = actions
        .iter()
        .filter_map(|a| match &a.kind {
            ActionKind::ConfigMapEdited { added, .. } => Some(added.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    report.conformance = conformance::check(
        &observations,
        &timing.secret_name,
        &timing.config_map_name,
        &written,
        &foreign,
        &python,
        &node,
    )
    .await;
    python.stop().await;
    node.stop().await;
    cluster::delete_namespace(&env.client, &namespace).await;

    let findings = checker::check(&timing, &observations, &actions);
    report.rotations.scheduled = findings
        .rotations
        .iter()
        .filter(|r| r.cause == Cause::Scheduled)
        .count();
    report.rotations.requested = findings
        .rotations
        .iter()
        .filter(|r| r.cause == Cause::Requested)
        .count();
    report.rotations.revocation = findings
        .rotations
        .iter()
        .filter(|r| r.cause == Cause::Revocation)
        .count();
    report.rotations.recovery = findings
        .rotations
        .iter()
        .filter(|r| r.cause == Cause::Recovery)
        .count();
    report.rotations.completed = findings.completed_rotations();
    report.rotation_log = findings.rotations.clone();
    report.min_prepublication_margin_seconds = findings.min_prepublication_margin;
    report.min_retention_margin_seconds = findings.min_retention_margin;
    report.max_activation_lag_seconds = findings.max_activation_lag;
    report.observation_gaps = findings.observation_gaps;
    report.unverifiable_checks = findings.unverifiable;
    report.watch_errors = history.watch_errors.lock().map(|e| *e).unwrap_or(0);
    report.invariant_violations = findings.violations.clone();
    report.prepublication_exceptions = findings.exceptions.clone();
    report.kills_between_secret_and_configmap_write =
        ctx.kills_between_writes.lock().map(|n| *n).unwrap_or(0);
    report.operator_crashes = crashes;
    for action in &actions {
        let name = match &action.kind {
            ActionKind::RotateRequested { .. } => "rotateRequest",
            ActionKind::Revoked { .. } => "revocation",
            ActionKind::SecretDeleted { .. } => "secretDeleted",
            ActionKind::ConfigMapEdited { removed, .. } if !removed.is_empty() => {
                "configMapEditRemovedNext"
            }
            ActionKind::ConfigMapEdited { .. } => "configMapEditAddedForeignKey",
            ActionKind::OperatorStarted { .. } => "operatorStarted",
            ActionKind::OperatorKilled { .. } => "operatorSigkill",
            ActionKind::ComponentRestarted { component, .. } if component == "etcd" => {
                "etcdRestart"
            }
            ActionKind::ComponentRestarted { .. } => "apiserverRestart",
        };
        *report.faults_injected.entry(name.to_owned()).or_default() += 1;
        if matches!(action.kind, ActionKind::ComponentRestarted { .. }) {
            report.restarts.push(action.clone());
        }
    }

    let mut results = std::mem::take(&mut *results.lock().map_err(|_| "results lock poisoned")?);
    report.tokens_issued = results.issued;
    report.issue_errors = results.issue_errors;
    report.libraries = results
        .libraries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let mut unexpected = Vec::new();
    let mut expected = Vec::new();
    for failure in results.failures.iter_mut() {
        failure.expected = explain(failure, &actions, &findings.exceptions, pd);
        match &failure.expected {
            Some(reason) => {
                *report
                    .failures
                    .expected_by_reason
                    .entry(reason.clone())
                    .or_default() += 1;
                expected.push(failure.clone());
            }
            None => unexpected.push(failure.clone()),
        }
    }
    report.failures.unexpected = unexpected.len();
    report.failures.expected = expected.len();
    report.failures.samples = unexpected
        .into_iter()
        .take(20)
        .chain(expected.into_iter().take(10))
        .collect();
    Ok(())
}
