//! The policy's status: public facts from the plan and the `Ready`, `KeyPublished` and
//! `Degraded` conditions. Pure and deterministic: the same inputs give the same status,
//! and timestamps move only on real transitions, so a reconcile with nothing to do
//! writes nothing.

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{JwtSigningKeyStatus, KeyState as StatusKeyState, KeyStatus};
use crate::plan::{Degraded, KeySummary, Plan};
use crate::ring::KeyState;

pub const READY: &str = "Ready";
pub const KEY_PUBLISHED: &str = "KeyPublished";
pub const DEGRADED: &str = "Degraded";

/// A condition's status, reason and message (CamelCase reason, human message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            status: true,
            reason,
            message: message.into(),
        }
    }
    pub fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// Something the controller found and repaired in this reconcile. Reported as
/// `Degraded=True` for `propagationDelay` after the repair (the time the repaired
/// objects take to reach every reader), and as a Warning Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// The JWKS ConfigMap was missing and was written again.
    JwksRestored { target: String },
    /// The JWKS ConfigMap did not hold this policy's keys as last written (edited by
    /// hand, or a write was lost) and was rewritten.
    JwksRepaired { target: String },
    /// The status was empty while the ring had keys; it was rebuilt from the ring.
    StatusRestored,
}

impl Repair {
    pub fn reason(&self) -> &'static str {
        match self {
            Repair::JwksRestored { .. } => "JwksRestored",
            Repair::JwksRepaired { .. } => "JwksRepaired",
            Repair::StatusRestored => "StatusRestored",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Repair::JwksRestored { target } => {
                format!("JWKS ConfigMap {target} was missing; written again from the key ring")
            }
            Repair::JwksRepaired { target } => format!(
                "JWKS ConfigMap {target} did not hold this policy's keys as written; rewritten from the key ring"
            ),
            Repair::StatusRestored => {
                "status was empty; rebuilt from the key ring in the Secret".to_owned()
            }
        }
    }
}

/// Reasons that stay on `Degraded` for `propagationDelay` after they were set.
const REPAIR_REASONS: [&str; 3] = ["JwksRestored", "JwksRepaired", "StatusRestored"];

/// The reason and message of a planner finding.
pub fn degraded_verdict(finding: &Degraded) -> (&'static str, String) {
    match finding {
        Degraded::RingRebuilt { cause, at } => (
            "RingRebuilt",
            format!(
                "key ring rebuilt at {}: {cause}; the key activated then skipped pre-publication",
                at.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        ),
        Degraded::TargetMissing { target } => (
            "JwksMissing",
            format!("JWKS ConfigMap {target} does not exist"),
        ),
        Degraded::ActiveNotPublished { kid, targets } => (
            "ActiveKeyNotPublished",
            format!("active key {kid} is missing from {}", targets.join(", ")),
        ),
        Degraded::RotationWaiting { kid, targets } if targets.is_empty() => (
            "RotationWaiting",
            format!(
                "rotation is due; next key {kid} has not been published for propagationDelay yet"
            ),
        ),
        Degraded::RotationWaiting { kid, targets } => (
            "RotationWaiting",
            format!(
                "rotation is due; next key {kid} is missing from {}",
                targets.join(", ")
            ),
        ),
        Degraded::CertificateFailed { kid, error } => (
            "CertificateFailed",
            format!("certificate for key {kid} could not be issued: {error}"),
        ),
    }
}

/// Converts a time to the API's whole-second timestamp.
pub fn to_time(at: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(at.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn from_time(at: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.0.as_second(), 0)
}

fn key_status(key: &KeySummary) -> KeyStatus {
    KeyStatus {
        kid: key.kid.clone(),
        state: match key.state {
            KeyState::Next => StatusKeyState::Next,
            KeyState::Active => StatusKeyState::Active,
            KeyState::Retired => StatusKeyState::Retired,
        },
        published_at: key.published_at.map(to_time),
        activates_at: key.activates_at.map(to_time),
        activated_at: key.activated_at.map(to_time),
        retires_at: key.retires_at.map(to_time),
        retired_at: key.retired_at.map(to_time),
        removed_at: key.removes_at.map(to_time),
        activated_without_prepublication: key
            .activated_without_prepublication
            .map(|exception| exception.to_string()),
        recovered: key.recovered.then_some(true),
    }
}

/// The verdicts for a successful reconcile of `plan`.
pub struct Verdicts {
    pub ready: Verdict,
    pub key_published: Verdict,
    pub degraded: Verdict,
}

/// Judges a plan that was applied. `problems` are findings of the apply step (reason,
/// message), reported before the planner's.
pub fn judge(
    plan: &Plan,
    target: &str,
    problems: &[(&'static str, String)],
    repairs: &[Repair],
) -> Verdicts {
    let summaries = plan.key_summaries();
    let active = summaries.iter().find(|k| k.state == KeyState::Active);
    let next = summaries.iter().find(|k| k.state == KeyState::Next);
    let active_missing = plan
        .degraded
        .iter()
        .any(|d| matches!(d, Degraded::ActiveNotPublished { .. }));

    let ready = match (active, problems.first()) {
        (_, Some((reason, message))) => Verdict::no(reason, message.clone()),
        (None, None) => Verdict::no("NoActiveKey", "the key ring has no active key"),
        (Some(key), None) if active_missing => Verdict::no(
            "ActiveKeyNotPublished",
            format!("active key {} is not yet in {target}", key.kid),
        ),
        (Some(key), None) => Verdict::yes(
            "KeyActive",
            format!("key {} signs; public keys published in {target}", key.kid),
        ),
    };

    let key_published = match next {
        Some(key) if key.published_at.is_some() => Verdict::yes(
            "NextKeyPublished",
            format!("next key {} is in every target JWKS", key.kid),
        ),
        Some(key) => Verdict::no(
            "NextKeyPending",
            format!(
                "next key {} is written to {target}, not yet observed there",
                key.kid
            ),
        ),
        None => Verdict::no("NoNextKey", "the key ring has no next key"),
    };

    let mut findings: Vec<(&'static str, String)> = problems.to_vec();
    findings.extend(repairs.iter().map(|r| (r.reason(), r.message())));
    findings.extend(plan.degraded.iter().map(degraded_verdict));
    let degraded = match findings.first() {
        Some((reason, _)) => Verdict::yes(
            reason,
            findings
                .iter()
                .map(|(_, message)| message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => Verdict::no("AsExpected", "nothing to report"),
    };
    Verdicts {
        ready,
        key_published,
        degraded,
    }
}

/// Verdicts when the spec cannot be used at all.
pub fn invalid_spec(message: &str) -> Verdicts {
    Verdicts {
        ready: Verdict::no("InvalidSpec", message),
        key_published: Verdict::no("InvalidSpec", message),
        degraded: Verdict::yes("InvalidSpec", message),
    }
}

/// Verdicts when the reconcile could not complete, keeping the last known facts.
pub fn failed(reason: &'static str, message: &str) -> Verdicts {
    Verdicts {
        ready: Verdict::no(reason, message),
        key_published: Verdict::no(reason, message),
        degraded: Verdict::yes(reason, message),
    }
}

/// Builds a condition, keeping the previous `lastTransitionTime` unless the status
/// flips or a repair is newly reported (a repair is its own event in time).
fn condition(
    type_: &str,
    verdict: &Verdict,
    previous: &[Condition],
    generation: Option<i64>,
    now: DateTime<Utc>,
    new_repair: bool,
) -> Condition {
    let status = if verdict.status { "True" } else { "False" };
    let kept = previous
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status && !new_repair)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.to_owned(),
        message: verdict.message.clone(),
        observed_generation: generation,
        last_transition_time: kept.unwrap_or_else(|| to_time(now)),
    }
}

/// A repair reported on the previous `Degraded` condition that is still within its
/// reporting window, and when that window ends.
pub fn lingering_repair(
    previous: &[Condition],
    propagation_delay: TimeDelta,
    now: DateTime<Utc>,
) -> Option<(Condition, DateTime<Utc>)> {
    let degraded = previous
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")?;
    if !REPAIR_REASONS.contains(&degraded.reason.as_str()) {
        return None;
    }
    let until = from_time(&degraded.last_transition_time)? + propagation_delay;
    (until > now).then(|| (degraded.clone(), until))
}

/// Inputs of [`status`] besides the plan.
pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub previous: &'a [Condition],
    pub verdicts: Verdicts,
    /// A repair found in this reconcile.
    pub new_repair: bool,
    /// Keep this `Degraded` condition as it is (a repair still being reported), unless
    /// the verdicts report a problem of their own.
    pub lingering: Option<Condition>,
    pub now: DateTime<Utc>,
}

/// The status for an applied plan (or, with `plan: None`, for a policy that could not
/// be planned: only the conditions and observed generation change).
pub fn status(
    plan: Option<&Plan>,
    previous: Option<&JwtSigningKeyStatus>,
    input: StatusInput<'_>,
) -> JwtSigningKeyStatus {
    let mut status = match plan {
        Some(plan) => {
            let keys: Vec<KeyStatus> = plan.key_summaries().iter().map(key_status).collect();
            JwtSigningKeyStatus {
                active_key_id: plan.ring.active().map(|k| k.kid.clone()),
                next_key_id: plan.ring.next().map(|k| k.kid.clone()),
                next_rotation_time: plan.next_rotation.map(to_time),
                key_count: i32::try_from(keys.len()).ok(),
                keys,
                last_rotate_request: plan.ring.last_rotate_request.clone(),
                ..JwtSigningKeyStatus::default()
            }
        }
        None => previous.cloned().unwrap_or_default(),
    };
    status.observed_generation = input.generation;
    let degraded = match input.lingering {
        Some(lingering) if !input.verdicts.degraded.status => Condition {
            observed_generation: input.generation,
            ..lingering
        },
        _ => condition(
            DEGRADED,
            &input.verdicts.degraded,
            input.previous,
            input.generation,
            input.now,
            input.new_repair,
        ),
    };
    status.conditions = vec![
        condition(
            READY,
            &input.verdicts.ready,
            input.previous,
            input.generation,
            input.now,
            false,
        ),
        condition(
            KEY_PUBLISHED,
            &input.verdicts.key_published,
            input.previous,
            input.generation,
            input.now,
            false,
        ),
        degraded,
    ];
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid time")
    }

    fn conditions(
        verdicts: Verdicts,
        previous: &[Condition],
        now: DateTime<Utc>,
    ) -> Vec<Condition> {
        status(
            None,
            None,
            StatusInput {
                generation: Some(1),
                previous,
                verdicts,
                new_repair: false,
                lingering: None,
                now,
            },
        )
        .conditions
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = conditions(failed("ApplyFailed", "boom"), &[], at(0));
        let same = conditions(failed("ApplyFailed", "boom again"), &first, at(10));
        assert_eq!(first[0].last_transition_time, same[0].last_transition_time);
        assert_eq!(same[0].message, "boom again");
        let flipped = conditions(
            Verdicts {
                ready: Verdict::yes("KeyActive", "ok"),
                key_published: Verdict::yes("NextKeyPublished", "ok"),
                degraded: Verdict::no("AsExpected", "ok"),
            },
            &same,
            at(20),
        );
        assert_eq!(flipped[0].last_transition_time, to_time(at(20)));
        assert_eq!(flipped[0].status, "True");
        assert_eq!(flipped[2].status, "False");
    }

    #[test]
    fn repairs_linger_for_the_propagation_delay() {
        let degraded = Condition {
            type_: DEGRADED.into(),
            status: "True".into(),
            reason: "JwksRepaired".into(),
            message: "rewritten".into(),
            observed_generation: Some(1),
            last_transition_time: to_time(at(0)),
        };
        let delay = TimeDelta::seconds(30);
        let previous = [degraded.clone()];
        let (kept, until) = lingering_repair(&previous, delay, at(10)).expect("still reported");
        assert_eq!(kept, degraded);
        assert_eq!(until, at(30));
        assert!(lingering_repair(&previous, delay, at(30)).is_none());

        let planner_finding = Condition {
            reason: "RingRebuilt".into(),
            ..degraded
        };
        assert!(lingering_repair(&[planner_finding], delay, at(10)).is_none());
    }

    #[test]
    fn times_are_whole_seconds() {
        let precise = at(5) + TimeDelta::milliseconds(999);
        assert_eq!(to_time(precise), to_time(at(5)));
        assert_eq!(from_time(&to_time(precise)), Some(at(5)));
    }
}
