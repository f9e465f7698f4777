//! Leader election on the real local control plane: two electors share one Lease.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use keyrotor::leader::{LeaderElector, LeaseConfig};
use keyrotor::metrics::Metrics;
use kube::Client;
use support::TestNamespace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const LEASE: &str = "keyrotor-leader";

/// Short timing so the tests take seconds, with the same proportions as the defaults.
fn fast(namespace: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(6),
        renew_interval: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(4),
        retry_period: Duration::from_millis(500),
        ..LeaseConfig::new(namespace, LEASE, identity)
    }
}

async fn wait_for(elector: &LeaderElector, leader: bool, within: Duration) -> Instant {
    let mut rx = elector.subscribe();
    tokio::time::timeout(within, rx.wait_for(|now| *now == leader))
        .await
        .unwrap_or_else(|_| panic!("elector did not become leader={leader} within {within:?}"))
        .expect("election task alive");
    Instant::now()
}

async fn holder(client: &Client, namespace: &str) -> Option<String> {
    let lease = kube::Api::<Lease>::namespaced(client.clone(), namespace)
        .get(LEASE)
        .await
        .expect("lease exists");
    lease.spec.and_then(|spec| spec.holder_identity)
}

/// Waits until exactly one of two electors (identities "a" and "b") leads and returns
/// (leader, standby, the leader's identity).
async fn elect(a: LeaderElector, b: LeaderElector) -> (LeaderElector, LeaderElector, &'static str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match (a.is_leader(), b.is_leader()) {
            (true, false) => return (a, b, "a"),
            (false, true) => return (b, a, "b"),
            (true, true) => panic!("two leaders at once"),
            (false, false) if Instant::now() > deadline => panic!("no leader within 15 s"),
            (false, false) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn exactly_one_of_two_electors_leads_across_renewals() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "leader-one").await;
    let a = LeaderElector::start(client.clone(), fast(ns.name(), "a")).unwrap();
    let b = LeaderElector::start(client.clone(), fast(ns.name(), "b")).unwrap();
    let (leader, standby, leader_id) = elect(a, b).await;

    // Five renewal periods: the same single leader all along.
    let until = Instant::now() + Duration::from_secs(10);
    let mut samples = 0;
    while Instant::now() < until {
        assert!(
            leader.is_leader(),
            "the leader lost the lease without cause"
        );
        assert!(!standby.is_leader(), "the standby leads too");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(samples > 100);

    // The Lease names the elector that believes it leads.
    let lease = kube::Api::<Lease>::namespaced(client.clone(), ns.name())
        .get(LEASE)
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(leader_id));
    assert_eq!(spec.lease_duration_seconds, Some(6));
    assert!(spec.renew_time.is_some() && spec.acquire_time.is_some());
}

#[tokio::test]
async fn killing_the_leader_hands_over_within_the_lease_duration() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "leader-kill").await;
    let a = LeaderElector::start(client.clone(), fast(ns.name(), "a")).unwrap();
    let b = LeaderElector::start(client.clone(), fast(ns.name(), "b")).unwrap();
    let (leader, standby, _) = elect(a, b).await;
    // Let the standby observe a renewal or two.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let killed = Instant::now();
    drop(leader); // aborts the task: no release, like SIGKILL
    let took_over = wait_for(&standby, true, Duration::from_secs(12)).await;
    let handover = took_over - killed;
    eprintln!("fast timing: handover after kill {handover:?}");
    // The lease was renewed at most renew_interval (2 s) before the kill; the standby saw
    // that renewal within its 0.5 s check period and takes the lease lease_duration (6 s)
    // after seeing it.
    assert!(
        handover <= Duration::from_millis(6_000 + 500 + 1_000),
        "handover took {handover:?}"
    );
    assert!(
        handover >= Duration::from_secs(6) - Duration::from_secs(2),
        "standby took an unexpired lease after {handover:?}"
    );
    assert!(holder(&client, ns.name()).await.is_some());
}

#[tokio::test]
async fn graceful_shutdown_releases_the_lease_at_once() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "leader-release").await;
    let a = LeaderElector::start(client.clone(), fast(ns.name(), "a")).unwrap();
    let b = LeaderElector::start(client.clone(), fast(ns.name(), "b")).unwrap();
    let (leader, standby, _) = elect(a, b).await;
    let mut leader_signal = leader.subscribe();

    let stopped = Instant::now();
    leader.shutdown().await.unwrap();
    assert!(
        !*leader_signal.borrow_and_update(),
        "stepped down before releasing"
    );
    let took_over = wait_for(&standby, true, Duration::from_secs(5)).await;
    eprintln!("handover after release {:?}", took_over - stopped);
    // Far less than the 6 s lease: the standby saw an empty holder on its next check.
    assert!(
        took_over - stopped < Duration::from_millis(2_000),
        "took {:?}",
        took_over - stopped
    );
}

#[tokio::test]
async fn the_elector_reports_leadership_and_standby_readiness_in_metrics() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "leader-metrics").await;
    let (ma, mb) = (Metrics::new(), Metrics::new());
    let a = LeaderElector::start_with_metrics(client.clone(), fast(ns.name(), "a"), ma.clone())
        .unwrap();
    wait_for(&a, true, Duration::from_secs(10)).await;
    let b = LeaderElector::start_with_metrics(client.clone(), fast(ns.name(), "b"), mb.clone())
        .unwrap();
    support::eventually(
        "the standby to be ready",
        Duration::from_secs(5),
        || async { mb.is_ready().then_some(()) },
    )
    .await;
    let leader_gauge = |m: &Metrics| {
        m.render()
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("keyrotor_leader ").map(str::to_owned))
    };
    assert_eq!(leader_gauge(&ma).as_deref(), Some("1"));
    assert_eq!(leader_gauge(&mb).as_deref(), Some("0"));
    // The leader's readiness waits for its controllers' first sync.
    assert!(!ma.is_ready());

    a.shutdown().await.unwrap();
    wait_for(&b, true, Duration::from_secs(5)).await;
    assert_eq!(leader_gauge(&ma).as_deref(), Some("0"));
    assert_eq!(leader_gauge(&mb).as_deref(), Some("1"));
    assert!(
        !mb.is_ready(),
        "a new leader is ready only after its own sync"
    );
}

#[tokio::test]
async fn default_timing_hands_over_within_fifteen_seconds() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "leader-default").await;
    let config = |id: &str| LeaseConfig::new(ns.name(), LEASE, id);
    let a = LeaderElector::start(client.clone(), config("a")).unwrap();
    let b = LeaderElector::start(client.clone(), config("b")).unwrap();
    let (leader, standby, _) = elect(a, b).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    drop(leader);
    let took_over = wait_for(&standby, true, Duration::from_secs(25)).await;
    eprintln!(
        "default timing: handover after kill {:?}",
        took_over - killed
    );
    // 15 s lease after the standby last saw it renewed, which it sees within its 2 s
    // check period.
    assert!(
        took_over - killed <= Duration::from_secs(15 + 2 + 1),
        "handover took {:?}",
        took_over - killed
    );
}

/// A TCP proxy to the API server whose traffic can be frozen, as in a network
/// partition: connections stay open, bytes stop flowing.
struct Partition {
    blocked: watch::Sender<bool>,
    addr: std::net::SocketAddr,
}

impl Partition {
    async fn start(upstream: String) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blocked, _) = watch::channel(false);
        let gate = blocked.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let gate = gate.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    wait_open(&gate).await;
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pipe(in_read, out_write, gate.clone()),
                        pipe(out_read, in_write, gate)
                    );
                });
            }
        });
        Partition { blocked, addr }
    }

    fn block(&self) {
        self.blocked.send_replace(true);
    }

    fn heal(&self) {
        self.blocked.send_replace(false);
    }
}

async fn wait_open(gate: &watch::Receiver<bool>) {
    let mut gate = gate.clone();
    let _ = gate.wait_for(|blocked| !*blocked).await;
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_open(&gate).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_partitioned_leader_steps_down_before_anyone_can_take_over() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "leader-partition").await;

    let mut config = support::client_config().await;
    let upstream = format!(
        "{}:{}",
        config.cluster_url.host().expect("API server host"),
        config.cluster_url.port_u16().unwrap_or(443)
    );
    let partition = Partition::start(upstream).await;
    config.cluster_url = format!("https://{}", partition.addr).parse().unwrap();
    let partitioned_client = Client::try_from(config).unwrap();

    let a = LeaderElector::start(partitioned_client, fast(ns.name(), "a")).unwrap();
    wait_for(&a, true, Duration::from_secs(10)).await;
    let b = LeaderElector::start(client.clone(), fast(ns.name(), "b")).unwrap();
    // The standby has seen the lease held and renewed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.is_leader() && !b.is_leader());

    // Watch both signals from here on, timestamping every change.
    let overlap = Arc::new(AtomicBool::new(false));
    let (a_rx, b_rx) = (a.subscribe(), b.subscribe());
    let watcher = {
        let overlap = overlap.clone();
        tokio::spawn(async move {
            loop {
                if *a_rx.borrow() && *b_rx.borrow() {
                    overlap.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let cut = Instant::now();
    partition.block();
    let a_stepped_down = wait_for(&a, false, Duration::from_secs(8)).await;
    let b_took_over = wait_for(&b, true, Duration::from_secs(12)).await;
    watcher.abort();
    eprintln!(
        "partition: leader stepped down after {:?}, standby took over after {:?}",
        a_stepped_down - cut,
        b_took_over - cut
    );

    assert!(!overlap.load(Ordering::SeqCst), "both electors led at once");
    assert!(
        a_stepped_down < b_took_over,
        "the standby took over before the partitioned leader stepped down"
    );
    // Renewed at most 2 s before the cut, the leader gives up 4 s after that renewal.
    assert!(
        a_stepped_down - cut <= Duration::from_millis(4_000 + 500),
        "partitioned leader kept leading for {:?}",
        a_stepped_down - cut
    );
    assert_eq!(holder(&client, ns.name()).await.as_deref(), Some("b"));

    // Healed, the old leader finds the lease taken and stays a follower.
    partition.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!a.is_leader());
    assert!(b.is_leader());
}

mod chart_support;

/// Activation times (policy status, second precision) of every key seen Active.
fn activations(status: &serde_json::Value) -> Vec<(String, String)> {
    status["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|key| {
                    Some((
                        key["kid"].as_str()?.to_owned(),
                        key["activatedAt"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn parse_time(at: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(at)
        .expect("an RFC 3339 time")
        .to_utc()
}

#[tokio::test]
async fn two_operator_replicas_one_writer_handover_keeps_the_schedule() {
    let admin = support::client().await;
    chart_support::install_crds();
    let release_ns = TestNamespace::new(&admin, "ha").await;
    let watched = TestNamespace::new(&admin, "ha-watched").await;
    let release = format!("kr-{}", release_ns.name());
    let rbac = chart_support::install_rbac(
        &release,
        release_ns.name(),
        &[&format!("watchNamespaces={{{}}}", watched.name())],
    )
    .await;
    let lease_name = "keyrotor-leader";
    let args = [
        format!("--namespace={}", watched.name()),
        "--leader-elect".to_owned(),
        format!("--lease-namespace={}", release_ns.name()),
        format!("--lease-name={lease_name}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // One token each, so the audit log tells the replicas apart.
    let tokens = [rbac.token.clone(), rbac.new_token()];
    let jtis = tokens
        .each_ref()
        .map(|token| chart_support::token_jti(token));
    let mut replicas = ["a", "b"].map(|id| {
        let index = usize::from(id == "b");
        let kubeconfig =
            chart_support::token_kubeconfig(&tokens[index], &format!("{release}-{id}.kubeconfig"));
        chart_support::OperatorProcess::start(&kubeconfig, &format!("{release}-{id}"), &args)
    });

    let interval = Duration::from_secs(20);
    chart_support::apply_policy(
        watched.name(),
        "api-tokens",
        serde_json::json!({
            "rotationInterval": "20s",
            "propagationDelay": "5s",
            "maxTokenLifetime": "5s",
        }),
    );
    support::eventually(
        "the policy to be Ready",
        Duration::from_secs(40),
        || async {
            chart_support::get_policy(&admin, watched.name(), "api-tokens")
                .await
                .filter(chart_support::is_ready)
        },
    )
    .await;

    let leases = kube::Api::<Lease>::namespaced(admin.clone(), release_ns.name());
    let holder = || async {
        leases
            .get_opt(lease_name)
            .await
            .ok()
            .flatten()
            .and_then(|lease| lease.spec?.holder_identity)
    };
    let first_holder = holder().await.expect("a leader holds the lease");
    let leader = usize::from(first_holder.starts_with(&format!("{release}-b-")));
    let standby = 1 - leader;

    // Record every key that becomes active, polling the status.
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let next = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let recorder = tokio::spawn({
        let (admin, ns) = (admin.clone(), watched.name().to_owned());
        let (seen, next) = (seen.clone(), next.clone());
        async move {
            loop {
                if let Some(policy) = chart_support::get_policy(&admin, &ns, "api-tokens").await {
                    let (mut seen, mut next) = (seen.lock().unwrap(), next.lock().unwrap());
                    for (kid, at) in activations(&policy["status"]) {
                        seen.entry(kid).or_insert(at);
                    }
                    if let Some(kid) = policy["status"]["nextKeyID"].as_str() {
                        next.insert(kid.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    // A rotation under the first leader, then a SIGKILL mid-interval.
    tokio::time::sleep(interval + Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    replicas[leader].kill();
    let new_holder = support::eventually(
        "the standby to take the lease",
        Duration::from_secs(25),
        || async { holder().await.filter(|holder| *holder != first_holder) },
    )
    .await;
    let handover = killed_at.elapsed();
    assert!(new_holder.starts_with(&format!("{release}-{}-", ["a", "b"][standby])));
    assert!(
        handover <= Duration::from_secs(15 + 2 + 2),
        "handover took {handover:?}"
    );
    eprintln!("operator handover after SIGKILL: {handover:?}");

    // Two more intervals under the new leader.
    tokio::time::sleep(2 * interval + Duration::from_secs(5)).await;
    recorder.abort();

    // Exactly one writer at a time: before the kill only the first leader wrote.
    let kill_time = chrono::Utc::now() - chrono::Duration::from_std(killed_at.elapsed()).unwrap();
    let writes = |jti: &str| -> Vec<chrono::DateTime<chrono::Utc>> {
        chart_support::audit_events_of(jti)
            .iter()
            .filter(|event| chart_support::is_policy_write(event))
            .filter_map(|event| event["requestReceivedTimestamp"].as_str().map(parse_time))
            .collect()
    };
    let leader_writes = writes(&jtis[leader]);
    let standby_writes = writes(&jtis[standby]);
    assert!(!leader_writes.is_empty(), "the first leader wrote nothing");
    assert!(
        standby_writes.iter().all(|at| *at > kill_time),
        "the standby wrote while the leader was alive"
    );
    assert!(!standby_writes.is_empty(), "the new leader wrote nothing");
    assert!(replicas[standby].running());

    // The schedule was kept: activations 20 s apart, never closer (no early or double
    // rotation), and the one that fell into the handover late by at most its length.
    let seen = seen.lock().unwrap().clone();
    let next = next.lock().unwrap().clone();
    // Every key that became active while we watched had been published as Next first.
    let mut by_time: Vec<_> = seen.iter().map(|(kid, at)| (parse_time(at), kid)).collect();
    by_time.sort();
    for (_, kid) in by_time.iter().skip(1) {
        assert!(
            next.contains(*kid),
            "{kid} became active without being Next"
        );
    }
    let mut times: Vec<_> = seen.values().map(|at| parse_time(at)).collect();
    times.sort();
    eprintln!(
        "writes: first leader {}, new leader {}; activations: {:?}",
        leader_writes.len(),
        standby_writes.len(),
        times
            .iter()
            .map(|t| t.format("%H:%M:%S").to_string())
            .collect::<Vec<_>>()
    );
    assert!(times.len() >= 4, "activations seen: {times:?}");
    let step_floor = chrono::Duration::seconds(20 - 1); // status times have 1 s precision
    let step_ceiling = chrono::Duration::seconds(20 + 19 + 1);
    for pair in times.windows(2) {
        let step = pair[1] - pair[0];
        assert!(
            step >= step_floor && step <= step_ceiling,
            "activations {} apart: {times:?}",
            step.num_seconds()
        );
    }
}

#[tokio::test]
async fn sigterm_on_the_leader_process_hands_over_at_once() {
    let admin = support::client().await;
    chart_support::install_crds();
    let release_ns = TestNamespace::new(&admin, "ha-term").await;
    let watched = TestNamespace::new(&admin, "ha-term-watched").await;
    let release = format!("kr-{}", release_ns.name());
    let rbac = chart_support::install_rbac(
        &release,
        release_ns.name(),
        &[&format!("watchNamespaces={{{}}}", watched.name())],
    )
    .await;
    let kubeconfig = chart_support::token_kubeconfig(&rbac.token, &format!("{release}.kubeconfig"));
    let args = [
        format!("--namespace={}", watched.name()),
        "--leader-elect".to_owned(),
        format!("--lease-namespace={}", release_ns.name()),
        "--lease-name=keyrotor-leader".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut replicas = ["a", "b"].map(|id| {
        chart_support::OperatorProcess::start(&kubeconfig, &format!("{release}-{id}"), &args)
    });

    let leases = kube::Api::<Lease>::namespaced(admin.clone(), release_ns.name());
    let holder = || async {
        leases
            .get_opt("keyrotor-leader")
            .await
            .ok()
            .flatten()
            .and_then(|lease| lease.spec?.holder_identity)
    };
    let first = support::eventually("a leader", Duration::from_secs(20), &holder).await;
    let leader = usize::from(first.starts_with(&format!("{release}-b-")));
    // Both replicas answer /readyz: the leader after its first sync, the standby as a
    // healthy standby.
    for replica in &replicas {
        support::eventually(
            "/readyz on both replicas",
            Duration::from_secs(20),
            || async { matches!(replica.get("/readyz").await, Some((200, _))).then_some(()) },
        )
        .await;
    }
    assert_eq!(replicas[leader].metric("keyrotor_leader").await, Some(1.0));
    assert_eq!(
        replicas[1 - leader].metric("keyrotor_leader").await,
        Some(0.0)
    );

    let stopped = Instant::now();
    assert!(
        replicas[leader].terminate(),
        "the leader did not exit cleanly on SIGTERM"
    );
    let exited = stopped.elapsed();
    let next = support::eventually("the standby to lead", Duration::from_secs(10), || async {
        holder().await.filter(|holder| *holder != first)
    })
    .await;
    let handover = stopped.elapsed();
    eprintln!("SIGTERM: leader exited after {exited:?}, standby held the lease after {handover:?}");
    assert!(next.starts_with(&format!("{release}-{}-", ["a", "b"][1 - leader])));
    // Far below the 15 s lease: the leader released it.
    assert!(
        handover < exited + Duration::from_secs(4),
        "handover took {handover:?}"
    );
    support::eventually("the new leader's gauge", Duration::from_secs(5), || async {
        (replicas[1 - leader].metric("keyrotor_leader").await == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_partitioned_operator_stops_writing_and_its_late_writes_are_refused() {
    let admin = support::client().await;
    chart_support::install_crds();
    let release_ns = TestNamespace::new(&admin, "ha-part").await;
    let watched = TestNamespace::new(&admin, "ha-part-watched").await;
    let release = format!("kr-{}", release_ns.name());
    let rbac = chart_support::install_rbac(
        &release,
        release_ns.name(),
        &[&format!("watchNamespaces={{{}}}", watched.name())],
    )
    .await;
    let args = [
        format!("--namespace={}", watched.name()),
        "--leader-elect".to_owned(),
        format!("--lease-namespace={}", release_ns.name()),
        "--lease-name=keyrotor-leader".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Replica A reaches the API server through a proxy that can freeze.
    let config = support::client_config().await;
    let upstream = format!(
        "{}:{}",
        config.cluster_url.host().expect("API server host"),
        config.cluster_url.port_u16().unwrap_or(443)
    );
    let partition = Partition::start(upstream).await;
    let (token_a, token_b) = (rbac.token.clone(), rbac.new_token());
    let (jti_a, jti_b) = (
        chart_support::token_jti(&token_a),
        chart_support::token_jti(&token_b),
    );
    let kubeconfig_a = chart_support::token_kubeconfig_via(
        &token_a,
        &format!("{release}-a.kubeconfig"),
        Some(&format!("https://{}", partition.addr)),
    );
    let kubeconfig_b =
        chart_support::token_kubeconfig(&token_b, &format!("{release}-b.kubeconfig"));

    let a = chart_support::OperatorProcess::start(&kubeconfig_a, &format!("{release}-a"), &args);
    support::eventually("A to lead", Duration::from_secs(20), || async {
        (a.metric("keyrotor_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let mut b =
        chart_support::OperatorProcess::start(&kubeconfig_b, &format!("{release}-b"), &args);
    // Frequent transitions, so A is often writing when the network freezes.
    chart_support::apply_policy(
        watched.name(),
        "api-tokens",
        serde_json::json!({ "rotationInterval": "10s", "propagationDelay": "3s", "maxTokenLifetime": "3s" }),
    );
    support::eventually(
        "the policy to be Ready",
        Duration::from_secs(30),
        || async {
            chart_support::get_policy(&admin, watched.name(), "api-tokens")
                .await
                .filter(chart_support::is_ready)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;

    let cut = Instant::now();
    partition.block();
    support::eventually("A to step down", Duration::from_secs(12), || async {
        (a.metric("keyrotor_leader").await == Some(0.0)).then_some(())
    })
    .await;
    let stepped_down = cut.elapsed();
    support::eventually("B to lead", Duration::from_secs(25), || async {
        (b.metric("keyrotor_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let took_over = cut.elapsed();
    let took_over_wall = chrono::Utc::now();
    eprintln!(
        "partitioned operator: stepped down after {stepped_down:?}, B led after {took_over:?}"
    );
    // Renewed at most 5 s before the cut, A gives up 10 s after that renewal.
    assert!(
        stepped_down <= Duration::from_secs(10 + 1),
        "A led {stepped_down:?} into the partition"
    );
    assert!(stepped_down < took_over);

    // B rotates on; then the network heals and whatever A had sent arrives late.
    tokio::time::sleep(Duration::from_secs(12)).await;
    partition.heal();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        a.metric("keyrotor_leader").await,
        Some(0.0),
        "A took the lease back"
    );
    assert!(b.running());

    let writes_of = |jti: &str| -> Vec<(chrono::DateTime<chrono::Utc>, i64)> {
        chart_support::audit_events_of(jti)
            .iter()
            .filter(|event| chart_support::is_policy_write(event))
            .filter_map(|event| {
                Some((
                    parse_time(event["requestReceivedTimestamp"].as_str()?),
                    event["responseStatus"]["code"].as_i64()?,
                ))
            })
            .collect()
    };
    let late: Vec<_> = writes_of(&jti_a)
        .into_iter()
        .filter(|(at, _)| *at > took_over_wall)
        .collect();
    // A write of A's that lands after B took over must have been refused (each write
    // carries the resourceVersion it was planned on).
    assert!(
        late.iter().all(|(_, code)| *code >= 400),
        "late writes by the old leader were accepted: {late:?}"
    );
    let b_writes = writes_of(&jti_b);
    assert!(
        b_writes
            .iter()
            .any(|(at, code)| *at > took_over_wall && *code < 300),
        "the new leader wrote nothing"
    );
    eprintln!("late writes of the old leader: {late:?}");
    b.kill();
}

#[tokio::test]
async fn a_refused_renewal_steps_down_at_once_not_at_the_deadline() {
    let admin = support::client().await;
    let ns = TestNamespace::new(&admin, "leader-refused").await;
    let release = format!("kr-{}", ns.name());
    let rbac = chart_support::install_rbac(&release, ns.name(), &["watchNamespaces={}"]).await;
    let client = support::client_with_token(&rbac.token).await;
    // A long deadline, so stepping down at once and at the deadline are far apart.
    let config = LeaseConfig {
        lease_duration: Duration::from_secs(10),
        renew_interval: Duration::from_secs(1),
        renew_deadline: Duration::from_secs(8),
        retry_period: Duration::from_millis(500),
        ..LeaseConfig::new(ns.name(), LEASE, "a")
    };
    let elector = LeaderElector::start(client, config).unwrap();
    wait_for(&elector, true, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(elector.is_leader());

    // Withdraw the right to renew the Lease.
    let revoked = Instant::now();
    support::run_kubectl(&[
        "delete",
        "rolebinding",
        &format!("{release}-keyrotor-leader-election"),
        "--namespace",
        ns.name(),
    ])
    .assert_success("deleting the election RoleBinding");
    let stepped_down = wait_for(&elector, false, Duration::from_secs(10)).await - revoked;
    eprintln!("refused renewal: stepped down after {stepped_down:?}");
    // The next renewal (within 1 s) is refused and the leader steps down then, long
    // before the 8 s deadline.
    assert!(
        stepped_down < Duration::from_secs(3),
        "stepped down after {stepped_down:?}"
    );
}
