//! Fault injectors. Each runs as its own task until `stop`, at random moments, and
//! records what it did; when stopped it leaves the system whole (operators running).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use keyrotor::keys::{Algorithm, KeyGenerator as _, RsaBits, SystemKeyGenerator};
use keyrotor::ring::KeyState;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use rand::rngs::ChaCha20Rng;
use rand::{RngExt as _, SeedableRng as _};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::cluster;
use crate::history::{History, policy_resource};
use crate::model::{Action, ActionKind, secs};
use crate::operator::OperatorSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Fault {
    /// SIGKILL of an operator replica at random moments, half of them right after
    /// a Secret write was observed (before the ConfigMap write, when the race is won).
    OperatorSigkill,
    /// `tests/cluster/restart kube-apiserver`.
    ApiserverRestart,
    /// `tests/cluster/restart etcd`.
    EtcdRestart,
    /// A second operator replica, both acting (no leader election).
    SecondReplica,
    /// Hand edits of the JWKS ConfigMap: the Next key removed, or a foreign key added.
    ConfigMapEdit,
    /// The signing Secret deleted.
    SecretDelete,
    /// The Active kid added to spec.revokedKeyIDs.
    Revocation,
}

pub type Actions = Arc<Mutex<Vec<Action>>>;

pub fn record(actions: &Actions, at: chrono::DateTime<Utc>, kind: ActionKind) {
    if let Ok(mut a) = actions.lock() {
        a.push(Action { at, kind });
    }
}

#[derive(Clone)]
pub struct FaultContext {
    pub client: Client,
    pub repo: PathBuf,
    pub namespace: String,
    pub policy: String,
    pub secret_name: String,
    pub config_map_name: String,
    pub jwks_key: String,
    pub history: Arc<History>,
    pub actions: Actions,
    pub operators: Arc<tokio::sync::Mutex<OperatorSet>>,
    /// JWKS texts the harness wrote itself (left out of the conformance check).
    pub written: Arc<Mutex<BTreeSet<String>>>,
    /// Kills that landed after a Secret write and before the matching ConfigMap write.
    pub kills_between_writes: Arc<Mutex<u64>>,
    pub rotation_interval: f64,
    pub propagation_delay: f64,
}

/// Sleeps `seconds` unless stopped first; true when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, seconds: f64) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

pub async fn run(fault: Fault, ctx: FaultContext, seed: u64, mut stop: watch::Receiver<bool>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    match fault {
        Fault::SecondReplica => {} // started with the scenario
        Fault::OperatorSigkill => {
            while !pause(&mut stop, rng.random_range(2.0..6.0)).await {
                sigkill(&ctx, &mut rng, &mut stop).await;
            }
        }
        Fault::ApiserverRestart | Fault::EtcdRestart => {
            let component = if fault == Fault::EtcdRestart {
                "etcd"
            } else {
                "kube-apiserver"
            };
            while !pause(&mut stop, rng.random_range(20.0..35.0)).await {
                let began = Utc::now();
                let started = Instant::now();
                let result = cluster::restart(&ctx.repo, component).await;
                let ok = result.is_ok()
                    && cluster::wait_ready(&ctx.client, Duration::from_secs(60)).await;
                if let Err(e) = &result {
                    eprintln!("e2e: {e}");
                }
                record(
                    &ctx.actions,
                    began,
                    ActionKind::ComponentRestarted {
                        component: component.to_owned(),
                        seconds: started.elapsed().as_secs_f64(),
                        ok,
                    },
                );
            }
        }
        Fault::ConfigMapEdit => {
            while !pause(&mut stop, rng.random_range(2.0..5.0)).await {
                let remove_next = rng.random_bool(0.6)
                    && wait_for_fresh_next(&ctx, &mut stop, Duration::from_secs(5)).await;
                edit_config_map(&ctx, remove_next).await;
            }
        }
        Fault::SecretDelete => {
            while !pause(&mut stop, rng.random_range(10.0..16.0)).await {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
                let at = Utc::now();
                if api
                    .delete(&ctx.secret_name, &DeleteParams::default())
                    .await
                    .is_ok()
                {
                    record(
                        &ctx.actions,
                        at,
                        ActionKind::SecretDeleted {
                            policy: ctx.policy.clone(),
                        },
                    );
                }
            }
        }
        Fault::Revocation => {
            let mut revoked: Vec<String> = Vec::new();
            while !pause(&mut stop, rng.random_range(8.0..14.0)).await {
                let Some(kid) = ctx
                    .history
                    .latest_secret(&ctx.secret_name)
                    .and_then(|s| s.kid.clone())
                else {
                    continue;
                };
                if revoked.contains(&kid) {
                    continue;
                }
                let mut list = revoked.clone();
                list.push(kid.clone());
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &policy_resource());
                let at = Utc::now();
                let patch = json!({"spec": {"revokedKeyIDs": list}});
                if api
                    .patch(&ctx.policy, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    revoked.push(kid.clone());
                    record(
                        &ctx.actions,
                        at,
                        ActionKind::Revoked {
                            policy: ctx.policy.clone(),
                            kid,
                        },
                    );
                }
            }
        }
    }
}

async fn sigkill(ctx: &FaultContext, rng: &mut ChaCha20Rng, stop: &mut watch::Receiver<bool>) {
    let after_secret_write = rng.random_bool(0.5);
    let replica = {
        let ops = ctx.operators.lock().await;
        let indexes: Vec<usize> = ops.replicas.iter().map(|r| r.index).collect();
        if indexes.is_empty() {
            return;
        }
        indexes[rng.random_range(0..indexes.len())]
    };
    let mut trigger = "random moment".to_owned();
    if after_secret_write && let Some(mut changes) = ctx.history.subscribe_secret_changes() {
        let wait = Duration::from_secs_f64(ctx.rotation_interval + 2.0);
        let changed = tokio::select! {
            r = tokio::time::timeout(wait, async {
                loop {
                    match changes.recv().await {
                        Ok(name) if name == ctx.secret_name => return true,
                        Ok(_) => continue,
                        Err(_) => return false,
                    }
                }
            }) => r.unwrap_or(false),
            _ = stop.changed() => false,
        };
        if changed {
            trigger = "right after a Secret write".to_owned();
        }
    }
    let killed = {
        let mut ops = ctx.operators.lock().await;
        ops.kill(replica).await
    };
    let at = Utc::now();
    let Some(pid) = killed else { return };
    // Did the kill land between the Secret write and the ConfigMap write?
    if let Some(secret) = ctx.history.latest_secret(&ctx.secret_name) {
        let doc = ctx
            .history
            .jwks_versions(&ctx.config_map_name)
            .last()
            .map(|(_, d)| d.clone());
        let unpublished = secret.ring.as_ref().ok().is_some_and(|keys| {
            keys.iter()
                .any(|k| !doc.as_ref().is_some_and(|d| d.contains(&k.kid)))
        });
        if unpublished && let Ok(mut n) = ctx.kills_between_writes.lock() {
            *n += 1;
        }
    }
    record(
        &ctx.actions,
        at,
        ActionKind::OperatorKilled {
            replica,
            pid,
            trigger,
        },
    );
    let _ = pause(stop, rng.random_range(0.1..1.5)).await;
    let mut ops = ctx.operators.lock().await;
    if let Ok(pid) = ops.start(replica) {
        record(
            &ctx.actions,
            Utc::now(),
            ActionKind::OperatorStarted { replica, pid },
        );
    }
}

/// A hand edit, as `kubectl edit` makes it (an update on the read resourceVersion).
/// Waits until the Secret shows a Next key published less than a third of
/// `propagationDelay` ago: removing it then lands well before it can become Active.
/// (Removed later, the edit could land just after the operator activated it, and
/// vandalise the Active key instead: a different fault.)
async fn wait_for_fresh_next(
    ctx: &FaultContext,
    stop: &mut watch::Receiver<bool>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let fresh = ctx
            .history
            .latest_secret(&ctx.secret_name)
            .and_then(|s| {
                let ring = s.ring.as_ref().ok()?;
                ring.iter()
                    .find(|k| k.state == KeyState::Next)
                    .and_then(|k| k.published_at)
            })
            .is_some_and(|published| secs(published, Utc::now()) < ctx.propagation_delay / 3.0);
        if fresh {
            return true;
        }
        if pause(stop, 0.02).await {
            return false;
        }
    }
    false
}

async fn edit_config_map(ctx: &FaultContext, remove_next: bool) {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let Ok(mut config_map) = api.get(&ctx.config_map_name).await else {
        return;
    };
    let Some(text) = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(&ctx.jwks_key))
        .cloned()
    else {
        return;
    };
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    let Some(keys) = doc["keys"].as_array_mut() else {
        return;
    };
    let next = ctx
        .history
        .latest_secret(&ctx.secret_name)
        .and_then(|s| s.next_kid().map(str::to_owned));
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let has_next = next
        .as_ref()
        .is_some_and(|n| keys.iter().any(|k| k["kid"].as_str() == Some(n)));
    if has_next && remove_next {
        let next = next.unwrap_or_default();
        keys.retain(|k| k["kid"].as_str() != Some(next.as_str()));
        removed.push(next);
    } else {
        // Someone pastes in a key of their own and reformats the document.
        let Ok(material) = SystemKeyGenerator.generate(Algorithm::ES256, RsaBits::B2048) else {
            return;
        };
        let public = material.public_jwk();
        let Ok(value) = serde_json::to_value(&public) else {
            return;
        };
        added.push(public.kid.clone());
        keys.push(value);
    }
    let edited = serde_json::to_string_pretty(&doc).unwrap_or_default();
    if let Some(data) = config_map.data.as_mut() {
        data.insert(ctx.jwks_key.clone(), edited.clone());
    }
    config_map.metadata.managed_fields = None;
    if let Ok(mut w) = ctx.written.lock() {
        w.insert(edited);
    }
    let at = Utc::now();
    if api
        .replace(&ctx.config_map_name, &PostParams::default(), &config_map)
        .await
        .is_ok()
    {
        record(
            &ctx.actions,
            at,
            ActionKind::ConfigMapEdited {
                policy: ctx.policy.clone(),
                removed,
                added,
            },
        );
    }
}
