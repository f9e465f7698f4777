//! keyrotor's end-to-end suite: the operator binary against the local control plane,
//! token issuers and verifiers (Rust jsonwebtoken, Python PyJWT, Node jose) across
//! rotations and faults, an invariant checker, attack tokens and a JWKS conformance
//! check. `make e2e` runs it (KEYROTOR_E2E=1); without that variable only the
//! self-tests of its pure parts run. Scenarios: tests/e2e/scenarios.yaml. Report:
//! target/e2e/report.json.

mod attacks;
mod checker;
mod cluster;
mod conformance;
mod faults;
mod history;
mod libproc;
mod model;
mod operator;
mod participants;
mod report;
mod scenario;
mod selftest;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use futures::future::join_all;

use crate::report::Report;
use crate::scenario::{Env, Expect, Suite};

fn main() -> ExitCode {
    if !selftest::run() {
        return ExitCode::FAILURE;
    }
    if std::env::var("KEYROTOR_E2E").as_deref() != Ok("1") {
        println!(
            "e2e: the suite itself runs with KEYROTOR_E2E=1 against a control plane (make e2e)"
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("e2e: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(suite()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("e2e: {e}");
            ExitCode::FAILURE
        }
    }
}

fn required_path(variable: &str, hint: &str) -> Result<PathBuf, String> {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .ok_or_else(|| format!("${variable} is not set to an existing file ({hint})"))
}

async fn suite() -> Result<bool, String> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_keyrotor"));
    let kubeconfig = cluster::kubeconfig_path().ok_or(
        "no KUBECONFIG: start the control plane (make cluster-up; source target/cluster/env)",
    )?;
    let python = required_path("KEYROTOR_E2E_PYTHON", "eval \"$(tests/e2e/deps)\"")?;
    let node = required_path("KEYROTOR_E2E_NODE", "eval \"$(tests/e2e/deps)\"")?;
    let seed = match std::env::var("KEYROTOR_E2E_SEED") {
        Ok(s) => s.parse().map_err(|_| "KEYROTOR_E2E_SEED is not a number")?,
        Err(_) => started_at.timestamp_micros() as u64,
    };
    let out = repo.join("target/e2e");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;

    let definitions = repo.join("tests/e2e/scenarios.yaml");
    let text = std::fs::read_to_string(&definitions)
        .map_err(|e| format!("{}: {e}", definitions.display()))?;
    let suite: Suite =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", definitions.display()))?;
    let mut scenarios = scenario::resolve(&suite)?;
    if let Ok(only) = std::env::var("KEYROTOR_E2E_SCENARIOS") {
        let wanted: Vec<&str> = only
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        scenarios.retain(|s| wanted.contains(&s.name.as_str()));
    }
    if scenarios.is_empty() {
        return Err("no scenario selected".into());
    }

    let client = cluster::client(&kubeconfig).await?;
    cluster::install_crd(&client, &operator).await?;
    let env = Env {
        client,
        kubeconfig,
        operator,
        repo,
        out: out.clone(),
        python,
        node,
    };

    let mut phases: Vec<u32> = scenarios.iter().map(|s| s.phase).collect();
    phases.sort_unstable();
    phases.dedup();
    let mut reports = Vec::new();
    for phase in phases {
        let batch: Vec<_> = scenarios
            .iter()
            .enumerate()
            .filter(|(_, s)| s.phase == phase)
            .map(|(i, s)| {
                println!("e2e: phase {phase}: starting {}", s.name);
                scenario::run(env.clone(), s.clone(), seed.wrapping_add(i as u64 * 7919))
            })
            .collect();
        for report in join_all(batch).await {
            println!(
                "e2e: {} {}",
                report.name,
                if report.passed { "passed" } else { "FAILED" }
            );
            // Each scenario's own report as soon as its phase ends.
            let text = report::print_scenario(&report);
            print!("{text}");
            let dir = out.join(&report.name);
            let _ = std::fs::write(dir.join("report.txt"), &text);
            if let Ok(json) = serde_json::to_string_pretty(&report) {
                let _ = std::fs::write(dir.join("report.json"), json);
            }
            reports.push(report);
        }
    }

    let negative = scenarios
        .iter()
        .filter(|s| s.expect == Expect::Failures)
        .map(|s| reports.iter().any(|r| r.name == s.name && r.passed))
        .reduce(|a, b| a && b);
    let report = Report {
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        seed,
        passed: reports.iter().all(|r| r.passed),
        negative_control_detected: negative,
        scenarios: reports,
    };
    let path = out.join("report.json");
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = report::print(&report);
    print!("{text}");
    let _ = std::fs::write(out.join("report.txt"), &text);
    println!("report: {}", path.display());
    Ok(report.passed)
}
