//! The operator against the real local control plane: the built `keyrotor` binary runs
//! as a separate process (one per test, watching only the test's namespace, its log in
//! `target/tmp/`), and the tests watch what it writes.
//!
//! Needs a running control plane (`make cluster-up`, or `make test`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keyrotor::api::{JwtSigningKey, JwtSigningKeyStatus, KeyState};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, CustomResourceExt};
use serde_json::{Value, json};
use support::{TestNamespace, eventually, run_kubectl, run_kubectl_with_stdin};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

// --- harness --------------------------------------------------------------------------

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "jwtsigningkeys.keyrotor.dev",
        &PatchParams::apply("keyrotor-tests").force(),
        &Patch::Apply(JwtSigningKey::crd()),
    )
    .await
    .expect("the CRD applies");
    eventually("the CRD to be established", Duration::from_secs(30), || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("jwtsigningkeys.keyrotor.dev").await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await;
}

/// The operator binary, watching one namespace. Killed on drop.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(namespace: &str, rust_log: &str) -> Operator {
        let log =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{namespace}.log"));
        let out = File::create(&log).expect("create the operator log");
        let err = out.try_clone().expect("clone the log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_keyrotor"))
            .args(["run", "--namespace", namespace])
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
            .arg("--kubeconfig")
            .arg(support::kubeconfig_path())
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("the operator starts");
        Operator { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        let exited = self.child.try_wait().expect("query the operator process");
        let log = self.log();
        let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        assert!(
            exited.is_none(),
            "the operator exited ({exited:?}):\n{tail}"
        );
        assert!(!log.contains("panicked"), "the operator panicked:\n{tail}");
    }

    /// The metrics address the operator logged once it bound it.
    fn metrics_addr(&self) -> Option<String> {
        self.log().lines().find_map(|line| {
            let entry: Value = serde_json::from_str(line).ok()?;
            entry.get("metrics_addr")?.as_str().map(str::to_owned)
        })
    }

    fn http_get(&self, path: &str) -> Option<String> {
        let addr = self.metrics_addr()?;
        let mut stream = TcpStream::connect(addr).ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// Waits until the operator's watches have synced (`/readyz` answers 200).
    async fn wait_ready(&self) {
        eventually(
            "the operator to be ready",
            Duration::from_secs(30),
            || async {
                self.http_get("/readyz")
                    .filter(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
                    .map(|_| ())
            },
        )
        .await;
    }

    /// The value of a counter in `/metrics`, summed over its label sets.
    fn counter(&self, name: &str) -> f64 {
        let body = self.http_get("/metrics").expect("metrics answer");
        let values: Vec<f64> = body
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        assert!(!values.is_empty(), "no {name} in /metrics:\n{body}");
        values.iter().sum()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace, the CRD and an operator watching that namespace.
struct Setup {
    namespace: TestNamespace,
    operator: Operator,
}

async fn setup(prefix: &str, rust_log: &str) -> Setup {
    let client = support::client().await;
    install_crd(&client).await;
    let namespace = TestNamespace::new(&client, prefix).await;
    let operator = Operator::start(namespace.name(), rust_log);
    operator.wait_ready().await;
    Setup {
        namespace,
        operator,
    }
}

impl Setup {
    fn ns(&self) -> &str {
        self.namespace.name()
    }

    fn policies(&self) -> Api<JwtSigningKey> {
        self.namespace.api()
    }

    fn secrets(&self) -> Api<Secret> {
        self.namespace.api()
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        self.namespace.api()
    }

    fn kubectl_apply(&self, yaml: &str) {
        run_kubectl_with_stdin(&["apply", "-n", self.ns(), "-f", "-"], Some(yaml))
            .assert_success("kubectl apply");
    }

    fn kubectl_apply_file(&self, file: &str) {
        let path = format!("{EXAMPLES}/{file}");
        run_kubectl(&["apply", "-n", self.ns(), "-f", &path]).assert_success("kubectl apply -f");
    }

    async fn snapshot(&self, policy: &str, config_map: &str, secret: &str) -> Snapshot {
        let at = Instant::now();
        let secret = self
            .secrets()
            .get_opt(secret)
            .await
            .expect("read the Secret");
        let config_map = self
            .config_maps()
            .get_opt(config_map)
            .await
            .expect("read the ConfigMap");
        let status = self
            .policies()
            .get_opt(policy)
            .await
            .expect("read the policy")
            .and_then(|p| p.status);
        Snapshot {
            at,
            active: secret.as_ref().and_then(|s| secret_text(s, "kid")),
            secret,
            jwks: config_map
                .as_ref()
                .and_then(|cm| jwks_keys(cm, "jwks.json")),
            config_map,
            status,
        }
    }

    /// Waits until the policy is Ready with its next key published, and returns the
    /// state then.
    async fn converged(&self, policy: &str) -> Snapshot {
        let (cm, secret) = (format!("{policy}-jwks"), format!("{policy}-signing-key"));
        eventually(
            &format!("{policy} to converge (Ready, KeyPublished)"),
            Duration::from_secs(20),
            || async {
                let s = self.snapshot(policy, &cm, &secret).await;
                (s.condition("Ready") == Some("True")
                    && s.condition("KeyPublished") == Some("True")
                    && s.active.is_some()
                    && s.jwks.is_some())
                .then_some(s)
            },
        )
        .await
    }

    async fn events(&self, policy: &str) -> Vec<Event> {
        let events: Api<Event> = self.namespace.api();
        events
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .is_some_and(|r| r.name.as_deref() == Some(policy))
            })
            .collect()
    }

    async fn event_reasons(&self, policy: &str) -> BTreeSet<String> {
        self.events(policy)
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    async fn wait_for_event(&self, policy: &str, reason: &str) {
        eventually(
            &format!("an Event {reason} for {policy}"),
            Duration::from_secs(15),
            || async {
                self.event_reasons(policy)
                    .await
                    .contains(reason)
                    .then_some(())
            },
        )
        .await;
    }
}

fn policy_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: keyrotor.dev/v1alpha1\nkind: JwtSigningKey\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn jwks_keys(config_map: &ConfigMap, key: &str) -> Option<Vec<Value>> {
    let text = config_map.data.as_ref()?.get(key)?;
    let document: Value = serde_json::from_str(text).ok()?;
    document.get("keys")?.as_array().cloned()
}

fn sources(config_map: &ConfigMap) -> BTreeMap<String, Vec<String>> {
    config_map
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("keyrotor.dev/sources"))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// What one look at the cluster showed.
struct Snapshot {
    at: Instant,
    /// The kid in the Secret: the key signers use.
    active: Option<String>,
    secret: Option<Secret>,
    jwks: Option<Vec<Value>>,
    config_map: Option<ConfigMap>,
    status: Option<JwtSigningKeyStatus>,
}

impl Snapshot {
    fn kids(&self) -> BTreeSet<String> {
        self.jwks
            .iter()
            .flatten()
            .filter_map(|k| k.get("kid")?.as_str().map(str::to_owned))
            .collect()
    }

    fn condition(&self, type_: &str) -> Option<&str> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.as_str())
    }

    fn next_kid(&self) -> Option<String> {
        self.status.as_ref()?.next_key_id.clone()
    }
}

// --- apply → Ready ----------------------------------------------------------------------

#[tokio::test]
async fn quickstart_is_ready_with_secret_jwks_and_columns_within_seconds() {
    let mut t = setup("quickstart", "info,keyrotor=debug").await;
    let started = Instant::now();
    t.kubectl_apply_file("quickstart.yaml");
    let created = Instant::now();
    let ready = eventually(
        "quickstart Ready with Secret and JWKS",
        Duration::from_secs(10),
        || async {
            let s = t
                .snapshot("quickstart", "quickstart-jwks", "quickstart-signing-key")
                .await;
            let active = s.active.clone()?;
            (s.condition("Ready") == Some("True") && s.kids().contains(&active)).then_some(s)
        },
    )
    .await;
    let (total, operator) = (started.elapsed(), created.elapsed());
    println!(
        "kubectl apply → Ready, Secret and JWKS written: {total:?} ({operator:?} after kubectl returned)"
    );
    assert!(operator < Duration::from_secs(3), "took {operator:?}");

    // The Secret: the active key for signers, owned by the policy, labelled.
    let secret = ready.secret.as_ref().expect("Secret");
    let data = secret.data.as_ref().expect("Secret data");
    for key in ["private.pem", "private.jwk", "kid", "alg", "ring.json"] {
        assert!(data.contains_key(key), "Secret lacks {key}");
    }
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret_text(secret, "alg").as_deref(), Some("ES256"));
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].name, "quickstart");
    assert_eq!(owners[0].controller, Some(true));
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("keyrotor")
    );
    assert!(
        secret
            .metadata
            .annotations
            .as_ref()
            .is_none_or(|a| a.is_empty()),
        "no annotations (client-side apply would copy the data into one)"
    );

    // The JWKS: the active key first, public members only, traceable to the policy.
    let jwks = ready.jwks.as_ref().expect("JWKS");
    assert_eq!(jwks[0]["kid"].as_str(), ready.active.as_deref());
    for key in jwks {
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "ES256");
        assert!(key.get("d").is_none());
    }
    let config_map = ready.config_map.as_ref().expect("ConfigMap");
    let owners = config_map
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_ne!(owners[0].controller, Some(true));
    let attributed: BTreeSet<String> = sources(config_map)
        .remove("quickstart")
        .unwrap_or_default()
        .into_iter()
        .collect();
    assert_eq!(attributed, ready.kids());

    // kubectl get jsk: every column filled in.
    let table = run_kubectl(&["get", "jsk", "-n", t.ns()]);
    table.assert_success("kubectl get jsk");
    let mut lines = table.stdout.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ALG",
            "ACTIVE-KID",
            "NEXT-ROTATION",
            "KEYS",
            "READY",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row.len(), 7, "a value in every column: {row:?}");
    assert_eq!(row[0], "quickstart");
    assert_eq!(row[1], "ES256");
    assert_eq!(Some(row[2]), ready.active.as_deref());
    assert!(row[3].ends_with('Z'), "NEXT-ROTATION is a time: {}", row[3]);
    assert!(
        row[4].parse::<u32>().is_ok_and(|n| n >= 2),
        "KEYS: {}",
        row[4]
    );
    assert_eq!(row[5], "True");
    t.operator.assert_running();
}

// --- rotations ----------------------------------------------------------------------------

#[tokio::test]
async fn fast_rotations_keep_the_invariants_at_every_observation() {
    let mut t = setup("rotations", "info,keyrotor=debug").await;
    // A key every 12 s, published 4 s before it signs, tokens live 3 s.
    let (interval, delay, lifetime) = (12.0, 4.0, 3.0);
    t.kubectl_apply(&policy_yaml(
        "fast",
        "  rotationInterval: 12s\n  propagationDelay: 4s\n  maxTokenLifetime: 3s\n",
    ));
    let poll = Duration::from_millis(250);
    // Observation slack: each sample can be up to one poll late, plus request time.
    let slack = 1.0;
    let started = Instant::now();
    let mut observations = Vec::new();
    while started.elapsed() < Duration::from_secs(45) {
        let s = t.snapshot("fast", "fast-jwks", "fast-signing-key").await;
        // The very first key is written to the Secret just before the first JWKS exists
        // (the Secret is the truth, and goes first): the FirstKey exception.
        let first_jwks_pending = s.config_map.is_none()
            && observations
                .iter()
                .all(|o: &Snapshot| o.config_map.is_none());
        if let Some(active) = s.active.as_ref().filter(|_| !first_jwks_pending) {
            // Invariant 1: the Secret's kid is in the JWKS, at every observation.
            assert!(
                s.kids().contains(active),
                "active kid {active} missing from the JWKS {:?} at {:?}",
                s.kids(),
                s.at - started
            );
            assert!(s.jwks.iter().flatten().all(|k| k.get("d").is_none()));
        }
        observations.push(s);
        tokio::time::sleep(poll).await;
    }

    let secs = |at: Instant| (at - started).as_secs_f64();
    let mut first_published: BTreeMap<String, f64> = BTreeMap::new();
    let mut activated: Vec<(String, f64)> = Vec::new();
    for s in &observations {
        for kid in s.kids() {
            first_published.entry(kid).or_insert(secs(s.at));
        }
        if let Some(active) = &s.active
            && activated.last().is_none_or(|(kid, _)| kid != active)
        {
            assert!(
                activated.iter().all(|(kid, _)| kid != active),
                "key {active} became active twice"
            );
            activated.push((active.clone(), secs(s.at)));
        }
    }
    println!("activations (kid, seconds after apply): {activated:?}");
    assert!(
        activated.len() >= 3,
        "expected at least two rotations in 45 s, saw {activated:?}"
    );

    for (index, (kid, at)) in activated.iter().enumerate().skip(1) {
        // Invariant 2: published for propagationDelay before it signed.
        let published = first_published[kid];
        assert!(
            at - published >= delay - slack,
            "key {kid} signed at {at:.2}s, {:.2}s after it was first seen published",
            at - published
        );
        // Never early: a rotation interval between activations.
        let previous = activated[index - 1].1;
        if index >= 2 {
            assert!(
                at - previous >= interval - slack,
                "rotation after {:.2}s, interval is {interval}s",
                at - previous
            );
        }
    }

    // Invariant 3: a retired key stays published propagationDelay + maxTokenLifetime
    // after it stopped signing, then leaves.
    for window in activated.windows(2) {
        let (retired_kid, retired_at) = (&window[0].0, window[1].1);
        for s in &observations {
            let t_obs = secs(s.at);
            if t_obs < retired_at + delay + lifetime - slack - poll.as_secs_f64() {
                if t_obs >= retired_at {
                    assert!(
                        s.kids().contains(retired_kid),
                        "retired key {retired_kid} left the JWKS at {t_obs:.2}s, it retired at {retired_at:.2}s"
                    );
                }
            } else if t_obs > retired_at + delay + lifetime + 3.0 {
                assert!(
                    !s.kids().contains(retired_kid),
                    "retired key {retired_kid} still published at {t_obs:.2}s, it retired at {retired_at:.2}s"
                );
            }
        }
    }

    // Status agrees with the Secret at the end, and says which key skipped
    // pre-publication (only the first).
    let last = t.snapshot("fast", "fast-jwks", "fast-signing-key").await;
    let status = last.status.expect("status");
    assert_eq!(status.active_key_id, last.active);
    let exceptions: Vec<_> = status
        .keys
        .iter()
        .filter(|k| k.activated_without_prepublication.is_some())
        .collect();
    assert!(
        exceptions.iter().all(|k| k.kid == activated[0].0),
        "only the first key may skip pre-publication: {exceptions:?}"
    );
    assert!(
        t.event_reasons("fast").await.is_superset(
            &[
                "NextKeyCreated",
                "KeyActivated",
                "KeyRetired",
                "KeyRemoved",
                "KeyPublished"
            ]
            .map(String::from)
            .into()
        )
    );
    t.operator.assert_running();
}

// --- recovery -----------------------------------------------------------------------------

const STEADY: &str = "  rotationInterval: 1h\n  propagationDelay: 5s\n  maxTokenLifetime: 5s\n";

/// Watches for `Degraded=True` with `reason` within `timeout`.
async fn degraded_with(t: &Setup, policy: &str, reason: &str) {
    eventually(
        &format!("Degraded={reason} on {policy}"),
        Duration::from_secs(10),
        || async {
            let p = t.policies().get(policy).await.ok()?;
            p.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == reason)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn deleted_secret_is_rebuilt_without_dropping_published_keys() {
    let mut t = setup("rec-secret", "info,keyrotor=debug").await;
    t.kubectl_apply(&policy_yaml("victim", STEADY));
    let before = t.converged("victim").await;
    let (old_active, old_next) = (
        before.active.clone().expect("active"),
        before.next_kid().expect("next"),
    );

    t.secrets()
        .delete("victim-signing-key", &DeleteParams::default())
        .await
        .expect("delete the Secret");
    let after = eventually("a rebuilt Secret", Duration::from_secs(10), || async {
        let s = t
            .snapshot("victim", "victim-jwks", "victim-signing-key")
            .await;
        s.active.as_ref().filter(|a| **a != old_active)?;
        s.kids().contains(s.active.as_ref()?).then_some(s)
    })
    .await;
    let kids = after.kids();
    assert!(
        kids.contains(&old_active) && kids.contains(&old_next),
        "still-valid keys {old_active} and {old_next} must stay published: {kids:?}"
    );
    degraded_with(&t, "victim", "RingRebuilt").await;
    t.wait_for_event("victim", "RingRebuilt").await;
    let status = t
        .policies()
        .get("victim")
        .await
        .expect("policy")
        .status
        .expect("status");
    let recovered: BTreeSet<&str> = status
        .keys
        .iter()
        .filter(|k| k.recovered == Some(true))
        .map(|k| k.kid.as_str())
        .collect();
    assert!(recovered.contains(old_active.as_str()) && recovered.contains(old_next.as_str()));
    t.operator.assert_running();
}

#[tokio::test]
async fn corrupted_ring_is_rebuilt_without_dropping_published_keys() {
    let mut t = setup("rec-ring", "info,keyrotor=debug").await;
    t.kubectl_apply(&policy_yaml("victim", STEADY));
    let before = t.converged("victim").await;
    let old_kids = before.kids();
    let old_active = before.active.clone().expect("active");

    let garbage = STANDARD.encode(b"{\"version\": 1, \"keys\": [tampered");
    t.secrets()
        .patch(
            "victim-signing-key",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "ring.json": garbage } })),
        )
        .await
        .expect("corrupt ring.json");
    let after = eventually("a rebuilt ring", Duration::from_secs(10), || async {
        let s = t
            .snapshot("victim", "victim-jwks", "victim-signing-key")
            .await;
        s.active.as_ref().filter(|a| **a != old_active)?;
        let ring = secret_text(s.secret.as_ref()?, "ring.json")?;
        serde_json::from_str::<Value>(&ring).ok()?;
        Some(s)
    })
    .await;
    assert!(
        after.kids().is_superset(&old_kids),
        "published keys {old_kids:?} must survive, JWKS is {:?}",
        after.kids()
    );
    degraded_with(&t, "victim", "RingRebuilt").await;
    t.wait_for_event("victim", "RingRebuilt").await;
    t.operator.assert_running();
}

#[tokio::test]
async fn deleted_config_map_is_restored_with_every_key() {
    let mut t = setup("rec-cm", "info,keyrotor=debug").await;
    t.kubectl_apply(&policy_yaml("victim", STEADY));
    let before = t.converged("victim").await;

    t.config_maps()
        .delete("victim-jwks", &DeleteParams::default())
        .await
        .expect("delete the ConfigMap");
    degraded_with(&t, "victim", "JwksRestored").await;
    let after = t.converged("victim").await;
    assert_eq!(after.kids(), before.kids());
    assert_eq!(
        after.active, before.active,
        "no rotation for a lost ConfigMap"
    );
    t.wait_for_event("victim", "JwksRestored").await;
    // The report ends once the repair has had propagationDelay to spread.
    eventually(
        "Degraded back to False",
        Duration::from_secs(15),
        || async {
            let s = t
                .snapshot("victim", "victim-jwks", "victim-signing-key")
                .await;
            (s.condition("Degraded") == Some("False")).then_some(())
        },
    )
    .await;
    t.operator.assert_running();
}

#[tokio::test]
async fn hand_edited_config_map_is_repaired() {
    let mut t = setup("rec-edit", "info,keyrotor=debug").await;
    t.kubectl_apply(&policy_yaml("victim", STEADY));
    let before = t.converged("victim").await;

    t.config_maps()
        .patch(
            "victim-jwks",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "jwks.json": "{\"keys\":[]}" } })),
        )
        .await
        .expect("edit the ConfigMap");
    degraded_with(&t, "victim", "JwksRepaired").await;
    let after = t.converged("victim").await;
    assert_eq!(after.kids(), before.kids());
    assert_eq!(after.active, before.active);
    t.wait_for_event("victim", "JwksRepaired").await;
    t.operator.assert_running();
}

#[tokio::test]
async fn wiped_status_is_restored_from_the_ring() {
    let mut t = setup("rec-status", "info,keyrotor=debug").await;
    t.kubectl_apply(&policy_yaml("victim", STEADY));
    let before = t.converged("victim").await;

    t.policies()
        .patch_status(
            "victim",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": null })),
        )
        .await
        .expect("wipe the status");
    degraded_with(&t, "victim", "StatusRestored").await;
    let after = t.converged("victim").await;
    assert_eq!(after.active, before.active, "a wiped status never rotates");
    let kids = |s: &Snapshot| -> Vec<String> {
        s.status
            .iter()
            .flat_map(|st| st.keys.iter().map(|k| k.kid.clone()))
            .collect()
    };
    assert_eq!(kids(&after), kids(&before));
    t.wait_for_event("victim", "StatusRestored").await;
    t.operator.assert_running();
}

// --- deletion and shared ConfigMaps -------------------------------------------------------

#[tokio::test]
async fn deleting_a_policy_removes_its_secret_and_config_map() {
    let mut t = setup("deletion", "info,keyrotor=debug").await;
    t.kubectl_apply_file("minimal.yaml");
    t.converged("api-tokens").await;
    run_kubectl(&["delete", "jsk", "api-tokens", "-n", t.ns()]).assert_success("kubectl delete");
    eventually(
        "the Secret and ConfigMap to be gone",
        Duration::from_secs(30),
        || async {
            let secret = t.secrets().get_opt("api-tokens-signing-key").await.ok()?;
            let config_map = t.config_maps().get_opt("api-tokens-jwks").await.ok()?;
            (secret.is_none() && config_map.is_none()).then_some(())
        },
    )
    .await;
    t.operator.assert_running();
}

#[tokio::test]
async fn shared_config_map_holds_the_union_and_loses_only_the_departed_keys() {
    let mut t = setup("shared", "info,keyrotor=debug").await;
    t.kubectl_apply_file("merged-jwks.yaml");
    let both = eventually(
        "auth-jwks to hold both policies' keys",
        Duration::from_secs(15),
        || async {
            let cm = t.config_maps().get_opt("auth-jwks").await.ok()??;
            let s = sources(&cm);
            (s.get("user-tokens").is_some_and(|k| k.len() >= 2)
                && s.get("service-tokens").is_some_and(|k| k.len() >= 2))
            .then_some(cm)
        },
    )
    .await;
    let by_source = sources(&both);
    let document: BTreeSet<String> = jwks_keys(&both, "jwks.json")
        .expect("JWKS")
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect();
    let union: BTreeSet<String> = by_source.values().flatten().cloned().collect();
    assert_eq!(document, union, "the document is the union of its sources");
    let owners = both.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners
            .iter()
            .map(|o| o.name.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["service-tokens", "user-tokens"])
    );
    assert!(owners.iter().all(|o| o.controller != Some(true)));
    // Each policy's signing kid is in the shared document.
    for policy in ["user-tokens", "service-tokens"] {
        let secret = t
            .secrets()
            .get(&format!("{policy}-signing-key"))
            .await
            .expect("Secret");
        let kid = secret_text(&secret, "kid").expect("kid");
        assert!(document.contains(&kid));
    }

    run_kubectl(&["delete", "jsk", "service-tokens", "-n", t.ns()]).assert_success("delete one");
    let service_kids: BTreeSet<String> = by_source["service-tokens"].iter().cloned().collect();
    let user_kids: BTreeSet<String> = by_source["user-tokens"].iter().cloned().collect();
    eventually(
        "service-tokens' keys to leave auth-jwks",
        Duration::from_secs(30),
        || async {
            let cm = t.config_maps().get_opt("auth-jwks").await.ok()??;
            let kids: BTreeSet<String> = jwks_keys(&cm, "jwks.json")?
                .iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect();
            let owners = cm.metadata.owner_references.clone().unwrap_or_default();
            (kids.is_disjoint(&service_kids)
                && kids.is_superset(&user_kids)
                && !sources(&cm).contains_key("service-tokens")
                && owners.len() == 1)
                .then_some(())
        },
    )
    .await;
    assert!(
        t.secrets()
            .get_opt("user-tokens-signing-key")
            .await
            .expect("get")
            .is_some()
    );

    run_kubectl(&["delete", "jsk", "user-tokens", "-n", t.ns()]).assert_success("delete the last");
    eventually("auth-jwks to be gone", Duration::from_secs(30), || async {
        t.config_maps()
            .get_opt("auth-jwks")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    t.operator.assert_running();
}

// --- requested rotation and revocation ----------------------------------------------------

#[tokio::test]
async fn rotate_request_is_honoured_once_per_value() {
    let mut t = setup("rotate-req", "info,keyrotor=debug").await;
    t.kubectl_apply(&policy_yaml(
        "manual",
        "  rotationInterval: 1h\n  propagationDelay: 2s\n  maxTokenLifetime: 30s\n",
    ));
    let before = t.converged("manual").await;
    let (first, second) = (
        before.active.clone().expect("active"),
        before.next_kid().expect("next"),
    );

    let annotate = |value: &str| {
        run_kubectl(&[
            "annotate",
            "--overwrite",
            "jsk",
            "manual",
            "-n",
            t.ns(),
            &format!("keyrotor.dev/rotate-request={value}"),
        ])
        .assert_success("kubectl annotate");
    };
    annotate("one");
    eventually(
        "the requested rotation",
        Duration::from_secs(10),
        || async {
            let s = t
                .snapshot("manual", "manual-jwks", "manual-signing-key")
                .await;
            let recorded = s.status.as_ref()?.last_rotate_request.as_deref() == Some("one");
            (s.active.as_deref() == Some(second.as_str()) && recorded).then_some(())
        },
    )
    .await;
    // The annotation stays; it is not honoured again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = t.converged("manual").await;
    assert_eq!(
        later.active.as_deref(),
        Some(second.as_str()),
        "rotated twice for one request"
    );
    assert!(
        later.kids().contains(&first),
        "the retired key is still published"
    );
    let annotations = t
        .policies()
        .get("manual")
        .await
        .expect("policy")
        .metadata
        .annotations;
    assert_eq!(
        annotations
            .as_ref()
            .and_then(|a| a.get("keyrotor.dev/rotate-request"))
            .map(String::as_str),
        Some("one"),
        "the operator never edits the annotation"
    );

    let third = later.next_kid().expect("a new next key");
    annotate("two");
    eventually(
        "the second requested rotation",
        Duration::from_secs(10),
        || async {
            let s = t
                .snapshot("manual", "manual-jwks", "manual-signing-key")
                .await;
            (s.active.as_deref() == Some(third.as_str())).then_some(())
        },
    )
    .await;
    t.operator.assert_running();
}

#[tokio::test]
async fn revoked_active_key_leaves_the_jwks_at_once() {
    let mut t = setup("revoke", "info,keyrotor=debug").await;
    t.kubectl_apply(&policy_yaml("leaky", STEADY));
    let before = t.converged("leaky").await;
    let (leaked, next) = (
        before.active.clone().expect("active"),
        before.next_kid().expect("next"),
    );
    t.kubectl_apply(&policy_yaml(
        "leaky",
        &format!("{STEADY}  revokedKeyIDs:\n  - {leaked}\n"),
    ));
    let after = eventually(
        "the revoked key to be gone",
        Duration::from_secs(10),
        || async {
            let s = t.snapshot("leaky", "leaky-jwks", "leaky-signing-key").await;
            let in_status = s.status.as_ref()?.keys.iter().any(|k| k.kid == leaked);
            (!s.kids().contains(&leaked)
                && s.active.as_deref() == Some(next.as_str())
                && !in_status)
                .then_some(s)
        },
    )
    .await;
    let status = after.status.expect("status");
    assert_eq!(
        status.keys.iter().find(|k| k.kid == next).map(|k| k.state),
        Some(KeyState::Active)
    );
    t.wait_for_event("leaky", "KeyRevoked").await;
    t.operator.assert_running();
}

// --- steady state costs nothing -----------------------------------------------------------

/// keyrotor's requests in `namespace` logged after byte `offset` of the audit log.
fn operator_requests(namespace: &str, offset: usize) -> Vec<Value> {
    let path = support::audit_log_path();
    let text = std::fs::read_to_string(&path).expect("read the audit log");
    text.get(offset..)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| {
            e["userAgent"]
                .as_str()
                .is_some_and(|ua| ua.starts_with("keyrotor/"))
        })
        .filter(|e| e["objectRef"]["namespace"].as_str() == Some(namespace))
        .filter(|e| e["verb"] != "watch")
        .collect()
}

#[tokio::test]
async fn a_quiet_minute_after_convergence_has_no_writes_and_no_reconciles() {
    let mut t = setup("quiet", "info,keyrotor=debug").await;
    t.kubectl_apply_file("minimal.yaml");
    t.converged("api-tokens").await;
    // Let the writes of the convergence itself settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let offset = std::fs::metadata(support::audit_log_path())
        .expect("audit log")
        .len() as usize;
    let converged_requests = operator_requests(t.ns(), 0);
    assert!(
        converged_requests.iter().any(|e| e["verb"] == "patch"),
        "the audit log shows the operator's writes (it is the instrument here)"
    );
    let writes_before = t.operator.counter("keyrotor_api_writes_total");
    let reconciles_before = t.operator.counter("keyrotor_reconciles_total");

    tokio::time::sleep(Duration::from_secs(60)).await;

    let requests = operator_requests(t.ns(), offset);
    let writes: Vec<&Value> = requests
        .iter()
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .collect();
    println!(
        "quiet minute: {} operator writes, {} requests in total",
        writes.len(),
        requests.len()
    );
    assert!(writes.is_empty(), "writes in a quiet minute: {writes:#?}");
    assert!(
        requests.is_empty(),
        "requests (reconciles) in a quiet minute: {requests:#?}"
    );
    assert_eq!(
        t.operator.counter("keyrotor_api_writes_total"),
        writes_before
    );
    assert_eq!(
        t.operator.counter("keyrotor_reconciles_total"),
        reconciles_before
    );
    t.operator.assert_running();
}

// --- no private material outside the Secret -----------------------------------------------

/// Strings that must never appear outside the Secret: markers of private keys, their
/// base64 at every alignment, and the actual private values seen in the Secrets.
fn needles(secrets: &[Secret]) -> BTreeSet<String> {
    let mut needles = BTreeSet::new();
    for marker in ["\"d\":", "PRIVATE KEY"] {
        needles.insert(marker.to_owned());
        for pad in 0..3 {
            let padded = format!("{}{marker}", "x".repeat(pad));
            for encoded in [STANDARD.encode(&padded), URL_SAFE_NO_PAD.encode(&padded)] {
                // Drop the characters that also depend on the neighbouring bytes.
                let start = (pad * 4).div_ceil(3) + 1;
                let end = encoded.len().saturating_sub(2);
                if end > start + 4 {
                    needles.insert(encoded[start..end].to_owned());
                }
            }
        }
    }
    for secret in secrets {
        if let Some(jwk) = secret_text(secret, "private.jwk")
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        {
            for member in ["d", "p", "q", "dp", "dq", "qi"] {
                if let Some(value) = jwk[member].as_str() {
                    needles.insert(value.to_owned());
                }
            }
        }
        if let Some(pem) = secret_text(secret, "private.pem") {
            for line in pem
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 40)
            {
                needles.insert(line.to_owned());
            }
        }
        if let Some(ring) = secret_text(secret, "ring.json") {
            collect_private_values(
                &serde_json::from_str(&ring).unwrap_or(Value::Null),
                &mut needles,
            );
        }
    }
    needles
}

fn collect_private_values(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, member) in map {
                if ["d", "p", "q", "dp", "dq", "qi"].contains(&key.as_str())
                    && let Some(text) = member.as_str()
                {
                    out.insert(text.to_owned());
                }
                collect_private_values(member, out);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_private_values(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn no_private_material_in_status_events_config_maps_annotations_or_trace_logs() {
    let mut t = setup("secrecy", "trace").await;
    let fast = "  rotationInterval: 10s\n  propagationDelay: 2s\n  maxTokenLifetime: 1s\n";
    t.kubectl_apply(&policy_yaml(
        "ec",
        &format!("  algorithm: ES256\n{fast}  certificate:\n    enabled: true\n"),
    ));
    t.kubectl_apply(&policy_yaml("ed", &format!("  algorithm: EdDSA\n{fast}")));
    t.kubectl_apply(&policy_yaml(
        "rsa",
        &format!("  algorithm: RS256\n  rsaBits: 2048\n{fast}"),
    ));

    // Collect every private value the Secrets hold over a few rotations.
    let mut seen_secrets = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25) {
        for name in ["ec", "ed", "rsa"] {
            if let Some(secret) = t
                .secrets()
                .get_opt(&format!("{name}-signing-key"))
                .await
                .expect("read Secret")
            {
                seen_secrets.push(secret);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let needles = needles(&seen_secrets);
    let private_values = needles.len();
    assert!(private_values > 20, "collected {private_values} needles");
    let tls = seen_secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("ec-signing-key"))
        .expect("the certificate policy's Secret");
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));

    let policies = serde_json::to_string(
        &t.policies()
            .list(&ListParams::default())
            .await
            .expect("list"),
    )
    .expect("serialise");
    let events = serde_json::to_string(&t.events("ec").await).expect("serialise")
        + &serde_json::to_string(&t.events("ed").await).expect("serialise")
        + &serde_json::to_string(&t.events("rsa").await).expect("serialise");
    let config_maps = serde_json::to_string(
        &t.config_maps()
            .list(&ListParams::default())
            .await
            .expect("list"),
    )
    .expect("serialise");
    let secret_metadata: Vec<_> = t
        .secrets()
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|s| s.metadata)
        .collect();
    let secret_metadata = serde_json::to_string(&secret_metadata).expect("serialise");
    let log = t.operator.log();
    assert!(log.lines().count() > 100, "a trace-level log was written");
    assert!(events.contains("KeyActivated") && config_maps.contains("x5c"));

    for (place, text) in [
        ("status", &policies),
        ("Events", &events),
        ("ConfigMaps", &config_maps),
        ("Secret metadata and annotations", &secret_metadata),
        ("operator log", &log),
    ] {
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "private material ({} chars, starting {:?}) found in {place}",
                needle.len(),
                needle.get(..6).unwrap_or_default()
            );
        }
    }
    println!(
        "searched status, Events, ConfigMaps, Secret metadata and {} log lines for {} needles",
        log.lines().count(),
        needles.len()
    );
    t.operator.assert_running();
}

// --- paused, moving the JWKS, foreign objects ---------------------------------------------

#[tokio::test]
async fn paused_policy_keeps_its_key_past_the_rotation_time_and_resumes() {
    let mut t = setup("paused", "info,keyrotor=debug").await;
    let schedule = "  rotationInterval: 10s\n  propagationDelay: 2s\n  maxTokenLifetime: 2s\n";
    t.kubectl_apply(&policy_yaml("held", &format!("{schedule}  paused: true\n")));
    let before = t.converged("held").await;
    let active = before.active.clone().expect("active");
    assert!(
        before
            .status
            .as_ref()
            .and_then(|s| s.next_rotation_time.as_ref())
            .is_none(),
        "no rotation is scheduled while paused"
    );
    tokio::time::sleep(Duration::from_secs(14)).await;
    let held = t.converged("held").await;
    assert_eq!(held.active, Some(active.clone()), "a paused policy rotated");

    t.kubectl_apply(&policy_yaml(
        "held",
        &format!("{schedule}  paused: false\n"),
    ));
    eventually(
        "the overdue rotation after unpausing",
        Duration::from_secs(10),
        || async {
            let s = t.snapshot("held", "held-jwks", "held-signing-key").await;
            s.active.as_ref().filter(|a| **a != active).map(|_| ())
        },
    )
    .await;
    t.operator.assert_running();
}

#[tokio::test]
async fn moving_the_jwks_to_another_config_map_cleans_up_the_old_one() {
    let mut t = setup("move-jwks", "info,keyrotor=debug").await;
    let jwks = |name: &str| format!("{STEADY}  jwks:\n    configMapName: {name}\n");
    t.kubectl_apply(&policy_yaml("mover", &jwks("old-jwks")));
    let before = eventually("old-jwks written", Duration::from_secs(15), || async {
        let s = t.snapshot("mover", "old-jwks", "mover-signing-key").await;
        (s.condition("KeyPublished") == Some("True")).then_some(s)
    })
    .await;

    t.kubectl_apply(&policy_yaml("mover", &jwks("new-jwks")));
    eventually(
        "new-jwks written and old-jwks gone",
        Duration::from_secs(15),
        || async {
            let s = t.snapshot("mover", "new-jwks", "mover-signing-key").await;
            let old = t.config_maps().get_opt("old-jwks").await.ok()?;
            (old.is_none() && s.kids().contains(s.active.as_ref()?)).then_some(())
        },
    )
    .await;
    let after = t.snapshot("mover", "new-jwks", "mover-signing-key").await;
    assert_eq!(
        after.active, before.active,
        "moving the JWKS does not rotate"
    );
    t.operator.assert_running();
}

#[tokio::test]
async fn a_secret_keyrotor_did_not_create_is_never_overwritten() {
    let mut t = setup("foreign", "info,keyrotor=debug").await;
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("taken-signing-key".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([(
            "owner".to_owned(),
            "someone else".to_owned(),
        )])),
        ..Default::default()
    };
    t.secrets()
        .create(&kube::api::PostParams::default(), &foreign)
        .await
        .expect("create a foreign Secret");
    t.kubectl_apply(&policy_yaml("taken", STEADY));
    degraded_with(&t, "taken", "SecretConflict").await;
    let secret = t.secrets().get("taken-signing-key").await.expect("Secret");
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["owner"],
        "the foreign Secret was modified"
    );
    assert!(
        t.config_maps()
            .get_opt("taken-jwks")
            .await
            .expect("get")
            .is_none()
    );
    t.wait_for_event("taken", "SecretConflict").await;
    t.operator.assert_running();
}
