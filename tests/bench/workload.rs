//! What the bench does to the cluster: installs the CRD and the operator's identity,
//! measures the API server's own write rate, creates policies and unrelated Secrets,
//! and watches policies become Ready.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keyrotor::api::{JwtSigningKey, ROTATE_REQUEST_ANNOTATION};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt, ResourceExt};

use crate::support;

const CREATE: PostParams = PostParams {
    dry_run: false,
    field_manager: None,
};

/// Field manager of everything the bench itself writes.
const BENCH_MANAGER: &str = "keyrotor-bench";
/// Where the operator's ServiceAccount lives.
pub const OPERATOR_NAMESPACE: &str = "keyrotor-bench";
/// Label on Secrets and ConfigMaps keyrotor manages.
const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=keyrotor";

/// Applies the JwtSigningKey CRD and waits until it is served.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = JwtSigningKey::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(BENCH_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the JwtSigningKey CRD")?;
    poll(
        "the CRD to be established",
        Duration::from_secs(60),
        || async {
            let crd = crds.get(&name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await
}

/// The operator's own identity: the chart's ServiceAccount and RBAC, and a kubeconfig
/// with a token for that ServiceAccount, so the audit log tells its requests apart and
/// the API server authorizes them as it would in a real install.
pub struct Identity {
    pub username: String,
    pub kubeconfig: std::path::PathBuf,
}

pub async fn operator_identity(
    client: &Client,
    repo: &Path,
    out_dir: &Path,
) -> anyhow::Result<Identity> {
    create_namespace(client, OPERATOR_NAMESPACE).await?;
    let rendered = Command::new(support::helm())
        .args(["template", "keyrotor"])
        .arg(repo.join("charts/keyrotor"))
        .args(["--namespace", OPERATOR_NAMESPACE])
        .args(["--set", "leaderElection.enabled=false,replicaCount=1"])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/rbac.yaml"])
        .output()
        .context("running helm template")?;
    if !rendered.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
    let manifest = String::from_utf8(rendered.stdout)?;
    let applied = support::run_kubectl_with_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            BENCH_MANAGER,
            "-f",
            "-",
        ],
        Some(&manifest),
    );
    if !applied.status.success() {
        bail!("applying the chart's RBAC failed: {}", applied.stderr);
    }
    let service_account = "keyrotor";
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(4 * 3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .context("requesting a ServiceAccount token")?
        .status
        .context("TokenRequest without status")?
        .token;

    // The admin kubeconfig's cluster (server, CA), with the token as the user.
    let admin: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(support::kubeconfig_path())?)?;
    let cluster = admin
        .pointer("/clusters/0/cluster")
        .context("no cluster in the admin kubeconfig")?;
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "local", "cluster": cluster }],
        "users": [{ "name": "keyrotor", "user": { "token": token } }],
        "contexts": [{ "name": "keyrotor", "context": { "cluster": "local", "user": "keyrotor" } }],
        "current-context": "keyrotor",
    });
    let path = out_dir.join("operator.kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&kubeconfig)?)?;
    Ok(Identity {
        username: format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{service_account}"),
        kubeconfig: path,
    })
}

pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .patch(
            name,
            &PatchParams::apply(BENCH_MANAGER).force(),
            &Patch::Apply(&namespace),
        )
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Deletes every policy in `namespace` and waits until they are gone, so no
/// reconcile races the namespace's deletion.
pub async fn delete_policies(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let api: Api<JwtSigningKey> = Api::namespaced(client.clone(), namespace);
    api.delete_collection(&DeleteParams::background(), &ListParams::default())
        .await
        .with_context(|| format!("deleting the policies in {namespace}"))?;
    poll(
        &format!("the policies in {namespace} to be gone"),
        Duration::from_secs(300),
        || async {
            let left = api.list_metadata(&ListParams::default()).await.ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await
}

/// Deletes a namespace and waits until the namespace controller has emptied it.
pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(name, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting namespace {name}"))?;
    poll(
        &format!("namespace {name} to be gone"),
        Duration::from_secs(300),
        || async {
            match namespaces.get_opt(name).await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await
}

/// How fast the API server took plain creates at one concurrency.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteRate {
    pub concurrency: usize,
    pub writes: usize,
    pub seconds: f64,
    pub per_second: f64,
}

/// Creates `count` objects, alternately a Secret with `secret_bytes` of data and a
/// ConfigMap with `config_map_bytes`, `concurrency` requests in flight.
pub async fn measure_write_rate(
    client: &Client,
    namespace: &str,
    label: &str,
    concurrency: usize,
    count: usize,
    secret_bytes: usize,
    config_map_bytes: usize,
) -> anyhow::Result<WriteRate> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let (secrets, config_maps) = (secrets.clone(), config_maps.clone());
            let name = format!("{label}-{i:05}");
            async move {
                if i % 2 == 0 {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(name),
                            ..ObjectMeta::default()
                        },
                        data: Some(BTreeMap::from([(
                            "ring.json".to_owned(),
                            ByteString(filler(i as u64, secret_bytes)),
                        )])),
                        ..Secret::default()
                    };
                    with_retries(|| secrets.create(&CREATE, &secret)).await?;
                } else {
                    let text =
                        String::from_utf8_lossy(&filler(i as u64, config_map_bytes)).into_owned();
                    let config_map = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(name),
                            ..ObjectMeta::default()
                        },
                        data: Some(BTreeMap::from([("jwks.json".to_owned(), text)])),
                        ..ConfigMap::default()
                    };
                    with_retries(|| config_maps.create(&CREATE, &config_map)).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(WriteRate {
        concurrency,
        writes: count,
        seconds,
        per_second: count as f64 / seconds,
    })
}

/// Creates `count` unlabelled Secrets of `bytes` each: objects keyrotor must never
/// cache or even receive.
pub async fn create_unrelated_secrets(
    client: &Client,
    namespace: &str,
    count: usize,
    bytes: usize,
    concurrency: usize,
) -> anyhow::Result<WriteRate> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("unrelated-{i:05}")),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/name".to_owned(),
                            "someone-else".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(
                        "blob".to_owned(),
                        ByteString(filler(i as u64 + 1_000_000, bytes)),
                    )])),
                    ..Secret::default()
                };
                with_retries(|| secrets.create(&CREATE, &secret)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(WriteRate {
        concurrency,
        writes: count,
        seconds,
        per_second: count as f64 / seconds,
    })
}

/// The policy every bench run uses: ES256, a long rotation interval so no transition
/// falls inside the run, and a short propagation delay so a requested rotation is
/// allowed soon after convergence.
pub fn policy(namespace: &str, name: &str) -> anyhow::Result<JwtSigningKey> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "keyrotor.dev/v1alpha1",
        "kind": "JwtSigningKey",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "algorithm": "ES256",
            "rotationInterval": "720h",
            "maxTokenLifetime": "1h",
            "propagationDelay": "5s",
        },
    }))?)
}

pub fn policy_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("policy-{i:05}")).collect()
}

/// Creates the policies, `concurrency` at a time; returns when each create returned.
pub async fn create_policies(
    client: &Client,
    namespace: &str,
    names: &[String],
    concurrency: usize,
) -> anyhow::Result<HashMap<String, DateTime<Utc>>> {
    let api: Api<JwtSigningKey> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let api = api.clone();
            async move {
                let policy = policy(namespace, &name)?;
                with_retries(|| api.create(&CREATE, &policy)).await?;
                anyhow::Ok((name, Utc::now()))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

/// Sets the rotate-request annotation on every policy; returns when each patch returned.
pub async fn request_rotation(
    client: &Client,
    namespace: &str,
    names: &[String],
    value: &str,
    concurrency: usize,
) -> anyhow::Result<HashMap<String, DateTime<Utc>>> {
    let api: Api<JwtSigningKey> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "metadata": { "annotations": { ROTATE_REQUEST_ANNOTATION: value } }
    });
    let patch = Patch::Merge(&patch);
    let params = PatchParams::default();
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let (api, patch, params) = (api.clone(), &patch, &params);
            async move {
                with_retries(|| api.patch(&name, params, patch)).await?;
                anyhow::Ok((name, Utc::now()))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

/// When each policy was first seen Ready with each active kid.
type Sightings = HashMap<String, BTreeMap<String, DateTime<Utc>>>;

/// Watches the policies of one namespace and records, for every policy and every
/// active kid, the first moment it was seen Ready with that kid (Ready=True for the
/// current generation).
pub struct ReadyTracker {
    seen: Arc<Mutex<Sightings>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyTracker {
    /// Starts watching; returns once the initial list is done.
    pub async fn start(client: &Client, namespace: &str) -> anyhow::Result<ReadyTracker> {
        let api: Api<JwtSigningKey> = Api::namespaced(client.clone(), namespace);
        let seen: Arc<Mutex<Sightings>> = Arc::default();
        let (init_tx, init_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut init_tx = Some(init_tx);
                let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::Apply(policy) | watcher::Event::InitApply(policy)) => {
                            if let Some(kid) = ready_kid(&policy) {
                                lock(&seen)
                                    .entry(policy.name_any())
                                    .or_default()
                                    .entry(kid)
                                    .or_insert_with(Utc::now);
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = init_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("bench: policy watch error (retrying): {e}"),
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), init_rx)
            .await
            .context("the policy watch did not start")??;
        Ok(ReadyTracker { seen, task })
    }

    /// The kid each policy was last seen Ready with (the latest first sighting).
    pub fn active_kids(&self) -> HashMap<String, String> {
        lock(&self.seen)
            .iter()
            .filter_map(|(name, kids)| {
                let (kid, _) = kids.iter().max_by_key(|(_, at)| **at)?;
                Some((name.clone(), kid.clone()))
            })
            .collect()
    }

    /// Waits until every named policy is Ready with a kid not in `old` (`old` empty:
    /// with any kid); returns when each first was.
    pub async fn wait_ready(
        &self,
        names: &[String],
        old: &HashMap<String, String>,
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, DateTime<Utc>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: HashMap<String, DateTime<Utc>> = {
                let seen = lock(&self.seen);
                names
                    .iter()
                    .filter_map(|name| {
                        let at = seen
                            .get(name)?
                            .iter()
                            .filter(|(kid, _)| old.get(name) != Some(*kid))
                            .map(|(_, at)| *at)
                            .min()?;
                        Some((name.clone(), at))
                    })
                    .collect()
            };
            if found.len() == names.len() {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {} of {} policies were Ready after {timeout:?}",
                    found.len(),
                    names.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ReadyTracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The active kid of a policy that is Ready for its current generation.
fn ready_kid(policy: &JwtSigningKey) -> Option<String> {
    let status = policy.status.as_ref()?;
    let ready = status.conditions.iter().any(|c| {
        c.type_ == "Ready"
            && c.status == "True"
            && c.observed_generation
                .is_none_or(|g| Some(g) == policy.metadata.generation)
    });
    if !ready {
        return None;
    }
    status.active_key_id.clone()
}

/// Checks that every policy's Secret holds its active kid and its JWKS ConfigMap
/// publishes it: Ready must mean written.
pub async fn verify_published(
    client: &Client,
    namespace: &str,
    active: &HashMap<String, String>,
) -> anyhow::Result<()> {
    let managed = ListParams::default().labels(MANAGED_SELECTOR);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secret_kids: HashMap<String, Vec<u8>> = secrets
        .list(&managed)
        .await?
        .into_iter()
        .filter_map(|s| {
            let kid = s.data.as_ref()?.get("kid")?.0.clone();
            Some((s.name_any(), kid))
        })
        .collect();
    let jwks: HashMap<String, String> = config_maps
        .list(&managed)
        .await?
        .into_iter()
        .filter_map(|c| {
            let doc = c.data.as_ref()?.get("jwks.json")?.clone();
            Some((c.name_any(), doc))
        })
        .collect();
    for (name, kid) in active {
        let secret = format!("{name}-signing-key");
        if secret_kids.get(&secret).map(Vec::as_slice) != Some(kid.as_bytes()) {
            bail!(
                "{namespace}/{name} is Ready with kid {kid}, but Secret {secret} does not hold it"
            );
        }
        let config_map = format!("{name}-jwks");
        if !jwks
            .get(&config_map)
            .is_some_and(|doc| doc.contains(&format!("\"{kid}\"")))
        {
            bail!(
                "{namespace}/{name} is Ready with kid {kid}, but ConfigMap {config_map} does not publish it"
            );
        }
    }
    Ok(())
}

/// Retries a request the API server turned away for load (429, 5xx, timeouts).
async fn with_retries<T, F, Fut>(mut request: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 0u32;
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(kube::Error::Api(status))
                if attempt < 20 && (status.code == 429 || status.code >= 500) =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `len` printable bytes that differ per `seed` (xorshift): payload that neither
/// compresses nor repeats between objects.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize]
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `text` to `path` atomically enough for a results file.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Runs `git` in the repository; empty on failure (a tarball has no history).
pub fn git(repo: &Path, args: &[&str]) -> String {
    Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
