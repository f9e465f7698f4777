//! The key lifecycle as a pure function: `plan(policy, observed, now)` decides what the
//! ring must look like at `now`, which keys to generate, what to publish and when to
//! wake up next. No I/O, no clock reads, no randomness: keys come in from the caller
//! ([`plan_with_keys`]) or through a [`KeyGenerator`] ([`step`]).
//!
//! Rules (docs/architecture.md):
//! - A Next key always exists; the very first key (and a rebuilt ring's key) becomes
//!   Active at once and a Next is created at once.
//! - A key's `publishedAt` is set when every target JWKS is observed to contain it; a
//!   Next key's is cleared when a target is observed without it.
//! - The Next key becomes Active at `max(activatedAt + rotationInterval, publishedAt +
//!   propagationDelay)`; a new rotate-request value makes the rotation due at once but
//!   still waits for `publishedAt + propagationDelay`. However late the wake-up, one
//!   rotation happens per plan, never of an unpublished key.
//! - `paused` stops scheduled rotation only: publication, removal of expired Retired
//!   keys, rotate requests and revocations still apply.
//! - Revoked kids leave the ring and the published set at once. A revoked Active key is
//!   replaced by the Next key if it is published, else by a fresh key.
//! - A Retired key has no private half and is removed at `retiredAt +
//!   propagationDelay + maxTokenLifetime`.
//! - A lost or unreadable ring is rebuilt: public keys recovered from the targets
//!   become Retired at `now`, a fresh key becomes Active at once.
//!
//! `plan` is deterministic and idempotent: applied to its own output ring with the same
//! `now` and the same observations it changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};

use crate::keys::{
    self, Algorithm, KeyError, KeyGenerator, KeyMaterial, KeyType, PublicJwk, RsaBits,
};
use crate::ring::{
    ActivationException, KeyCertificate, KeyState, Ring, RingError, RingKey, RingRebuild,
};

/// The policy, as a domain struct (no Kubernetes types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Signature algorithm of new keys.
    pub alg: Algorithm,
    /// RSA modulus size of new keys (ignored for other algorithms).
    pub rsa_bits: RsaBits,
    /// How long each key signs.
    pub rotation_interval: TimeDelta,
    /// Longest `exp - iat` of any token signed with a key.
    pub max_token_lifetime: TimeDelta,
    /// Worst case for an update to reach every signer and verifier.
    pub propagation_delay: TimeDelta,
    /// Stop scheduled rotation (publication and removal go on).
    pub paused: bool,
    /// Kids that must leave the JWKS now and never return.
    pub revoked: BTreeSet<String>,
    /// Issue a self-signed certificate per key.
    pub certificate: bool,
    /// Certificate subject common name, e.g. `"<namespace>/<name>"`.
    pub subject: String,
    /// Current value of the `keyrotor.dev/rotate-request` annotation.
    pub rotate_request: Option<String>,
}

impl Policy {
    /// Whether the rotate request is one the stored ring has not honoured yet (a lost
    /// or unreadable ring has honoured none).
    pub fn requests_rotation_of(&self, ring: &StoredRing) -> bool {
        match ring {
            StoredRing::Present(ring) => self.requests_rotation_after(&ring.last_rotate_request),
            StoredRing::Missing | StoredRing::Corrupt(_) => self.rotate_request.is_some(),
        }
    }

    /// Whether the rotate request differs from `honoured`, the last one a ring honoured.
    fn requests_rotation_after(&self, honoured: &Option<String>) -> bool {
        self.rotate_request.is_some() && self.rotate_request != *honoured
    }

    /// How long a Retired key stays published: `propagationDelay + maxTokenLifetime`.
    pub fn retention(&self) -> TimeDelta {
        sum(self.propagation_delay, self.max_token_lifetime)
    }

    /// Validity given to a new certificate: a key normally lives one interval as Next,
    /// one as Active and `retention` as Retired; one more interval is slack.
    pub fn certificate_lifetime(&self) -> TimeDelta {
        sum(
            self.rotation_interval
                .checked_mul(3)
                .unwrap_or(TimeDelta::MAX),
            self.retention(),
        )
    }

    /// A certificate is renewed (while the key still has its private half) once less
    /// than this is left: enough for one more active period and the retention.
    pub fn certificate_renewal_margin(&self) -> TimeDelta {
        sum(self.rotation_interval, self.retention())
    }

    fn accepts(&self, alg: Algorithm, jwk: &PublicJwk) -> bool {
        alg == self.alg
            && (jwk.kty != KeyType::RSA || jwk.rsa_modulus_bits() == Some(self.rsa_bits.bits()))
    }
}

/// The ring as read from the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredRing {
    /// A valid ring.
    Present(Ring),
    /// No Secret, or no `ring.json` in it.
    Missing,
    /// `ring.json` exists but cannot be used.
    Corrupt(RingError),
}

impl StoredRing {
    /// Reads the stored `ring.json` bytes (`None` if absent).
    pub fn from_bytes(bytes: Option<&[u8]>) -> StoredRing {
        match bytes {
            None => StoredRing::Missing,
            Some(bytes) => match Ring::parse(bytes) {
                Ok(ring) => StoredRing::Present(ring),
                Err(e) => StoredRing::Corrupt(e),
            },
        }
    }
}

/// What one target JWKS (a ConfigMap the policy publishes to) currently shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetObservation {
    /// A stable name for the target (e.g. `"<namespace>/<configmap>"`), used in reasons.
    pub name: String,
    /// The kids it contains; `None` if the target does not exist (or is unreadable).
    pub kids: Option<BTreeSet<String>>,
    /// For a target that stands for several ConfigMaps (a JwksBundle): when each kid was
    /// first seen in all of them. A Next key counts as published from the latest of
    /// these times, however long ago its own ConfigMap showed it. Empty for a single
    /// ConfigMap, which the planner itself observes.
    pub since: BTreeMap<String, DateTime<Utc>>,
}

/// Everything the planner needs to know about the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The stored ring.
    pub ring: StoredRing,
    /// Every target JWKS of the policy (its own ConfigMap and any bundle targets). A
    /// key counts as published once every one of them shows it; with no targets at
    /// all that is vacuously true, so always pass at least the policy's own.
    pub targets: Vec<TargetObservation>,
    /// Public JWKs of this policy's keys found in the targets (attributed to it by the
    /// `keyrotor.dev/sources` annotation): used only to rebuild a lost ring.
    pub recoverable: Vec<PublicJwk>,
    /// Kids the status last listed: tells a lost ring from a first start, and which keys
    /// a rebuild could not recover.
    pub status_kids: Vec<String>,
}

/// Which slot a requested key fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Becomes Active at once (first key, revocation, rebuild).
    Active,
    /// Becomes the Next key.
    Next,
}

/// A key the caller must generate and pass back ([`plan_with_keys`]), in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    /// The slot it fills.
    pub slot: Slot,
    /// Its algorithm.
    pub alg: Algorithm,
    /// Its RSA size (ignored for non-RSA algorithms).
    pub rsa_bits: RsaBits,
}

/// Something that happened in this plan, for Events. Carries kids, never key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A new Next key was generated.
    NextCreated {
        /// Its kid.
        kid: String,
    },
    /// A key was observed in every target for the first time.
    Published {
        /// Its kid.
        kid: String,
    },
    /// A Next key was observed missing from a target: its pre-publication restarts.
    Unpublished {
        /// Its kid.
        kid: String,
        /// Targets without it.
        targets: Vec<String>,
    },
    /// A key became Active.
    Activated {
        /// Its kid.
        kid: String,
        /// Set when it skipped (full) pre-publication.
        exception: Option<ActivationException>,
        /// What caused it.
        cause: ActivationCause,
        /// Whether a rotate request caused it (`cause == ActivationCause::Request`).
        requested: bool,
    },
    /// The previous Active key was retired.
    Retired {
        /// Its kid.
        kid: String,
    },
    /// A Retired key's retention ended; it left the ring and the JWKS.
    Removed {
        /// Its kid.
        kid: String,
    },
    /// A key was revoked: it left the ring and the JWKS at once.
    Revoked {
        /// Its kid.
        kid: String,
        /// The state it was in.
        state: KeyState,
    },
    /// The Next key no longer fits the policy (algorithm or RSA size) and was dropped.
    NextReplaced {
        /// Its kid.
        kid: String,
    },
    /// A certificate was issued or renewed for a key.
    CertificateIssued {
        /// Its kid.
        kid: String,
    },
    /// The ring was lost or unreadable and was rebuilt.
    RingRebuilt {
        /// Why.
        cause: String,
        /// Public keys recovered from the targets (now Retired).
        recovered: Vec<String>,
        /// Kids the status listed that could not be recovered.
        lost: Vec<String>,
    },
}

/// Why a key became Active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActivationCause {
    /// The ring had no key yet.
    FirstKey,
    /// The rotation interval ended.
    Schedule,
    /// A new `keyrotor.dev/rotate-request` value.
    Request,
    /// The Active key was revoked.
    Revocation,
    /// The ring was rebuilt after it was lost or unreadable.
    Recovery,
}

impl From<ActivationException> for ActivationCause {
    fn from(e: ActivationException) -> Self {
        match e {
            ActivationException::FirstKey => ActivationCause::FirstKey,
            ActivationException::Revocation => ActivationCause::Revocation,
            ActivationException::Recovery => ActivationCause::Recovery,
        }
    }
}

/// Something wrong that a condition should report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// The ring was rebuilt; reported while the key activated by the rebuild signs.
    RingRebuilt {
        /// Why.
        cause: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A target JWKS does not exist.
    TargetMissing {
        /// The target.
        target: String,
    },
    /// The Active key is missing from some targets.
    ActiveNotPublished {
        /// The Active kid.
        kid: String,
        /// Targets without it.
        targets: Vec<String>,
    },
    /// A rotation is due but the Next key is missing from some targets.
    RotationWaiting {
        /// The Next kid.
        kid: String,
        /// Targets without it.
        targets: Vec<String>,
    },
    /// A certificate could not be issued.
    CertificateFailed {
        /// The key.
        kid: String,
        /// Why.
        error: String,
    },
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The ring to store. Complete (one Active, one Next) once `key_requests` is empty.
    pub ring: Ring,
    /// Keys still to generate, in the order [`plan_with_keys`] consumes them.
    pub key_requests: Vec<KeyRequest>,
    /// This policy's public keys for every target JWKS, in JWKS order (Active, Next,
    /// Retired newest first). Never contains a revoked kid or private members.
    pub publish: Vec<PublicJwk>,
    /// What happened, in order.
    pub transitions: Vec<Transition>,
    /// What is wrong.
    pub degraded: Vec<Degraded>,
    /// When the Next key is expected to become Active (`None` while paused or with no
    /// Next key).
    pub next_rotation: Option<DateTime<Utc>>,
    /// The next instant at which a plan would change something on its own (always after
    /// `now`). `None`: nothing is scheduled.
    pub wake_at: Option<DateTime<Utc>>,
    /// The instant the plan was made for: its transitions carry this time.
    pub planned_at: DateTime<Utc>,
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The stored ring was written by a newer keyrotor; rebuilding it would destroy it.
    #[error("refusing to touch the key ring: {0}")]
    NewerRing(RingError),
}

/// Why [`step`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// No plan could be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Key generation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The generator kept producing unusable keys (duplicate or revoked kids).
    #[error("key generator produced no usable key after {0} attempts")]
    Exhausted(usize),
}

/// Public facts about one key, for the status (newest first: Next, Active, Retired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySummary {
    /// Kid.
    pub kid: String,
    /// State.
    pub state: KeyState,
    /// Algorithm.
    pub alg: Algorithm,
    /// When it was observed in every target.
    pub published_at: Option<DateTime<Utc>>,
    /// When it is expected to become Active (Next only).
    pub activates_at: Option<DateTime<Utc>>,
    /// When it became Active.
    pub activated_at: Option<DateTime<Utc>>,
    /// When it is expected to retire (Active only).
    pub retires_at: Option<DateTime<Utc>>,
    /// When it retired.
    pub retired_at: Option<DateTime<Utc>>,
    /// When it leaves the JWKS (Retired only).
    pub removes_at: Option<DateTime<Utc>>,
    /// Set when it became Active without pre-publication.
    pub activated_without_prepublication: Option<ActivationException>,
    /// Recovered from a JWKS after the ring was lost.
    pub recovered: bool,
}

impl Plan {
    /// The plan with its activations and retirements moved from the instant it was
    /// made to `landed`, when its Secret write is known to have landed. Signers see a
    /// rotation only once the write has landed: a write held up (say by an API server
    /// restart) must not shorten the retired key's retention nor the new key's turn.
    pub fn landed_at(mut self, landed: DateTime<Utc>) -> Plan {
        let planned = self.planned_at;
        if landed <= planned {
            return self;
        }
        let shift = landed - planned;
        let mut activated = false;
        for key in &mut self.ring.keys {
            if key.activated_at == Some(planned) {
                key.activated_at = Some(landed);
                activated = true;
            }
            if key.retired_at == Some(planned) {
                key.retired_at = Some(landed);
                key.removes_at = key.removes_at.map(|at| later(at, shift));
            }
        }
        if activated {
            self.next_rotation = self.next_rotation.map(|at| later(at, shift));
        }
        self.planned_at = landed;
        self
    }

    /// Status-facing facts about the ring's keys, newest first.
    pub fn key_summaries(&self) -> Vec<KeySummary> {
        let mut keys: Vec<&RingKey> = self.ring.next().into_iter().collect();
        keys.extend(self.ring.active());
        keys.extend(self.ring.retired());
        keys.into_iter()
            .map(|k| KeySummary {
                kid: k.kid.clone(),
                state: k.state,
                alg: k.alg,
                published_at: k.published_at,
                activates_at: (k.state == KeyState::Next)
                    .then_some(self.next_rotation)
                    .flatten(),
                activated_at: k.activated_at,
                retires_at: (k.state == KeyState::Active)
                    .then_some(self.next_rotation)
                    .flatten(),
                retired_at: k.retired_at,
                removes_at: k.removes_at,
                activated_without_prepublication: k.activated_without_prepublication,
                recovered: k.recovered,
            })
            .collect()
    }
}

/// Plans with no newly generated keys: any key the plan needs appears in
/// `key_requests`.
pub fn plan(policy: &Policy, observed: &Observed, now: DateTime<Utc>) -> Result<Plan, PlanError> {
    plan_with_keys(policy, observed, now, &[])
}

/// Plans, filling slots that need a new key from `supplied` in order. A supplied key
/// that does not fit (wrong algorithm or size, revoked or duplicate kid) is skipped.
/// Slots left unfilled appear in `key_requests`, in the order they would be consumed,
/// so generating those and calling again with them appended completes the plan.
pub fn plan_with_keys(
    policy: &Policy,
    observed: &Observed,
    now: DateTime<Utc>,
    supplied: &[KeyMaterial],
) -> Result<Plan, PlanError> {
    let mut planner = Planner {
        policy,
        observed,
        now,
        supplied: supplied.iter(),
        requests: Vec::new(),
        transitions: Vec::new(),
        degraded: Vec::new(),
    };
    planner.run()
}

/// Plans, generates the keys the plan asks for, and plans again until no key is
/// missing. Call it off the async runtime (RSA generation is slow).
pub fn step(
    policy: &Policy,
    observed: &Observed,
    now: DateTime<Utc>,
    generator: &dyn KeyGenerator,
) -> Result<Plan, StepError> {
    step_when_ready(policy, observed, &|| now, generator)
}

/// Like [`step`], but asks `clock` for the time again after every round of key
/// generation and plans at that later instant. Generating an RSA key can take
/// seconds; transitions stamped before it would start a retired key's retention (and
/// the next key's schedule) earlier than the Secret really changes.
pub fn step_when_ready(
    policy: &Policy,
    observed: &Observed,
    clock: &dyn Fn() -> DateTime<Utc>,
    generator: &dyn KeyGenerator,
) -> Result<Plan, StepError> {
    const MAX_ROUNDS: usize = 8;
    let mut supplied = Vec::new();
    let mut now = clock();
    for _ in 0..MAX_ROUNDS {
        let plan = plan_with_keys(policy, observed, now, &supplied)?;
        if plan.key_requests.is_empty() {
            return Ok(plan);
        }
        for request in &plan.key_requests {
            supplied.push(generator.generate(request.alg, request.rsa_bits)?);
        }
        now = clock().max(now);
    }
    Err(StepError::Exhausted(supplied.len()))
}

struct Planner<'a> {
    policy: &'a Policy,
    observed: &'a Observed,
    now: DateTime<Utc>,
    supplied: std::slice::Iter<'a, KeyMaterial>,
    requests: Vec<KeyRequest>,
    transitions: Vec<Transition>,
    degraded: Vec<Degraded>,
}

/// Why the ring needs a fresh Active key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NeedActive {
    No,
    Because(ActivationException),
}

impl Planner<'_> {
    fn run(&mut self) -> Result<Plan, PlanError> {
        let (mut ring, mut need_active) = self.start_ring()?;
        if let Some(reason) = self.revoke(&mut ring) {
            need_active = NeedActive::Because(reason);
        }
        self.drop_unfit_next(&mut ring);
        self.observe_publication(&mut ring);
        let mut activated = false;
        if let NeedActive::Because(reason) = need_active {
            activated = self.replace_active(&mut ring, reason);
        }
        if !activated {
            self.maybe_rotate(&mut ring);
        }
        self.ensure_next(&mut ring);
        self.remove_expired(&mut ring);
        self.maintain_certificates(&mut ring);
        ring.canonicalize();
        Ok(self.finish(ring))
    }

    /// The ring to work on, rebuilt if lost, and whether it needs a fresh Active key.
    fn start_ring(&mut self) -> Result<(Ring, NeedActive), PlanError> {
        let cause = match &self.observed.ring {
            StoredRing::Present(ring) => {
                let need = if ring.active().is_some() {
                    NeedActive::No
                } else {
                    NeedActive::Because(ActivationException::Recovery)
                };
                return Ok((ring.clone(), need));
            }
            StoredRing::Corrupt(e) if e.is_newer_version() => {
                return Err(PlanError::NewerRing(e.clone()));
            }
            StoredRing::Corrupt(e) => format!("the stored key ring is unreadable: {e}"),
            StoredRing::Missing => {
                if self.observed.recoverable.is_empty() && self.observed.status_kids.is_empty() {
                    let mut ring = Ring::new();
                    // A request present before the first key exists has nothing to rotate.
                    ring.last_rotate_request = self.policy.rotate_request.clone();
                    return Ok((ring, NeedActive::Because(ActivationException::FirstKey)));
                }
                "the stored key ring is missing".to_owned()
            }
        };
        let mut ring = Ring::new();
        ring.last_rotate_request = self.policy.rotate_request.clone();
        let mut recovered = Vec::new();
        for jwk in &self.observed.recoverable {
            let usable = jwk.validate().is_ok()
                && !self.policy.revoked.contains(&jwk.kid)
                && ring.get(&jwk.kid).is_none();
            if !usable {
                continue;
            }
            recovered.push(jwk.kid.clone());
            ring.keys.push(RingKey {
                kid: jwk.kid.clone(),
                alg: jwk.alg,
                state: KeyState::Retired,
                created_at: self.now,
                published_at: None,
                activated_at: None,
                retired_at: Some(self.now),
                removes_at: Some(later(self.now, self.policy.retention())),
                activated_without_prepublication: None,
                recovered: true,
                // The certificate itself is not recoverable from x5c alone with its
                // validity, so recovered keys are published without one.
                public_jwk: jwk.without_certificate(),
                private_jwk: None,
                certificate: None,
            });
        }
        let lost: Vec<String> = self
            .observed
            .status_kids
            .iter()
            .filter(|kid| !recovered.contains(kid) && !self.policy.revoked.contains(*kid))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        ring.rebuilt = Some(RingRebuild {
            at: self.now,
            cause: cause.clone(),
        });
        self.transitions.push(Transition::RingRebuilt {
            cause,
            recovered,
            lost,
        });
        Ok((ring, NeedActive::Because(ActivationException::Recovery)))
    }

    /// Removes revoked keys; returns why a fresh Active is needed if the Active went.
    fn revoke(&mut self, ring: &mut Ring) -> Option<ActivationException> {
        let mut active_revoked = false;
        let revoked = &self.policy.revoked;
        let transitions = &mut self.transitions;
        ring.keys.retain(|key| {
            if !revoked.contains(&key.kid) {
                return true;
            }
            active_revoked |= key.state == KeyState::Active;
            transitions.push(Transition::Revoked {
                kid: key.kid.clone(),
                state: key.state,
            });
            false
        });
        active_revoked.then_some(ActivationException::Revocation)
    }

    /// Drops a Next key that no longer fits the policy (it never signed anything).
    fn drop_unfit_next(&mut self, ring: &mut Ring) {
        let policy = self.policy;
        let transitions = &mut self.transitions;
        ring.keys.retain(|key| {
            let unfit = key.state == KeyState::Next && !policy.accepts(key.alg, &key.public_jwk);
            if unfit {
                transitions.push(Transition::NextReplaced {
                    kid: key.kid.clone(),
                });
            }
            !unfit
        });
    }

    /// Targets that do not show `kid` (a missing target shows nothing).
    fn targets_without(&self, kid: &str) -> Vec<String> {
        self.observed
            .targets
            .iter()
            .filter(|t| t.kids.as_ref().is_none_or(|kids| !kids.contains(kid)))
            .map(|t| t.name.clone())
            .collect()
    }

    fn observe_publication(&mut self, ring: &mut Ring) {
        for target in &self.observed.targets {
            if target.kids.is_none() {
                self.degraded.push(Degraded::TargetMissing {
                    target: target.name.clone(),
                });
            }
        }
        for index in 0..ring.keys.len() {
            let key = &ring.keys[index];
            if key.state == KeyState::Retired {
                continue;
            }
            let missing = self.targets_without(&key.kid);
            // The latest time a multi-ConfigMap target reports the kid everywhere.
            let since = self
                .observed
                .targets
                .iter()
                .filter_map(|t| t.since.get(&key.kid))
                .max()
                .copied();
            let key = &mut ring.keys[index];
            match (missing.is_empty(), key.published_at, key.state) {
                (true, None, _) => {
                    key.published_at = Some(since.map_or(self.now, |since| since.max(self.now)));
                    self.transitions.push(Transition::Published {
                        kid: key.kid.clone(),
                    });
                }
                // A target that joined later (a bundle) had the key only from `since`.
                (true, Some(published), KeyState::Next)
                    if since.is_some_and(|since| since > published) =>
                {
                    key.published_at = since;
                }
                (false, Some(_), KeyState::Next) => {
                    key.published_at = None;
                    self.transitions.push(Transition::Unpublished {
                        kid: key.kid.clone(),
                        targets: missing,
                    });
                }
                (false, _, KeyState::Active) => {
                    self.degraded.push(Degraded::ActiveNotPublished {
                        kid: key.kid.clone(),
                        targets: missing,
                    });
                }
                _ => {}
            }
        }
    }

    /// Installs a new Active key after revocation, rebuild or on the first start.
    /// Returns whether a key was activated.
    fn replace_active(&mut self, ring: &mut Ring, reason: ActivationException) -> bool {
        let delay = self.policy.propagation_delay;
        let now = self.now;
        let published_next = ring
            .keys
            .iter_mut()
            .find(|k| k.state == KeyState::Next && k.published_at.is_some());
        if let Some(next) = published_next {
            let fully = next.published_at.is_some_and(|p| now >= later(p, delay));
            next.state = KeyState::Active;
            next.activated_at = Some(now);
            let exception = (!fully).then_some(reason);
            next.activated_without_prepublication = exception;
            let kid = next.kid.clone();
            self.activated(ring, kid, exception, reason.into());
            return true;
        }
        let Some(material) = self.take_key(ring, Slot::Active) else {
            return false;
        };
        let mut key = self.new_key(material);
        key.state = KeyState::Active;
        key.activated_at = Some(now);
        key.activated_without_prepublication = Some(reason);
        let kid = key.kid.clone();
        ring.keys.push(key);
        self.activated(ring, kid, Some(reason), reason.into());
        true
    }

    /// Records an activation; any activation honours a pending rotate request.
    fn activated(
        &mut self,
        ring: &mut Ring,
        kid: String,
        exception: Option<ActivationException>,
        cause: ActivationCause,
    ) {
        ring.last_rotate_request = self.policy.rotate_request.clone();
        self.transitions.push(Transition::Activated {
            kid,
            exception,
            cause,
            requested: cause == ActivationCause::Request,
        });
    }

    fn rotate_requested(&self, ring: &Ring) -> bool {
        self.policy
            .requests_rotation_after(&ring.last_rotate_request)
    }

    fn maybe_rotate(&mut self, ring: &mut Ring) {
        let Some(active) = ring.active() else { return };
        let requested = self.rotate_requested(ring);
        let scheduled = !self.policy.paused
            && active
                .activated_at
                .is_some_and(|at| self.now >= later(at, self.policy.rotation_interval));
        if !requested && !scheduled {
            return;
        }
        let Some(next) = ring.next() else { return };
        let ready = next
            .published_at
            .is_some_and(|p| self.now >= later(p, self.policy.propagation_delay));
        if !ready {
            // Waiting out propagationDelay is normal; a Next key missing from a target
            // while rotation is due is worth a condition.
            let missing = self.targets_without(&next.kid);
            if !missing.is_empty() {
                self.degraded.push(Degraded::RotationWaiting {
                    kid: next.kid.clone(),
                    targets: missing,
                });
            }
            return;
        }
        let retention = self.policy.retention();
        let now = self.now;
        let next_kid = next.kid.clone();
        for key in &mut ring.keys {
            match key.state {
                KeyState::Active => {
                    self.retire(key, now, retention);
                }
                KeyState::Next => {
                    key.state = KeyState::Active;
                    key.activated_at = Some(now);
                    key.activated_without_prepublication = None;
                }
                KeyState::Retired => {}
            }
        }
        let cause = if requested {
            ActivationCause::Request
        } else {
            ActivationCause::Schedule
        };
        self.activated(ring, next_kid, None, cause);
    }

    fn retire(&mut self, key: &mut RingKey, now: DateTime<Utc>, retention: TimeDelta) {
        // The certificate must cover the retention; renew it while the private half
        // still exists.
        if let Some(cert) = &key.certificate
            && self.policy.certificate
            && cert.not_after < later(now, retention)
        {
            self.issue_certificate(key);
        }
        key.state = KeyState::Retired;
        key.retired_at = Some(now);
        key.removes_at = Some(later(now, retention));
        key.private_jwk = None;
        self.transitions.push(Transition::Retired {
            kid: key.kid.clone(),
        });
    }

    fn ensure_next(&mut self, ring: &mut Ring) {
        if ring.next().is_some() {
            return;
        }
        let Some(material) = self.take_key(ring, Slot::Next) else {
            return;
        };
        let key = self.new_key(material);
        self.transitions.push(Transition::NextCreated {
            kid: key.kid.clone(),
        });
        ring.keys.push(key);
    }

    fn remove_expired(&mut self, ring: &mut Ring) {
        let retention = self.policy.retention();
        let now = self.now;
        let transitions = &mut self.transitions;
        ring.keys.retain_mut(|key| {
            if key.state != KeyState::Retired {
                return true;
            }
            // A longer retention in the policy extends it; a shorter one never cuts it.
            if let (Some(retired), Some(removes)) = (key.retired_at, key.removes_at) {
                key.removes_at = Some(removes.max(later(retired, retention)));
            }
            let expired = key.removes_at.is_some_and(|at| now >= at);
            if expired {
                transitions.push(Transition::Removed {
                    kid: key.kid.clone(),
                });
            }
            !expired
        });
    }

    fn maintain_certificates(&mut self, ring: &mut Ring) {
        if !self.policy.certificate {
            for key in &mut ring.keys {
                key.certificate = None;
                key.public_jwk.x5c = None;
                key.public_jwk.x5t_s256 = None;
            }
            return;
        }
        let margin = self.policy.certificate_renewal_margin();
        for index in 0..ring.keys.len() {
            let key = &ring.keys[index];
            if key.private_jwk.is_none() {
                continue;
            }
            let due = key
                .certificate
                .as_ref()
                .is_none_or(|c| c.not_after <= later(self.now, margin));
            if due {
                let mut key = ring.keys[index].clone();
                self.issue_certificate(&mut key);
                ring.keys[index] = key;
            }
        }
    }

    fn issue_certificate(&mut self, key: &mut RingKey) {
        let Some(private) = &key.private_jwk else {
            return;
        };
        let not_before = key.created_at;
        let not_after = later(
            self.now.max(key.created_at),
            self.policy.certificate_lifetime(),
        );
        match keys::certificate::self_signed(private, &self.policy.subject, not_before, not_after) {
            Ok(cert) => {
                key.public_jwk.x5c = Some(vec![cert.x5c()]);
                key.public_jwk.x5t_s256 = Some(cert.x5t_s256());
                key.certificate = Some(KeyCertificate {
                    pem: cert.pem(),
                    not_before: whole_seconds(not_before, false),
                    not_after: whole_seconds(not_after, true),
                });
                self.transitions.push(Transition::CertificateIssued {
                    kid: key.kid.clone(),
                });
            }
            Err(e) => self.degraded.push(Degraded::CertificateFailed {
                kid: key.kid.clone(),
                error: e.to_string(),
            }),
        }
    }

    /// The next usable supplied key, or a request for one.
    fn take_key(&mut self, ring: &Ring, slot: Slot) -> Option<KeyMaterial> {
        for material in self.supplied.by_ref() {
            let fits = self.policy.accepts(material.alg(), &material.public_jwk())
                && !self.policy.revoked.contains(material.kid())
                && ring.get(material.kid()).is_none();
            if fits {
                return Some(material.clone());
            }
        }
        self.requests.push(KeyRequest {
            slot,
            alg: self.policy.alg,
            rsa_bits: self.policy.rsa_bits,
        });
        None
    }

    fn new_key(&self, material: KeyMaterial) -> RingKey {
        RingKey {
            kid: material.kid().to_owned(),
            alg: material.alg(),
            state: KeyState::Next,
            created_at: self.now,
            published_at: None,
            activated_at: None,
            retired_at: None,
            removes_at: None,
            activated_without_prepublication: None,
            recovered: false,
            public_jwk: material.public_jwk(),
            private_jwk: Some(material.into_private_jwk()),
            certificate: None,
        }
    }

    fn next_rotation(&self, ring: &Ring) -> Option<DateTime<Utc>> {
        let active = ring.active()?;
        let next = ring.next()?;
        let requested = self.rotate_requested(ring);
        if self.policy.paused && !requested {
            return None;
        }
        let scheduled = if requested {
            self.now
        } else {
            later(active.activated_at?, self.policy.rotation_interval)
        };
        Some(match next.published_at {
            Some(p) => scheduled.max(later(p, self.policy.propagation_delay)),
            None => scheduled.max(later(self.now, self.policy.propagation_delay)),
        })
    }

    fn finish(&mut self, ring: Ring) -> Plan {
        let next_rotation = self.next_rotation(&ring);
        let mut wake = Vec::new();
        if let (Some(rotation), Some(next)) = (next_rotation, ring.next()) {
            if next.published_at.is_some() {
                wake.push(rotation);
            } else {
                // Publication is normally noticed through the target's watch event; look
                // again after propagationDelay in case no event comes.
                wake.push(later(self.now, self.policy.propagation_delay));
            }
        }
        for key in &ring.keys {
            if key.state == KeyState::Retired {
                wake.extend(key.removes_at);
            }
            if let (Some(cert), Some(_)) = (&key.certificate, &key.private_jwk) {
                wake.push(earlier(
                    cert.not_after,
                    self.policy.certificate_renewal_margin(),
                ));
            }
        }
        let wake_at = wake.into_iter().filter(|t| *t > self.now).min();
        if let (Some(rebuild), Some(active)) = (&ring.rebuilt, ring.active())
            && active.activated_without_prepublication == Some(ActivationException::Recovery)
        {
            self.degraded.push(Degraded::RingRebuilt {
                cause: rebuild.cause.clone(),
                at: rebuild.at,
            });
        }
        let publish = ring
            .public_jwks()
            .into_iter()
            .filter(|k| !self.policy.revoked.contains(&k.kid))
            .collect();
        Plan {
            ring,
            key_requests: std::mem::take(&mut self.requests),
            publish,
            transitions: std::mem::take(&mut self.transitions),
            degraded: std::mem::take(&mut self.degraded),
            next_rotation,
            wake_at,
            planned_at: self.now,
        }
    }
}

fn whole_seconds(t: DateTime<Utc>, round_up: bool) -> DateTime<Utc> {
    let mut secs = t.timestamp();
    if round_up && t.timestamp_subsec_nanos() > 0 {
        secs += 1;
    }
    DateTime::from_timestamp(secs, 0).unwrap_or(t)
}

/// `t + d`, saturating: policy durations come from users and must never panic.
fn later(t: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating.
fn earlier(t: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    t.checked_sub_signed(d).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `a + b`, saturating.
fn sum(a: TimeDelta, b: TimeDelta) -> TimeDelta {
    a.checked_add(&b).unwrap_or(TimeDelta::MAX)
}
