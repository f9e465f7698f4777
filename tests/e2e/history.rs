//! Watches one namespace's keyrotor Secrets, JWKS ConfigMaps and JwtSigningKeys for the
//! whole scenario and keeps every version with the time it arrived: the checker replays
//! the log, the participants read "the version as of now minus my delay".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt as _};
use tokio::sync::broadcast;

use crate::model::{Change, JwksView, Observation, PolicyView, SecretView, Time};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=keyrotor";

pub fn policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keyrotor.dev", "v1alpha1", "JwtSigningKey"),
        "jwtsigningkeys",
    )
}

type Versions<T> = Vec<(Time, Arc<T>)>;

#[derive(Default)]
pub struct History {
    observations: Mutex<Vec<Observation>>,
    secrets: Mutex<BTreeMap<String, Versions<SecretView>>>,
    jwks: Mutex<BTreeMap<String, Versions<JwksView>>>,
    pub watch_errors: Mutex<u64>,
    secret_changes: Option<broadcast::Sender<String>>,
}

impl History {
    pub fn new() -> Arc<History> {
        let (tx, _) = broadcast::channel(64);
        Arc::new(History {
            secret_changes: Some(tx),
            ..History::default()
        })
    }

    pub fn observations(&self) -> Vec<Observation> {
        self.observations
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default()
    }

    /// Every version the Secret had (deletions leave the last one in place, as a
    /// mounted volume keeps its files).
    pub fn secret_versions(&self, name: &str) -> Versions<SecretView> {
        self.secrets
            .lock()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .unwrap_or_default()
    }

    pub fn jwks_versions(&self, name: &str) -> Versions<JwksView> {
        self.jwks
            .lock()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .unwrap_or_default()
    }

    pub fn latest_secret(&self, name: &str) -> Option<Arc<SecretView>> {
        self.secrets
            .lock()
            .ok()?
            .get(name)?
            .last()
            .map(|(_, s)| s.clone())
    }

    /// Names of Secrets as they change (for "kill right after the Secret write").
    pub fn subscribe_secret_changes(&self) -> Option<broadcast::Receiver<String>> {
        self.secret_changes.as_ref().map(|s| s.subscribe())
    }

    fn push(&self, observation: Observation) {
        let at = observation.at;
        match &observation.change {
            Change::Secret(Some(view)) => {
                if let Ok(mut s) = self.secrets.lock() {
                    s.entry(observation.name.clone())
                        .or_default()
                        .push((at, view.clone()));
                }
                if let Some(tx) = &self.secret_changes {
                    let _ = tx.send(observation.name.clone());
                }
            }
            Change::ConfigMap(Some(view)) => {
                if let Ok(mut j) = self.jwks.lock() {
                    j.entry(observation.name.clone())
                        .or_default()
                        .push((at, view.clone()));
                }
            }
            _ => {}
        }
        if let Ok(mut o) = self.observations.lock() {
            o.push(observation);
        }
    }

    fn watch_error(&self) {
        if let Ok(mut e) = self.watch_errors.lock() {
            *e += 1;
        }
    }
}

fn rv_of<K: Resource>(object: &K) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// Retries a broken watch every 200 ms: the default backoff grows to 30 s across an API
/// server restart, and every second the harness is behind, its participants would be
/// too (the model delays versions from the moment the harness sees them).
struct QuickRetry;

impl Iterator for QuickRetry {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<Self::Item> {
        Some(std::time::Duration::from_millis(200))
    }
}

impl kube::runtime::utils::Backoff for QuickRetry {
    fn reset(&mut self) {}
}

/// Turns a watch stream into observations: skips re-delivered versions, and after a
/// relist records the objects that vanished meanwhile as deleted.
async fn follow<K, F>(
    kind: &'static str,
    history: Arc<History>,
    api: Api<K>,
    config: watcher::Config,
    convert: F,
    deleted: fn() -> Change,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(&K) -> Change,
{
    let mut stream = watcher::watcher(api, config).backoff(QuickRetry).boxed();
    let mut known: BTreeMap<String, u64> = BTreeMap::new();
    let mut listing: Option<BTreeSet<String>> = None;
    let mut first_list = true;
    let mut max_rv = 0u64;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = stop.changed() => None,
        };
        let Some(event) = event else { break };
        let now: Time = Utc::now();
        let event = match event {
            Ok(event) => event,
            Err(_) => {
                history.watch_error();
                continue;
            }
        };
        match event {
            Event::Init => {
                if !first_list {
                    history.push(Observation {
                        at: now,
                        rv: max_rv,
                        name: String::new(),
                        change: Change::Gap { kind, open: true },
                    });
                }
                listing = Some(BTreeSet::new());
            }
            Event::InitApply(object) | Event::Apply(object) => {
                let name = object.name_any();
                let rv = rv_of(&object);
                max_rv = max_rv.max(rv);
                if let Some(l) = listing.as_mut() {
                    l.insert(name.clone());
                }
                if known.get(&name) == Some(&rv) {
                    continue;
                }
                known.insert(name.clone(), rv);
                history.push(Observation {
                    at: now,
                    rv,
                    name,
                    change: convert(&object),
                });
            }
            Event::Delete(object) => {
                let name = object.name_any();
                let rv = rv_of(&object).max(max_rv);
                max_rv = max_rv.max(rv);
                known.remove(&name);
                history.push(Observation {
                    at: now,
                    rv,
                    name,
                    change: deleted(),
                });
            }
            Event::InitDone => {
                if let Some(listed) = listing.take() {
                    let gone: Vec<String> = known
                        .keys()
                        .filter(|name| !listed.contains(*name))
                        .cloned()
                        .collect();
                    for name in gone {
                        known.remove(&name);
                        history.push(Observation {
                            at: now,
                            rv: max_rv,
                            name,
                            change: deleted(),
                        });
                    }
                    if !first_list {
                        history.push(Observation {
                            at: now,
                            rv: max_rv,
                            name: String::new(),
                            change: Change::Gap { kind, open: false },
                        });
                    }
                }
                first_list = false;
            }
        }
    }
}

fn secret_change(secret: &Secret) -> Change {
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    Change::Secret(Some(Arc::new(SecretView::from_data(&data))))
}

fn jwks_change(config_map: &ConfigMap, key: &str) -> Change {
    let text = config_map.data.as_ref().and_then(|d| d.get(key).cloned());
    let sources = config_map
        .annotations()
        .get("keyrotor.dev/sources")
        .cloned();
    Change::ConfigMap(Some(Arc::new(JwksView::from_text(text, sources))))
}

fn policy_change(policy: &DynamicObject) -> Change {
    let revoked = policy.data["spec"]["revokedKeyIDs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let rotate_request = policy
        .annotations()
        .get("keyrotor.dev/rotate-request")
        .cloned();
    Change::Policy(Some(Arc::new(PolicyView {
        revoked,
        rotate_request,
    })))
}

/// Starts the three watches of `namespace` on a thread and runtime of their own (with
/// their own client), so that the token traffic's CPU work never delays an event;
/// they run until `stop` is set.
pub fn start(
    kubeconfig: &std::path::Path,
    namespace: &str,
    jwks_key: &str,
    history: Arc<History>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::thread::JoinHandle<Result<(), String>> {
    let kubeconfig = kubeconfig.to_owned();
    let namespace = namespace.to_owned();
    let key = jwks_key.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let client = crate::cluster::client(&kubeconfig).await?;
            let labels = watcher::Config::default().labels(MANAGED_BY);
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let policies: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &policy_resource());
            futures::join!(
                follow(
                    "Secret",
                    history.clone(),
                    secrets,
                    labels.clone(),
                    secret_change,
                    || Change::Secret(None),
                    stop.clone(),
                ),
                follow(
                    "ConfigMap",
                    history.clone(),
                    config_maps,
                    labels,
                    move |cm| jwks_change(cm, &key),
                    || Change::ConfigMap(None),
                    stop.clone(),
                ),
                follow(
                    "Policy",
                    history,
                    policies,
                    watcher::Config::default(),
                    policy_change,
                    || Change::Policy(None),
                    stop,
                ),
            );
            Ok(())
        })
    })
}
