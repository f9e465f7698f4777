//! Prometheus metrics and the operator's HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Label values are either a policy's namespace/name or a `&'static str` chosen by the
//! code (error reasons, rotation reasons, object kinds), so nothing derived from key
//! material can ever become a label.
//!
//! Per-policy time gauges are computed at scrape time from the instants the controller
//! reported, so they stay correct in steady state, when no reconcile runs for hours.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Reconcile duration buckets, in seconds: from a no-op reconcile (a few ms) to a slow
/// RSA-4096 generation against a loaded API server.
const RECONCILE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    namespace: String,
    name: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: &'static str,
}

/// What the controller last learned about one policy; the gauges derive from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyGauges {
    /// When the next Next → Active transition is scheduled (none while paused or unknown).
    pub next_rotation: Option<DateTime<Utc>>,
    /// When the current Active key became active.
    pub active_since: Option<DateTime<Utc>>,
    /// How many keys (any state) this policy currently publishes in its JWKS.
    pub keys_published: usize,
}

type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;
type PolicyKey = (String, String);

/// Renders the per-policy gauges on each scrape.
struct PolicyCollector {
    policies: Mutex<BTreeMap<PolicyKey, PolicyGauges>>,
    clock: Clock,
}

impl std::fmt::Debug for PolicyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCollector").finish_non_exhaustive()
    }
}

fn seconds_between(later: DateTime<Utc>, earlier: DateTime<Utc>) -> f64 {
    (later - earlier).num_milliseconds() as f64 / 1000.0
}

fn timestamp_seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

impl PolicyCollector {
    fn encode_gauge_family(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        values: &[(&PolicyKey, f64)],
    ) -> Result<(), std::fmt::Error> {
        // Like the registry's own families: a family with no series is not described.
        if values.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for ((namespace, policy), value) in values {
            let labels = [("namespace", namespace.as_str()), ("name", policy.as_str())];
            ConstGauge::new(*value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for PolicyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = (self.clock)();
        let policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        let next: Vec<_> = policies
            .iter()
            .filter_map(|(key, g)| g.next_rotation.map(|at| (key, at)))
            .collect();
        let active: Vec<_> = policies
            .iter()
            .filter_map(|(key, g)| g.active_since.map(|at| (key, at)))
            .collect();

        Self::encode_gauge_family(
            &mut encoder,
            "policy_next_rotation_timestamp_seconds",
            "Unix time of the policy's next scheduled rotation.",
            &next
                .iter()
                .map(|(key, at)| (*key, timestamp_seconds(*at)))
                .collect::<Vec<_>>(),
        )?;
        Self::encode_gauge_family(
            &mut encoder,
            "policy_seconds_until_next_rotation",
            "Seconds until the policy's next scheduled rotation (negative when overdue).",
            &next
                .iter()
                .map(|(key, at)| (*key, seconds_between(*at, now)))
                .collect::<Vec<_>>(),
        )?;
        Self::encode_gauge_family(
            &mut encoder,
            "policy_active_key_age_seconds",
            "Seconds since the policy's active key started signing.",
            &active
                .iter()
                .map(|(key, at)| (*key, seconds_between(now, *at)))
                .collect::<Vec<_>>(),
        )?;
        Self::encode_gauge_family(
            &mut encoder,
            "policy_keys_published",
            "Number of the policy's public keys in its JWKS.",
            &policies
                .iter()
                .map(|(key, g)| (key, g.keys_published as f64))
                .collect::<Vec<_>>(),
        )?;
        Ok(())
    }
}

struct Inner {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ReasonLabels, Counter>,
    reconcile_duration: Histogram,
    rotations: Family<RotationLabels, Counter>,
    /// Every rotation reason used so far, to find a removed policy's series.
    rotation_reasons: Mutex<BTreeSet<&'static str>>,
    api_writes: Family<WriteLabels, Counter>,
    leader: Gauge,
    policies: Arc<PolicyCollector>,
    ready: AtomicBool,
    standby_ready: AtomicBool,
}

/// The operator's metrics and readiness state; cheap to clone and share.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Times one reconcile: counts it when created, observes its duration when dropped.
#[must_use = "the reconcile is timed until the timer is dropped"]
pub struct ReconcileTimer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Metrics whose time gauges read the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(Utc::now))
    }

    /// Metrics with an injected clock (tests).
    pub fn with_clock(clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>) -> Self {
        let mut registry = Registry::with_prefix("keyrotor");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(RECONCILE_BUCKETS);
        registry.register(
            "reconcile_duration_seconds",
            "Wall time of one reconcile",
            reconcile_duration.clone(),
        );
        let rotations = Family::<RotationLabels, Counter>::default();
        registry.register(
            "rotations",
            "Keys that became active, by policy and reason",
            rotations.clone(),
        );
        let api_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Writes sent to the Kubernetes API, by kind of object",
            api_writes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease, else 0",
            leader.clone(),
        );
        let policies = Arc::new(PolicyCollector {
            policies: Mutex::new(BTreeMap::new()),
            clock,
        });
        registry.register_collector(Box::new(policies.clone()));
        Self {
            inner: Arc::new(Inner {
                registry,
                reconciles,
                reconcile_errors,
                reconcile_duration,
                rotations,
                rotation_reasons: Mutex::new(BTreeSet::new()),
                api_writes,
                leader,
                policies,
                ready: AtomicBool::new(false),
                standby_ready: AtomicBool::new(false),
            }),
        }
    }

    /// Counts a reconcile and times it until the returned timer is dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.inner.reconciles.inc();
        ReconcileTimer {
            histogram: self.inner.reconcile_duration.clone(),
            started: Instant::now(),
        }
    }

    /// Counts a failed reconcile. The reason is a fixed word chosen by the code
    /// (e.g. `"ApiError"`, `"InvalidSpec"`), never a message.
    pub fn reconcile_failed(&self, reason: &'static str) {
        self.inner
            .reconcile_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a key that became active (`reason`: e.g. `"Scheduled"`, `"Requested"`,
    /// `"Revoked"`, `"Initial"`).
    pub fn rotation(&self, namespace: &str, name: &str, reason: &'static str) {
        self.inner
            .rotation_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(reason);
        self.inner
            .rotations
            .get_or_create(&RotationLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                reason,
            })
            .inc();
    }

    /// Counts one write to the API (`kind`: e.g. `"Secret"`, `"ConfigMap"`, `"Status"`,
    /// `"Event"`), so a scrape can prove that steady state writes nothing.
    pub fn api_write(&self, kind: &'static str) {
        self.inner
            .api_writes
            .get_or_create(&WriteLabels { kind })
            .inc();
    }

    /// Records what the last reconcile of a policy learned.
    pub fn set_policy_gauges(&self, namespace: &str, name: &str, gauges: PolicyGauges) {
        self.inner
            .policies
            .policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((namespace.to_owned(), name.to_owned()), gauges);
    }

    /// Forgets a deleted policy, so its series disappear.
    pub fn remove_policy(&self, namespace: &str, name: &str) {
        self.inner
            .policies
            .policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(namespace.to_owned(), name.to_owned()));
        let reasons = self
            .inner
            .rotation_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for reason in reasons {
            self.inner.rotations.remove(&RotationLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                reason,
            });
        }
    }

    /// Reports whether this replica currently holds the leader lease.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Marks the operator ready: its watches have completed their first sync.
    pub fn mark_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// Marks a standby replica ready (or not): it is not leading, so its controllers do
    /// not run, but its last look at the election Lease succeeded. A standby must pass
    /// readiness, or a rolling update would wait forever for the new pod.
    pub fn set_standby_ready(&self, ready: bool) {
        self.inner.standby_ready.store(ready, Ordering::Release);
    }

    /// Ready: the controllers' watches have synced once ([`Metrics::mark_ready`]), or
    /// this replica is a healthy standby ([`Metrics::set_standby_ready`]).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) || self.inner.standby_ready.load(Ordering::Acquire)
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

/// Errors of the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind the metrics address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics server failed: {0}")]
    Serve(std::io::Error),
}

/// The router with `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(metrics)
}

async fn metrics_handler(State(metrics): State<Metrics>) -> Response {
    match metrics.render() {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn readyz_handler(State(metrics): State<Metrics>) -> Response {
    if metrics.is_ready() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first successful watch\n",
        )
            .into_response()
    }
}

/// Binds `addr`, then returns the bound address and a future that serves until
/// `shutdown` resolves. Binding first lets callers ask for port 0.
pub async fn bind(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ServeError>>), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let server = async move {
        axum::serve(listener, router(metrics))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ServeError::Serve)
    };
    Ok((local, server))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (_, server) = bind(addr, metrics, shutdown).await?;
    server.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::atomic::AtomicI64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn fixed_clock(start: DateTime<Utc>) -> (Arc<AtomicI64>, Metrics) {
        let millis = Arc::new(AtomicI64::new(start.timestamp_millis()));
        let read = millis.clone();
        let metrics = Metrics::with_clock(Arc::new(move || {
            Utc.timestamp_millis_opt(read.load(Ordering::SeqCst))
                .single()
                .unwrap_or_default()
        }));
        (millis, metrics)
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap()
    }

    /// The value of the one sample line that starts with `series ` (name plus labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        let prefix = format!("{series} ");
        let mut found = text
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|value| value.parse::<f64>().expect("numeric sample"));
        let value = found.next();
        assert!(found.next().is_none(), "series {series} appears twice");
        value
    }

    #[test]
    fn fresh_registry_describes_unlabelled_metrics_with_zero_values() {
        let text = Metrics::new().render().unwrap();
        for (name, kind) in [
            ("keyrotor_reconciles_total", "counter"),
            ("keyrotor_reconcile_duration_seconds", "histogram"),
            ("keyrotor_leader", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "missing TYPE line for {name} in\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
        assert_eq!(sample(&text, "keyrotor_reconciles_total"), Some(0.0));
        assert_eq!(sample(&text, "keyrotor_leader"), Some(0.0));
        assert_eq!(
            sample(&text, "keyrotor_reconcile_duration_seconds_count"),
            Some(0.0)
        );
        // Labelled families appear with their first series.
        assert!(!text.contains("keyrotor_rotations_total"));
        assert!(!text.contains("keyrotor_policy_keys_published"));
    }

    #[test]
    fn every_family_is_typed_once_it_has_a_series() {
        let (_clock, metrics) = fixed_clock(t0());
        metrics.reconcile_failed("ApiError");
        metrics.rotation("auth", "api-tokens", "Initial");
        metrics.api_write("Status");
        metrics.set_policy_gauges(
            "auth",
            "api-tokens",
            PolicyGauges {
                next_rotation: Some(t0()),
                active_since: Some(t0()),
                keys_published: 2,
            },
        );
        let text = metrics.render().unwrap();
        for (name, kind) in [
            ("keyrotor_reconcile_errors_total", "counter"),
            ("keyrotor_rotations_total", "counter"),
            ("keyrotor_api_writes_total", "counter"),
            ("keyrotor_policy_next_rotation_timestamp_seconds", "gauge"),
            ("keyrotor_policy_seconds_until_next_rotation", "gauge"),
            ("keyrotor_policy_active_key_age_seconds", "gauge"),
            ("keyrotor_policy_keys_published", "gauge"),
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} {kind}\n")).count(),
                1,
                "want one TYPE line for {name} in\n{text}"
            );
        }
    }

    #[test]
    fn reconciles_are_counted_and_timed_and_errors_grouped_by_reason() {
        let metrics = Metrics::new();
        for _ in 0..3 {
            let _timer = metrics.reconcile_started();
        }
        metrics.reconcile_failed("ApiError");
        metrics.reconcile_failed("ApiError");
        metrics.reconcile_failed("InvalidRing");
        let text = metrics.render().unwrap();
        assert_eq!(sample(&text, "keyrotor_reconciles_total"), Some(3.0));
        assert_eq!(
            sample(&text, "keyrotor_reconcile_duration_seconds_count"),
            Some(3.0)
        );
        // Each observation is far below 10 s, so the 10 s bucket holds all three.
        assert_eq!(
            sample(
                &text,
                "keyrotor_reconcile_duration_seconds_bucket{le=\"10\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "keyrotor_reconcile_errors_total{reason=\"ApiError\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "keyrotor_reconcile_errors_total{reason=\"InvalidRing\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn rotations_and_writes_carry_their_labels() {
        let metrics = Metrics::new();
        metrics.rotation("auth", "api-tokens", "Scheduled");
        metrics.rotation("auth", "api-tokens", "Scheduled");
        metrics.rotation("auth", "api-tokens", "Requested");
        metrics.api_write("Secret");
        metrics.api_write("ConfigMap");
        metrics.api_write("Secret");
        metrics.set_leader(true);
        let text = metrics.render().unwrap();
        assert_eq!(
            sample(
                &text,
                "keyrotor_rotations_total{namespace=\"auth\",name=\"api-tokens\",reason=\"Scheduled\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "keyrotor_rotations_total{namespace=\"auth\",name=\"api-tokens\",reason=\"Requested\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "keyrotor_api_writes_total{kind=\"Secret\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "keyrotor_api_writes_total{kind=\"ConfigMap\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "keyrotor_leader"), Some(1.0));
    }

    #[test]
    fn policy_gauges_follow_the_clock_without_new_reports() {
        let (clock, metrics) = fixed_clock(t0());
        metrics.set_policy_gauges(
            "auth",
            "api-tokens",
            PolicyGauges {
                next_rotation: Some(t0() + chrono::Duration::hours(1)),
                active_since: Some(t0() - chrono::Duration::seconds(120)),
                keys_published: 3,
            },
        );
        let labels = "{namespace=\"auth\",name=\"api-tokens\"}";
        let until = format!("keyrotor_policy_seconds_until_next_rotation{labels}");
        let age = format!("keyrotor_policy_active_key_age_seconds{labels}");
        let text = metrics.render().unwrap();
        assert_eq!(sample(&text, &until), Some(3600.0));
        assert_eq!(sample(&text, &age), Some(120.0));
        assert_eq!(
            sample(&text, &format!("keyrotor_policy_keys_published{labels}")),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("keyrotor_policy_next_rotation_timestamp_seconds{labels}")
            ),
            Some((t0().timestamp() + 3600) as f64)
        );

        // 90.5 s later, with no reconcile in between.
        clock.fetch_add(90_500, Ordering::SeqCst);
        let text = metrics.render().unwrap();
        assert_eq!(sample(&text, &until), Some(3509.5));
        assert_eq!(sample(&text, &age), Some(210.5));

        // Past the deadline the gauge goes negative: the rotation is overdue.
        clock.fetch_add(3_600_000, Ordering::SeqCst);
        let text = metrics.render().unwrap();
        assert_eq!(sample(&text, &until), Some(-90.5));
    }

    #[test]
    fn paused_policy_has_no_next_rotation_series_and_removal_drops_all_series() {
        let (_clock, metrics) = fixed_clock(t0());
        metrics.set_policy_gauges(
            "auth",
            "paused",
            PolicyGauges {
                next_rotation: None,
                active_since: Some(t0()),
                keys_published: 1,
            },
        );
        metrics.set_policy_gauges("other", "kept", PolicyGauges::default());
        metrics.rotation("auth", "paused", "Initial");
        let text = metrics.render().unwrap();
        assert!(!text.contains("keyrotor_policy_seconds_until_next_rotation{namespace=\"auth\""));
        assert_eq!(
            sample(
                &text,
                "keyrotor_policy_keys_published{namespace=\"auth\",name=\"paused\"}"
            ),
            Some(1.0)
        );

        metrics.remove_policy("auth", "paused");
        let text = metrics.render().unwrap();
        assert!(
            !text.contains("name=\"paused\""),
            "removed policy still rendered:\n{text}"
        );
        assert_eq!(
            sample(
                &text,
                "keyrotor_policy_keys_published{namespace=\"other\",name=\"kept\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn a_healthy_standby_is_ready_before_any_sync() {
        let metrics = Metrics::new();
        assert!(!metrics.is_ready());
        metrics.set_standby_ready(true);
        assert!(metrics.is_ready());
        // Became leader: ready again only once its own watches have synced.
        metrics.set_standby_ready(false);
        assert!(!metrics.is_ready());
        metrics.mark_ready();
        assert!(metrics.is_ready());
    }

    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn endpoints_serve_metrics_health_and_readiness() {
        let metrics = Metrics::new();
        metrics.api_write("Secret");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, server) = bind("127.0.0.1:0".parse().unwrap(), metrics.clone(), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        let server = tokio::spawn(server);

        let (status, _, body) = http_get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        let (status, _, body) = http_get(addr, "/readyz").await;
        assert_eq!(status, 503, "ready before mark_ready: {body}");
        metrics.mark_ready();
        let (status, _, _) = http_get(addr, "/readyz").await;
        assert_eq!(status, 200);

        let (status, head, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert_eq!(
            sample(&body, "keyrotor_api_writes_total{kind=\"Secret\"}"),
            Some(1.0)
        );

        let (status, _, _) = http_get(addr, "/nothing").await;
        assert_eq!(status, 404);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
