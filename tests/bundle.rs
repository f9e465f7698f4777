//! JwksBundle against the real local control plane: the built `keyrotor` binary runs
//! with `--bundles` (its policy controllers scoped to the test's source namespaces, the
//! bundle controller cluster-wide), and the tests watch the ConfigMaps it writes in the
//! target namespaces.
//!
//! The bundle controller sees every bundle in the cluster, so the tests of this file
//! run one at a time (each names its bundle and its namespace label uniquely).
//!
//! Needs a running control plane (`make cluster-up`, or `make test`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keyrotor::api::JwtSigningKey;
use keyrotor::bundle::api::JwksBundle;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, CustomResourceExt};
use serde_json::{Value, json};
use support::{TestNamespace, eventually};

/// One test at a time: the bundle controller is cluster-wide.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TARGET: &str = "platform-jwks";
const PRIVATE_MARKERS: [&str; 8] = [
    "\"d\"",
    "\"p\"",
    "\"q\"",
    "\"dp\"",
    "\"dq\"",
    "\"qi\"",
    "PRIVATE KEY",
    "BEGIN",
];

// --- harness --------------------------------------------------------------------------

async fn install_crd(client: &Client, crd: CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().expect("CRD name");
    crds.patch(
        &name,
        &PatchParams::apply("keyrotor-tests").force(),
        &Patch::Apply(crd),
    )
    .await
    .expect("the CRD applies");
    eventually("the CRD to be established", Duration::from_secs(30), || {
        let crds = crds.clone();
        let name = name.clone();
        async move {
            let crd = crds.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await;
}

/// The operator binary with bundles on, its policy controllers on `namespaces`.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(tag: &str, namespaces: &[&str]) -> Operator {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bundle-{tag}.log"));
        let out = File::create(&log).expect("create the operator log");
        let err = out.try_clone().expect("clone the log handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyrotor"));
        command.args(["run", "--bundles"]);
        for namespace in namespaces {
            command.args(["--namespace", namespace]);
        }
        let child = command
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
            .arg("--kubeconfig")
            .arg(support::kubeconfig_path())
            .env("RUST_LOG", "info,keyrotor=debug")
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

    /// A sample of `/metrics` (`name{labels}` exactly), once the operator has logged
    /// the address it serves it on.
    fn metric(&self, series: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let log = self.log();
        let addr = log.lines().find_map(|line| {
            let entry: Value = serde_json::from_str(line).ok()?;
            entry.get("metrics_addr")?.as_str().map(str::to_owned)
        })?;
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.parse().ok()
        })
    }

    /// No private material in anything the operator logged.
    fn assert_log_clean(&self) {
        let log = self.log();
        for marker in ["PRIVATE KEY", "\"d\":", "\\\"d\\\":"] {
            assert!(!log.contains(marker), "operator log contains {marker}");
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{:x}{:x}",
        std::process::id() % 4096,
        nanos % 65536
    )
}

/// Sets (or with `None` removes) a label on a namespace.
async fn label_namespace(client: &Client, namespace: &str, key: &str, value: Option<&str>) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { key: value } } })),
        )
        .await
        .expect("labelling a namespace");
}

fn policy(name: &str, algorithm: &str, labels: Value, fast: bool) -> JwtSigningKey {
    let schedule = if fast {
        json!({ "rotationInterval": "12s", "propagationDelay": "6s", "maxTokenLifetime": "2s" })
    } else {
        json!({ "rotationInterval": "24h", "propagationDelay": "15m", "maxTokenLifetime": "1h" })
    };
    let mut spec = schedule;
    spec["algorithm"] = json!(algorithm);
    serde_json::from_value(json!({
        "apiVersion": "keyrotor.dev/v1alpha1",
        "kind": "JwtSigningKey",
        "metadata": { "name": name, "labels": labels },
        "spec": spec,
    }))
    .expect("a JwtSigningKey")
}

async fn apply_policy(client: &Client, namespace: &str, policy: &JwtSigningKey) {
    let api: Api<JwtSigningKey> = Api::namespaced(client.clone(), namespace);
    let name = policy.metadata.name.clone().expect("named");
    api.patch(
        &name,
        &PatchParams::apply("keyrotor-tests").force(),
        &Patch::Apply(policy),
    )
    .await
    .expect("applying a JwtSigningKey");
}

fn bundle(name: &str, sources: Value, label_value: &str) -> JwksBundle {
    serde_json::from_value(json!({
        "apiVersion": "keyrotor.dev/v1alpha1",
        "kind": "JwksBundle",
        "metadata": { "name": name },
        "spec": {
            "sources": sources,
            "target": {
                "configMap": { "name": TARGET },
                "namespaceSelector": { "matchLabels": { "keyrotor.dev/jwks": label_value } },
            },
        },
    }))
    .expect("a JwksBundle")
}

async fn apply_bundle(client: &Client, bundle: &JwksBundle) {
    let api: Api<JwksBundle> = Api::all(client.clone());
    let name = bundle.metadata.name.clone().expect("named");
    api.patch(
        &name,
        &PatchParams::apply("keyrotor-tests").force(),
        &Patch::Apply(bundle),
    )
    .await
    .expect("applying a JwksBundle");
}

/// Deletes a bundle and waits until it is gone (the finalizer has run).
async fn delete_bundle(client: &Client, name: &str) {
    let api: Api<JwksBundle> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return,
        Err(e) => panic!("deleting bundle {name}: {e}"),
    }
    eventually("the bundle to be gone", Duration::from_secs(30), || {
        let api = api.clone();
        async move { matches!(api.get_opt(name).await, Ok(None)).then_some(()) }
    })
    .await;
}

/// The kids of a JWKS text.
fn kids_of(text: &str) -> BTreeSet<String> {
    let document: Value = serde_json::from_str(text).expect("a JWKS document");
    document["keys"]
        .as_array()
        .expect("a keys array")
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect()
}

/// The kids of the target ConfigMap in `namespace` (`None`: no ConfigMap).
async fn target_kids(client: &Client, namespace: &str) -> Option<BTreeSet<String>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config_map = api.get_opt(TARGET).await.expect("reading a ConfigMap")?;
    let text = config_map.data?.get("jwks.json")?.clone();
    Some(kids_of(&text))
}

/// The kids a policy's own JWKS ConfigMap attributes to it.
async fn own_kids(client: &Client, namespace: &str, policy: &str) -> BTreeSet<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(config_map) = api
        .get_opt(&format!("{policy}-jwks"))
        .await
        .expect("reading a ConfigMap")
    else {
        return BTreeSet::new();
    };
    config_map
        .data
        .and_then(|d| d.get("jwks.json").cloned())
        .map(|text| kids_of(&text))
        .unwrap_or_default()
}

/// The active kid in a policy's Secret (the truth issuers sign with).
async fn secret_kid(client: &Client, namespace: &str, policy: &str) -> Option<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api.get_opt(&format!("{policy}-signing-key")).await.ok()??;
    let kid = secret.data?.get("kid")?.0.clone();
    String::from_utf8(kid).ok()
}

/// Asserts that a bundle ConfigMap and the bundle's status carry no private material.
async fn assert_public_only(client: &Client, namespace: &str, bundle: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    if let Some(config_map) = api.get_opt(TARGET).await.expect("reading a ConfigMap") {
        let text = serde_json::to_string(&config_map).expect("serialises");
        for marker in PRIVATE_MARKERS {
            assert!(
                !text.contains(marker),
                "{namespace}/{TARGET} contains {marker}: {text}"
            );
        }
    }
    let bundles: Api<JwksBundle> = Api::all(client.clone());
    let text =
        serde_json::to_string(&bundles.get(bundle).await.expect("the bundle")).expect("serialises");
    for marker in PRIVATE_MARKERS {
        assert!(!text.contains(marker), "bundle {bundle} contains {marker}");
    }
}

async fn bundle_status(client: &Client, name: &str) -> Value {
    let api: Api<JwksBundle> = Api::all(client.clone());
    let bundle = api.get(name).await.expect("the bundle");
    serde_json::to_value(bundle.status).expect("serialises")
}

async fn setup(client: &Client) {
    install_crd(client, JwtSigningKey::crd()).await;
    install_crd(client, JwksBundle::crd()).await;
}

// --- tests ----------------------------------------------------------------------------

/// Two policies in two namespaces, one by name and one by label, published as one JWKS
/// into three labelled namespaces; a namespace labelled later gets it within seconds,
/// an unlabelled one loses it; deleting the bundle removes exactly its ConfigMaps.
#[tokio::test]
async fn bundle_publishes_merged_keys_and_follows_namespace_labels() {
    let _serial = SERIAL.lock().await;
    let client = support::client().await;
    setup(&client).await;
    let auth = TestNamespace::new(&client, "bundle-auth").await;
    let pay = TestNamespace::new(&client, "bundle-pay").await;
    let targets = [
        TestNamespace::new(&client, "bundle-t1").await,
        TestNamespace::new(&client, "bundle-t2").await,
        TestNamespace::new(&client, "bundle-t3").await,
    ];
    let late = TestNamespace::new(&client, "bundle-late").await;
    let label = unique("merge");
    let bundle_name = unique("bundle-merge");
    let mut operator = Operator::start(&bundle_name, &[auth.name(), pay.name()]);

    apply_policy(
        &client,
        auth.name(),
        &policy("api", "ES256", json!({}), false),
    )
    .await;
    apply_policy(
        &client,
        pay.name(),
        &policy(
            "payments",
            "EdDSA",
            json!({ "keyrotor.dev/bundle": label }),
            false,
        ),
    )
    .await;
    for target in &targets {
        label_namespace(&client, target.name(), "keyrotor.dev/jwks", Some(&label)).await;
    }
    // An unrelated ConfigMap in a target namespace, to show nothing else is touched.
    let bystander: Api<ConfigMap> = targets[0].api();
    bystander
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "unrelated" },
                "data": { "a": "b" },
            }))
            .expect("a ConfigMap"),
        )
        .await
        .expect("creating an unrelated ConfigMap");

    apply_bundle(
        &client,
        &bundle(
            &bundle_name,
            json!([
                { "namespace": auth.name(), "name": "api" },
                { "selector": { "matchLabels": { "keyrotor.dev/bundle": label } } },
            ]),
            &label,
        ),
    )
    .await;

    // Both policies' keys (their whole JWKS: Active and Next) in all three targets.
    let expected = eventually(
        "both policies' keys in every target",
        Duration::from_secs(60),
        || async {
            let a = own_kids(&client, auth.name(), "api").await;
            let b = own_kids(&client, pay.name(), "payments").await;
            if a.len() < 2 || b.len() < 2 {
                return None;
            }
            let union: BTreeSet<String> = a.union(&b).cloned().collect();
            for target in &targets {
                if target_kids(&client, target.name()).await? != union {
                    return None;
                }
            }
            Some(union)
        },
    )
    .await;
    assert_eq!(expected.len(), 4, "two keys per policy: {expected:?}");
    assert_eq!(target_kids(&client, late.name()).await, None);
    for target in &targets {
        assert_public_only(&client, target.name(), &bundle_name).await;
        let config_map = target
            .api::<ConfigMap>()
            .get(TARGET)
            .await
            .expect("target ConfigMap");
        let labels = config_map.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("keyrotor")
        );
        assert_eq!(labels.get("keyrotor.dev/bundle"), Some(&bundle_name));
    }

    // The status: three namespaces, four kids with their sources, Ready.
    let mut names: Vec<String> = targets.iter().map(|t| t.name().to_owned()).collect();
    names.sort();
    let status = eventually("the bundle status", Duration::from_secs(30), || async {
        let status = bundle_status(&client, &bundle_name).await;
        (status["namespaces"] == json!(names) && status["keyCount"] == json!(4)).then_some(status)
    })
    .await;
    let sources: BTreeSet<&str> = status["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["source"].as_str())
        .collect();
    assert_eq!(
        sources,
        [
            format!("{}/api", auth.name()).as_str(),
            format!("{}/payments", pay.name()).as_str()
        ]
        .into()
    );
    let ready = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready");
    assert_eq!(ready["status"], "True", "{status}");

    // A namespace labelled later gets it within seconds.
    let labelled = Instant::now();
    label_namespace(&client, late.name(), "keyrotor.dev/jwks", Some(&label)).await;
    eventually(
        "the late namespace to get the bundle",
        Duration::from_secs(10),
        || async {
            (target_kids(&client, late.name()).await.as_ref() == Some(&expected)).then_some(())
        },
    )
    .await;
    eprintln!("late namespace published after {:?}", labelled.elapsed());

    // An unlabelled namespace loses it.
    let unlabelled = Instant::now();
    label_namespace(&client, targets[1].name(), "keyrotor.dev/jwks", None).await;
    eventually(
        "the unlabelled namespace to lose the bundle",
        Duration::from_secs(10),
        || async {
            target_kids(&client, targets[1].name())
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "unlabelled namespace cleaned after {:?}",
        unlabelled.elapsed()
    );
    let remaining = [targets[0].name(), targets[2].name(), late.name()];
    for namespace in remaining {
        assert_eq!(
            target_kids(&client, namespace).await.as_ref(),
            Some(&expected)
        );
    }

    // Deleting the bundle removes its ConfigMaps in every namespace, and nothing else.
    operator.assert_running();
    delete_bundle(&client, &bundle_name).await;
    let all: Api<ConfigMap> = Api::all(client.clone());
    let left = all
        .list(&ListParams::default().labels(&format!("keyrotor.dev/bundle={bundle_name}")))
        .await
        .expect("listing ConfigMaps");
    assert!(left.items.is_empty(), "bundle ConfigMaps left behind");
    for namespace in remaining {
        assert_eq!(target_kids(&client, namespace).await, None);
    }
    assert!(
        bystander
            .get_opt("unrelated")
            .await
            .expect("read")
            .is_some(),
        "an unrelated ConfigMap was deleted"
    );
    assert_eq!(own_kids(&client, auth.name(), "api").await.len(), 2);
    assert_eq!(own_kids(&client, pay.name(), "payments").await.len(), 2);
    operator.assert_running();
    operator.assert_log_clean();
}

/// A ConfigMap of the target name that keyrotor does not own is left untouched and
/// reported; the other namespaces still get the bundle.
#[tokio::test]
async fn foreign_config_map_is_untouched_and_reported() {
    let _serial = SERIAL.lock().await;
    let client = support::client().await;
    setup(&client).await;
    let auth = TestNamespace::new(&client, "bundle-src").await;
    let mine = TestNamespace::new(&client, "bundle-ok").await;
    let theirs = TestNamespace::new(&client, "bundle-foreign").await;
    let label = unique("foreign");
    let bundle_name = unique("bundle-foreign");
    for namespace in [&mine, &theirs] {
        label_namespace(&client, namespace.name(), "keyrotor.dev/jwks", Some(&label)).await;
    }
    let foreign: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": TARGET, "labels": { "team": "payments" } },
        "data": { "jwks.json": "{\"keys\":[]}", "other": "kept" },
    }))
    .expect("a ConfigMap");
    let theirs_api: Api<ConfigMap> = theirs.api();
    let created = theirs_api
        .create(&Default::default(), &foreign)
        .await
        .expect("creating the foreign ConfigMap");
    let mut operator = Operator::start(&bundle_name, &[auth.name()]);
    apply_policy(
        &client,
        auth.name(),
        &policy("api", "ES256", json!({}), false),
    )
    .await;
    apply_bundle(
        &client,
        &bundle(
            &bundle_name,
            json!([{ "namespace": auth.name(), "name": "api" }]),
            &label,
        ),
    )
    .await;

    let status = eventually(
        "the conflict in the bundle status",
        Duration::from_secs(60),
        || async {
            let status = bundle_status(&client, &bundle_name).await;
            (status["conflicts"] == json!([theirs.name()])
                && status["namespaces"] == json!([mine.name()])
                && status["keyCount"] == json!(2))
            .then_some(status)
        },
    )
    .await;
    let degraded = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Degraded")
        .expect("Degraded")
        .clone();
    assert_eq!(degraded["status"], "True", "{status}");
    assert_eq!(degraded["reason"], "ConfigMapConflict", "{status}");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains(theirs.name())),
        "{degraded}"
    );
    assert_eq!(
        target_kids(&client, mine.name()).await.map(|k| k.len()),
        Some(2)
    );
    // Give the operator a few more reconciles, then: untouched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = theirs_api.get(TARGET).await.expect("the foreign ConfigMap");
    assert_eq!(
        after.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(after.data, foreign.data);

    // Deleting the bundle leaves the foreign ConfigMap alone, removes its own.
    delete_bundle(&client, &bundle_name).await;
    let after = theirs_api.get(TARGET).await.expect("the foreign ConfigMap");
    assert_eq!(
        after.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(target_kids(&client, mine.name()).await, None);
    operator.assert_running();
    operator.assert_log_clean();
}

/// The Events of a bundle (`events.k8s.io/v1`, in `default`: a bundle is cluster-scoped),
/// as `(type, reason, note)` in the order they were created.
async fn bundle_events(client: &Client, bundle: &str) -> Vec<(String, String, String)> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut events: Vec<Event> = api
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("JwksBundle") && r.name.as_deref() == Some(bundle)
            })
        })
        .collect();
    events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    events
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Events on the bundle: `Published` naming the namespace and key count, one Warning
/// for a missing source however many reconciles follow, `Published` and `Unpublished`
/// as namespaces come and go; none carries key material. The writes are counted.
#[tokio::test]
async fn bundle_events_tell_publications_and_new_problems() {
    let _serial = SERIAL.lock().await;
    let client = support::client().await;
    setup(&client).await;
    let auth = TestNamespace::new(&client, "bundle-ev-src").await;
    let first = TestNamespace::new(&client, "bundle-ev-t1").await;
    let second = TestNamespace::new(&client, "bundle-ev-t2").await;
    let label = unique("events");
    let bundle_name = unique("bundle-events");
    label_namespace(&client, first.name(), "keyrotor.dev/jwks", Some(&label)).await;
    let mut operator = Operator::start(&bundle_name, &[auth.name()]);
    apply_policy(
        &client,
        auth.name(),
        &policy("api", "ES256", json!({}), false),
    )
    .await;
    eventually("the policy's keys", Duration::from_secs(60), || async {
        (own_kids(&client, auth.name(), "api").await.len() == 2).then_some(())
    })
    .await;
    apply_bundle(
        &client,
        &bundle(
            &bundle_name,
            json!([
                { "namespace": auth.name(), "name": "api" },
                { "namespace": auth.name(), "name": "absent" },
            ]),
            &label,
        ),
    )
    .await;

    // The Events of one type and reason.
    let of = |events: &[(String, String, String)], kind: &str, reason: &str| {
        events
            .iter()
            .filter(|e| e.0 == kind && e.1 == reason)
            .cloned()
            .collect::<Vec<_>>()
    };
    let events = eventually(
        "Published and SourceMissing Events",
        Duration::from_secs(60),
        || async {
            let events = bundle_events(&client, &bundle_name).await;
            let published = !of(&events, "Normal", "Published").is_empty();
            let missing = !of(&events, "Warning", "SourceMissing").is_empty();
            (published && missing).then_some(events)
        },
    )
    .await;
    let published: Vec<_> = of(&events, "Normal", "Published");
    assert_eq!(published.len(), 1, "{events:?}");
    assert_eq!(
        published[0].2,
        format!(
            "published ConfigMap {TARGET} with 2 keys in namespace {}",
            first.name()
        )
    );
    let missing: Vec<_> = of(&events, "Warning", "SourceMissing");
    assert!(
        missing[0]
            .2
            .contains(&format!("JwtSigningKey {}/absent", auth.name())),
        "{missing:?}"
    );

    // The policy (a 24 h schedule) writes nothing more: from here on, the bundle's
    // writes alone move the counters.
    let counted = |kind: &str| {
        operator
            .metric(&format!("keyrotor_api_writes_total{{kind=\"{kind}\"}}"))
            .unwrap_or(0.0)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (events_before, config_maps_before) = (counted("event"), counted("configmap"));
    assert!(
        counted("jwksbundle") >= 1.0,
        "the finalizer write is counted"
    );
    assert!(counted("status") >= 1.0, "status writes are counted");

    // Another namespace: its own Published, and the missing source is not told again
    // on this reconcile nor on the ones that follow.
    label_namespace(&client, second.name(), "keyrotor.dev/jwks", Some(&label)).await;
    let events = eventually(
        "Published for the second namespace",
        Duration::from_secs(30),
        || async {
            let events = bundle_events(&client, &bundle_name).await;
            events
                .iter()
                .any(|e| e.1 == "Published" && e.2.ends_with(second.name()))
                .then_some(events)
        },
    )
    .await;
    assert_eq!(
        of(&events, "Warning", "SourceMissing").len(),
        1,
        "{events:?}"
    );
    label_namespace(&client, first.name(), "keyrotor.dev/jwks", None).await;
    let events = eventually("Unpublished", Duration::from_secs(30), || async {
        let events = bundle_events(&client, &bundle_name).await;
        let unpublished = !of(&events, "Normal", "Unpublished").is_empty();
        unpublished.then_some(events)
    })
    .await;
    let unpublished: Vec<_> = of(&events, "Normal", "Unpublished");
    assert_eq!(
        unpublished[0].2,
        format!(
            "removed the bundle's ConfigMap from namespace {}: no longer selected",
            first.name()
        )
    );
    assert_eq!(target_kids(&client, first.name()).await, None);
    assert_eq!(
        of(&events, "Warning", "SourceMissing").len(),
        1,
        "{events:?}"
    );
    for (_, _, note) in &events {
        for marker in PRIVATE_MARKERS {
            assert!(!note.contains(marker), "an Event note contains {marker}");
        }
    }

    // Two Events (Published, Unpublished), a create and a delete: all counted.
    eventually(
        "the bundle's writes in the metrics",
        Duration::from_secs(10),
        || async {
            (counted("event") >= events_before + 2.0
                && counted("configmap") >= config_maps_before + 2.0)
                .then_some(())
        },
    )
    .await;

    // An unparsable namespaceSelector: a Warning, and nothing written, so the status
    // keeps its keys and namespaces (and tells no Unpublished).
    let before = bundle_status(&client, &bundle_name).await;
    let mut broken = bundle(
        &bundle_name,
        json!([
            { "namespace": auth.name(), "name": "api" },
            { "namespace": auth.name(), "name": "absent" },
        ]),
        &label,
    );
    broken.spec.target.namespace_selector = serde_json::from_value(json!({
        "matchExpressions": [{ "key": "keyrotor.dev/jwks", "operator": "Bogus" }],
    }))
    .expect("a label selector");
    apply_bundle(&client, &broken).await;
    let events = eventually(
        "an InvalidSpec Warning",
        Duration::from_secs(30),
        || async {
            let events = bundle_events(&client, &bundle_name).await;
            let invalid = !of(&events, "Warning", "InvalidSpec").is_empty();
            invalid.then_some(events)
        },
    )
    .await;
    let after = bundle_status(&client, &bundle_name).await;
    assert_eq!(after["namespaces"], json!([second.name()]), "{after}");
    assert_eq!(after["keys"], before["keys"], "{after}");
    assert_eq!(of(&events, "Normal", "Unpublished").len(), 1, "{events:?}");
    assert_eq!(
        target_kids(&client, second.name()).await.map(|k| k.len()),
        Some(2)
    );

    delete_bundle(&client, &bundle_name).await;
    operator.assert_running();
    operator.assert_log_clean();
}

/// During fast rotations of two policies, every target holds each policy's active kid
/// (the Secret's) at every observation, and no key becomes Active before it has been in
/// every target for `propagationDelay`.
#[tokio::test]
async fn rotations_wait_for_every_bundle_target() {
    let _serial = SERIAL.lock().await;
    let client = support::client().await;
    setup(&client).await;
    let auth = TestNamespace::new(&client, "bundle-rot-a").await;
    let pay = TestNamespace::new(&client, "bundle-rot-b").await;
    let targets = [
        TestNamespace::new(&client, "bundle-rot-t1").await,
        TestNamespace::new(&client, "bundle-rot-t2").await,
        TestNamespace::new(&client, "bundle-rot-t3").await,
    ];
    let label = unique("rot");
    let bundle_name = unique("bundle-rot");
    for target in &targets {
        label_namespace(&client, target.name(), "keyrotor.dev/jwks", Some(&label)).await;
    }
    let mut operator = Operator::start(&bundle_name, &[auth.name(), pay.name()]);
    let sources = [(auth.name(), "api"), (pay.name(), "payments")];
    apply_policy(
        &client,
        auth.name(),
        &policy("api", "ES256", json!({}), true),
    )
    .await;
    apply_policy(
        &client,
        pay.name(),
        &policy("payments", "EdDSA", json!({}), true),
    )
    .await;
    // Let both policies run a while on their own first, so the bundle joins when their
    // Next keys have long been published in their own ConfigMaps.
    eventually(
        "both policies to have keys",
        Duration::from_secs(30),
        || async {
            let a = own_kids(&client, auth.name(), "api").await;
            let b = own_kids(&client, pay.name(), "payments").await;
            (a.len() >= 2 && b.len() >= 2).then_some(())
        },
    )
    .await;
    // Join two seconds before api's next scheduled rotation: its Next key has been in
    // its own ConfigMap for long, but in the bundle's targets only from now on, so the
    // rotation must wait for the bundle (a planner that ignored the bundle's targets
    // would rotate about 2 s after they first showed the key).
    let policies: Api<JwtSigningKey> = Api::namespaced(client.clone(), auth.name());
    let due = eventually(
        "api's next rotation time",
        Duration::from_secs(30),
        || async {
            let status = policies.get("api").await.ok()?.status?;
            let due = status.next_rotation_time?.0.as_second();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_secs_f64();
            // At least 3 s ahead, so there is time to wait for the join moment.
            let ahead = due as f64 - now;
            (ahead > 3.0).then_some(ahead)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs_f64(due - 2.0)).await;
    apply_bundle(
        &client,
        &bundle(
            &bundle_name,
            json!([
                { "namespace": auth.name(), "name": "api" },
                { "namespace": pay.name(), "name": "payments" },
            ]),
            &label,
        ),
    )
    .await;
    let bundle_created = Instant::now();
    let delay = Duration::from_secs(6);

    // First time each kid was seen in each target, and the first Secret kid seen per
    // policy after the bundle existed.
    let mut first_seen: BTreeMap<(String, String), Instant> = BTreeMap::new();
    let mut activations: Vec<(String, String, Instant)> = Vec::new();
    let mut last_active: BTreeMap<String, String> = BTreeMap::new();
    let mut observations = 0;
    let mut checked_actives = 0;
    let deadline = bundle_created + Duration::from_secs(45);
    while Instant::now() < deadline {
        // The Secrets first, then the targets: a kid active in the Secret must already
        // be in every target.
        let mut active = BTreeMap::new();
        for (namespace, name) in sources {
            if let Some(kid) = secret_kid(&client, namespace, name).await {
                active.insert(name.to_owned(), kid);
            }
        }
        let now = Instant::now();
        let mut contents = Vec::new();
        for target in &targets {
            let kids = target_kids(&client, target.name()).await;
            for kid in kids.iter().flatten() {
                first_seen
                    .entry((target.name().to_owned(), kid.clone()))
                    .or_insert(now);
            }
            contents.push((target.name(), kids));
        }
        for (name, kid) in &active {
            if last_active.get(name) != Some(kid) {
                if last_active.contains_key(name) {
                    activations.push((name.clone(), kid.clone(), now));
                }
                last_active.insert(name.clone(), kid.clone());
            }
        }
        // Once the bundle has published, every active kid is in every target.
        if contents.iter().all(|(_, kids)| kids.is_some()) {
            for (name, kid) in &active {
                for (target, kids) in &contents {
                    let published = kids.as_ref().is_some_and(|k| k.contains(kid));
                    assert!(
                        published,
                        "active kid {kid} of {name} missing from target {target}"
                    );
                    checked_actives += 1;
                }
            }
            observations += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    operator.assert_running();
    assert!(observations > 50, "only {observations} observations");
    assert!(checked_actives > 0);
    // Every activation after the bundle joined: its kid had been in every target for
    // propagationDelay. Observation lag and whole-second times allow some slack (the
    // observed first sight is later than the write; the Secret is seen after the switch).
    let slack = Duration::from_millis(1500);
    let mut rotations = BTreeMap::<String, usize>::new();
    for (name, kid, seen_active) in &activations {
        let everywhere = targets
            .iter()
            .map(|t| first_seen.get(&(t.name().to_owned(), kid.clone())))
            .collect::<Option<Vec<_>>>()
            .and_then(|times| times.into_iter().max().copied())
            .unwrap_or_else(|| panic!("{name}'s active kid {kid} was never in every target"));
        assert!(
            *seen_active + slack >= everywhere + delay,
            "{name}'s key {kid} became active {:?} after it was first in every target (propagationDelay {delay:?})",
            seen_active.saturating_duration_since(everywhere)
        );
        *rotations.entry(name.clone()).or_default() += 1;
    }
    eprintln!("rotations during the bundle's life: {rotations:?}, {observations} observations");
    for (_, name) in sources {
        assert!(
            rotations.get(name).copied().unwrap_or(0) >= 2,
            "{name} rotated only {rotations:?} times"
        );
    }
    for target in &targets {
        assert_public_only(&client, target.name(), &bundle_name).await;
    }
    delete_bundle(&client, &bundle_name).await;
    operator.assert_log_clean();
}

/// `examples/bundle.yaml` is a valid bundle whose static keys are public JWKs keyrotor
/// accepts (no control plane needed).
#[test]
fn example_bundle_parses_and_its_static_keys_are_accepted() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bundle.yaml"))
            .expect("examples/bundle.yaml");
    let example: JwksBundle = serde_yaml_ng::from_str(&text).expect("a JwksBundle");
    assert_eq!(example.spec.target.config_map.key, "jwks.json");
    let statics: Vec<&String> = example
        .spec
        .sources
        .iter()
        .filter_map(|s| s.static_keys.as_ref())
        .collect();
    assert_eq!(statics.len(), 1);
    let keys = keyrotor::bundle::plan::parse_static_keys(statics[0]).expect("valid static keys");
    assert_eq!(keys.len(), 1);
}

/// The schema refuses malformed bundles with a message naming the rule.
#[tokio::test]
async fn schema_refuses_malformed_bundles() {
    let client = support::client().await;
    install_crd(&client, JwksBundle::crd()).await;
    let api: Api<JwksBundle> = Api::all(client.clone());
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let selector = json!({ "matchLabels": { "a": "b" } });
    let cases = [
        (
            "both",
            json!([{ "namespace": "auth", "name": "a", "selector": selector }]),
            "exactly one of name",
        ),
        (
            "none",
            json!([{ "namespace": "auth" }]),
            "exactly one of name",
        ),
        (
            "no-namespace",
            json!([{ "name": "a" }]),
            "also sets its namespace",
        ),
        (
            "static-ns",
            json!([{ "namespace": "auth", "staticKeys": "{\"keys\":[]}" }]),
            "staticKeys take no namespace",
        ),
        ("empty", json!([]), "spec.sources"),
    ];
    for (name, sources, message) in cases {
        let bundle = bundle(&format!("invalid-{name}"), sources, "x");
        let err = api
            .create(&dry_run, &bundle)
            .await
            .expect_err(&format!("bundle {name} must be refused"));
        assert!(err.to_string().contains(message), "{name}: {err}");
    }
    let long = bundle(
        &"b".repeat(64),
        json!([{ "namespace": "auth", "name": "a" }]),
        "x",
    );
    let err = api
        .create(&dry_run, &long)
        .await
        .expect_err("name too long");
    assert!(err.to_string().contains("at most 63 characters"), "{err}");
    let fine = bundle(
        "valid-bundle",
        json!([
            { "namespace": "auth", "name": "a" },
            { "selector": selector },
            { "namespace": "auth", "selector": selector },
            { "staticKeys": "{\"keys\":[]}" },
        ]),
        "x",
    );
    api.create(&dry_run, &fine).await.expect("a valid bundle");
}
