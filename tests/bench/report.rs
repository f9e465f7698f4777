//! The bench's results: `target/bench/results.json` and the printed table.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::Counts;
use crate::operator::Memory;
use crate::workload::WriteRate;

/// The targets of the design (section 6).
const CONVERGENCE_RATIO_TARGET: f64 = 1.5;
const RSS_TARGET_MIB: f64 = 64.0;

#[derive(Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    /// 1-minute load average when the run started (the machine may be shared).
    pub load_average_at_start: f64,
}

pub fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let memory_kib: f64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        memory_gib: memory_kib / (1024.0 * 1024.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        load_average_at_start: read("/proc/loadavg")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
    }
}

#[derive(Serialize)]
pub struct Convergence {
    pub policies: usize,
    /// First create sent → last policy seen Ready.
    pub seconds: f64,
    /// How long the bench's creates took (they share the API server with the operator).
    pub creates_seconds: f64,
    pub operator_writes_per_policy: f64,
    /// The operator's writes plus the policy's own create.
    pub writes_per_policy: f64,
    /// writes_per_policy × policies ÷ the floor write rate.
    pub floor_seconds: f64,
    pub ratio_to_floor: f64,
    /// Create returned → policy seen Ready (watch), per policy.
    pub ready_p50_seconds: f64,
    pub ready_p99_seconds: f64,
    pub ready_max_seconds: f64,
    pub reconciles_per_policy: f64,
    pub operator_cpu_seconds: f64,
    /// The operator's requests in the policies' namespace, from the audit log.
    pub operator_requests: Counts,
}

#[derive(Serialize)]
pub struct SteadyState {
    pub policies: usize,
    pub seconds: f64,
    pub reconciles_per_minute: f64,
    pub requests_per_minute: f64,
    pub writes_per_minute: f64,
    pub cpu_seconds: f64,
    pub memory: Memory,
    pub requests: Counts,
}

#[derive(Serialize)]
pub struct Storm {
    pub policies: usize,
    /// First rotate request sent → last policy seen Ready with a new active key.
    pub seconds: f64,
    pub requests_seconds: f64,
    pub rotated_p50_seconds: f64,
    pub rotated_p99_seconds: f64,
    pub writes_per_rotation: f64,
    pub reconciles_per_policy: f64,
    pub operator_requests: Counts,
}

/// A fresh operator process, followed until it had reconciled every policy and
/// settled.
#[derive(Serialize)]
pub struct MemoryProbe {
    pub policies: usize,
    pub unrelated_secrets: usize,
    /// VmHWM: the peak of the whole start, initial lists and reconciles included.
    pub peak_mib: f64,
    /// VmRSS 10 s after the last reconcile.
    pub steady_mib: f64,
    /// Process start → every policy reconciled once.
    pub resync_seconds: f64,
    pub reconciles_at_start: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub command: String,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub machine: Machine,
    pub kubernetes: String,
    pub commit: String,
    pub floor_rates: Vec<WriteRate>,
    pub floor_writes_per_second: f64,
    pub convergence: Vec<Convergence>,
    pub steady_state: SteadyState,
    pub rotation_storm: Storm,
    pub memory_after_convergence_and_storm: Memory,
    pub memory_fresh_start: MemoryProbe,
    pub memory_fresh_start_with_unrelated: MemoryProbe,
    pub unrelated_secrets_created: WriteRate,
    pub rss_before_unrelated_mib: f64,
    pub rss_after_unrelated_mib: f64,
    pub memory_at_end: Memory,
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; 0 when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// The targets and whether this run met them.
    pub fn targets(&self) -> Vec<(String, String, bool)> {
        let mut targets = Vec::new();
        if let Some(c) = self.convergence.iter().find(|c| c.policies == 1000) {
            targets.push((
                format!("1,000 policies converge within {CONVERGENCE_RATIO_TARGET}× the floor"),
                format!("{:.2}×", c.ratio_to_floor),
                c.ratio_to_floor <= CONVERGENCE_RATIO_TARGET,
            ));
        }
        let with = &self.memory_fresh_start_with_unrelated;
        let rss = with.peak_mib.max(self.rss_after_unrelated_mib);
        targets.push((
            format!(
                "RSS ≤ {RSS_TARGET_MIB} MiB, {} policies + {} unrelated Secrets",
                thousands(with.policies),
                thousands(with.unrelated_secrets)
            ),
            format!("{rss:.1} MiB peak"),
            rss <= RSS_TARGET_MIB,
        ));
        let s = &self.steady_state;
        targets.push((
            "steady state: 0 writes per minute".to_owned(),
            format!("{:.1}", s.writes_per_minute),
            s.writes_per_minute == 0.0,
        ));
        targets.push((
            "steady state: 0 reconciles per minute (none due)".to_owned(),
            format!("{:.1}", s.reconciles_per_minute),
            s.reconciles_per_minute == 0.0,
        ));
        targets
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let m = &self.machine;
        let _ = writeln!(
            t,
            "keyrotor bench ({}): {} CPUs {}, {:.0} GiB, Linux {}, Kubernetes {}, load {:.1} at start, {:.0} s",
            self.commit,
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            self.kubernetes,
            m.load_average_at_start,
            self.duration_seconds
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "API server write rate (plain creates of Secrets and ConfigMaps)"
        );
        for rate in &self.floor_rates {
            let _ = writeln!(
                t,
                "  {:>2} in flight  {:>6.0} writes/s{}",
                rate.concurrency,
                rate.per_second,
                if rate.per_second == self.floor_writes_per_second {
                    "  <- floor rate"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "Convergence: policies created at once, until each is Ready with Secret and JWKS written"
        );
        let _ = writeln!(
            t,
            "  {:>8}  {:>8}  {:>8}  {:>6}  {:>15}  {:>12}  {:>12}  {:>10}",
            "policies",
            "time",
            "floor",
            "ratio",
            "writes/policy",
            "p50 ->Ready",
            "p99 ->Ready",
            "reconciles"
        );
        for c in &self.convergence {
            let _ = writeln!(
                t,
                "  {:>8}  {:>6.1} s  {:>6.1} s  {:>5.2}×  {:>8.1} + 1 new  {:>10.2} s  {:>10.2} s  {:>8.1}/p",
                thousands(c.policies),
                c.seconds,
                c.floor_seconds,
                c.ratio_to_floor,
                c.operator_writes_per_policy,
                c.ready_p50_seconds,
                c.ready_p99_seconds,
                c.reconciles_per_policy
            );
        }
        let _ = writeln!(t);
        let s = &self.steady_state;
        let _ = writeln!(
            t,
            "Steady state: {} policies, {:.0} s with no transition due",
            thousands(s.policies),
            s.seconds
        );
        let _ = writeln!(
            t,
            "  reconciles {:.1}/min   API requests {:.1}/min   writes {:.1}/min   CPU {:.2} s   RSS {:.1} MiB",
            s.reconciles_per_minute,
            s.requests_per_minute,
            s.writes_per_minute,
            s.cpu_seconds,
            s.memory.rss_mib
        );
        let _ = writeln!(t);
        let r = &self.rotation_storm;
        let _ = writeln!(
            t,
            "Rotation storm: {} policies asked to rotate at once",
            thousands(r.policies)
        );
        let _ = writeln!(
            t,
            "  all rotated in {:.1} s   p50 {:.2} s   p99 {:.2} s   {:.1} writes and {:.1} reconciles per rotation",
            r.seconds,
            r.rotated_p50_seconds,
            r.rotated_p99_seconds,
            r.writes_per_rotation,
            r.reconciles_per_policy
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "Memory (operator RSS)");
        let _ = writeln!(t, "  {:<58} {:>9}  {:>9}", "", "peak", "steady");
        let a = &self.memory_after_convergence_and_storm;
        let _ = writeln!(
            t,
            "  {:<58} {:>5.1} MiB  {:>5.1} MiB",
            "first process: convergences, steady state, storm", a.peak_mib, a.rss_mib
        );
        for probe in [
            &self.memory_fresh_start,
            &self.memory_fresh_start_with_unrelated,
        ] {
            let _ = writeln!(
                t,
                "  {:<58} {:>5.1} MiB  {:>5.1} MiB",
                format!(
                    "fresh start, {} policies, {} unrelated Secrets (resync {:.1} s)",
                    thousands(probe.policies),
                    thousands(probe.unrelated_secrets),
                    probe.resync_seconds
                ),
                probe.peak_mib,
                probe.steady_mib
            );
        }
        let _ = writeln!(
            t,
            "  while {} Secrets of 32 KiB were created ({:.0}/s): RSS {:.1} -> {:.1} MiB",
            thousands(self.unrelated_secrets_created.writes),
            self.unrelated_secrets_created.per_second,
            self.rss_before_unrelated_mib,
            self.rss_after_unrelated_mib
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "Targets");
        for (name, measured, ok) in self.targets() {
            let _ = writeln!(t, "  {name:<58} {measured:>14}  {}", met(ok));
        }
        t
    }
}
