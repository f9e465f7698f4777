//! The invariant checker: replays what the watches saw (in resourceVersion order, which
//! is etcd's one order across all objects) and records every violation of DESIGN.md
//! section 2 invariants 1, 2, 3 and 5. Pure: observations and harness actions in,
//! findings out, so it is tested on made-up histories too (`selftest`).
//!
//! Durations come from observation times, which trail the real writes by the watch
//! latency; `TOLERANCE` absorbs the difference between two such latencies. The ring's
//! own times (operator clock, exact) are checked as well.

use std::collections::{BTreeMap, BTreeSet};

use keyrotor::ring::{ActivationException, KeyState};
use serde::Serialize;

use crate::model::{
    Action, ActionKind, Change, JwksView, Observation, PolicyTiming, SecretView, Time, secs,
};

/// Allowed difference between two watch latencies, seconds.
pub const TOLERANCE: f64 = 0.25;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    pub invariant: &'static str,
    pub at: Time,
    pub policy: String,
    pub kid: Option<String>,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Cause {
    Scheduled,
    Requested,
    Revocation,
    Recovery,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    pub at: Time,
    pub policy: String,
    pub from: Option<String>,
    pub to: String,
    pub cause: Cause,
    /// How long the new key had been in the JWKS beyond propagationDelay when the Secret
    /// named it (None for the exceptions).
    pub prepublication_margin: Option<f64>,
    /// From the key's activatedAt (operator clock) to the watch delivering the Secret.
    pub lag: Option<f64>,
}

/// An allowed exception to pre-publication, with why it was allowed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exception {
    pub at: Time,
    pub policy: String,
    pub kid: String,
    pub reason: String,
    /// When the JWKS was first seen holding the kid (before or after `at`): a write
    /// held up between the Secret and the JWKS (a SIGKILL, a restart) delays it.
    pub published_at: Option<Time>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Findings {
    pub violations: Vec<Violation>,
    pub rotations: Vec<Rotation>,
    pub exceptions: Vec<Exception>,
    /// Smallest (time in JWKS before activation) - propagationDelay, seconds.
    pub min_prepublication_margin: Option<f64>,
    /// Smallest (time in JWKS after retirement) - (propagationDelay + maxTokenLifetime).
    pub min_retention_margin: Option<f64>,
    /// Longest time from a key's activatedAt (the operator's clock when it planned the
    /// rotation) to the watch delivering the Secret that names it.
    pub max_activation_lag: Option<f64>,
    /// Watches that had to list again (changes in between may be unseen).
    pub observation_gaps: usize,
    /// Checks that could not be decided because a watch was relisting at the time.
    pub unverifiable: usize,
    pub secret_versions: usize,
    pub jwks_versions: usize,
}

impl Findings {
    /// Rotations of the Active key (scheduled, requested or by revocation); a
    /// recovery after a lost Secret is the fault itself, not a rotation.
    pub fn completed_rotations(&self) -> usize {
        self.rotations
            .iter()
            .filter(|r| r.cause != Cause::Recovery)
            .count()
    }
}

fn min_opt(current: &mut Option<f64>, value: f64) {
    *current = Some(current.map_or(value, |c| c.min(value)));
}

/// Replays one policy's history.
pub fn check(timing: &PolicyTiming, observations: &[Observation], actions: &[Action]) -> Findings {
    let mut replay = Replay::new(timing, actions);
    let mut ordered: Vec<&Observation> = observations
        .iter()
        .filter(|o| match o.change {
            Change::Secret(_) => o.name == timing.secret_name,
            Change::ConfigMap(_) => o.name == timing.config_map_name,
            Change::Policy(_) => o.name == timing.name,
            Change::Gap { .. } => true,
        })
        .collect();
    // Stable: a relist marker keeps its place among equal revisions.
    ordered.sort_by_key(|o| o.rv);
    for observation in ordered {
        replay.apply(observation);
    }
    replay.findings
}

struct Replay<'a> {
    timing: &'a PolicyTiming,
    actions: &'a [Action],
    findings: Findings,
    secret: Option<std::sync::Arc<SecretView>>,
    secret_ever: bool,
    /// Keys the JWKS published before any ring existed (a policy's first keys are
    /// published before its Secret is written): the first ring must hold them.
    ahead_of_first_ring: BTreeSet<String>,
    secret_lost: bool,
    doc: Option<std::sync::Arc<JwksView>>,
    /// Since when each kid has been in the JWKS without a break.
    present_since: BTreeMap<String, Time>,
    /// When the Secret stopped naming each formerly Active kid.
    retired_seen: BTreeMap<String, Time>,
    /// Kids whose early removal was already reported.
    removal_checked: BTreeSet<String>,
    /// Kids that were ever in a ring, with the furthest state seen.
    furthest_state: BTreeMap<String, KeyState>,
    revoked: BTreeSet<String>,
    /// Kids the harness itself put into the JWKS by hand.
    foreign: BTreeSet<String>,
    /// Index of the first rotate request not yet honoured.
    next_request: usize,
    last_activation: Option<Time>,
    /// Kids that were missing from the JWKS while Active under an exception.
    excepted_missing: BTreeSet<String>,
    /// The last rotate-request value the policy watch showed, and whether a new one
    /// arrived since the last activation.
    /// Every rotate-request value made so far (sent, or seen in the policy watch):
    /// each one allows one rotation.
    requested_values: BTreeSet<String>,
    /// Rotations the requests have justified so far.
    requested_rotations: usize,
    /// A watch is relisting: that object's state is unknown.
    secret_gap: bool,
    config_map_gap: bool,
    /// Kids first seen in the JWKS during a relist: since when they were published is
    /// unknown.
    uncertain_since: BTreeSet<String>,
    /// Kids whose retirement was seen during a relist: when it happened is unknown.
    uncertain_retired: BTreeSet<String>,
}

impl<'a> Replay<'a> {
    fn new(timing: &'a PolicyTiming, actions: &'a [Action]) -> Self {
        let foreign = actions
            .iter()
            .filter_map(|a| match &a.kind {
                ActionKind::ConfigMapEdited { policy, added, .. } if policy == &timing.name => {
                    Some(added.clone())
                }
                _ => None,
            })
            .flatten()
            .collect();
        Replay {
            timing,
            actions,
            findings: Findings::default(),
            secret: None,
            secret_ever: false,
            ahead_of_first_ring: BTreeSet::new(),
            secret_lost: false,
            doc: None,
            present_since: BTreeMap::new(),
            retired_seen: BTreeMap::new(),
            removal_checked: BTreeSet::new(),
            furthest_state: BTreeMap::new(),
            revoked: BTreeSet::new(),
            foreign,
            next_request: 0,
            last_activation: None,
            excepted_missing: BTreeSet::new(),
            requested_values: BTreeSet::new(),
            requested_rotations: 0,
            secret_gap: false,
            config_map_gap: false,
            uncertain_since: BTreeSet::new(),
            uncertain_retired: BTreeSet::new(),
        }
    }

    fn violation(&mut self, invariant: &'static str, at: Time, kid: Option<&str>, detail: String) {
        self.findings.violations.push(Violation {
            invariant,
            at,
            policy: self.timing.name.clone(),
            kid: kid.map(str::to_owned),
            detail,
        });
    }

    fn revoked_by(&self, kid: &str, at: Time) -> bool {
        self.revoked.contains(kid)
            || self.actions.iter().any(|a| {
                matches!(&a.kind, ActionKind::Revoked { policy, kid: k }
                    if policy == &self.timing.name && k == kid)
                    && secs(a.at, at) > -TOLERANCE
            })
    }

    fn apply(&mut self, o: &Observation) {
        match &o.change {
            Change::Gap { kind, open } => {
                if *open {
                    self.findings.observation_gaps += 1;
                }
                match *kind {
                    "Secret" => self.secret_gap = *open,
                    "ConfigMap" => self.config_map_gap = *open,
                    _ => {}
                }
            }
            Change::Policy(policy) => {
                if let Some(p) = policy {
                    self.revoked.extend(p.revoked.iter().cloned());
                    // A new annotation value, in etcd order: a request that the API
                    // server stored even if its response never reached the harness.
                    if let Some(value) = &p.rotate_request {
                        self.requested_values.insert(value.clone());
                    }
                }
            }
            Change::Secret(secret) => {
                self.findings.secret_versions += 1;
                self.on_secret(o.at, secret.clone());
            }
            Change::ConfigMap(doc) => {
                self.findings.jwks_versions += 1;
                self.on_jwks(o.at, doc.clone());
            }
        }
        self.check_active_published(o.at);
    }

    /// Invariant 1: the Active kid in the Secret is in the JWKS.
    fn check_active_published(&mut self, at: Time) {
        let Some(secret) = self.secret.clone() else {
            return;
        };
        let Some(kid) = secret.kid.clone() else {
            return;
        };
        if self.secret_gap || self.config_map_gap {
            self.findings.unverifiable += 1;
            return;
        }
        let published = self.doc.as_ref().is_some_and(|d| d.contains(&kid));
        if published {
            return;
        }
        let excepted = secret.key(&kid).and_then(|k| k.exception).is_some();
        if excepted {
            // FirstKey, Revocation and Recovery activate before publication by design;
            // counted once, not a violation.
            self.excepted_missing.insert(kid);
            return;
        }
        self.violation(
            "1",
            at,
            Some(&kid),
            format!(
                "the Secret names {kid} as Active but the JWKS {} lacks it",
                if self.doc.is_some() {
                    "document"
                } else {
                    "ConfigMap (absent)"
                }
            ),
        );
    }

    fn on_secret(&mut self, at: Time, secret: Option<std::sync::Arc<SecretView>>) {
        let Some(new) = secret else {
            // Deleted: the ring is lost; what comes next is a recovery.
            if let Some(old) = self.secret.take()
                && let Some(kid) = old.kid.clone()
            {
                self.retired_seen.entry(kid).or_insert(at);
            }
            self.secret_lost = true;
            return;
        };
        let old = self.secret.clone();
        if let Err(e) = &new.ring {
            self.violation("5", at, None, format!("ring.json unreadable: {e}"));
        }
        self.check_states(at, &new);
        let old_kid = old.as_ref().and_then(|s| s.kid.clone());
        let new_kid = new.kid.clone();
        if new_kid != old_kid
            && let Some(kid) = &new_kid
        {
            self.on_activation(at, old.as_deref(), &new, kid);
        }
        if let (Some(old_kid), true) = (&old_kid, new_kid != old_kid) {
            self.retired_seen.entry(old_kid.clone()).or_insert(at);
            if self.secret_gap {
                self.uncertain_retired.insert(old_kid.clone());
            }
        }
        self.check_next_replaced(at, old.as_deref(), &new);
        if !self.secret_ever {
            let held: BTreeSet<&str> = new.ring.iter().flatten().map(|k| k.kid.as_str()).collect();
            for kid in std::mem::take(&mut self.ahead_of_first_ring) {
                if !held.contains(kid.as_str()) && !self.foreign.contains(&kid) {
                    self.violation(
                        "5",
                        at,
                        Some(&kid),
                        format!(
                            "the JWKS published {kid} before the first ring, which does not hold it"
                        ),
                    );
                }
            }
        }
        self.secret = Some(new);
        self.secret_ever = true;
        self.secret_lost = false;
    }

    /// Invariant 5: states only move forward (Next → Active → Retired).
    fn check_states(&mut self, at: Time, secret: &SecretView) {
        let Ok(keys) = &secret.ring else { return };
        for key in keys {
            let rank = |s: KeyState| match s {
                KeyState::Next => 0,
                KeyState::Active => 1,
                KeyState::Retired => 2,
            };
            match self.furthest_state.get(&key.kid).copied() {
                Some(seen) if rank(key.state) < rank(seen) && !self.secret_lost => {
                    self.violation(
                        "5",
                        at,
                        Some(&key.kid),
                        format!("key {} went back from {seen} to {}", key.kid, key.state),
                    );
                }
                Some(seen) if rank(key.state) <= rank(seen) => {}
                _ => {
                    self.furthest_state.insert(key.kid.clone(), key.state);
                }
            }
        }
    }

    /// Invariant 5: a Next key leaves its slot only by becoming Active (or by being
    /// revoked, or with a lost ring).
    fn check_next_replaced(&mut self, at: Time, old: Option<&SecretView>, new: &SecretView) {
        let Some(old_next) = old.and_then(|s| s.next_kid()) else {
            return;
        };
        if new.next_kid() == Some(old_next) {
            return;
        }
        if self.secret_gap {
            // Versions in between may be unseen (an activation among them).
            self.findings.unverifiable += 1;
            return;
        }
        let activated = new.kid.as_deref() == Some(old_next);
        if activated || self.revoked_by(old_next, at) || self.secret_lost {
            return;
        }
        let detail = match new.next_kid() {
            Some(other) => {
                format!("Next key {old_next} was replaced by {other} without becoming Active")
            }
            None => format!("Next key {old_next} vanished without becoming Active"),
        };
        self.violation("5", at, Some(old_next), detail);
    }

    fn on_activation(&mut self, at: Time, old: Option<&SecretView>, new: &SecretView, kid: &str) {
        let facts = new.key(kid).cloned();
        if let Some(activated_at) = facts.as_ref().and_then(|f| f.activated_at) {
            let lag = secs(activated_at, at);
            let max = self.findings.max_activation_lag.get_or_insert(lag);
            *max = max.max(lag);
        }
        let exception = facts.as_ref().and_then(|f| f.exception);
        let old_kid = old.and_then(|s| s.kid.clone());
        let first = !self.secret_ever;
        let pd = self.timing.propagation_delay;

        if let Some(exception) = exception {
            let justified = match exception {
                ActivationException::FirstKey => first,
                ActivationException::Recovery => {
                    self.secret_lost || first || old.is_some_and(|s| s.ring.is_err())
                }
                ActivationException::Revocation => {
                    old_kid.as_deref().is_some_and(|k| self.revoked_by(k, at))
                }
            };
            let reason = match exception {
                ActivationException::FirstKey => "the very first key of the ring",
                ActivationException::Recovery => "the ring was lost (Secret deleted) and rebuilt",
                ActivationException::Revocation => {
                    "the Active key was revoked and no published successor existed"
                }
            };
            if justified {
                self.findings.exceptions.push(Exception {
                    at,
                    policy: self.timing.name.clone(),
                    kid: kid.to_owned(),
                    reason: format!("{exception}: {reason}"),
                    published_at: self.present_since.get(kid).copied(),
                });
            } else {
                self.violation(
                    "2",
                    at,
                    Some(kid),
                    format!("{kid} became Active without pre-publication, claiming {exception}, which does not apply here"),
                );
            }
            if !first {
                self.findings.rotations.push(Rotation {
                    at,
                    policy: self.timing.name.clone(),
                    from: old_kid,
                    to: kid.to_owned(),
                    cause: match exception {
                        ActivationException::Revocation => Cause::Revocation,
                        _ => Cause::Recovery,
                    },
                    prepublication_margin: None,
                    lag: facts
                        .as_ref()
                        .and_then(|f| f.activated_at)
                        .map(|a| secs(a, at)),
                });
            }
            // An exceptional activation answers no request: the operator may have
            // planned it before it saw one made meanwhile, and honour that one next.
            self.note_requests(facts.as_ref().and_then(|f| f.activated_at).unwrap_or(at));
            self.last_activation = facts.and_then(|f| f.activated_at).or(Some(at));
            return;
        }

        // Invariant 2, as observed: continuously in the JWKS for propagationDelay.
        let uncertain = self.uncertain_since.contains(kid);
        let margin = match self.present_since.get(kid) {
            None if self.config_map_gap => {
                self.findings.unverifiable += 1;
                None
            }
            None => {
                self.violation(
                    "2",
                    at,
                    Some(kid),
                    format!("{kid} became Active while not in the JWKS"),
                );
                None
            }
            Some(since) => {
                let margin = secs(*since, at) - pd;
                if margin < -TOLERANCE && uncertain {
                    // First seen in a relist: it may have been published earlier.
                    self.findings.unverifiable += 1;
                } else if margin < -TOLERANCE {
                    self.violation(
                        "2",
                        at,
                        Some(kid),
                        format!(
                            "{kid} became Active {:.3}s after it was (continuously) published; propagationDelay is {pd}s",
                            secs(*since, at)
                        ),
                    );
                }
                if !uncertain {
                    min_opt(&mut self.findings.min_prepublication_margin, margin);
                }
                Some(margin)
            }
        };
        // Invariant 2, as the ring claims it (operator clock).
        if let Some(f) = &facts {
            match (f.published_at, f.activated_at) {
                (Some(p), Some(a)) if secs(p, a) + 1e-6 < pd => self.violation(
                    "2",
                    at,
                    Some(kid),
                    format!("ring says {kid} was published at {p} and activated at {a}, less than propagationDelay apart"),
                ),
                (None, _) => self.violation(
                    "2",
                    at,
                    Some(kid),
                    format!("ring has no publishedAt for the Active key {kid}"),
                ),
                _ => {}
            }
        }

        if first {
            // The first key always carries FirstKey; a first key without it is fine
            // only if it was pre-published, which the checks above just verified.
            self.last_activation = facts.and_then(|f| f.activated_at).or(Some(at));
            return;
        }

        // Invariant 5: never early. Early is allowed by a rotate request made before
        // this activation, or by the revocation of the previous key.
        // Requests count by the operator's own activation time: one sent after it (but
        // before the watch delivered the Secret) cannot have caused it.
        let activated_at = facts.as_ref().and_then(|f| f.activated_at).unwrap_or(at);
        let revoked = old_kid.as_deref().is_some_and(|k| self.revoked_by(k, at));
        // A rotation on schedule or by revocation answers no request: one pending
        // meanwhile may still be honoured next.
        let on_schedule = self.last_activation.is_some_and(|previous| {
            secs(previous, activated_at) >= self.timing.rotation_interval - TOLERANCE
        });
        let requested = if revoked || on_schedule {
            self.note_requests(activated_at);
            false
        } else {
            self.consume_requests(activated_at)
        };
        let cause = if revoked {
            Cause::Revocation
        } else if requested {
            Cause::Requested
        } else {
            if let Some(previous) = self.last_activation {
                let gap = secs(previous, activated_at);
                if gap < self.timing.rotation_interval - TOLERANCE {
                    self.violation(
                        "5",
                        at,
                        Some(kid),
                        format!(
                            "rotated early: {kid} became Active {gap:.3}s after the previous activation, with no rotate request pending (rotationInterval {}s)",
                            self.timing.rotation_interval
                        ),
                    );
                }
            }
            Cause::Scheduled
        };
        self.findings.rotations.push(Rotation {
            at,
            policy: self.timing.name.clone(),
            from: old_kid,
            to: kid.to_owned(),
            cause,
            prepublication_margin: margin,
            lag: Some(secs(activated_at, at)),
        });
        self.last_activation = Some(activated_at);
    }

    /// Marks every rotate request made before `at` as honoured; whether there was one
    /// (sent by the harness, or seen on the policy before this activation).
    /// Whether a rotate request made before `at` is still unanswered; if so, this
    /// rotation answers it. Two values set before the operator saw the first may be
    /// honoured one after the other: each value allows one rotation.
    fn consume_requests(&mut self, at: Time) -> bool {
        self.note_requests(at);
        if self.requested_values.len() > self.requested_rotations {
            self.requested_rotations += 1;
            true
        } else {
            false
        }
    }

    /// Takes in the rotate requests the harness sent before `at`.
    fn note_requests(&mut self, at: Time) {
        while let Some(action) = self.actions.get(self.next_request) {
            if secs(action.at, at) < 0.0 {
                break;
            }
            if let ActionKind::RotateRequested { policy, value } = &action.kind
                && policy == &self.timing.name
            {
                self.requested_values.insert(value.clone());
            }
            self.next_request += 1;
        }
    }

    fn on_jwks(&mut self, at: Time, doc: Option<std::sync::Arc<JwksView>>) {
        let kids: BTreeSet<String> = doc
            .as_ref()
            .map(|d| d.kids.iter().cloned().collect())
            .unwrap_or_default();
        self.present_since.retain(|kid, _| kids.contains(kid));
        self.uncertain_since.retain(|kid| kids.contains(kid));
        for kid in &kids {
            if !self.present_since.contains_key(kid) && self.config_map_gap {
                self.uncertain_since.insert(kid.clone());
            }
            self.present_since.entry(kid.clone()).or_insert(at);
            for exception in &mut self.findings.exceptions {
                if &exception.kid == kid && exception.published_at.is_none() {
                    exception.published_at = Some(at);
                }
            }
            if !self.secret_ever {
                self.ahead_of_first_ring.insert(kid.clone());
                continue;
            }
            // Invariant 5: nothing is published that no ring ever held.
            if !self.furthest_state.contains_key(kid)
                && !self.foreign.contains(kid)
                && !self.secret_lost
            {
                self.violation(
                    "5",
                    at,
                    Some(kid),
                    format!("the JWKS publishes {kid}, which no ring ever held"),
                );
                // Report once.
                self.furthest_state.insert(kid.clone(), KeyState::Retired);
            }
        }
        // Invariant 3: every key Active within propagationDelay + maxTokenLifetime stays.
        let retention = self.timing.propagation_delay + self.timing.max_token_lifetime;
        let active = self.secret.as_ref().and_then(|s| s.kid.clone());
        let retired: Vec<(String, Time)> = self
            .retired_seen
            .iter()
            .map(|(k, t)| (k.clone(), *t))
            .collect();
        for (kid, retired_at) in retired {
            if kids.contains(&kid)
                || Some(&kid) == active.as_ref()
                || self.removal_checked.contains(&kid)
            {
                continue;
            }
            self.removal_checked.insert(kid.clone());
            if self.revoked_by(&kid, at) {
                continue;
            }
            let kept = secs(retired_at, at);
            let margin = kept - retention;
            if self.uncertain_retired.contains(&kid) {
                // Retirement seen late, in a relist: "kept" is underestimated.
                self.findings.unverifiable += 1;
                continue;
            }
            min_opt(&mut self.findings.min_retention_margin, margin);
            if margin < -TOLERANCE {
                self.violation(
                    "3",
                    at,
                    Some(&kid),
                    format!(
                        "{kid} left the JWKS {kept:.3}s after it stopped being Active; it must stay propagationDelay + maxTokenLifetime = {retention}s"
                    ),
                );
            }
        }
        self.doc = doc;
    }
}
