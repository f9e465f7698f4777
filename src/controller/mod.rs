//! The reconciler: gather → plan → apply for every `JwtSigningKey`.
//!
//! - Gather: the policy (from the watch cache), its Secret and its JWKS ConfigMap (read
//!   fresh from the API server, so a plan never works from a stale ring).
//! - Plan: [`crate::plan::step`], off the async runtime (RSA generation is slow).
//! - Apply, in order, each only when it differs from what is there: the Secret (the
//!   truth), the JWKS ConfigMap (the union of every policy naming it), the status.
//!   Server-side apply with the field manager `keyrotor`, guarded by the
//!   `resourceVersion` that was read.
//! - Requeue at the plan's next transition time.
//!
//! Watches: JwtSigningKeys, and the metadata of keyrotor's own Secrets and ConfigMaps
//! (label `app.kubernetes.io/managed-by=keyrotor`), so the caches never hold other
//! Secrets, and never any Secret data.
//!
//! Deletion needs no finalizer: the Secret and a ConfigMap used by one policy are
//! garbage-collected through their owner references. When one of several owners of a
//! shared ConfigMap goes, the remaining ones are reconciled and render it without the
//! departed policy's keys.

pub mod render;
pub mod status;
pub mod triggers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::{FutureExt, StreamExt, channel::mpsc};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::Event as WatchEvent;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::{
    Algorithm as SpecAlgorithm, JwtSigningKey, JwtSigningKeyStatus, ROTATE_REQUEST_ANNOTATION,
    ResolvedPolicy,
};
use crate::bundle::api::JwksBundle;
use crate::jwks::JwksError;
use crate::keys::{Algorithm, KeyGenerator, RsaBits, SystemKeyGenerator};
use crate::metrics::{Metrics, PolicyGauges};
use crate::plan::{
    self, Observed, Plan, PlanError, Policy, StepError, StoredRing, TargetObservation, Transition,
};
use crate::ring::KeyState;
use crate::secret;
use render::{FIELD_MANAGER, MANAGED_SELECTOR, TargetContent};
use status::{Repair, StatusInput, Verdicts};
use triggers::{OwnWrites, PolicyTriggers};

/// Shortest and longest requeue: never spin, never sleep past an hour (a safety net
/// against a missed watch event; a wake-up with nothing due writes nothing).
const MIN_REQUEUE: Duration = Duration::from_secs(1);
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// How long to wait before looking again at a policy blocked by an object keyrotor
/// must not touch.
const BLOCKED_REQUEUE: Duration = Duration::from_secs(30);

/// Reconciles in flight at once, by default: enough to keep the API server busy
/// (each reconcile waits on a few round trips in a row), few enough that a burst of
/// policies queues in the controller instead of in the API server.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// What the operator watches, and how hard it may push the API server.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Run the JwksBundle controller, and let every policy's rotation wait for the
    /// bundles that publish its keys (needs the JwksBundle CRD).
    pub bundles: bool,
    /// Reconciles in flight at once per controller (0: unbounded).
    pub concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespaces: Vec::new(),
            bundles: false,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// Why a reconcile failed. Messages never contain key material: Secret write errors
/// keep only the API status code and reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("writing Secret {name}: API error {code} {reason}")]
    SecretWrite {
        name: String,
        code: u16,
        reason: String,
    },
    #[error("the {0} of the JwtSigningKey is missing")]
    MissingField(&'static str),
    #[error("key generation task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("planning: {0}")]
    Step(#[from] StepError),
    #[error("rendering the Secret: {0}")]
    Secret(#[from] secret::SecretError),
    #[error("rendering the JWKS: {0}")]
    Jwks(#[from] JwksError),
}

impl Error {
    /// A label for the reconcile error metric.
    fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(_) | Error::SecretWrite { .. } => "api",
            Error::MissingField(_) => "invalid_object",
            Error::Task(_) | Error::Step(_) => "planning",
            Error::Secret(_) | Error::Jwks(_) => "rendering",
        }
    }

    fn is_conflict(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(status)) => status.code == 409,
            Error::SecretWrite { code, .. } => *code == 409,
            _ => false,
        }
    }
}

/// The status last written per policy, with the resourceVersion the write was based on:
/// while the watch cache still shows exactly that version, the cache is behind our own
/// write, and the written status is the current one.
struct WrittenStatus {
    based_on: Option<String>,
    status: JwtSigningKeyStatus,
}

type PolicyKey = (String, String);

/// Shared state of one controller.
pub struct Context {
    client: Client,
    reporter: Reporter,
    metrics: Metrics,
    policies: Store<JwtSigningKey>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// Every JwksBundle, when bundles are enabled: their targets count as the policy's.
    bundles: Option<Store<JwksBundle>>,
    generator: Arc<dyn KeyGenerator>,
    /// One lock per JWKS ConfigMap: read-merge-write of a shared ConfigMap by two
    /// policies at once would lose one side's keys.
    jwks_locks: Mutex<HashMap<PolicyKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Shared with the policy stream, which drops the watch events of these writes.
    written_status: Arc<Mutex<HashMap<PolicyKey, WrittenStatus>>>,
    failures: Mutex<HashMap<PolicyKey, u32>>,
    /// keyrotor's own last writes, whose watch events trigger nothing.
    own_secrets: Arc<OwnWrites>,
    own_config_maps: Arc<OwnWrites>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Context {
    fn jwks_lock(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.jwks_locks)
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .clone()
    }

    /// The policy's status, accounting for a watch cache that has not yet seen our own
    /// last status write.
    fn current_status(
        &self,
        policy: &JwtSigningKey,
        key: &PolicyKey,
    ) -> Option<JwtSigningKeyStatus> {
        let written = lock(&self.written_status);
        match written.get(key) {
            Some(w) if w.based_on.is_some() && w.based_on == policy.metadata.resource_version => {
                Some(w.status.clone())
            }
            _ => policy.status.clone(),
        }
    }

    /// Policies in `namespace` that publish to the ConfigMap `config_map`, by name, with
    /// their JWKS key and owner reference. Policies being deleted are left out.
    fn members(
        &self,
        namespace: &str,
        config_map: &str,
    ) -> BTreeMap<String, (String, OwnerReference)> {
        self.policies
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            // Cheap test first: resolving every policy of the namespace for every
            // reconcile would make a burst of N policies cost N² resolves.
            .filter(|p| match &p.spec.jwks.config_map_name {
                Some(target) => target == config_map,
                None => p
                    .metadata
                    .name
                    .as_deref()
                    .is_some_and(|name| config_map.strip_suffix("-jwks") == Some(name)),
            })
            .filter_map(|p| {
                let name = p.metadata.name.clone()?;
                let resolved = p.spec.resolve(&name).ok()?;
                if resolved.config_map_name != config_map {
                    return None;
                }
                let owner = render::owner_reference(p, false)?;
                Some((name, (resolved.jwks_key, owner)))
            })
            .collect()
    }

    async fn publish(&self, policy: &JwtSigningKey, type_: EventType, reason: &str, note: String) {
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // A fresh recorder per Event: the recorder's series de-duplication ignores the
        // note, and would fold "key B activated" into an earlier "key A activated".
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        match recorder.publish(&event, &policy.object_ref(&())).await {
            Ok(()) => self.metrics.api_write("event"),
            Err(e) => {
                warn!(policy = %policy.name_any(), reason, error = %e, "could not publish an Event")
            }
        }
    }

    async fn write_status(
        &self,
        policy: &JwtSigningKey,
        key: &PolicyKey,
        status: JwtSigningKeyStatus,
    ) -> Result<(), kube::Error> {
        let api: Api<JwtSigningKey> = Api::namespaced(self.client.clone(), &key.0);
        let patch = serde_json::json!({
            "apiVersion": JwtSigningKey::api_version(&()),
            "kind": JwtSigningKey::kind(&()),
            "status": status,
        });
        api.patch_status(
            &key.1,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.metrics.api_write("status");
        // Deleted policies are forgotten by the policy stream.
        lock(&self.written_status).insert(
            key.clone(),
            WrittenStatus {
                based_on: policy.metadata.resource_version.clone(),
                status,
            },
        );
        Ok(())
    }
}

/// `User-Agent` of every request, so the API server's audit log tells keyrotor's
/// requests apart.
pub const USER_AGENT: &str = concat!("keyrotor/", env!("CARGO_PKG_VERSION"));

/// A client for `config` that identifies itself as keyrotor.
pub fn client(mut config: kube::Config) -> Result<Client, kube::Error> {
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(USER_AGENT),
    ));
    Client::try_from(config)
}

/// Runs the controllers while this replica leads (always, without `leadership`) until
/// `shutdown` resolves. With `leadership`, the elector keeps the leader gauge. Losing the lease stops every write at once; regaining it starts
/// afresh from the API server's state.
pub async fn run_with_leadership(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    leadership: Option<watch::Receiver<bool>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = shutdown.shared();
    let Some(mut leadership) = leadership else {
        metrics.set_leader(true);
        run(client, &settings, metrics, shutdown).await;
        return Ok(());
    };
    loop {
        tokio::select! {
            acquired = leadership.wait_for(|leader| *leader) => {
                if acquired.is_err() {
                    return Ok(());
                }
            }
            () = shutdown.clone() => return Ok(()),
        }
        info!("leading: starting the controllers");
        let lost = {
            let mut leadership = leadership.clone();
            async move {
                let _ = leadership.wait_for(|leader| !*leader).await;
            }
        };
        tokio::select! {
            () = run(client.clone(), &settings, metrics.clone(), shutdown.clone()) => {
                return Ok(());
            }
            () = lost => warn!("lost the leader lease: stopping every write"),
        }
    }
}

/// Runs one controller per watched namespace (or one for all) until `shutdown`.
pub async fn run(
    client: Client,
    settings: &Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let generator: Arc<dyn KeyGenerator> = Arc::new(SystemKeyGenerator);
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let controllers = scopes.into_iter().map(|namespace| {
        run_scope(
            client.clone(),
            namespace,
            settings.concurrency,
            metrics.clone(),
            generator.clone(),
            settings.bundles,
            shutdown.clone(),
        )
    });
    let policies = futures::future::join_all(controllers);
    if settings.bundles {
        futures::future::join(
            policies,
            crate::bundle::run(client.clone(), metrics.clone(), shutdown.clone()),
        )
        .await;
    } else {
        policies.await;
    }
}

fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    }
}

/// The policies whose ConfigMap an object event concerns: its owners and the policies
/// its sources annotation names.
fn config_map_policies(config_map: PartialObjectMeta<ConfigMap>) -> Vec<ObjectRef<JwtSigningKey>> {
    let Some(namespace) = config_map.metadata.namespace.clone() else {
        return Vec::new();
    };
    let mut names: BTreeSet<String> = config_map
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| {
            r.kind == JwtSigningKey::kind(&()) && r.api_version == JwtSigningKey::api_version(&())
        })
        .map(|r| r.name.clone())
        .collect();
    names.extend(
        render::read_sources(&config_map.metadata)
            .into_iter()
            .flat_map(|sources| sources.into_keys()),
    );
    names
        .into_iter()
        .map(|name| ObjectRef::new(&name).within(&namespace))
        .collect()
}

/// Builds and runs a controller for one namespace (or all) with the given generator;
/// returns when `shutdown` resolves. Exposed so tests can run the operator in-process.
pub async fn run_scope(
    client: Client,
    namespace: Option<String>,
    concurrency: u16,
    metrics: Metrics,
    generator: Arc<dyn KeyGenerator>,
    bundles: bool,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let namespace = namespace.as_deref();
    let policies: Api<JwtSigningKey> = scoped(client.clone(), namespace);
    // Metadata only: the caches never hold Secret data or JWKS documents.
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(client.clone(), namespace);
    let config_maps: Api<PartialObjectMeta<ConfigMap>> = scoped(client.clone(), namespace);
    let managed = watcher::Config::default().labels(MANAGED_SELECTOR);

    let (policy_reader, policy_writer) = reflector::store();
    let (config_map_reader, config_map_writer) = reflector::store();
    // A deleted policy's ConfigMap partners must render without it.
    let (partners_tx, partners_rx) = mpsc::unbounded::<ObjectRef<JwtSigningKey>>();

    let written_status: Arc<Mutex<HashMap<PolicyKey, WrittenStatus>>> = Arc::default();
    let own_secrets: Arc<OwnWrites> = Arc::default();
    let own_config_maps: Arc<OwnWrites> = Arc::default();
    let mut policy_triggers = PolicyTriggers::default();
    let trigger_status = written_status.clone();

    let ready_metrics = metrics.clone();
    let gauge_metrics = metrics.clone();
    let partner_store = policy_reader.clone();
    let forget_status = written_status.clone();
    let policy_stream = watcher(policies, watcher::Config::default())
        .default_backoff()
        .modify(|policy| policy.managed_fields_mut().clear())
        .reflect(policy_writer)
        .inspect(move |event| match event {
            Ok(WatchEvent::InitDone) => ready_metrics.mark_ready(),
            Ok(WatchEvent::Delete(gone)) => {
                let (Some(ns), name) = (gone.namespace(), gone.name_any()) else {
                    return;
                };
                gauge_metrics.remove_policy(&ns, &name);
                lock(&forget_status).remove(&(ns.clone(), name.clone()));
                let Ok(resolved) = gone.spec.resolve(&name) else {
                    return;
                };
                for partner in partner_store.state() {
                    let same_target = partner.namespace().as_deref() == Some(ns.as_str())
                        && partner
                            .spec
                            .resolve(&partner.name_any())
                            .is_ok_and(|p| p.config_map_name == resolved.config_map_name);
                    if same_target {
                        let _ = partners_tx.unbounded_send(ObjectRef::from_obj(&*partner));
                    }
                }
            }
            _ => {}
        })
        .filter(move |event| {
            let wanted = match event {
                Ok(event) => policy_triggers.wants(event, |key| {
                    lock(&trigger_status).get(key).map(|w| w.status.clone())
                }),
                Err(_) => true,
            };
            futures::future::ready(wanted)
        })
        .applied_objects();
    let config_map_filter = own_config_maps.clone();
    let config_map_stream = watcher(config_maps, managed.clone())
        .default_backoff()
        .modify(|config_map| config_map.managed_fields_mut().clear())
        .reflect(config_map_writer)
        .filter(move |event| {
            futures::future::ready(event.as_ref().map_or(true, |e| config_map_filter.wants(e)))
        })
        .touched_objects();
    let secret_filter = own_secrets.clone();
    let secret_stream = watcher(secrets, managed)
        .default_backoff()
        .filter(move |event| {
            futures::future::ready(event.as_ref().map_or(true, |e| secret_filter.wants(e)))
        })
        .touched_objects();

    let (bundle_reader, bundle_writer) = reflector::store();
    let bundle_stream =
        bundles.then(|| crate::bundle::bundle_stream(client.clone(), bundle_writer));

    let context = Arc::new(Context {
        reporter: reporter(),
        client,
        metrics,
        policies: policy_reader.clone(),
        config_maps: config_map_reader,
        bundles: bundles.then(|| bundle_reader.clone()),
        generator,
        jwks_locks: Mutex::default(),
        written_status,
        failures: Mutex::default(),
        own_secrets,
        own_config_maps,
    });

    let bundle_policies = policy_reader.clone();
    let config = kube::runtime::controller::Config::default().concurrency(concurrency);
    let mut controller = Controller::for_stream(policy_stream, policy_reader)
        .with_config(config)
        .owns_stream(secret_stream)
        .watches_stream(config_map_stream, config_map_policies)
        .reconcile_on(partners_rx);
    if let Some(stream) = bundle_stream {
        controller = controller.watches_stream(stream, move |bundle| {
            crate::bundle::selected_policies(&bundle_policies, &bundle)
        });
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(policy = %object, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
}

/// Who reports keyrotor's Events: the controller `keyrotor`, the instance its Pod.
pub(crate) fn reporter() -> Reporter {
    Reporter {
        controller: "keyrotor".to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

fn error_policy(policy: Arc<JwtSigningKey>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    let failures = {
        let mut failures = lock(&ctx.failures);
        let count = failures.entry(key.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    ctx.metrics.reconcile_failed(error.metric_reason());
    let delay = if error.is_conflict() {
        // Someone wrote between our read and our write: read again soon.
        Duration::from_millis(200 * u64::from(failures.min(10)))
    } else {
        Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
    };
    warn!(policy = %format!("{}/{}", key.0, key.1), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn to_core_algorithm(algorithm: SpecAlgorithm) -> Algorithm {
    match algorithm {
        SpecAlgorithm::ES256 => Algorithm::ES256,
        SpecAlgorithm::ES384 => Algorithm::ES384,
        SpecAlgorithm::EdDSA => Algorithm::EdDSA,
        SpecAlgorithm::RS256 => Algorithm::RS256,
        SpecAlgorithm::PS256 => Algorithm::PS256,
    }
}

fn time_delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

fn core_policy(
    resolved: &ResolvedPolicy,
    policy: &JwtSigningKey,
    namespace: &str,
    name: &str,
) -> Policy {
    Policy {
        alg: to_core_algorithm(resolved.algorithm),
        rsa_bits: resolved
            .rsa_bits
            .and_then(RsaBits::from_bits)
            .unwrap_or_default(),
        rotation_interval: time_delta(resolved.rotation_interval),
        max_token_lifetime: time_delta(resolved.max_token_lifetime),
        propagation_delay: time_delta(resolved.propagation_delay),
        paused: resolved.paused,
        revoked: resolved.revoked_key_ids.iter().cloned().collect(),
        certificate: resolved.certificate,
        subject: format!("{namespace}/{name}"),
        rotate_request: policy.annotations().get(ROTATE_REQUEST_ANNOTATION).cloned(),
    }
}

fn requeue_at(wake: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Action {
    // A wake-up already past (a slow reconcile) means: soon, not never.
    let delay = wake
        .map_or(MAX_REQUEUE, |at| {
            (at - now).to_std().unwrap_or(Duration::ZERO)
        })
        .clamp(MIN_REQUEUE, MAX_REQUEUE);
    Action::requeue(delay)
}

/// A status is wiped when it holds neither keys nor conditions.
fn is_blank(status: Option<&JwtSigningKeyStatus>) -> bool {
    status.is_none_or(|s| s.keys.is_empty() && s.conditions.is_empty())
}

fn secret_data_bytes(secret: &Secret) -> Option<BTreeMap<String, Vec<u8>>> {
    secret.data.as_ref().map(|data| {
        data.iter()
            .map(|(key, value)| (key.clone(), value.0.clone()))
            .collect()
    })
}

/// Sanitises a Secret write error: the API server's message is dropped, in case it
/// ever echoes a value.
/// A Secret write that took longer than this after its plan was made has its
/// transition times moved to when it landed (the e2e checker's tolerance is 0.25 s).
const LANDING_SLACK: TimeDelta = TimeDelta::milliseconds(200);

/// Whether the plan makes a key Active (it then signs: it must be in the JWKS).
fn activates(plan: &Plan) -> bool {
    plan.transitions
        .iter()
        .any(|t| matches!(t, Transition::Activated { .. }))
}

/// Writes `desired` guarded by what was read (`read`, the object's metadata as read):
/// server-side apply with the read `resourceVersion` and `uid` as preconditions, or,
/// when nothing was there, a create. Either fails with a conflict if the object changed
/// meanwhile, and the caller reads again:
/// - an apply cannot be made conditional on absence, so two writers that both saw
///   nothing (a second replica) would otherwise both "create", the later overwriting
///   the earlier ring;
/// - an apply with only a stale `resourceVersion` re-creates an object deleted since
///   (a Secret deleted while its rotation was planned would come back holding the old
///   ring); the `uid` makes it fail instead.
pub async fn write_guarded<K>(
    api: &Api<K>,
    name: &str,
    read: Option<&ObjectMeta>,
    mut desired: K,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match read {
        Some(read) => {
            render::guard_on(desired.meta_mut(), read);
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
        }
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            api.create(&params, &desired).await
        }
    }
}

fn secret_write_error(name: &str, error: kube::Error) -> Error {
    match error {
        kube::Error::Api(status) => Error::SecretWrite {
            name: name.to_owned(),
            code: status.code,
            reason: status.reason.clone(),
        },
        other => Error::Kube(other),
    }
}

async fn reconcile(policy: Arc<JwtSigningKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = policy
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = policy.name_any();
    if policy.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the Secret; partners re-render shared ConfigMaps.
        return Ok(Action::await_change());
    }
    let key = (namespace.clone(), name.clone());
    let now = Utc::now();
    let current = ctx.current_status(&policy, &key);
    let result = match policy.spec.resolve(&name) {
        Ok(resolved) => reconcile_policy(&policy, &resolved, &ctx, &key, current, now).await,
        Err(e) => {
            let message = e.to_string();
            let verdicts = status::invalid_spec(&message);
            report_problem(
                &policy,
                &ctx,
                &key,
                current,
                verdicts,
                now,
                "InvalidSpec",
                &message,
            )
            .await?;
            Ok(Action::await_change())
        }
    };
    if result.is_ok() {
        lock(&ctx.failures).remove(&key);
    }
    result
}

/// Writes a status for a policy that cannot be reconciled, with a Warning Event when
/// the status changes.
#[allow(clippy::too_many_arguments)]
async fn report_problem(
    policy: &JwtSigningKey,
    ctx: &Context,
    key: &PolicyKey,
    current: Option<JwtSigningKeyStatus>,
    verdicts: Verdicts,
    now: DateTime<Utc>,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let previous: &[Condition] = current.as_ref().map_or(&[], |s| s.conditions.as_slice());
    let desired = status::status(
        None,
        current.as_ref(),
        StatusInput {
            generation: policy.metadata.generation,
            previous,
            verdicts,
            new_repair: false,
            lingering: None,
            now,
        },
    );
    if current.as_ref() != Some(&desired) {
        ctx.write_status(policy, key, desired).await?;
        ctx.publish(policy, EventType::Warning, reason, message.to_owned())
            .await;
    }
    Ok(())
}

async fn reconcile_policy(
    policy: &JwtSigningKey,
    resolved: &ResolvedPolicy,
    ctx: &Context,
    key: &PolicyKey,
    current: Option<JwtSigningKeyStatus>,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let (namespace, name) = (key.0.as_str(), key.1.as_str());
    let uid = policy.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let config_map_name = resolved.config_map_name.as_str();
    let target_name = format!("{namespace}/{config_map_name}");

    // Gather: the Secret and the JWKS ConfigMap, read together, the ConfigMap under its
    // lock until it is written.
    let jwks_lock = ctx.jwks_lock(namespace, config_map_name);
    let jwks_guard = jwks_lock.lock().await;
    let (existing_secret, existing_config_map) = tokio::join!(
        secrets.get_opt(&resolved.secret_name),
        config_maps.get_opt(config_map_name)
    );
    let (existing_secret, existing_config_map) = (existing_secret?, existing_config_map?);
    if let Some(existing) = &existing_secret
        && !render::is_owned_by(&existing.metadata, &uid)
    {
        let message = if render::is_managed(&existing.metadata) {
            format!(
                "Secret {} belongs to another JwtSigningKey (an earlier one of this name may still be being deleted)",
                resolved.secret_name
            )
        } else {
            format!(
                "Secret {} exists and is not managed by keyrotor; keyrotor will not overwrite it",
                resolved.secret_name
            )
        };
        let verdicts = status::failed("SecretConflict", &message);
        report_problem(
            policy,
            ctx,
            key,
            current,
            verdicts,
            now,
            "SecretConflict",
            &message,
        )
        .await?;
        return Ok(Action::requeue(BLOCKED_REQUEUE));
    }
    let stored = secret::stored_ring(
        existing_secret
            .as_ref()
            .and_then(secret_data_bytes)
            .as_ref(),
    );

    if let Some(existing) = &existing_config_map
        && (!render::is_managed(&existing.metadata)
            || crate::bundle::plan::is_bundle_config_map(&existing.metadata))
    {
        let message = format!(
            "ConfigMap {config_map_name} exists and is not managed by keyrotor; keyrotor will not overwrite it"
        );
        let verdicts = status::failed("ConfigMapConflict", &message);
        report_problem(
            policy,
            ctx,
            key,
            current,
            verdicts,
            now,
            "ConfigMapConflict",
            &message,
        )
        .await?;
        return Ok(Action::requeue(BLOCKED_REQUEUE));
    }
    let mut members = ctx.members(namespace, config_map_name);
    members.entry(name.to_owned()).or_insert_with(|| {
        (
            resolved.jwks_key.clone(),
            render::owner_reference(policy, false).unwrap_or_default(),
        )
    });
    let member_names: BTreeSet<String> = members.keys().cloned().collect();
    let target = TargetContent::read(existing_config_map.as_ref(), &resolved.jwks_key);
    let only_member = member_names.len() == 1;

    // Plan: the policy's own ConfigMap and every bundle publishing its keys.
    let mut targets = vec![TargetObservation {
        name: target_name.clone(),
        kids: target.kids(),
        since: BTreeMap::new(),
    }];
    if let Some(bundles) = &ctx.bundles {
        // Until the bundles are known, no key may count as published: look again soon.
        if bundles.wait_until_ready().now_or_never().is_none() {
            drop(jwks_guard);
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        let bundles = bundles.state();
        targets.extend(crate::bundle::plan::policy_targets(
            bundles.iter().map(AsRef::as_ref),
            namespace,
            name,
            policy.labels(),
        ));
    }
    let observed = Observed {
        ring: stored.clone(),
        targets,
        recoverable: target.keys_of(name, only_member),
        status_kids: current
            .iter()
            .flat_map(|s| s.keys.iter().map(|k| k.kid.clone()))
            .collect(),
    };
    let mut planner_policy = core_policy(resolved, policy, namespace, name);
    if planner_policy.requests_rotation_of(&stored) {
        // The watch cache may be behind a request that another writer (a second replica)
        // has honoured since: its older value would look new and rotate once more. The
        // policy read after the Secret holds the request the ring honoured, or a newer one.
        let policies: Api<JwtSigningKey> = Api::namespaced(ctx.client.clone(), namespace);
        let Some(fresh) = policies.get_opt(name).await? else {
            return Ok(Action::await_change());
        };
        planner_policy.rotate_request = fresh.annotations().get(ROTATE_REQUEST_ANNOTATION).cloned();
    }
    let generator = ctx.generator.clone();
    let planned = {
        let (planner_policy, observed) = (planner_policy.clone(), observed.clone());
        tokio::task::spawn_blocking(move || {
            plan::step_when_ready(&planner_policy, &observed, &Utc::now, generator.as_ref())
        })
        .await?
    };
    let mut plan = match planned {
        Ok(plan) => plan,
        Err(StepError::Plan(PlanError::NewerRing(e))) => {
            drop(jwks_guard);
            let message = format!(
                "Secret {} holds a key ring written by a newer keyrotor; not touching it ({e})",
                resolved.secret_name
            );
            let verdicts = status::failed("NewerRing", &message);
            report_problem(
                policy,
                ctx,
                key,
                current,
                verdicts,
                now,
                "NewerRing",
                &message,
            )
            .await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };

    // What the Events announce: this plan's transitions, and those of the plan made
    // after our own JWKS write (below).
    let mut announced = plan.transitions.clone();

    // Policies sharing a ConfigMap must agree on the data key; the first by name decides.
    let shared_key = members
        .values()
        .next()
        .map(|(jwks_key, _)| jwks_key.clone())
        .unwrap_or_else(|| resolved.jwks_key.clone());
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if shared_key != resolved.jwks_key {
        problems.push((
            "JwksKeyConflict",
            format!(
                "ConfigMap {config_map_name} is shared and its other policies publish under key {shared_key:?}, not {:?}",
                resolved.jwks_key
            ),
        ));
    }

    // A policy's very first keys are published before the Secret is written: nothing
    // signs yet, so the JWKS can go first, and the Secret is then written once, with
    // the keys already observed in the JWKS. (If that Secret write fails, the next
    // reconcile finds those public keys and rebuilds the ring around them: nothing
    // published is dropped.) Every later change writes the Secret first: it is the
    // truth.
    let first_ring = matches!(stored, StoredRing::Missing)
        && plan.transitions.iter().any(|t| {
            matches!(
                t,
                Transition::Activated {
                    exception: Some(crate::ring::ActivationException::FirstKey),
                    ..
                }
            )
        });
    let mut secret_now = existing_secret;
    if !first_ring {
        let jwks_read = existing_config_map
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone());
        let activation = activates(&plan);
        let Some(applied) = apply_secret(
            ctx,
            &secrets,
            &config_maps,
            policy,
            resolved,
            plan,
            secret_now,
            activation,
            activation.then_some(jwks_read),
        )
        .await?
        else {
            return Ok(Action::requeue(Duration::ZERO));
        };
        (plan, secret_now) = applied;
    }

    // Apply: the JWKS ConfigMap.
    let mut repairs = Vec::new();
    let spec_unchanged = current
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|g| Some(g) == policy.metadata.generation);
    if let StoredRing::Present(ring) = &stored
        && spec_unchanged
        && !ring.keys.is_empty()
        && problems.is_empty()
    {
        let mut written: Vec<String> = ring.public_jwks().into_iter().map(|k| k.kid).collect();
        let mut found: Vec<String> = target
            .keys_of(name, only_member)
            .into_iter()
            .map(|k| k.kid)
            .collect();
        written.sort();
        found.sort();
        if !target.exists {
            repairs.push(Repair::JwksRestored {
                target: target_name.clone(),
            });
        } else if written != found {
            repairs.push(Repair::JwksRepaired {
                target: target_name.clone(),
            });
        }
    }
    let mut written_map = None;
    if problems.is_empty() {
        match render::merge_target(name, &plan.publish, &target, &member_names) {
            Ok(merged) => {
                let owners: Vec<OwnerReference> =
                    members.values().map(|(_, owner)| owner.clone()).collect();
                let desired = render::config_map(
                    namespace,
                    config_map_name,
                    &resolved.jwks_key,
                    &merged,
                    owners,
                );
                let current_map = existing_config_map
                    .as_ref()
                    .is_some_and(|existing| render::config_map_is_current(existing, &desired));
                if !current_map {
                    let read = existing_config_map.as_ref().map(|c| &c.metadata);
                    let written =
                        write_guarded(&config_maps, config_map_name, read, desired).await?;
                    ctx.metrics.api_write("configmap");
                    ctx.own_config_maps.record(&written.metadata);
                    debug!(policy = %name, configmap = %config_map_name, "JWKS written");
                    written_map = Some(written);
                }
            }
            Err(JwksError::TooLarge { keys, size, limit }) => problems.push((
                "JwksTooLarge",
                format!(
                    "JWKS ConfigMap {config_map_name} would hold {keys} keys in {size} bytes, over the {limit}-byte limit; not written"
                ),
            )),
            Err(e) => return Err(e.into()),
        }
    }

    // Observe: the API server's answer to our JWKS write is an observation of the
    // ConfigMap like any read, made when it arrived. Keys it shows are published from
    // then on, so a new key's pre-publication starts at once, without waiting for the
    // write's watch event and another reconcile.
    if let Some(written) = &written_map {
        let seen_at = Utc::now();
        let seen = TargetContent::read(Some(written), &resolved.jwks_key);
        let mut observed = observed;
        // The first key signs from when its Secret lands, not from when it was planned.
        let base = if first_ring {
            plan.clone().landed_at(seen_at)
        } else {
            plan.clone()
        };
        observed.ring = StoredRing::Present(base.ring.clone());
        for observation in &mut observed.targets {
            if observation.name == target_name {
                observation.kids = seen.kids();
            }
        }
        let replanned = plan::plan(&planner_policy, &observed, seen_at).map_err(StepError::from)?;
        if replanned.key_requests.is_empty() && replanned.ring != plan.ring {
            // The first keys were created and published together: their creation
            // Events say so, a KeyPublished per key would add nothing.
            announced.extend(
                replanned
                    .transitions
                    .iter()
                    .filter(|t| !(first_ring && matches!(t, Transition::Published { .. })))
                    .cloned(),
            );
            plan = replanned;
        }
    }
    if first_ring || written_map.is_some() {
        // The JWKS was just written and observed: no re-read before the first key.
        if let Some(applied) = apply_secret(
            ctx,
            &secrets,
            &config_maps,
            policy,
            resolved,
            plan.clone(),
            secret_now,
            first_ring,
            None,
        )
        .await?
        {
            (plan, _) = applied;
        }
    }
    drop(jwks_guard);

    // Apply: leave ConfigMaps this policy no longer publishes to.
    leave_old_targets(ctx, namespace, name, &uid, config_map_name).await?;

    // Apply: the status, only when it changed.
    if is_blank(current.as_ref())
        && matches!(&stored, StoredRing::Present(ring) if !ring.keys.is_empty())
    {
        repairs.push(Repair::StatusRestored);
    }
    let previous: &[Condition] = current.as_ref().map_or(&[], |s| s.conditions.as_slice());
    let delay = time_delta(resolved.propagation_delay);
    let lingering = if repairs.is_empty() {
        status::lingering_repair(previous, delay, now)
    } else {
        None
    };
    let verdicts = status::judge(&plan, &target_name, &problems, &repairs);
    let desired_status = status::status(
        Some(&plan),
        current.as_ref(),
        StatusInput {
            generation: policy.metadata.generation,
            previous,
            verdicts,
            new_repair: !repairs.is_empty(),
            lingering: lingering.as_ref().map(|(c, _)| c.clone()),
            now,
        },
    );
    if current.as_ref() != Some(&desired_status) {
        ctx.write_status(policy, key, desired_status).await?;
    }

    // Report: Events go out together, so a busy API server delays the next reconcile
    // by one round trip, not one per Event.
    let announcements = announced
        .iter()
        .map(|transition| announce(ctx, policy, namespace, name, transition));
    let repaired = repairs.iter().map(|repair| {
        warn!(policy = %format!("{namespace}/{name}"), reason = repair.reason(), "{}", repair.message());
        ctx.publish(policy, EventType::Warning, repair.reason(), repair.message())
    });
    futures::future::join(
        futures::future::join_all(announcements),
        futures::future::join_all(repaired),
    )
    .await;
    for (reason, message) in &problems {
        if current
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::DEGRADED))
            .is_none_or(|c| c.reason != *reason)
        {
            ctx.publish(policy, EventType::Warning, reason, message.clone())
                .await;
        }
    }
    ctx.metrics.set_policy_gauges(
        namespace,
        name,
        PolicyGauges {
            next_rotation: plan.next_rotation,
            active_since: plan.ring.active().and_then(|k| k.activated_at),
            keys_published: plan.publish.len(),
        },
    );

    let mut wake = plan.wake_at;
    let repair_window_end = match (&lingering, repairs.is_empty()) {
        (Some((_, until)), _) => Some(*until),
        (None, false) => Some(now + delay),
        (None, true) => None,
    };
    if let Some(until) = repair_window_end {
        wake = Some(wake.map_or(until, |w| w.min(until)));
    }
    // Measured from now, not from the start of this reconcile: a slow reconcile must not
    // push the next transition late.
    Ok(requeue_at(wake, Utc::now()))
}

/// Writes the Secret for `plan` unless `existing` already holds it; returns the plan
/// as written (restamped after a slow write of an activation) and the Secret as it now
/// is. `activation`: the Secret makes a key sign. `jwks_read`: the JWKS version the
/// plan was made on; it is read again first, and `None` returned if it changed
/// meanwhile (plan again).
#[allow(clippy::too_many_arguments)]
async fn apply_secret(
    ctx: &Context,
    secrets: &Api<Secret>,
    config_maps: &Api<ConfigMap>,
    policy: &JwtSigningKey,
    resolved: &ResolvedPolicy,
    mut plan: Plan,
    existing: Option<Secret>,
    activation: bool,
    jwks_read: Option<Option<String>>,
) -> Result<Option<(Plan, Option<Secret>)>, Error> {
    let name = policy.name_any();
    let data = secret::secret_data(&plan.ring, resolved.certificate)?;
    let desired = render::secret(policy, &resolved.secret_name, resolved.certificate, data);
    if existing
        .as_ref()
        .is_some_and(|existing| render::secret_is_current(existing, &desired))
    {
        return Ok(Some((plan, existing)));
    }
    let config_map_name = resolved.config_map_name.as_str();
    if let Some(read) = &jwks_read {
        // A key may sign only while it is in the JWKS. Planning (key generation) takes
        // time; a hand edit of the ConfigMap meanwhile must be seen before the switch.
        let fresh = config_maps.get_opt(config_map_name).await?;
        if fresh.and_then(|c| c.metadata.resource_version) != *read {
            debug!(policy = %name, configmap = %config_map_name, "JWKS changed while planning; planning again");
            return Ok(None);
        }
    }
    let read = existing.as_ref().map(|s| &s.metadata);
    let mut written = write_guarded(secrets, &resolved.secret_name, read, desired)
        .await
        .map_err(|e| secret_write_error(&resolved.secret_name, e))?;
    ctx.metrics.api_write("secret");
    ctx.own_secrets.record(&written.metadata);
    debug!(policy = %name, secret = %resolved.secret_name, "Secret written");
    let landed = Utc::now();
    if activation && landed - plan.planned_at > LANDING_SLACK {
        // The write was held up: signers saw the rotation only now, so the retired
        // key's retention and the new key's turn count from now.
        plan = plan.landed_at(landed);
        let data = secret::secret_data(&plan.ring, resolved.certificate)?;
        let restamped = render::secret(policy, &resolved.secret_name, resolved.certificate, data);
        let read = written.metadata.clone();
        written = write_guarded(secrets, &resolved.secret_name, Some(&read), restamped)
            .await
            .map_err(|e| secret_write_error(&resolved.secret_name, e))?;
        ctx.metrics.api_write("secret");
        ctx.own_secrets.record(&written.metadata);
        debug!(policy = %name, secret = %resolved.secret_name, "Secret restamped after a slow write");
    }
    Ok(Some((plan, Some(written))))
}

/// Removes this policy from JWKS ConfigMaps it no longer names (after a change of
/// `spec.jwks.configMapName`); deletes those left with no policy.
async fn leave_old_targets(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uid: &str,
    current_target: &str,
) -> Result<(), Error> {
    let stale: Vec<String> = ctx
        .config_maps
        .state()
        .iter()
        .filter(|cm| cm.metadata.namespace.as_deref() == Some(namespace))
        .filter(|cm| cm.metadata.name.as_deref() != Some(current_target))
        .filter(|cm| {
            render::is_owned_by(&cm.metadata, uid) || render::names_source(&cm.metadata, name)
        })
        .filter_map(|cm| cm.metadata.name.clone())
        .collect();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    for old in stale {
        let jwks_lock = ctx.jwks_lock(namespace, &old);
        let _guard = jwks_lock.lock().await;
        let Some(existing) = config_maps.get_opt(&old).await? else {
            continue;
        };
        if !render::is_managed(&existing.metadata) {
            continue;
        }
        let mut members = ctx.members(namespace, &old);
        members.remove(name);
        if members.is_empty() {
            let preconditions = Preconditions {
                uid: existing.metadata.uid.clone(),
                resource_version: existing.metadata.resource_version.clone(),
            };
            config_maps
                .delete(&old, &DeleteParams::default().preconditions(preconditions))
                .await?;
            ctx.metrics.api_write("configmap");
            info!(policy = %name, configmap = %old, "deleted a JWKS ConfigMap no policy publishes to any more");
            continue;
        }
        let jwks_key = members
            .values()
            .next()
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        let target = TargetContent::read(Some(&existing), &jwks_key);
        let member_names: BTreeSet<String> = members.keys().cloned().collect();
        let merged = render::merge_without(name, &target, &member_names)?;
        let owners = members.into_values().map(|(_, owner)| owner).collect();
        let mut desired = render::config_map(namespace, &old, &jwks_key, &merged, owners);
        if !render::config_map_is_current(&existing, &desired) {
            render::guard_on(&mut desired.metadata, &existing.metadata);
            let written = config_maps
                .patch(
                    &old,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await?;
            ctx.metrics.api_write("configmap");
            ctx.own_config_maps.record(&written.metadata);
            info!(policy = %name, configmap = %old, "removed this policy's keys from a JWKS ConfigMap it left");
        }
    }
    Ok(())
}

/// Logs a transition, publishes its Event and counts rotations.
async fn announce(
    ctx: &Context,
    policy: &JwtSigningKey,
    namespace: &str,
    name: &str,
    transition: &Transition,
) {
    let (type_, reason, note) = describe(transition);
    info!(policy = %format!("{namespace}/{name}"), reason, "{note}");
    if let Transition::Activated {
        exception,
        requested,
        ..
    } = transition
    {
        let why = match (exception, requested) {
            (Some(plan_exception), _) => match plan_exception {
                crate::ring::ActivationException::FirstKey => "first_key",
                crate::ring::ActivationException::Revocation => "revocation",
                crate::ring::ActivationException::Recovery => "recovery",
            },
            (None, true) => "requested",
            (None, false) => "scheduled",
        };
        ctx.metrics.rotation(namespace, name, why);
    }
    ctx.publish(policy, type_, reason, note).await;
}

/// The Event for a transition: type, reason, note. Kids only, never key material.
fn describe(transition: &Transition) -> (EventType, &'static str, String) {
    use EventType::{Normal, Warning};
    match transition {
        Transition::NextCreated { kid } => (
            Normal,
            "NextKeyCreated",
            format!("generated key {kid}; published in the JWKS, not signing yet"),
        ),
        Transition::Published { kid } => (
            Normal,
            "KeyPublished",
            format!("key {kid} observed in every target JWKS"),
        ),
        Transition::Unpublished { kid, targets } => (
            Warning,
            "KeyUnpublished",
            format!(
                "next key {kid} is missing from {}; its pre-publication starts again",
                targets.join(", ")
            ),
        ),
        Transition::Activated {
            kid,
            exception: Some(exception),
            ..
        } => (
            Warning,
            "KeyActivated",
            format!(
                "key {kid} signs now without full pre-publication ({exception}): verifiers may reject its tokens until the JWKS has propagated"
            ),
        ),
        Transition::Activated {
            kid,
            requested: true,
            ..
        } => (
            Normal,
            "KeyActivated",
            format!("key {kid} signs now (rotation requested by annotation)"),
        ),
        Transition::Activated { kid, .. } => (
            Normal,
            "KeyActivated",
            format!("key {kid} signs now (scheduled rotation)"),
        ),
        Transition::Retired { kid } => (
            Normal,
            "KeyRetired",
            format!(
                "key {kid} retired: private key erased, public key stays in the JWKS until its tokens expire"
            ),
        ),
        Transition::Removed { kid } => (
            Normal,
            "KeyRemoved",
            format!("key {kid} left the JWKS: its last tokens have expired"),
        ),
        Transition::Revoked { kid, state } => (
            Warning,
            "KeyRevoked",
            format!(
                "key {kid} ({}) revoked: removed from the ring and the JWKS",
                match state {
                    KeyState::Next => "Next",
                    KeyState::Active => "Active",
                    KeyState::Retired => "Retired",
                }
            ),
        ),
        Transition::NextReplaced { kid } => (
            Normal,
            "NextKeyReplaced",
            format!("next key {kid} no longer fits the policy and was replaced"),
        ),
        Transition::CertificateIssued { kid } => (
            Normal,
            "CertificateIssued",
            format!("self-signed certificate issued for key {kid}"),
        ),
        Transition::RingRebuilt {
            cause,
            recovered,
            lost,
        } => (
            Warning,
            "RingRebuilt",
            format!(
                "key ring rebuilt ({cause}): {} public key(s) recovered from the JWKS{}",
                recovered.len(),
                if lost.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} could not be recovered: {}",
                        lost.len(),
                        lost.join(", ")
                    )
                }
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_is_clamped() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        assert_eq!(
            requeue_at(Some(now + TimeDelta::milliseconds(10)), now),
            Action::requeue(MIN_REQUEUE)
        );
        assert_eq!(
            requeue_at(Some(now + TimeDelta::seconds(42)), now),
            Action::requeue(Duration::from_secs(42))
        );
        assert_eq!(
            requeue_at(Some(now + TimeDelta::days(3)), now),
            Action::requeue(MAX_REQUEUE)
        );
        assert_eq!(requeue_at(None, now), Action::requeue(MAX_REQUEUE));
        assert_eq!(
            requeue_at(Some(now - TimeDelta::seconds(5)), now),
            Action::requeue(MIN_REQUEUE)
        );
    }

    #[test]
    fn blank_status_means_wiped() {
        assert!(is_blank(None));
        assert!(is_blank(Some(&JwtSigningKeyStatus::default())));
        let with_keys = JwtSigningKeyStatus {
            key_count: Some(0),
            conditions: vec![Condition {
                type_: status::READY.into(),
                status: "False".into(),
                reason: "InvalidSpec".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: status::to_time(DateTime::UNIX_EPOCH),
            }],
            ..JwtSigningKeyStatus::default()
        };
        assert!(!is_blank(Some(&with_keys)));
    }
}
