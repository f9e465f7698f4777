//! The suite's report: printed, and written to target/e2e/report.json.

use std::fmt::Write as _;

use serde::Serialize;

use crate::model::{ActionKind, Time};
use crate::scenario::{Expect, ScenarioReport};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub started_at: Time,
    pub seconds: f64,
    pub seed: u64,
    pub passed: bool,
    /// The negative control saw failures: the suite can see missing pre-publication.
    pub negative_control_detected: Option<bool>,
    pub scenarios: Vec<ScenarioReport>,
}

fn library_line(s: &ScenarioReport) -> String {
    let mut out = String::new();
    for (library, l) in &s.libraries {
        let _ = write!(
            out,
            "{library} {}+{} ok / {} failed",
            l.verified_at_issue,
            l.verified_before_expiry,
            l.failed_at_issue + l.failed_before_expiry
        );
        if l.late + l.skipped_busy > 0 {
            let _ = write!(out, " ({} late, {} skipped)", l.late, l.skipped_busy);
        }
        if l.max_latency_seconds > 0.0 {
            let _ = write!(out, " (max latency {:.2}s)", l.max_latency_seconds);
        }
        out.push_str("; ");
    }
    out.trim_end_matches("; ").to_owned()
}

pub fn print(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n==== keyrotor end-to-end report (seed {}) ====",
        report.seed
    );
    for s in &report.scenarios {
        out.push_str(&print_scenario(s));
    }
    let passed = report.scenarios.iter().filter(|s| s.passed).count();
    let _ = writeln!(out, "\nwhole run: {:.0}s", report.seconds);
    let _ = writeln!(
        out,
        "e2e: {passed} passed, {} failed",
        report.scenarios.len() - passed
    );
    out
}

pub fn print_scenario(s: &ScenarioReport) -> String {
    let mut out = String::new();
    {
        let settings = s.settings.as_ref();
        let _ = writeln!(
            out,
            "\nscenario {} [{}; faults: {}]: {} in {:.0}s",
            s.name,
            settings.map_or(String::new(), |c| format!(
                "{}{}, rotationInterval {}, propagationDelay {}, maxTokenLifetime {}",
                c.algorithm,
                if c.certificate { " + x5c" } else { "" },
                c.rotation_interval,
                c.propagation_delay,
                c.max_token_lifetime
            )),
            settings.map_or(String::new(), |c| {
                if c.faults.is_empty() {
                    "none".to_owned()
                } else {
                    c.faults
                        .iter()
                        .map(|f| format!("{f:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            }),
            if s.passed { "PASSED" } else { "FAILED" },
            s.seconds
        );
        let _ = writeln!(out, "  {}", s.description);
        let r = &s.rotations;
        let _ = writeln!(
            out,
            "  rotations: {} (requested {}, scheduled {}, revocation {}; target {}); recoveries after a lost Secret {}",
            r.completed, r.requested, r.scheduled, r.revocation, r.target, r.recovery
        );
        let _ = writeln!(
            out,
            "  tokens issued: {}; verified at issue + before expiry: {}",
            s.tokens_issued,
            library_line(s)
        );
        let _ = writeln!(
            out,
            "  failed verifications: {} unexpected, {} expected",
            s.failures.unexpected, s.failures.expected
        );
        for (reason, n) in &s.failures.expected_by_reason {
            let _ = writeln!(out, "    expected x{n}: {reason}");
        }
        for f in s
            .failures
            .samples
            .iter()
            .filter(|f| f.expected.is_none())
            .take(5)
        {
            let _ = writeln!(
                out,
                "    {} {} {:?}: kid {} signed {} exp {} checked {}: {}",
                f.library,
                f.verifier,
                f.check,
                f.token.kid,
                f.token.signed_at.format("%H:%M:%S%.3f"),
                f.token.exp,
                f.verified_at.format("%H:%M:%S%.3f"),
                f.error
            );
        }
        let _ = writeln!(
            out,
            "  invariant violations: {}; exceptions to pre-publication: {}; min pre-publication margin {}; min retention margin {}; max lag activatedAt -> Secret seen {}; watch relists {} ({} checks undecidable meanwhile)",
            s.invariant_violations.len(),
            s.prepublication_exceptions.len(),
            s.min_prepublication_margin_seconds
                .map_or("-".into(), |m| format!("{m:+.3}s")),
            s.min_retention_margin_seconds
                .map_or("-".into(), |m| format!("{m:+.3}s")),
            s.max_activation_lag_seconds
                .map_or("-".into(), |m| format!("{m:.3}s")),
            s.observation_gaps,
            s.unverifiable_checks
        );
        for v in s.invariant_violations.iter().take(5) {
            let _ = writeln!(
                out,
                "    invariant {} at {}: {}",
                v.invariant,
                v.at.format("%H:%M:%S%.3f"),
                v.detail
            );
        }
        let faults: Vec<String> = s
            .faults_injected
            .iter()
            .filter(|(k, _)| k.as_str() != "rotateRequest")
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        let _ = writeln!(
            out,
            "  faults injected: {}{}",
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            },
            if s.kills_between_secret_and_configmap_write > 0 {
                format!(
                    " ({} kills between the Secret and the ConfigMap write)",
                    s.kills_between_secret_and_configmap_write
                )
            } else {
                String::new()
            }
        );
        for restart in &s.restarts {
            if let ActionKind::ComponentRestarted {
                component,
                seconds,
                ok,
            } = &restart.kind
            {
                let _ = writeln!(
                    out,
                    "    {component} restart at {}: {seconds:.1}s{}",
                    restart.at.format("%H:%M:%S"),
                    if *ok { "" } else { " (FAILED)" }
                );
            }
        }
        let passed = s.attacks.iter().filter(|a| a.passed).count();
        let _ = writeln!(
            out,
            "  attack tokens: {passed}/{} handled right by every verifier; JWKS conformance: {} documents, {} keys, {} problems",
            s.attacks.len(),
            s.conformance.documents_checked,
            s.conformance.keys_checked,
            s.conformance.problems.len()
        );
        for a in s.attacks.iter().filter(|a| !a.passed) {
            let _ = writeln!(out, "    {}: {:?}", a.name, a.outcomes);
        }
        for (p, n) in s.conformance.problems.iter().take(5) {
            let _ = writeln!(out, "    x{n}: {p}");
        }
        for p in &s.problems {
            let _ = writeln!(out, "  PROBLEM: {p}");
        }
        if settings.is_some_and(|c| c.expect == Expect::Failures) {
            let _ = writeln!(
                out,
                "  (negative control: issuers sign with each new key as soon as it exists; failures are required)"
            );
        }
    }
    out
}
