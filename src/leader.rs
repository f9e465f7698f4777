//! Leader election over a `coordination.k8s.io/v1` Lease.
//!
//! Only the leader writes. Safety does not depend on clocks agreeing between pods:
//!
//! - Every write to the Lease is an update guarded by its `resourceVersion`, so two
//!   candidates can never both succeed in taking it.
//! - A candidate judges the holder's lease expired by its own monotonic clock: a lease
//!   whose record has not changed for `lease_duration` since this candidate *observed* it
//!   is free. It never trusts the `renewTime` written by another machine.
//! - The leader counts its deadline from the moment it *sent* its last successful
//!   renewal, which is before any candidate can have observed that renewal. It steps
//!   down when `renew_deadline` (< `lease_duration`) has passed without a successful
//!   renewal, even while a request is still hanging, and at once when a renewal fails.
//!   So a leader cut off from the API server has stopped writing before any other
//!   replica can take the lease.
//!
//! kube-runtime 5 ships no election helper. `kube-leader-election` targets kube 4, and
//! `kube-lease-manager` keeps reporting leadership while its renewals fail, which would
//! let a partitioned leader keep writing; hence this small module.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Timing and identity of one elector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease shared by every replica.
    pub name: String,
    /// This replica's identity (unique among replicas: the pod name is a good choice).
    pub identity: String,
    /// How long a lease stays valid after its last renewal, as seen by candidates.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// The leader steps down when no renewal has succeeded for this long.
    pub renew_deadline: Duration,
    /// How often a candidate checks the lease, and how long it waits after a failure.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The default timing: 15 s lease, renewal every 5 s, step down after 10 s without one.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Scales the timing to another lease duration, in the default proportions: renew
    /// every third of it, step down after two thirds without a renewal, check every 2/15.
    pub fn with_lease_duration(self, lease_duration: Duration) -> Self {
        Self {
            lease_duration,
            renew_interval: lease_duration / 3,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: (lease_duration * 2 / 15).max(Duration::from_millis(100)),
            ..self
        }
    }

    /// Checks that no timing lets two replicas lead at once.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |why: &str| Err(LeaderError::InvalidConfig(why.to_owned()));
        if self.identity.is_empty() {
            return invalid("identity must not be empty");
        }
        if self.name.is_empty() || self.namespace.is_empty() {
            return invalid("lease name and namespace must not be empty");
        }
        if self.retry_period.is_zero() || self.renew_interval.is_zero() {
            return invalid("renew interval and retry period must be positive");
        }
        if self.renew_interval >= self.renew_deadline {
            return invalid("renew interval must be shorter than the renew deadline");
        }
        if self.renew_deadline >= self.lease_duration {
            return invalid("renew deadline must be shorter than the lease duration");
        }
        if self.lease_duration.as_secs() < 1 || self.lease_duration.as_secs() > i32::MAX as u64 {
            return invalid("lease duration must be a whole number of seconds >= 1");
        }
        Ok(())
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    InvalidConfig(String),
    #[error("leader election task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running elector. Dropping it aborts the election without releasing the lease
/// (like a crash); call [`LeaderElector::shutdown`] to step down and release it.
pub struct LeaderElector {
    leader: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("leader", &*self.leader.borrow())
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// Starts campaigning for the lease in the background.
    pub fn start(client: Client, config: LeaseConfig) -> Result<Self, LeaderError> {
        Self::start_inner(client, config, None)
    }

    /// Like [`LeaderElector::start`], and keeps `metrics` informed: the `keyrotor_leader`
    /// gauge, and standby readiness (a replica that is not leading is ready while its
    /// checks of the Lease succeed).
    pub fn start_with_metrics(
        client: Client,
        config: LeaseConfig,
        metrics: Metrics,
    ) -> Result<Self, LeaderError> {
        Self::start_inner(client, config, Some(metrics))
    }

    fn start_inner(
        client: Client,
        config: LeaseConfig,
        metrics: Option<Metrics>,
    ) -> Result<Self, LeaderError> {
        config.validate()?;
        let (leader_tx, leader) = watch::channel(false);
        let (stop, stop_rx) = oneshot::channel();
        let campaign = Campaign {
            api: Api::namespaced(client, &config.namespace),
            config,
            leader: leader_tx,
            metrics,
            known: None,
            observed: None,
        };
        let task = tokio::spawn(campaign.run(stop_rx));
        Ok(Self {
            leader,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Whether this replica leads right now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// A channel that flips to `true` on acquiring and to `false` on losing the lease.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Steps down (the signal turns `false` first), releases the lease if held so a
    /// standby takes over at once, and waits for the election task to end.
    pub async fn shutdown(mut self) -> Result<(), LeaderError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => Ok(task.await?),
            None => Ok(()),
        }
    }
}

impl Drop for LeaderElector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What one attempt on the lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// This replica holds the lease (acquired or renewed).
    Held,
    /// Another replica holds a lease that has not expired, or won a race for it.
    HeldByOther,
}

/// The last version of the lease this candidate saw, and when it first saw it.
struct Observation {
    resource_version: Option<String>,
    at: Instant,
    /// The lease duration its holder wrote.
    duration: Duration,
}

struct Campaign {
    api: Api<Lease>,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: Option<Metrics>,
    /// The lease as this replica last read or wrote it.
    known: Option<Lease>,
    observed: Option<Observation>,
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

impl Campaign {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let retry = self.config.retry_period;
        // While leading: the instant after which this replica must no longer write.
        let mut leading_until: Option<Instant> = None;
        let mut next_attempt = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(next_attempt) => {}
            }
            let sent = Instant::now();
            let deadline = leading_until.unwrap_or(sent + self.config.renew_deadline);
            let attempt = tokio::select! {
                _ = &mut stop => break,
                result = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()) => result,
            };
            match attempt {
                Ok(Ok(Attempt::Held)) => {
                    if leading_until.is_none() {
                        info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    }
                    leading_until = Some(sent + self.config.renew_deadline);
                    self.set_leader(true);
                    self.report(true, false);
                    next_attempt = sent + self.config.renew_interval;
                }
                Ok(Ok(Attempt::HeldByOther)) => {
                    if leading_until.take().is_some() {
                        warn!(lease = %self.config.name, "lost the lease to another replica");
                    }
                    self.set_leader(false);
                    self.report(false, true);
                    // Check again after the retry period, or right when the holder's
                    // lease expires if that is sooner.
                    next_attempt = (Instant::now() + retry).min(self.other_expires_at());
                }
                Ok(Err(err)) => {
                    if leading_until.take().is_some() {
                        warn!(lease = %self.config.name, error = %err, "lease renewal failed, stepping down");
                    } else {
                        debug!(lease = %self.config.name, error = %err, "lease attempt failed");
                    }
                    self.set_leader(false);
                    self.report(false, false);
                    next_attempt = Instant::now() + retry;
                }
                Err(_elapsed) => {
                    if leading_until.take().is_some() {
                        warn!(lease = %self.config.name, "lease renewal deadline passed, stepping down");
                    }
                    self.set_leader(false);
                    self.report(false, false);
                    next_attempt = Instant::now() + retry;
                }
            }
        }
        let was_leader = *self.leader.borrow();
        self.set_leader(false);
        self.report(false, false);
        if was_leader {
            self.release().await;
        }
    }

    fn set_leader(&self, leader: bool) {
        self.leader.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
    }

    fn report(&self, leader: bool, standby_ready: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.set_leader(leader);
            metrics.set_standby_ready(standby_ready);
        }
    }

    fn now() -> MicroTime {
        MicroTime(Timestamp::now())
    }

    fn lease_seconds(&self) -> i32 {
        // validate() bounds lease_duration to 1..=i32::MAX seconds.
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn holder(lease: &Lease) -> Option<&str> {
        lease
            .spec
            .as_ref()
            .and_then(|spec| spec.holder_identity.as_deref())
            .filter(|holder| !holder.is_empty())
    }

    /// Remembers when this version of the lease was first seen, and whether another
    /// holder's lease has gone unrenewed for its whole duration since then.
    fn observe_and_check_expired(&mut self, lease: &Lease) -> bool {
        let version = lease.metadata.resource_version.clone();
        let duration = lease
            .spec
            .as_ref()
            .and_then(|spec| spec.lease_duration_seconds)
            .and_then(|secs| u64::try_from(secs).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.config.lease_duration);
        let now = Instant::now();
        match &mut self.observed {
            Some(seen) if seen.resource_version == version => seen.duration = duration,
            _ => {
                self.observed = Some(Observation {
                    resource_version: version,
                    at: now,
                    duration,
                })
            }
        }
        self.observed
            .as_ref()
            .is_some_and(|seen| now.duration_since(seen.at) >= seen.duration)
    }

    /// When the lease last observed expires, by this replica's clock.
    fn other_expires_at(&self) -> Instant {
        match &self.observed {
            Some(seen) => seen.at + seen.duration,
            None => Instant::now() + self.config.retry_period,
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        // The leader renews from its cached copy: one request per renewal.
        if let Some(known) = self.known.clone()
            && Self::holder(&known) == Some(self.config.identity.as_str())
        {
            match self.renew(known).await {
                Ok(attempt) => return Ok(attempt),
                Err(err) if is_conflict(&err) => {} // changed behind our back: re-read
                Err(err) => return Err(err),
            }
        }

        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            return self.create().await;
        };
        self.known = Some(lease.clone());
        let expired = self.observe_and_check_expired(&lease);
        match Self::holder(&lease) {
            Some(holder) if holder == self.config.identity => self.renew(lease).await,
            Some(_) if !expired => Ok(Attempt::HeldByOther),
            _ => self.take(lease).await,
        }
    }

    async fn create(&mut self) -> Result<Attempt, kube::Error> {
        let now = Self::now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "keyrotor".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.lease_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                self.known = Some(created);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::HeldByOther),
            Err(err) => Err(err),
        }
    }

    async fn renew(&mut self, mut lease: Lease) -> Result<Attempt, kube::Error> {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(Self::now());
        spec.lease_duration_seconds = Some(self.lease_seconds());
        self.replace(lease).await
    }

    async fn take(&mut self, mut lease: Lease) -> Result<Attempt, kube::Error> {
        let now = Self::now();
        let seconds = self.lease_seconds();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.config.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        match self.replace(lease).await {
            Err(err) if is_conflict(&err) => Ok(Attempt::HeldByOther),
            other => other,
        }
    }

    /// An update guarded by the resourceVersion carried in `lease`.
    async fn replace(&mut self, lease: Lease) -> Result<Attempt, kube::Error> {
        let updated = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        self.known = Some(updated);
        Ok(Attempt::Held)
    }

    /// Gives the lease up so a standby need not wait for it to expire.
    async fn release(&mut self) {
        let Some(mut lease) = self.known.clone() else {
            return;
        };
        if Self::holder(&lease) != Some(self.config.identity.as_str()) {
            return;
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.renew_time = Some(Self::now());
        spec.lease_duration_seconds = Some(1);
        let params = PostParams::default();
        let request = self.api.replace(&self.config.name, &params, &lease);
        match tokio::time::timeout(self.config.retry_period, request).await {
            Ok(Ok(_)) => info!(lease = %self.config.name, "released the lease"),
            Ok(Err(err)) => {
                warn!(lease = %self.config.name, error = %err, "could not release the lease")
            }
            Err(_) => warn!(lease = %self.config.name, "releasing the lease timed out"),
        }
    }
}

/// Runs the future made by `start` only while `leader` is `true`: starts it when the
/// lease is acquired, drops it (cancelling its in-flight requests) the moment the lease
/// is lost, and starts a fresh one on re-acquisition. Returns when `leader`'s sender is
/// gone, or when the work itself ends (its output is returned).
pub async fn while_leader<F, Fut, T>(mut leader: watch::Receiver<bool>, mut start: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    loop {
        if leader.wait_for(|leading| *leading).await.is_err() {
            return None;
        }
        let work = start();
        tokio::select! {
            output = work => return Some(output),
            lost = leader.wait_for(|leading| !*leading) => {
                if lost.is_err() {
                    return None;
                }
            }
        }
    }
}

/// A replica identity: the pod name (from `POD_NAME` or `HOSTNAME`) plus a random
/// suffix, so a restarted container never mistakes its predecessor's lease for its own.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "keyrotor".to_owned());
    let mut suffix = [0u8; 4];
    let random = getrandom::fill(&mut suffix)
        .map(|()| {
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .unwrap_or_else(|_| std::process::id().to_string());
    format!("{host}-{random}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn default_timing_is_valid_and_ordered() {
        let config = LeaseConfig::new("ns", "keyrotor", "pod-a");
        config.validate().unwrap();
        assert!(config.renew_interval < config.renew_deadline);
        assert!(config.renew_deadline < config.lease_duration);
    }

    #[test]
    fn timing_that_could_overlap_two_leaders_is_rejected() {
        let mut config = LeaseConfig::new("ns", "keyrotor", "pod-a");
        config.renew_deadline = config.lease_duration;
        assert!(matches!(
            config.validate(),
            Err(LeaderError::InvalidConfig(_))
        ));

        let mut config = LeaseConfig::new("ns", "keyrotor", "pod-a");
        config.renew_interval = config.renew_deadline;
        assert!(config.validate().is_err());

        let mut config = LeaseConfig::new("ns", "keyrotor", "");
        config.identity.clear();
        assert!(config.validate().is_err());

        let mut config = LeaseConfig::new("ns", "keyrotor", "pod-a");
        config.retry_period = Duration::ZERO;
        assert!(config.validate().is_err());
    }

    #[test]
    fn scaled_timing_keeps_the_default_proportions() {
        let config = LeaseConfig::new("ns", "keyrotor", "pod-a")
            .with_lease_duration(Duration::from_secs(15));
        assert_eq!(config, LeaseConfig::new("ns", "keyrotor", "pod-a"));
        let config = LeaseConfig::new("ns", "keyrotor", "pod-a")
            .with_lease_duration(Duration::from_secs(60));
        assert_eq!(config.renew_interval, Duration::from_secs(20));
        assert_eq!(config.renew_deadline, Duration::from_secs(40));
        config.validate().unwrap();
    }

    /// Sets its flag when dropped: shows that work was cancelled.
    struct DropFlag(Arc<AtomicUsize>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn work_runs_only_while_leading_and_is_cancelled_at_once_on_loss() {
        let (tx, rx) = watch::channel(false);
        let started = Arc::new(AtomicUsize::new(0));
        let cancelled = Arc::new(AtomicUsize::new(0));
        let runner = tokio::spawn({
            let (started, cancelled) = (started.clone(), cancelled.clone());
            while_leader(rx, move || {
                let (started, cancelled) = (started.clone(), cancelled.clone());
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _flag = DropFlag(cancelled);
                    std::future::pending::<()>().await;
                }
            })
        });
        let settle = || tokio::time::sleep(Duration::from_millis(20));
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 0, "started before leading");

        tx.send_replace(true);
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(cancelled.load(Ordering::SeqCst), 0);

        tx.send_replace(false);
        settle().await;
        assert_eq!(
            cancelled.load(Ordering::SeqCst),
            1,
            "work survived the loss"
        );

        tx.send_replace(true);
        settle().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "not restarted on re-acquisition"
        );

        drop(tx);
        assert_eq!(runner.await.unwrap(), None);
        assert_eq!(cancelled.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn work_that_ends_returns_its_output() {
        let (_tx, rx) = watch::channel(true);
        assert_eq!(while_leader(rx, || async { 7 }).await, Some(7));
    }

    #[test]
    fn identities_differ_between_restarts() {
        assert_ne!(default_identity(), default_identity());
    }
}
