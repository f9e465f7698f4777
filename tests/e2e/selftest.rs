//! Self-tests of the pure parts (the checker above all): made-up histories with and
//! without each kind of violation, so a clean report means the checker looked.
//! They run on every `cargo test` (no control plane needed).

use std::sync::Arc;

use chrono::{DateTime, TimeZone as _, Utc};
use keyrotor::ring::{ActivationException, KeyState};

use crate::checker::{self, Cause, Findings};
use crate::conformance::ActiveFirst;
use crate::model::{
    Action, ActionKind, Change, JwksView, KeyFacts, Observation, PolicyTiming, SecretView, Time,
};
use crate::participants::Delays;
use crate::scenario::seconds_of;

fn t(seconds: f64) -> Time {
    let base: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    base + chrono::Duration::microseconds((seconds * 1e6) as i64)
}

fn timing() -> PolicyTiming {
    PolicyTiming {
        name: "p".into(),
        secret_name: "p-signing-key".into(),
        config_map_name: "p-jwks".into(),
        rotation_interval: 10.0,
        propagation_delay: 1.0,
        max_token_lifetime: 4.0,
    }
}

/// Builds a history, one object change at a time, with increasing resourceVersions.
#[derive(Default)]
struct Script {
    observations: Vec<Observation>,
    actions: Vec<Action>,
    rv: u64,
}

struct K<'a> {
    kid: &'a str,
    state: KeyState,
    published: Option<f64>,
    activated: Option<f64>,
    exception: Option<ActivationException>,
}

fn active(kid: &str, published: f64, activated: f64) -> K<'_> {
    K {
        kid,
        state: KeyState::Active,
        published: Some(published),
        activated: Some(activated),
        exception: None,
    }
}
fn next(kid: &str, published: Option<f64>) -> K<'_> {
    K {
        kid,
        state: KeyState::Next,
        published,
        activated: None,
        exception: None,
    }
}
fn retired(kid: &str) -> K<'_> {
    K {
        kid,
        state: KeyState::Retired,
        published: Some(0.0),
        activated: Some(0.0),
        exception: None,
    }
}

impl Script {
    fn secret(&mut self, at: f64, keys: &[K]) -> &mut Self {
        self.rv += 1;
        let kid = keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .map(|k| k.kid.to_owned());
        let ring = keys
            .iter()
            .map(|k| KeyFacts {
                kid: k.kid.to_owned(),
                state: k.state,
                published_at: k.published.map(t),
                activated_at: k.activated.map(t),
                retired_at: None,
                exception: k.exception,
            })
            .collect();
        self.observations.push(Observation {
            at: t(at),
            rv: self.rv,
            name: "p-signing-key".into(),
            change: Change::Secret(Some(Arc::new(SecretView {
                kid,
                alg: Some("ES256".into()),
                private_pem: None,
                next_private_pem: None,
                ring: Ok(ring),
            }))),
        });
        self
    }

    fn delete_secret(&mut self, at: f64) -> &mut Self {
        self.rv += 1;
        self.observations.push(Observation {
            at: t(at),
            rv: self.rv,
            name: "p-signing-key".into(),
            change: Change::Secret(None),
        });
        self
    }

    fn jwks(&mut self, at: f64, kids: &[&str]) -> &mut Self {
        self.rv += 1;
        let text = serde_json::json!({"keys": kids.iter().map(|k| serde_json::json!({"kid": k})).collect::<Vec<_>>()});
        let mut view = JwksView::from_text(Some(text.to_string()), None);
        view.kids = kids.iter().map(|k| (*k).to_owned()).collect();
        self.observations.push(Observation {
            at: t(at),
            rv: self.rv,
            name: "p-jwks".into(),
            change: Change::ConfigMap(Some(Arc::new(view))),
        });
        self
    }

    fn gap(&mut self, at: f64, kind: &'static str, open: bool) -> &mut Self {
        self.observations.push(Observation {
            at: t(at),
            rv: self.rv,
            name: String::new(),
            change: Change::Gap { kind, open },
        });
        self
    }

    fn action(&mut self, at: f64, kind: ActionKind) -> &mut Self {
        self.actions.push(Action { at: t(at), kind });
        self
    }

    fn request(&mut self, at: f64) -> &mut Self {
        self.action(
            at,
            ActionKind::RotateRequested {
                policy: "p".into(),
                value: format!("{at}"),
            },
        )
    }

    fn check(&self) -> Findings {
        checker::check(&timing(), &self.observations, &self.actions)
    }
}

/// A first key, then a clean requested rotation A → B at 2.0 (B published since 0.0).
fn clean_start() -> Script {
    let mut s = Script::default();
    let mut first = active("A", 0.0, 0.0);
    first.exception = Some(ActivationException::FirstKey);
    s.secret(0.0, &[first, next("B", None)])
        .jwks(0.01, &["A", "B"])
        .secret(0.02, &[active("A", 0.0, 0.0), next("B", Some(0.015))])
        .request(1.9)
        .secret(
            2.0,
            &[active("B", 0.015, 2.0), next("C", None), retired("A")],
        )
        .jwks(2.01, &["B", "C", "A"]);
    s
}

fn expect_violation(f: &Findings, invariant: &str) -> Result<(), String> {
    if f.violations.iter().any(|v| v.invariant == invariant) {
        Ok(())
    } else {
        Err(format!(
            "expected a violation of invariant {invariant}, got {:?}",
            f.violations
        ))
    }
}

fn expect_clean(f: &Findings) -> Result<(), String> {
    if f.violations.is_empty() {
        Ok(())
    } else {
        Err(format!("expected no violation, got {:?}", f.violations))
    }
}

fn clean_history_passes() -> Result<(), String> {
    let mut s = clean_start();
    // A stays 1 + 4 seconds after 2.0, then leaves.
    s.jwks(7.1, &["B", "C"]);
    let f = s.check();
    expect_clean(&f)?;
    if f.rotations.len() != 1 || f.rotations[0].cause != Cause::Requested {
        return Err(format!(
            "expected one requested rotation, got {:?}",
            f.rotations
        ));
    }
    if f.exceptions.len() != 1 {
        return Err(format!(
            "expected the FirstKey exception, got {:?}",
            f.exceptions
        ));
    }
    Ok(())
}

fn early_activation_is_invariant_2() -> Result<(), String> {
    let mut s = Script::default();
    let mut first = active("A", 0.0, 0.0);
    first.exception = Some(ActivationException::FirstKey);
    s.secret(0.0, &[first, next("B", None)])
        .jwks(0.01, &["A"])
        .jwks(5.0, &["A", "B"])
        .request(5.1)
        .secret(5.3, &[active("B", 5.0, 5.3), next("C", None), retired("A")])
        .jwks(5.31, &["B", "C", "A"]);
    let f = s.check();
    expect_violation(&f, "2")?;
    // Both the observed and the ring's own times must have been caught.
    if f.violations.iter().filter(|v| v.invariant == "2").count() < 2 {
        return Err(format!(
            "expected two invariant-2 findings, got {:?}",
            f.violations
        ));
    }
    Ok(())
}

fn hand_edit_breaks_continuity() -> Result<(), String> {
    let mut s = Script::default();
    let mut first = active("A", 0.0, 0.0);
    first.exception = Some(ActivationException::FirstKey);
    // B published at 0.01, removed at 1.5, back at 1.8: activation at 2.0 is too soon.
    s.secret(0.0, &[first, next("B", Some(0.01))])
        .jwks(0.01, &["A", "B"])
        .jwks(1.5, &["A"])
        .jwks(1.8, &["A", "B"])
        .request(1.9)
        .secret(
            2.0,
            &[active("B", 0.01, 2.0), next("C", None), retired("A")],
        )
        .jwks(2.01, &["B", "C", "A"]);
    expect_violation(&s.check(), "2")
}

fn active_missing_from_jwks_is_invariant_1() -> Result<(), String> {
    let mut s = clean_start();
    s.jwks(3.0, &["C", "A"]);
    expect_violation(&s.check(), "1")
}

fn early_removal_is_invariant_3() -> Result<(), String> {
    let mut s = clean_start();
    s.jwks(3.0, &["B", "C"]);
    expect_violation(&s.check(), "3")
}

fn replaced_next_is_invariant_5() -> Result<(), String> {
    let mut s = clean_start();
    s.secret(
        2.5,
        &[active("B", 0.015, 2.0), next("D", None), retired("A")],
    );
    expect_violation(&s.check(), "5")
}

fn unrequested_early_rotation_is_invariant_5() -> Result<(), String> {
    let mut s = clean_start();
    s.jwks(2.02, &["B", "C", "A"])
        .secret(
            4.0,
            &[
                active("C", 2.02, 4.0),
                next("D", None),
                retired("B"),
                retired("A"),
            ],
        )
        .jwks(4.01, &["C", "D", "B", "A"]);
    let f = s.check();
    expect_violation(&f, "5")?;
    if !f.violations.iter().any(|v| v.detail.contains("early")) {
        return Err(format!(
            "expected an early rotation, got {:?}",
            f.violations
        ));
    }
    Ok(())
}

fn one_request_one_rotation() -> Result<(), String> {
    let mut s = clean_start();
    // A second activation 2s later on the same (already honoured) request.
    s.secret(
        4.1,
        &[
            active("C", 2.01, 4.1),
            next("D", None),
            retired("B"),
            retired("A"),
        ],
    )
    .jwks(4.11, &["C", "D", "B", "A"]);
    let f = s.check();
    expect_violation(&f, "5")?;
    // With a second request it is fine.
    let mut s = clean_start();
    s.request(4.0)
        .secret(
            4.1,
            &[
                active("C", 2.01, 4.1),
                next("D", None),
                retired("B"),
                retired("A"),
            ],
        )
        .jwks(4.11, &["C", "D", "B", "A"]);
    expect_clean(&s.check())
}

fn two_requests_allow_two_rotations_not_three() -> Result<(), String> {
    // Two values set before the operator honoured the first: it may honour both, one
    // after the other; a third rotation has nothing left to answer.
    let script = |third: bool| {
        let mut s = clean_start();
        s.request(2.5)
            .request(2.6)
            .secret(
                4.1,
                &[
                    active("C", 2.01, 4.1),
                    next("D", None),
                    retired("B"),
                    retired("A"),
                ],
            )
            .jwks(4.11, &["C", "D", "B", "A"])
            .secret(
                4.12,
                &[
                    active("C", 2.01, 4.1),
                    next("D", Some(4.11)),
                    retired("B"),
                    retired("A"),
                ],
            )
            .secret(
                6.2,
                &[
                    active("D", 4.11, 6.2),
                    next("E", None),
                    retired("C"),
                    retired("B"),
                    retired("A"),
                ],
            )
            .jwks(6.21, &["D", "E", "C", "B", "A"]);
        if third {
            s.secret(
                6.22,
                &[
                    active("D", 4.11, 6.2),
                    next("E", Some(6.21)),
                    retired("C"),
                    retired("B"),
                    retired("A"),
                ],
            )
            .secret(
                8.3,
                &[
                    active("E", 6.21, 8.3),
                    next("F", None),
                    retired("D"),
                    retired("C"),
                    retired("B"),
                ],
            )
            .jwks(8.31, &["E", "F", "D", "C", "B"]);
        }
        s.check()
    };
    expect_clean(&script(false))?;
    expect_violation(&script(true), "5")
}

fn scheduled_rotation_passes() -> Result<(), String> {
    let mut s = clean_start();
    s.secret(
        12.1,
        &[active("C", 2.01, 12.1), next("D", None), retired("B")],
    )
    .jwks(12.11, &["C", "D", "B"]);
    let f = s.check();
    expect_clean(&f)?;
    if f.rotations.last().map(|r| r.cause) != Some(Cause::Scheduled) {
        return Err(format!(
            "expected a scheduled rotation, got {:?}",
            f.rotations
        ));
    }
    Ok(())
}

/// After `clean_start`: the Secret deleted at 3.0 and rebuilt at 3.1 with a fresh
/// Active R (Recovery), a Next S and the `retired` keys.
fn recovered(retired_kids: &[&'static str]) -> Script {
    let mut s = clean_start();
    let mut fresh = active("R", 0.0, 3.1);
    fresh.published = None;
    fresh.exception = Some(ActivationException::Recovery);
    let mut ring = vec![fresh, next("S", None)];
    ring.extend(retired_kids.iter().map(|kid| retired(kid)));
    s.action(3.0, ActionKind::SecretDeleted { policy: "p".into() })
        .delete_secret(3.0)
        .secret(3.1, &ring);
    s
}

fn recovery_after_deletion_is_explained() -> Result<(), String> {
    let mut s = recovered(&["B", "C", "A"]);
    s.jwks(3.12, &["R", "S", "B", "C", "A"]);
    let f = s.check();
    expect_clean(&f)?;
    if !f.exceptions.iter().any(|e| e.kid == "R") {
        return Err(format!(
            "expected the Recovery exception, got {:?}",
            f.exceptions
        ));
    }
    Ok(())
}

/// A failed verification of a token signed `signed` seconds in with the Recovery key R.
fn recovery_failure(signed: f64) -> crate::participants::Failure {
    use crate::participants::{Check, Failure, TokenMeta};
    Failure {
        library: "rust",
        verifier: "rust-0".into(),
        check: Check::AtIssue,
        token: TokenMeta {
            seq: 1,
            issuer: 0,
            kid: "R".into(),
            signed_at: t(signed),
            iat: 0,
            exp: 0,
        },
        verified_at: t(signed + 0.001),
        error: "no key with kid R".into(),
        served_kids: Vec::new(),
        expected: None,
    }
}

/// A Recovery whose JWKS write was held up (the operator killed between its Secret
/// and JWKS writes): verifiers can know R only propagationDelay after its publication.
fn delayed_recovery_publication_is_explained_for_propagation_delay() -> Result<(), String> {
    let mut s = recovered(&["B", "A"]);
    s.jwks(4.0, &["R", "S", "B", "A"]);
    let f = s.check();
    let explain = |signed: f64| {
        crate::scenario::explain(&recovery_failure(signed), &s.actions, &f.exceptions, 1.0)
    };
    if explain(4.5).is_none() {
        return Err("a failure 0.5 s after R's publication must be explained".into());
    }
    if let Some(reason) = explain(5.5) {
        return Err(format!(
            "a failure 1.5 s after R's publication (propagationDelay 1 s) must stay unexplained, got {reason:?}"
        ));
    }
    Ok(())
}

fn unjustified_exception_is_invariant_2() -> Result<(), String> {
    let mut s = clean_start();
    let mut fresh = active("R", 0.0, 3.1);
    fresh.exception = Some(ActivationException::Revocation);
    s.request(3.0)
        .secret(3.1, &[fresh, next("C", None), retired("B"), retired("A")])
        .jwks(3.12, &["R", "C", "B", "A"]);
    expect_violation(&s.check(), "2")
}

fn revocation_is_explained() -> Result<(), String> {
    let mut s = clean_start();
    let mut fresh = active("C", 2.01, 2.5);
    fresh.exception = Some(ActivationException::Revocation);
    s.jwks(2.02, &["B", "C", "A"])
        .action(
            2.4,
            ActionKind::Revoked {
                policy: "p".into(),
                kid: "B".into(),
            },
        )
        .secret(2.5, &[fresh, next("D", None), retired("A")])
        .jwks(2.51, &["C", "D", "A"]);
    expect_clean(&s.check())
}

fn phantom_key_is_invariant_5() -> Result<(), String> {
    let mut s = clean_start();
    s.jwks(3.0, &["B", "C", "A", "X"]);
    expect_violation(&s.check(), "5")
}

fn relist_makes_publication_unverifiable() -> Result<(), String> {
    // B is first seen in a relist right before its activation: it may have been
    // published long before, so this is not a violation, but it is not verified either.
    let build = |relist: bool| {
        let mut s = Script::default();
        let mut first = active("A", 0.0, 0.0);
        first.exception = Some(ActivationException::FirstKey);
        s.secret(0.0, &[first, next("B", None)]).jwks(0.01, &["A"]);
        if relist {
            s.gap(1.0, "ConfigMap", true);
        }
        s.jwks(1.9, &["A", "B"]);
        if relist {
            s.gap(1.9, "ConfigMap", false);
        }
        s.request(1.95)
            .secret(2.0, &[active("B", 0.5, 2.0), next("C", None), retired("A")])
            .jwks(2.01, &["B", "C", "A"]);
        s.check()
    };
    let with_gap = build(true);
    expect_clean(&with_gap)?;
    if with_gap.unverifiable == 0 || with_gap.observation_gaps != 1 {
        return Err(format!(
            "expected an unverifiable check and one gap, got {} and {}",
            with_gap.unverifiable, with_gap.observation_gaps
        ));
    }
    expect_violation(&build(false), "2")
}

fn delays_only_move_forward() -> Result<(), String> {
    let delays = Delays::new(42, 0.5);
    let versions: Vec<(Time, Arc<u32>)> =
        (0..50).map(|i| (t(i as f64 * 0.1), Arc::new(i))).collect();
    let mut last = None;
    let mut seen_lag = false;
    for step in 0..200 {
        let now = t(step as f64 * 0.03);
        let v = delays.visible(&versions, now);
        if v < last {
            return Err(format!("visible version went back from {last:?} to {v:?}"));
        }
        if let Some(i) = v
            && i + 1 < versions.len()
            && versions[i + 1].0 <= now
        {
            seen_lag = true;
        }
        last = v;
        for (i, _) in versions.iter().enumerate() {
            let d = delays.get(i);
            if !(0.0..0.5).contains(&d) {
                return Err(format!("delay {d} out of range"));
            }
        }
    }
    if !seen_lag {
        return Err("no participant ever lagged behind the newest version".into());
    }
    Ok(())
}

fn kids(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| k.to_string()).collect()
}

fn stale_writer_may_put_the_old_active_first() -> Result<(), String> {
    let mut rule = ActiveFirst::default();
    rule.secret(Some("A".into()));
    let mut broken = vec![rule.broken_by(&kids(&["A", "B"]))];
    // The other writer rotates; this one, planned on the ring before, writes its JWKS.
    rule.secret(Some("B".into()));
    broken.push(rule.broken_by(&kids(&["A", "B"])));
    broken.push(rule.broken_by(&kids(&["B", "C", "A"])));
    if broken.iter().any(|b| *b) {
        return Err(format!("expected every document to pass, got {broken:?}"));
    }
    Ok(())
}

fn old_active_kept_first_is_caught() -> Result<(), String> {
    let mut rule = ActiveFirst::default();
    rule.secret(Some("A".into()));
    rule.broken_by(&kids(&["A", "B"]));
    rule.secret(Some("B".into()));
    let first_after = rule.broken_by(&kids(&["A", "B"]));
    let next_after = rule.broken_by(&kids(&["A", "B", "C"]));
    rule.secret(Some("C".into()));
    let never_active_first = rule.broken_by(&kids(&["D", "C", "B"]));
    if first_after || !next_after || !never_active_first {
        return Err(format!(
            "expected pass, caught, caught; got {first_after}, {next_after}, {never_active_first}"
        ));
    }
    Ok(())
}

fn durations_parse() -> Result<(), String> {
    for (text, want) in [("1s", 1.0), ("10s", 10.0), ("1m30s", 90.0), ("2h", 7200.0)] {
        if seconds_of(text) != Ok(want) {
            return Err(format!("{text} parsed as {:?}", seconds_of(text)));
        }
    }
    for bad in ["", "5", "1x", "s"] {
        if seconds_of(bad).is_ok() {
            return Err(format!("{bad:?} parsed"));
        }
    }
    Ok(())
}

type SelfTest = fn() -> Result<(), String>;

/// Runs every self-test; prints one line each and a closing tally.
pub fn run() -> bool {
    let tests: [(&str, SelfTest); 20] = [
        ("checker: a clean history passes", clean_history_passes),
        (
            "checker: activation before propagationDelay is invariant 2",
            early_activation_is_invariant_2,
        ),
        (
            "checker: a hand edit restarts the publication clock",
            hand_edit_breaks_continuity,
        ),
        (
            "checker: an Active kid missing from the JWKS is invariant 1",
            active_missing_from_jwks_is_invariant_1,
        ),
        (
            "checker: early removal of a retired key is invariant 3",
            early_removal_is_invariant_3,
        ),
        (
            "checker: a replaced Next key is invariant 5",
            replaced_next_is_invariant_5,
        ),
        (
            "checker: an unrequested early rotation is invariant 5",
            unrequested_early_rotation_is_invariant_5,
        ),
        (
            "checker: one rotate request allows one rotation",
            one_request_one_rotation,
        ),
        (
            "checker: two rotate requests allow two rotations, not three",
            two_requests_allow_two_rotations_not_three,
        ),
        (
            "checker: a scheduled rotation passes",
            scheduled_rotation_passes,
        ),
        (
            "checker: recovery after a deleted Secret is an explained exception",
            recovery_after_deletion_is_explained,
        ),
        (
            "checker: a recovery published late is explained for propagationDelay after",
            delayed_recovery_publication_is_explained_for_propagation_delay,
        ),
        (
            "checker: an unjustified exception is invariant 2",
            unjustified_exception_is_invariant_2,
        ),
        (
            "checker: revocation is an explained exception",
            revocation_is_explained,
        ),
        (
            "checker: a published key no ring held is invariant 5",
            phantom_key_is_invariant_5,
        ),
        (
            "checker: a relist leaves publication unverified, not violated",
            relist_makes_publication_unverifiable,
        ),
        (
            "participants: visibility only moves forward and lags",
            delays_only_move_forward,
        ),
        ("scenario: durations parse", durations_parse),
        (
            "conformance: a writer one rotation behind may put the old Active first",
            stale_writer_may_put_the_old_active_first,
        ),
        (
            "conformance: a document that keeps the old Active first is caught",
            old_active_kept_first_is_caught,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        match test() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
            }
        }
    }
    println!(
        "e2e self-test: {} passed, {failed} failed",
        tests.len() - failed
    );
    failed == 0
}
