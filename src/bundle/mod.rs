//! The JwksBundle controller: publishes the merged public keys of the selected
//! JwtSigningKeys (and static public JWKs) as one ConfigMap in every namespace the
//! bundle's `namespaceSelector` picks.
//!
//! - Gather: the bundle, the selected policies and the namespaces from watch caches;
//!   each selected policy's own JWKS ConfigMap read fresh (the keys it attributes to the
//!   policy: Next, Active and not yet removed Retired keys), and each target ConfigMap
//!   read fresh before it is written.
//! - Decide ([`plan`], pure): the merged JWKS (the same deterministic rendering as a
//!   policy's own ConfigMap), whose each existing ConfigMap is, the status.
//! - Apply: create or update the bundle's ConfigMaps (a ConfigMap of the target name
//!   that keyrotor did not create for this bundle is never written and is reported),
//!   delete the bundle's ConfigMaps in namespaces that are no longer selected, then the
//!   status. A finalizer removes every ConfigMap of the bundle before it goes.
//! - Report: the Events [`plan::events`] derives from the status before and after
//!   (`Published`, `Unpublished`, a Warning when a problem appears), on the bundle (a
//!   cluster-scoped object: they land in the `default` namespace).
//!
//! The status lists the kids present in every published ConfigMap; the policy
//! controller reads it (see [`plan::policy_targets`]) so that a policy's Next key
//! becomes Active only after it has been in every bundle target for
//! `propagationDelay`.

pub mod api;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::JwtSigningKey;
use crate::controller::render::{self, FIELD_MANAGER, MANAGED_SELECTOR, TargetContent};
use crate::jwks::{JwksError, JwksSource};
use crate::metrics::Metrics;
use api::{JwksBundle, JwksBundleStatus};
use plan::{BUNDLE_LABEL, BundleEvent, FINALIZER, Outcome, Ownership, Problem, STATIC_SOURCE};

/// How soon to look again at a bundle with a problem (a foreign ConfigMap is not
/// watched, so its removal is noticed this way).
const PROBLEM_REQUEUE: Duration = Duration::from_secs(30);
/// Safety net against a missed watch event.
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// Target ConfigMaps written at once.
const WRITE_CONCURRENCY: usize = 8;

/// Why a bundle reconcile failed. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the JwksBundle has no {0}")]
    MissingField(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// The `reason` label of the reconcile errors metric (the policy controller's words).
    fn metric_reason(&self) -> &'static str {
        match self {
            // 422: the finalizer patch's test saw a newer object.
            Error::Kube(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => "conflict",
            Error::Kube(_) => "api",
            Error::MissingField(_) | Error::Finalizer(_) => "invalid_object",
        }
    }
}

/// The status last written per bundle, with the resourceVersion it was based on.
struct WrittenStatus {
    based_on: Option<String>,
    status: JwksBundleStatus,
}

/// Shared state of the bundle controller.
pub struct Context {
    client: Client,
    reporter: Reporter,
    metrics: Metrics,
    policies: Store<JwtSigningKey>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    written_status: Mutex<HashMap<String, WrittenStatus>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A watcher of every JwksBundle in the cluster feeding `writer`: the policy
/// controller's view of which bundles publish its keys.
pub fn bundle_stream(
    client: Client,
    writer: reflector::store::Writer<JwksBundle>,
) -> impl futures::Stream<Item = Result<JwksBundle, watcher::Error>> + Send + 'static {
    let bundles: Api<JwksBundle> = Api::all(client);
    watcher(bundles, watcher::Config::default())
        .default_backoff()
        .modify(|bundle| bundle.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects()
}

/// The policies a bundle event concerns (for the policy controller).
pub fn selected_policies(
    policies: &Store<JwtSigningKey>,
    bundle: &JwksBundle,
) -> Vec<ObjectRef<JwtSigningKey>> {
    policies
        .state()
        .iter()
        .filter(|p| {
            let namespace = p.namespace().unwrap_or_default();
            plan::selects_policy(&bundle.spec, &namespace, &p.name_any(), p.labels())
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

fn all_bundles(bundles: &Store<JwksBundle>) -> Vec<ObjectRef<JwksBundle>> {
    bundles
        .state()
        .iter()
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// Runs the bundle controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let bundles: Api<JwksBundle> = Api::all(client.clone());
    let policies: Api<JwtSigningKey> = Api::all(client.clone());
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let config_maps: Api<PartialObjectMeta<ConfigMap>> = Api::all(client.clone());

    let (bundle_reader, bundle_writer) = reflector::store();
    let (policy_reader, policy_writer) = reflector::store();
    let (namespace_reader, namespace_writer) = reflector::store();
    let (config_map_reader, config_map_writer) = reflector::store();

    let bundle_stream = watcher(bundles, watcher::Config::default())
        .default_backoff()
        .modify(|bundle| bundle.managed_fields_mut().clear())
        .reflect(bundle_writer)
        .applied_objects();
    let policy_stream = watcher(policies, watcher::Config::default())
        .default_backoff()
        .modify(|policy| policy.managed_fields_mut().clear())
        .reflect(policy_writer)
        .touched_objects();
    let namespace_stream = watcher(namespaces, watcher::Config::default())
        .default_backoff()
        .modify(|namespace| namespace.managed_fields_mut().clear())
        .reflect(namespace_writer)
        .touched_objects();
    let config_map_stream = watcher(
        config_maps,
        watcher::Config::default().labels(MANAGED_SELECTOR),
    )
    .default_backoff()
    .modify(|config_map| config_map.managed_fields_mut().clear())
    .reflect(config_map_writer)
    .touched_objects();

    let context = Arc::new(Context {
        client,
        reporter: crate::controller::reporter(),
        metrics,
        policies: policy_reader.clone(),
        namespaces: namespace_reader,
        config_maps: config_map_reader,
        written_status: Mutex::default(),
    });

    let for_policies = bundle_reader.clone();
    let for_namespaces = bundle_reader.clone();
    let for_config_maps = bundle_reader.clone();
    let policy_store = policy_reader.clone();
    Controller::for_stream(bundle_stream, bundle_reader)
        // A policy that changed (keys, labels, deletion) may join or leave any bundle
        // with a selector: look at all of them (bundles are few).
        .watches_stream(policy_stream, move |_policy| all_bundles(&for_policies))
        .watches_stream(namespace_stream, move |_namespace| {
            all_bundles(&for_namespaces)
        })
        .watches_stream(config_map_stream, move |config_map| {
            config_map_bundles(&for_config_maps, &policy_store, &config_map)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(bundle = %object, "reconciled"),
                Err(e) => debug!(error = %e, "bundle reconcile did not complete"),
            }
        })
        .await;
}

/// The bundles a ConfigMap event concerns: the bundle it belongs to, or the bundles
/// selecting a policy that publishes to it.
fn config_map_bundles(
    bundles: &Store<JwksBundle>,
    policies: &Store<JwtSigningKey>,
    config_map: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<JwksBundle>> {
    if let Some(owner) = config_map
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(BUNDLE_LABEL))
    {
        return vec![ObjectRef::new(owner)];
    }
    let namespace = config_map.metadata.namespace.clone().unwrap_or_default();
    let name = config_map.metadata.name.clone().unwrap_or_default();
    let publishers: Vec<Arc<JwtSigningKey>> = policies
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| {
            p.spec
                .resolve(&p.name_any())
                .is_ok_and(|r| r.config_map_name == name)
        })
        .collect();
    bundles
        .state()
        .iter()
        .filter(|b| {
            publishers
                .iter()
                .any(|p| plan::selects_policy(&b.spec, &namespace, &p.name_any(), p.labels()))
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

fn error_policy(bundle: Arc<JwksBundle>, error: &Error, ctx: Arc<Context>) -> Action {
    let code = match error {
        Error::Kube(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    };
    if code == Some(404) && bundle.metadata.deletion_timestamp.is_some() {
        // Gone while its deletion was being finished.
        return Action::await_change();
    }
    ctx.metrics.reconcile_failed(error.metric_reason());
    warn!(bundle = %bundle.name_any(), error = %error, "bundle reconcile failed");
    // 409: a write raced ours; 422: the finalizer patch's test saw a newer object.
    let conflict = matches!(code, Some(409 | 422));
    Action::requeue(if conflict {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    })
}

async fn reconcile(bundle: Arc<JwksBundle>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    // Decisions need the complete picture of policies, namespaces and ConfigMaps: look
    // again shortly rather than wait here.
    let ready = |store: Option<()>| store.is_some();
    let synced = [
        ready(
            ctx.policies
                .wait_until_ready()
                .now_or_never()
                .and_then(Result::ok),
        ),
        ready(
            ctx.namespaces
                .wait_until_ready()
                .now_or_never()
                .and_then(Result::ok),
        ),
        ready(
            ctx.config_maps
                .wait_until_ready()
                .now_or_never()
                .and_then(Result::ok),
        ),
    ];
    if synced.contains(&false) {
        debug!(bundle = %bundle.name_any(), ?synced, "caches not synced yet");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let api: Api<JwksBundle> = Api::all(ctx.client.clone());
    // The finalizer helper patches the bundle itself to add or remove the finalizer.
    let has_finalizer = bundle.finalizers().iter().any(|f| f == FINALIZER);
    let patches_bundle = match (has_finalizer, bundle.metadata.deletion_timestamp.is_some()) {
        (false, false) => true, // adds it, before the first apply
        (true, true) => true,   // removes it, after the cleanup
        _ => false,
    };
    let result = finalizer::finalizer(&api, FINALIZER, bundle, |event| async {
        match event {
            Finalizer::Apply(bundle) => apply(&bundle, &ctx).await,
            Finalizer::Cleanup(bundle) => cleanup(&bundle, &ctx).await,
        }
    })
    .await;
    if patches_bundle && result.is_ok() {
        ctx.metrics.api_write("jwksbundle");
    }
    result.map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::Finalizer(other.to_string()),
    })
}

/// Deletes every ConfigMap of the bundle, in every namespace (a fresh list, not the
/// cache), and nothing else.
async fn cleanup(bundle: &JwksBundle, ctx: &Context) -> Result<Action, Error> {
    let name = bundle.name_any();
    let all: Api<ConfigMap> = Api::all(ctx.client.clone());
    let selector = format!("{MANAGED_SELECTOR},{BUNDLE_LABEL}={name}");
    let listed = all
        .list_metadata(&ListParams::default().labels(&selector))
        .await?;
    for config_map in listed.items {
        if plan::ownership(Some(&config_map.metadata), &name) != Ownership::Ours {
            continue;
        }
        delete_config_map(ctx, &config_map).await?;
    }
    info!(bundle = %name, "bundle deleted: its ConfigMaps are gone");
    Ok(Action::await_change())
}

async fn delete_config_map(
    ctx: &Context,
    config_map: &PartialObjectMeta<ConfigMap>,
) -> Result<(), Error> {
    let (Some(namespace), Some(name)) = (
        config_map.metadata.namespace.as_deref(),
        config_map.metadata.name.as_deref(),
    ) else {
        return Ok(());
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let preconditions = Preconditions {
        uid: config_map.metadata.uid.clone(),
        resource_version: None,
    };
    match api
        .delete(name, &DeleteParams::default().preconditions(preconditions))
        .await
    {
        Ok(_) => {
            ctx.metrics.api_write("configmap");
            info!(configmap = %format!("{namespace}/{name}"), "deleted a bundle ConfigMap");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads the keys a policy publishes, from its own JWKS ConfigMap (public keys only,
/// the ones the ConfigMap attributes to the policy).
async fn policy_keys(
    ctx: &Context,
    policy: &JwtSigningKey,
) -> Result<Vec<crate::keys::PublicJwk>, Error> {
    let (Some(namespace), name) = (policy.namespace(), policy.name_any()) else {
        return Ok(Vec::new());
    };
    let Ok(resolved) = policy.spec.resolve(&name) else {
        return Ok(Vec::new());
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(existing) = api.get_opt(&resolved.config_map_name).await? else {
        return Ok(Vec::new());
    };
    if !render::is_managed(&existing.metadata) || plan::is_bundle_config_map(&existing.metadata) {
        return Ok(Vec::new());
    }
    Ok(TargetContent::read(Some(&existing), &resolved.jwks_key).keys_of(&name, false))
}

async fn policy_source(ctx: &Context, policy: Arc<JwtSigningKey>) -> Result<JwksSource, Error> {
    let keys = policy_keys(ctx, &policy).await?;
    Ok(JwksSource {
        name: format!(
            "{}/{}",
            policy.namespace().unwrap_or_default(),
            policy.name_any()
        ),
        keys,
    })
}

/// What happened in one target namespace.
enum Written {
    Published,
    Conflict(String),
}

async fn apply(bundle: &JwksBundle, ctx: &Context) -> Result<Action, Error> {
    let name = bundle.name_any();
    let spec = &bundle.spec;
    let mut problems: Vec<Problem> = Vec::new();

    // Gather: the target namespaces.
    let targets: Result<BTreeSet<String>, plan::SelectorError> = ctx
        .namespaces
        .state()
        .iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .filter_map(|ns| {
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            match plan::selects_namespace(spec, &labels) {
                Ok(true) => ns.metadata.name.clone().map(Ok),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .collect();

    // Gather: the sources.
    let mut sources: Vec<JwksSource> = Vec::new();
    let policies = ctx.policies.state();
    for (index, source) in spec.sources.iter().enumerate() {
        if let Some(text) = &source.static_keys {
            match plan::parse_static_keys(text) {
                Ok(keys) => sources.push(JwksSource {
                    name: STATIC_SOURCE.to_owned(),
                    keys,
                }),
                Err(e) => problems.push(Problem::new(
                    "InvalidStaticKeys",
                    format!("spec.sources[{index}].staticKeys: {e}; not published"),
                )),
            }
        }
        if let Some(selector) = &source.selector
            && let Err(e) = kube::core::Selector::try_from(selector.clone())
        {
            problems.push(Problem::new(
                "InvalidSelector",
                format!("spec.sources[{index}].selector: {e}"),
            ));
        }
        if let (Some(namespace), Some(policy)) = (&source.namespace, &source.name) {
            let found = policies.iter().any(|p| {
                p.namespace().as_deref() == Some(namespace.as_str())
                    && p.name_any() == *policy
                    && p.metadata.deletion_timestamp.is_none()
            });
            if !found {
                problems.push(Problem::new(
                    "SourceMissing",
                    format!("JwtSigningKey {namespace}/{policy} does not exist"),
                ));
            }
        }
    }
    let mut selected: Vec<&Arc<JwtSigningKey>> = policies
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let namespace = p.namespace().unwrap_or_default();
            plan::selects_policy(spec, &namespace, &p.name_any(), p.labels())
        })
        .collect();
    selected.sort_by_key(|p| (p.namespace(), p.name_any()));
    let reads: Vec<_> = selected
        .iter()
        .map(|policy| policy_source(ctx, Arc::clone(policy)))
        .collect();
    let read = futures::stream::iter(reads)
        .buffered(WRITE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    sources.extend(read.into_iter().filter(|s| !s.keys.is_empty()));

    // Decide: the document.
    let merged = match plan::render(&sources) {
        Ok(merged) => Some(merged),
        Err(JwksError::TooLarge { keys, size, limit }) => {
            problems.push(Problem::new(
                "JwksTooLarge",
                format!(
                    "the bundle would hold {keys} keys in {size} bytes, over the {limit}-byte limit; not written"
                ),
            ));
            None
        }
        Err(e) => {
            problems.push(Problem::new("InvalidSpec", e.to_string()));
            None
        }
    };
    let targets = match targets {
        Ok(targets) => Some(targets),
        Err(e) => {
            problems.push(Problem::new(
                "InvalidSpec",
                format!("spec.target.namespaceSelector: {e}"),
            ));
            None
        }
    };

    // Apply: every target ConfigMap.
    let mut published = BTreeSet::new();
    let mut conflicts = BTreeSet::new();
    if let (Some(merged), Some(targets)) = (&merged, &targets) {
        let writes: Vec<_> = targets
            .iter()
            .cloned()
            .map(|namespace| write_target(ctx, bundle, &name, namespace, merged))
            .collect();
        let results = futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let mut foreign = Vec::new();
        for (namespace, outcome) in results {
            match outcome {
                Written::Published => {
                    published.insert(namespace);
                }
                Written::Conflict(why) => {
                    foreign.push(format!(
                        "ConfigMap {namespace}/{} {why}",
                        spec.target.config_map.name
                    ));
                    conflicts.insert(namespace);
                }
            }
        }
        if !foreign.is_empty() {
            foreign.sort();
            problems.push(Problem::new(
                "ConfigMapConflict",
                format!("{}; keyrotor will not overwrite it", foreign.join(", ")),
            ));
        }
    }

    // Apply: remove the bundle's ConfigMaps where it no longer publishes.
    if let Some(targets) = &targets {
        let stale: Vec<PartialObjectMeta<ConfigMap>> = ctx
            .config_maps
            .state()
            .iter()
            .filter(|cm| plan::ownership(Some(&cm.metadata), &name) == Ownership::Ours)
            .filter(|cm| {
                !cm.metadata
                    .namespace
                    .as_ref()
                    .is_some_and(|ns| targets.contains(ns))
                    || cm.metadata.name.as_deref() != Some(spec.target.config_map.name.as_str())
            })
            .map(|cm| cm.as_ref().clone())
            .collect();
        for config_map in &stale {
            delete_config_map(ctx, config_map).await?;
        }
    }

    // Apply: the status.
    problems.sort_by_key(|p| problem_rank(p.reason));
    // Without the target namespaces nothing was written: the previous keys and
    // namespaces stand (crediting the new document would let a policy count keys as
    // published that no ConfigMap holds).
    let written = merged.as_ref().filter(|_| targets.is_some());
    let credited = written.map(|m| {
        let order: Vec<String> = crate::jwks::parse(&m.document)
            .map(|d| d.public_jwks().into_iter().map(|k| k.kid).collect())
            .unwrap_or_default();
        plan::credited_kids(&order, m)
    });
    let outcome = Outcome {
        merged: credited,
        published,
        conflicts,
        problems,
    };
    let current = current_status(ctx, bundle);
    // After the writes: a key's publication time is never earlier than its writes.
    let now = Utc::now();
    let desired = plan::status(bundle.metadata.generation, current.as_ref(), &outcome, now);
    let events = plan::events(
        current.as_ref(),
        &outcome,
        &desired,
        &spec.target.config_map.name,
    );
    if current.as_ref() != Some(&desired) {
        write_status(ctx, bundle, &name, desired).await?;
    }

    // Report: after the status, so a failed write tells nothing and its retry tells
    // all; together, so a busy API server delays the next reconcile by one round trip.
    futures::future::join_all(events.iter().map(|event| publish(ctx, bundle, event))).await;
    Ok(Action::requeue(if outcome.problems.is_empty() {
        MAX_REQUEUE
    } else {
        PROBLEM_REQUEUE
    }))
}

/// Publishes one Event on the bundle. A failure is logged, not retried: the status
/// holds the same facts.
async fn publish(ctx: &Context, bundle: &JwksBundle, event: &BundleEvent) {
    use kube::Resource;
    let (type_, log_as_warning) = match event.severity {
        plan::Severity::Normal => (EventType::Normal, false),
        plan::Severity::Warning => (EventType::Warning, true),
    };
    let name = bundle.name_any();
    if log_as_warning {
        warn!(bundle = %name, reason = event.reason, "{}", event.note);
    } else {
        info!(bundle = %name, reason = event.reason, "{}", event.note);
    }
    let kube_event = KubeEvent {
        type_,
        reason: event.reason.to_owned(),
        note: Some(event.note.clone()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    // A fresh recorder per Event, as for policies: the recorder's series
    // de-duplication ignores the note.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    match recorder.publish(&kube_event, &bundle.object_ref(&())).await {
        Ok(()) => ctx.metrics.api_write("event"),
        Err(e) => {
            warn!(bundle = %name, reason = event.reason, error = %e, "could not publish an Event");
        }
    }
}

/// Order of reasons in the conditions: the most serious first.
fn problem_rank(reason: &str) -> u8 {
    match reason {
        "InvalidSpec" => 0,
        "JwksTooLarge" => 1,
        "ConfigMapConflict" => 2,
        "SourceMissing" => 3,
        _ => 4,
    }
}

async fn write_target(
    ctx: &Context,
    bundle: &JwksBundle,
    name: &str,
    namespace: String,
    merged: &crate::jwks::MergedJwks,
) -> Result<(String, Written), Error> {
    let written = write_target_in(ctx, bundle, name, &namespace, merged).await?;
    Ok((namespace, written))
}

async fn write_target_in(
    ctx: &Context,
    bundle: &JwksBundle,
    name: &str,
    namespace: &str,
    merged: &crate::jwks::MergedJwks,
) -> Result<Written, Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let config_map_name = &bundle.spec.target.config_map.name;
    let existing = api.get_opt(config_map_name).await?;
    let desired = plan::config_map(bundle, namespace, merged);
    match plan::ownership(existing.as_ref().map(|c| &c.metadata), name) {
        Ownership::Foreign(why) => Ok(Written::Conflict(why.to_owned())),
        Ownership::Absent => {
            // A create, not an apply: should a ConfigMap of this name appear meanwhile,
            // the create fails instead of taking it over.
            api.create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                },
                &desired,
            )
            .await?;
            ctx.metrics.api_write("configmap");
            debug!(bundle = %name, namespace, "bundle ConfigMap created");
            Ok(Written::Published)
        }
        Ownership::Ours => {
            let Some(existing) = existing else {
                return Ok(Written::Published);
            };
            if !plan::config_map_is_current(&existing, &desired) {
                let mut desired = desired;
                crate::controller::render::guard_on(&mut desired.metadata, &existing.metadata);
                api.patch(
                    config_map_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await?;
                ctx.metrics.api_write("configmap");
                debug!(bundle = %name, namespace, "bundle ConfigMap updated");
            }
            Ok(Written::Published)
        }
    }
}

fn current_status(ctx: &Context, bundle: &JwksBundle) -> Option<JwksBundleStatus> {
    let written = lock(&ctx.written_status);
    match written.get(&bundle.name_any()) {
        Some(w) if w.based_on.is_some() && w.based_on == bundle.metadata.resource_version => {
            Some(w.status.clone())
        }
        _ => bundle.status.clone(),
    }
}

async fn write_status(
    ctx: &Context,
    bundle: &JwksBundle,
    name: &str,
    status: JwksBundleStatus,
) -> Result<(), Error> {
    use kube::Resource;
    let api: Api<JwksBundle> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": JwksBundle::api_version(&()),
        "kind": JwksBundle::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.api_write("status");
    let mut written = lock(&ctx.written_status);
    written.insert(
        name.to_owned(),
        WrittenStatus {
            based_on: bundle.metadata.resource_version.clone(),
            status,
        },
    );
    Ok(())
}

/// Keys of the bundles' own status that name each kid's source, for tests and tools.
pub fn kids_by_source(status: &JwksBundleStatus) -> BTreeMap<String, Vec<String>> {
    let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in &status.keys {
        by_source
            .entry(key.source.clone())
            .or_default()
            .push(key.kid.clone());
    }
    by_source
}
