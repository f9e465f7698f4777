//! `make bench`: what keyrotor costs at scale on the local control plane.
//!
//! Runs only with `--bench` (as `cargo bench` passes it); `cargo test --all-targets`
//! just builds it. Needs the control plane (`tests/run` starts one for `make bench`)
//! and the release operator binary (`target/release/keyrotor`, or `$KEYROTOR_BIN`).
//!
//! Phases, all in one run so every number shares the machine's conditions:
//! 1. floor: the API server's own write rate for plain creates of Secrets and
//!    ConfigMaps at a few concurrencies; the best rate sets the floor.
//! 2. convergence: N policies created at once (N = 100, 1,000), timed until each is
//!    Ready with its Secret and JWKS written; the operator's writes counted in the
//!    audit log give the writes per policy, and so the floor time.
//! 3. steady state: two quiet minutes with 1,000 policies and nothing due.
//! 4. rotation storm: every policy asked to rotate at the same instant.
//! 5. memory: fresh operator starts with 1,000 policies, without and with 10,000
//!    unrelated 32 KiB Secrets in the cluster.
//! 6. convergence of 5,000 policies, when the run so far leaves time for it.
//!
//! Prints a table and writes `target/bench/results.json`.

#[path = "../support/mod.rs"]
mod support;

mod audit;
mod operator;
mod report;
mod workload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use kube::Client;

use audit::{AuditLog, Filter};
use operator::{Memory, Operator};
use report::{Convergence, MemoryProbe, Report, SteadyState, Storm};
use workload::{Identity, ReadyTracker, WriteRate};

/// Requests in flight for the floor and for the bench's own creates.
const FLOOR_CONCURRENCIES: [usize; 3] = [4, 8, 16];
const FLOOR_WRITES: usize = 1000;
const CREATE_CONCURRENCY: usize = 16;
const STEADY_WINDOW: Duration = Duration::from_secs(120);
const UNRELATED_SECRETS: usize = 10_000;
const UNRELATED_SECRET_BYTES: usize = 32 * 1024;
/// The whole run should stay near this; 5,000 policies run only if they fit.
const DEFAULT_BUDGET: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "cluster bench: not run here (it needs the control plane and ~10 minutes): `make bench`"
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cluster bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn progress(started: Instant, message: impl std::fmt::Display) {
    eprintln!(
        "bench [{:>5.1}s] {message}",
        started.elapsed().as_secs_f64()
    );
}

struct Bench {
    client: Client,
    audit: AuditLog,
    identity: Identity,
    binary: PathBuf,
    log: PathBuf,
    started: Instant,
}

impl Bench {
    fn progress(&self, message: impl std::fmt::Display) {
        progress(self.started, message);
    }

    fn operator_filter<'a>(
        &'a self,
        namespace: Option<&'a str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Filter<'a> {
        Filter {
            username: &self.identity.username,
            namespace,
            from,
            to,
        }
    }

    /// Waits until the operator has made no write in `namespace` for `quiet`; returns
    /// that moment.
    async fn wait_quiet(
        &mut self,
        namespace: Option<&str>,
        since: DateTime<Utc>,
        quiet: Duration,
    ) -> anyhow::Result<DateTime<Utc>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let quiet = chrono::TimeDelta::from_std(quiet)?;
        loop {
            self.audit.refresh()?;
            let now = Utc::now();
            let last = self
                .audit
                .last_write(&self.operator_filter(namespace, since, now))
                .unwrap_or(since);
            if now - last >= quiet {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                bail!("the operator kept writing for two minutes after convergence");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn converge(
        &mut self,
        operator: &Operator,
        count: usize,
        floor_rate: f64,
    ) -> anyhow::Result<(Convergence, ReadyTracker, Vec<String>)> {
        let namespace = format!("bench-{count}");
        workload::create_namespace(&self.client, &namespace).await?;
        let tracker = ReadyTracker::start(&self.client, &namespace).await?;
        let names = workload::policy_names(count);
        self.progress(format!("creating {count} policies in {namespace}"));
        let reconciles_before = operator.metric("keyrotor_reconciles_total").await?;
        let cpu_before = operator.cpu_seconds()?;
        let from = Utc::now();
        let created =
            workload::create_policies(&self.client, &namespace, &names, CREATE_CONCURRENCY).await?;
        let creates_done = Utc::now();
        let timeout = Duration::from_secs(120 + count as u64 / 5);
        let ready = tracker.wait_ready(&names, &HashMap::new(), timeout).await?;
        let last_ready = ready.values().max().copied().unwrap_or(from);
        self.progress(format!(
            "{count} policies Ready after {:.1} s",
            seconds(from, last_ready)
        ));
        workload::verify_published(&self.client, &namespace, &tracker.active_kids()).await?;
        let quiet = self
            .wait_quiet(Some(&namespace), from, Duration::from_secs(3))
            .await?;
        let counts = self
            .audit
            .counts(&self.operator_filter(Some(&namespace), from, quiet));
        let reconciles = operator.metric("keyrotor_reconciles_total").await? - reconciles_before;
        let cpu = operator.cpu_seconds()? - cpu_before;
        let latencies: Vec<f64> = names
            .iter()
            .filter_map(|name| Some(seconds(*created.get(name)?, *ready.get(name)?)))
            .collect();
        let operator_writes_per_policy = counts.writes as f64 / count as f64;
        // Everything the API server had to write: each policy's create, then the
        // operator's writes for it.
        let writes_per_policy = operator_writes_per_policy + 1.0;
        let floor_seconds = writes_per_policy * count as f64 / floor_rate;
        let time = seconds(from, last_ready);
        Ok((
            Convergence {
                policies: count,
                seconds: time,
                creates_seconds: seconds(from, creates_done),
                operator_writes_per_policy,
                writes_per_policy,
                floor_seconds,
                ratio_to_floor: time / floor_seconds,
                ready_p50_seconds: report::percentile(&latencies, 50.0),
                ready_p99_seconds: report::percentile(&latencies, 99.0),
                ready_max_seconds: report::percentile(&latencies, 100.0),
                reconciles_per_policy: reconciles / count as f64,
                operator_cpu_seconds: cpu,
                operator_requests: counts,
            },
            tracker,
            names,
        ))
    }

    async fn steady_state(
        &mut self,
        operator: &Operator,
        policies: usize,
    ) -> anyhow::Result<SteadyState> {
        self.progress(format!(
            "steady state: watching the operator for {} s",
            STEADY_WINDOW.as_secs()
        ));
        let reconciles_before = operator.metric("keyrotor_reconciles_total").await?;
        let cpu_before = operator.cpu_seconds()?;
        let from = Utc::now();
        tokio::time::sleep(STEADY_WINDOW).await;
        let to = Utc::now();
        let reconciles = operator.metric("keyrotor_reconciles_total").await? - reconciles_before;
        let cpu = operator.cpu_seconds()? - cpu_before;
        self.audit.refresh()?;
        let counts = self.audit.counts(&self.operator_filter(None, from, to));
        let minutes = seconds(from, to) / 60.0;
        Ok(SteadyState {
            policies,
            seconds: seconds(from, to),
            reconciles_per_minute: reconciles / minutes,
            requests_per_minute: counts.requests as f64 / minutes,
            writes_per_minute: counts.writes as f64 / minutes,
            cpu_seconds: cpu,
            memory: operator.memory()?,
            requests: counts,
        })
    }

    async fn storm(
        &mut self,
        operator: &Operator,
        namespace: &str,
        tracker: &ReadyTracker,
        names: &[String],
    ) -> anyhow::Result<Storm> {
        let old = tracker.active_kids();
        self.progress(format!(
            "rotation storm: asking {} policies to rotate at once",
            names.len()
        ));
        let reconciles_before = operator.metric("keyrotor_reconciles_total").await?;
        let from = Utc::now();
        let requested = workload::request_rotation(
            &self.client,
            namespace,
            names,
            "bench-storm",
            CREATE_CONCURRENCY,
        )
        .await?;
        let requests_done = Utc::now();
        let timeout = Duration::from_secs(120 + names.len() as u64 / 5);
        let rotated = tracker.wait_ready(names, &old, timeout).await?;
        let last = rotated.values().max().copied().unwrap_or(from);
        self.progress(format!(
            "every policy rotated after {:.1} s",
            seconds(from, last)
        ));
        workload::verify_published(&self.client, namespace, &tracker.active_kids()).await?;
        let quiet = self
            .wait_quiet(Some(namespace), from, Duration::from_secs(3))
            .await?;
        let counts = self
            .audit
            .counts(&self.operator_filter(Some(namespace), from, quiet));
        let reconciles = operator.metric("keyrotor_reconciles_total").await? - reconciles_before;
        let latencies: Vec<f64> = names
            .iter()
            .filter_map(|name| Some(seconds(*requested.get(name)?, *rotated.get(name)?)))
            .collect();
        Ok(Storm {
            policies: names.len(),
            seconds: seconds(from, last),
            requests_seconds: seconds(from, requests_done),
            rotated_p50_seconds: report::percentile(&latencies, 50.0),
            rotated_p99_seconds: report::percentile(&latencies, 99.0),
            writes_per_rotation: counts.writes as f64 / names.len() as f64,
            reconciles_per_policy: reconciles / names.len() as f64,
            operator_requests: counts,
        })
    }

    /// Restarts the operator and follows its memory until it has reconciled every
    /// policy and settled.
    async fn fresh_start(
        &mut self,
        operator: Operator,
        policies: usize,
        unrelated_secrets: usize,
    ) -> anyhow::Result<(Operator, MemoryProbe)> {
        self.progress(format!(
            "restarting the operator ({policies} policies, {unrelated_secrets} unrelated Secrets)"
        ));
        let mut operator = operator.restart().await?;
        let started = Instant::now();
        operator.wait_ready(Duration::from_secs(120)).await?;
        workload::poll(
            "the restarted operator to reconcile every policy",
            Duration::from_secs(300),
            || async {
                let reconciles = operator.metric("keyrotor_reconciles_total").await.ok()?;
                (reconciles >= policies as f64).then_some(())
            },
        )
        .await?;
        let resync = started.elapsed().as_secs_f64();
        // Settled: no reconcile for 3 s, then 10 s more for the allocator to return
        // what the burst used.
        let mut last = operator.metric("keyrotor_reconciles_total").await?;
        let mut unchanged_since = Instant::now();
        while unchanged_since.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = operator.metric("keyrotor_reconciles_total").await?;
            if now != last {
                last = now;
                unchanged_since = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let memory = operator.memory()?;
        Ok((
            operator,
            MemoryProbe {
                policies,
                unrelated_secrets,
                peak_mib: memory.peak_mib,
                steady_mib: memory.rss_mib,
                resync_seconds: resync,
                reconciles_at_start: last,
            },
        ))
    }
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

fn operator_binary(repo: &Path) -> anyhow::Result<PathBuf> {
    let binary = std::env::var_os("KEYROTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/release/keyrotor"));
    if !binary.is_file() {
        bail!(
            "{} is missing: `cargo build --release --bin keyrotor` (make bench does)",
            binary.display()
        );
    }
    Ok(binary)
}

fn budget() -> Duration {
    std::env::var("KEYROTOR_BENCH_BUDGET_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_BUDGET, Duration::from_secs)
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = Utc::now();
    let repo = repo_root();
    let out_dir = repo.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let binary = operator_binary(&repo)?;
    let client = support::client().await;
    let kubernetes = client.apiserver_version().await?.git_version;
    let audit = AuditLog::open(support::audit_log_path())?;

    progress(
        started,
        "installing the CRD and the operator's ServiceAccount",
    );
    workload::install_crd(&client).await?;
    let identity = workload::operator_identity(&client, &repo, &out_dir).await?;
    let log = out_dir.join("operator.log");
    std::fs::write(&log, "")?;
    let mut bench = Bench {
        client,
        audit,
        identity,
        binary,
        log,
        started,
    };

    // 1. The floor.
    workload::create_namespace(&bench.client, "bench-floor").await?;
    let mut rates: Vec<WriteRate> = Vec::new();
    for concurrency in FLOOR_CONCURRENCIES {
        let rate = workload::measure_write_rate(
            &bench.client,
            "bench-floor",
            &format!("c{concurrency}"),
            concurrency,
            FLOOR_WRITES,
            2048,
            512,
        )
        .await?;
        bench.progress(format!(
            "API server: {:.0} creates/s with {concurrency} in flight",
            rate.per_second
        ));
        rates.push(rate);
    }
    let floor_rate = rates.iter().map(|r| r.per_second).fold(0.0_f64, f64::max);

    // 2. Convergence.
    let mut operator = Operator::start(&bench.binary, &bench.identity.kubeconfig, &bench.log)?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    let mut convergence = Vec::new();
    let (small, tracker, _) = bench.converge(&operator, 100, floor_rate).await?;
    drop(tracker);
    convergence.push(small);
    // Exactly 1,000 policies from here on.
    workload::delete_policies(&bench.client, "bench-100").await?;
    workload::delete_namespace(&bench.client, "bench-100").await?;
    let (large, tracker, names) = bench.converge(&operator, 1000, floor_rate).await?;
    convergence.push(large);

    // 3. Steady state, 4. rotation storm.
    let steady = bench.steady_state(&operator, names.len()).await?;
    let storm = bench
        .storm(&operator, "bench-1000", &tracker, &names)
        .await?;
    drop(tracker);
    let first_process: Memory = operator.memory()?;

    // 5. Memory.
    let (operator, without) = bench.fresh_start(operator, names.len(), 0).await?;
    workload::create_namespace(&bench.client, "bench-unrelated").await?;
    bench.progress(format!(
        "creating {UNRELATED_SECRETS} unrelated Secrets of {} KiB",
        UNRELATED_SECRET_BYTES / 1024
    ));
    let rss_before_unrelated = operator.memory()?.rss_mib;
    let unrelated = workload::create_unrelated_secrets(
        &bench.client,
        "bench-unrelated",
        UNRELATED_SECRETS,
        UNRELATED_SECRET_BYTES,
        CREATE_CONCURRENCY,
    )
    .await?;
    let rss_after_unrelated = operator.memory()?.rss_mib;
    bench.progress(format!(
        "unrelated Secrets created at {:.0}/s; operator RSS {rss_before_unrelated:.1} → {rss_after_unrelated:.1} MiB",
        unrelated.per_second
    ));
    let (mut operator, with) = bench
        .fresh_start(operator, names.len(), UNRELATED_SECRETS)
        .await?;

    // 6. 5,000 policies, if they fit in the budget.
    let elapsed = started.elapsed();
    let estimate = Duration::from_secs_f64(convergence[1].seconds * 5.0 * 1.3 + 30.0);
    if elapsed + estimate <= budget() {
        let (huge, tracker, _) = bench.converge(&operator, 5000, floor_rate).await?;
        drop(tracker);
        convergence.push(huge);
    } else {
        bench.progress(format!(
            "skipping 5,000 policies: {:.0} s so far, about {:.0} s more would pass the {} s budget",
            elapsed.as_secs_f64(),
            estimate.as_secs_f64(),
            budget().as_secs()
        ));
    }
    let last_memory = operator.memory()?;
    operator.wait_ready(Duration::from_secs(5)).await?;
    operator.stop().await?;

    let report = Report {
        command: "make bench".to_owned(),
        started_at,
        duration_seconds: started.elapsed().as_secs_f64(),
        machine: report::machine(),
        kubernetes,
        commit: workload::git(&repo, &["rev-parse", "--short", "HEAD"]),
        floor_rates: rates,
        floor_writes_per_second: floor_rate,
        convergence,
        steady_state: steady,
        rotation_storm: storm,
        memory_after_convergence_and_storm: first_process,
        memory_fresh_start: without,
        memory_fresh_start_with_unrelated: with,
        unrelated_secrets_created: unrelated,
        rss_before_unrelated_mib: rss_before_unrelated,
        rss_after_unrelated_mib: rss_after_unrelated,
        memory_at_end: last_memory,
    };
    let path = out_dir.join("results.json");
    workload::write_file(&path, &serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", report.table());
    println!("results: {}", path.display());
    Ok(())
}
