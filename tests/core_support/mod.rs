//! A small simulated world for lifecycle tests: one policy, its stored ring (the
//! Secret), its target JWKS documents with write delays and faults, and the operator
//! reconciling through `plan::step`. Everything is driven by an explicit clock.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use keyrotor::jwks;
use keyrotor::keys::{Algorithm, RsaBits};
use keyrotor::keys::{PublicJwk, SeededKeyGenerator};
use keyrotor::plan::{
    ActivationCause, Observed, Plan, Policy, StepError, StoredRing, TargetObservation, Transition,
    step,
};
use keyrotor::ring::Ring;

/// What the Secret holds.
#[derive(Clone, Debug)]
pub enum SecretState {
    /// A ring (stored as bytes, re-parsed on every read like the controller does).
    Stored(Vec<u8>),
    /// Deleted.
    Deleted,
    /// Overwritten with garbage.
    Corrupt(Vec<u8>),
}

/// One target JWKS (a ConfigMap).
#[derive(Clone, Debug)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// Current JWKS bytes (`None`: the ConfigMap does not exist).
    pub document: Option<Vec<u8>>,
    /// A write in flight: lands at the time with the given document.
    pub pending: Option<(DateTime<Utc>, Vec<u8>)>,
    /// Deleted by a fault and not rewritten since.
    pub damaged: bool,
    /// Every change of its kid set: (time, kids).
    pub history: Vec<(DateTime<Utc>, Option<BTreeSet<String>>)>,
}

impl Target {
    pub fn new(name: String, start: DateTime<Utc>) -> Self {
        Target {
            name,
            document: None,
            pending: None,
            damaged: false,
            history: vec![(start, None)],
        }
    }

    pub fn keys(&self) -> Vec<PublicJwk> {
        self.document
            .as_deref()
            .map(|d| jwks::parse(d).expect("our own JWKS parses").public_jwks())
            .unwrap_or_default()
    }

    pub fn kids(&self) -> Option<BTreeSet<String>> {
        self.document
            .as_deref()
            .map(|d| jwks::parse(d).expect("our own JWKS parses").kids())
    }

    fn record(&mut self, at: DateTime<Utc>) {
        let kids = self.kids();
        self.history.push((at, kids));
    }

    /// Whether `kid` was in this target at every instant of `[from, to]`.
    pub fn continuously_contains(&self, kid: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        // The entry in force at `from`, then every change up to `to`.
        let start = self
            .history
            .iter()
            .rposition(|(at, _)| *at <= from)
            .unwrap_or(0);
        self.history[start..]
            .iter()
            .take_while(|(at, _)| *at <= to)
            .all(|(_, kids)| kids.as_ref().is_some_and(|k| k.contains(kid)))
    }
}

/// When a key was Active: from, until (`None`: still Active).
pub type ActiveInterval = (DateTime<Utc>, Option<DateTime<Utc>>);

/// The simulated world.
pub struct World {
    pub policy: Policy,
    pub generator: SeededKeyGenerator,
    pub secret: SecretState,
    pub targets: Vec<Target>,
    pub status_kids: Vec<String>,
    pub now: DateTime<Utc>,
    /// Every ring the Secret held, with the time it was written.
    pub secret_history: Vec<(DateTime<Utc>, Option<Ring>)>,
}

impl World {
    pub fn new(policy: Policy, targets: usize, seed: u64, start: DateTime<Utc>) -> Self {
        World {
            policy,
            generator: SeededKeyGenerator::new(seed),
            secret: SecretState::Deleted,
            targets: (0..targets)
                .map(|i| Target::new(format!("ns/jwks-{i}"), start))
                .collect(),
            status_kids: Vec::new(),
            now: start,
            secret_history: vec![(start, None)],
        }
    }

    pub fn stored_ring(&self) -> StoredRing {
        match &self.secret {
            SecretState::Stored(bytes) | SecretState::Corrupt(bytes) => {
                StoredRing::from_bytes(Some(bytes))
            }
            SecretState::Deleted => StoredRing::Missing,
        }
    }

    pub fn ring(&self) -> Option<Ring> {
        match self.stored_ring() {
            StoredRing::Present(ring) => Some(ring),
            _ => None,
        }
    }

    pub fn observed(&self) -> Observed {
        let mut recoverable = Vec::new();
        let mut seen = BTreeSet::new();
        for target in &self.targets {
            for key in target.keys() {
                if seen.insert(key.kid.clone()) {
                    recoverable.push(key);
                }
            }
        }
        Observed {
            ring: self.stored_ring(),
            targets: self
                .targets
                .iter()
                .map(|t| TargetObservation {
                    name: t.name.clone(),
                    kids: t.kids(),
                    since: Default::default(),
                })
                .collect(),
            recoverable,
            status_kids: self.status_kids.clone(),
        }
    }

    /// One reconcile at `now`: plan, store the ring (Secret first), then send the JWKS
    /// to every target; `delay(i)` says when target `i`'s write lands.
    pub fn reconcile(
        &mut self,
        mut delay: impl FnMut(usize) -> TimeDelta,
    ) -> Result<(Observed, Plan), StepError> {
        let observed = self.observed();
        let plan = step(&self.policy, &observed, self.now, &self.generator)?;
        let bytes = plan.ring.to_bytes();
        let changed = match &self.secret {
            SecretState::Stored(old) => *old != bytes,
            _ => true,
        };
        if changed {
            self.secret = SecretState::Stored(bytes);
            self.secret_history
                .push((self.now, Some(plan.ring.clone())));
        }
        self.status_kids = plan.ring.keys.iter().map(|k| k.kid.clone()).collect();
        let document = jwks::render(&plan.publish).expect("JWKS fits");
        for (i, target) in self.targets.iter_mut().enumerate() {
            if target.document.as_ref() == Some(&document) && target.pending.is_none() {
                continue;
            }
            let lands = self.now + delay(i);
            // A newer write replaces one in flight; the target gets the newest content,
            // no later than the earlier write would have landed.
            let lands = match &target.pending {
                Some((earlier, _)) => lands.min(*earlier),
                None => lands,
            };
            target.pending = Some((lands, document.clone()));
        }
        self.land_writes();
        Ok((observed, plan))
    }

    /// Applies every write that has landed by `now`; returns whether any did.
    pub fn land_writes(&mut self) -> bool {
        let mut any = false;
        for target in &mut self.targets {
            if let Some((at, _)) = &target.pending
                && *at <= self.now
            {
                let (_, document) = target.pending.take().expect("checked above");
                if target.document.as_ref() != Some(&document) {
                    target.document = Some(document);
                    target.record(self.now);
                }
                target.damaged = false;
                any = true;
            }
        }
        any
    }

    /// The earliest pending write.
    pub fn next_landing(&self) -> Option<DateTime<Utc>> {
        self.targets
            .iter()
            .filter_map(|t| t.pending.as_ref().map(|(at, _)| *at))
            .min()
    }

    /// Fault: a target ConfigMap is deleted (writes in flight to it are lost).
    pub fn delete_target(&mut self, i: usize) {
        let target = &mut self.targets[i];
        target.document = None;
        target.pending = None;
        target.damaged = true;
        target.record(self.now);
    }

    /// Fault: the Secret is deleted.
    pub fn delete_secret(&mut self) {
        self.secret = SecretState::Deleted;
        self.secret_history.push((self.now, None));
    }

    /// Fault: the Secret's ring.json is overwritten with garbage.
    pub fn corrupt_secret(&mut self) {
        self.secret = SecretState::Corrupt(b"{\"version\":1,\"keys\":[{\"kid\":3}]}".to_vec());
        self.secret_history.push((self.now, None));
    }

    /// Kid → every interval during which the Secret's Active key was that kid. A
    /// deleted or corrupt Secret keeps the last Active key signing (signers still have
    /// the old files) until a new ring is written.
    pub fn active_intervals(&self) -> BTreeMap<String, Vec<ActiveInterval>> {
        let mut intervals: BTreeMap<String, Vec<ActiveInterval>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (at, ring) in &self.secret_history {
            let Some(ring) = ring else { continue };
            let active = ring.active().map(|k| k.kid.clone());
            if active != current {
                if let Some(old) = &current
                    && let Some(last) = intervals.get_mut(old).and_then(|v| v.last_mut())
                {
                    last.1 = Some(*at);
                }
                if let Some(new) = &active {
                    intervals.entry(new.clone()).or_default().push((*at, None));
                }
                current = active;
            }
        }
        intervals
    }
}

/// Deterministic pseudo-random numbers for delays and jitter (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A random duration in `[0, max]` at second resolution.
    pub fn duration_up_to(&mut self, max: TimeDelta) -> TimeDelta {
        TimeDelta::seconds(self.below(max.num_seconds().max(0) as u64 + 1) as i64)
    }
}

// Shared by the scenario tests: a clock origin, a daily policy, one reconcile and
// the activations it made.

pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

pub fn hours(h: i64) -> TimeDelta {
    TimeDelta::hours(h)
}

pub fn minutes(m: i64) -> TimeDelta {
    TimeDelta::minutes(m)
}

pub fn policy() -> Policy {
    Policy {
        alg: Algorithm::ES256,
        rsa_bits: RsaBits::default(),
        rotation_interval: hours(24),
        max_token_lifetime: hours(1),
        propagation_delay: minutes(15),
        paused: false,
        revoked: BTreeSet::new(),
        certificate: false,
        subject: "auth/api-tokens".into(),
        rotate_request: None,
    }
}

/// A world whose writes land at once, reconciled at `at`.
pub fn reconcile(world: &mut World, at: DateTime<Utc>) -> keyrotor::plan::Plan {
    world.now = at;
    world.land_writes();
    let (_, plan) = world.reconcile(|_| TimeDelta::zero()).unwrap();
    plan
}

pub fn activated(plan: &keyrotor::plan::Plan) -> Vec<(String, ActivationCause)> {
    plan.transitions
        .iter()
        .filter_map(|t| match t {
            Transition::Activated { kid, cause, .. } => Some((kid.clone(), *cause)),
            _ => None,
        })
        .collect()
}
