//! Property tests of the key lifecycle over random policies, start times, wake-up
//! jitter, missed wake-ups (operator down for hours), write delays, rotate requests,
//! pauses, revocations and the loss of one object at a time.
//!
//! Checked (DESIGN.md section 2): 1 the Active kid is in every target; 2 a key became
//! Active only after being continuously published for `propagationDelay` (first key,
//! revocation and recovery excepted and flagged); 3 every key Active within the last
//! `propagationDelay + maxTokenLifetime` is in every target; 4 no private material in
//! JWKS, status facts or transitions; 5 no second Next key for a slot, no early
//! rotation, one rotation per plan; 8 deterministic output. Plus: at most one Active;
//! states never go backwards; Retired keys hold no private half; revoked kids never
//! return; the plan is a fixed point on its own output.

mod core_support;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use core_support::{Rng, World};
use keyrotor::jwks;
use keyrotor::keys::{Algorithm, PRIVATE_MEMBERS, RsaBits};
use keyrotor::plan::{ActivationCause, Observed, Plan, Policy, StoredRing, Transition, plan};
use keyrotor::ring::{KeyState, Ring};
use keyrotor::secret;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Event {
    RotateRequest,
    TogglePause,
    Revoke(u8),
    DeleteTarget(u8),
    DeleteSecret,
    CorruptSecret,
    Down(u32),
    Resync,
}

#[derive(Clone, Debug)]
struct Scenario {
    alg: Algorithm,
    interval_minutes: i64,
    delay_percent: i64,
    token_minutes: i64,
    certificate: bool,
    paused: bool,
    targets: usize,
    start: i64,
    seed: u64,
    rotations: i64,
    max_jitter_percent: i64,
    slow_writes: bool,
    events: Vec<(u16, Event)>,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => Just(Event::RotateRequest),
        1 => Just(Event::TogglePause),
        2 => any::<u8>().prop_map(Event::Revoke),
        2 => any::<u8>().prop_map(Event::DeleteTarget),
        1 => Just(Event::DeleteSecret),
        1 => Just(Event::CorruptSecret),
        // Down for up to ~3 days (minutes).
        2 => (1u32..4_320).prop_map(Event::Down),
        2 => Just(Event::Resync),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        (
            prop_oneof![Just(Algorithm::ES256), Just(Algorithm::EdDSA)],
            2i64..2_880,
            1i64..90,
            1i64..1_440,
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.1),
        ),
        (
            1usize..=3,
            // 2001 .. 2096
            978_307_200i64..4_000_000_000,
            any::<u64>(),
            3i64..9,
            0i64..60,
            any::<bool>(),
            prop::collection::vec((0u16..1_000, event()), 0..14),
        ),
    )
        .prop_map(
            |(
                (alg, interval_minutes, delay_percent, token_minutes, certificate, paused),
                (targets, start, seed, rotations, max_jitter_percent, slow_writes, events),
            )| Scenario {
                alg,
                interval_minutes,
                delay_percent,
                token_minutes,
                certificate,
                paused,
                targets,
                start,
                seed,
                rotations,
                max_jitter_percent,
                slow_writes,
                events,
            },
        )
}

fn policy_of(s: &Scenario) -> Policy {
    let interval = TimeDelta::minutes(s.interval_minutes);
    // propagationDelay < rotationInterval, at least one second.
    let delay = TimeDelta::seconds((interval.num_seconds() * s.delay_percent / 100).max(1));
    Policy {
        alg: s.alg,
        rsa_bits: RsaBits::default(),
        rotation_interval: interval,
        max_token_lifetime: TimeDelta::minutes(s.token_minutes),
        propagation_delay: delay,
        paused: s.paused,
        revoked: BTreeSet::new(),
        certificate: s.certificate,
        subject: "ns/policy".into(),
        rotate_request: None,
    }
}

/// Everything the checks remember across reconciles.
#[derive(Default)]
struct Memory {
    /// Highest state each kid reached.
    state: BTreeMap<String, KeyState>,
    /// Kids that left the ring.
    gone: BTreeSet<String>,
    /// Kids ever revoked.
    revoked: BTreeSet<String>,
    /// Kids whose `publishedAt` was ever set while in the Secret's ring.
    published: BTreeSet<String>,
    /// Kids that became Active with a pre-publication exception.
    excepted: BTreeSet<String>,
    /// Every private value ever generated (to look for leaks).
    secrets: BTreeSet<String>,
    /// Rotate-request values that caused a rotation.
    honoured: BTreeSet<String>,
    /// Activations to check against the target history (kid, time).
    activations: Vec<(String, DateTime<Utc>)>,
}

fn private_values(ring: &Ring) -> Vec<String> {
    let mut out = Vec::new();
    for key in &ring.keys {
        if let Some(p) = &key.private_jwk {
            out.push(p.d.expose().to_owned());
            for v in [&p.p, &p.q, &p.dp, &p.dq, &p.qi].into_iter().flatten() {
                out.push(v.expose().to_owned());
            }
        }
    }
    out
}

/// Checks on one plan and its inputs.
fn check_plan(
    policy: &Policy,
    observed: &Observed,
    old: Option<&Ring>,
    p: &Plan,
    now: DateTime<Utc>,
    memory: &mut Memory,
) -> Result<(), TestCaseError> {
    prop_assert!(p.key_requests.is_empty(), "step left key requests");
    p.ring
        .validate()
        .map_err(|e| TestCaseError::fail(format!("invalid ring: {e}")))?;
    let active = p.ring.active().expect("validated: one Active");
    let next = p.ring.next();
    prop_assert!(next.is_some(), "no Next key after step");
    let count = |s: KeyState| p.ring.keys.iter().filter(|k| k.state == s).count();
    prop_assert_eq!(count(KeyState::Active), 1);
    prop_assert_eq!(count(KeyState::Next), 1);
    for key in &p.ring.keys {
        if key.state == KeyState::Retired {
            prop_assert!(key.private_jwk.is_none(), "Retired key with a private half");
        }
        prop_assert!(
            !policy.revoked.contains(&key.kid),
            "revoked key in the ring"
        );
        if let Some(previous) = memory.state.get(&key.kid) {
            prop_assert!(
                key.state >= *previous,
                "{} went back from {previous} to {}",
                key.kid,
                key.state
            );
        }
        if memory.gone.contains(&key.kid) {
            prop_assert!(
                key.recovered && key.state == KeyState::Retired,
                "removed key {} came back as {}",
                key.kid,
                key.state
            );
            prop_assert!(!memory.revoked.contains(&key.kid));
        }
    }
    // Certificates: every signing-capable key has one that outlives a retirement now;
    // a Retired key's certificate outlives its removal.
    if policy.certificate {
        for key in &p.ring.keys {
            let Some(cert) = &key.certificate else {
                prop_assert!(
                    key.state == KeyState::Retired,
                    "{} has no certificate",
                    key.kid
                );
                continue;
            };
            prop_assert!(cert.not_before <= key.created_at);
            match key.removes_at {
                Some(removes) => prop_assert!(
                    cert.not_after >= removes,
                    "certificate expires before removal"
                ),
                None => prop_assert!(
                    cert.not_after > now + policy.retention(),
                    "certificate too short"
                ),
            }
        }
    }
    // Publication: the ring's keys in JWKS order, Active first, no revoked kid.
    prop_assert_eq!(&p.publish, &p.ring.public_jwks());
    prop_assert_eq!(&p.publish[0].kid, &active.kid);
    for k in &p.publish {
        prop_assert!(!memory.revoked.contains(&k.kid) || !policy.revoked.contains(&k.kid));
        prop_assert!(!policy.revoked.contains(&k.kid), "revoked kid published");
    }
    // One rotation per plan, at most one new Next, no early rotation.
    let activations: Vec<&Transition> = p
        .transitions
        .iter()
        .filter(|t| matches!(t, Transition::Activated { .. }))
        .collect();
    prop_assert!(
        activations.len() <= 1,
        "more than one activation in one plan"
    );
    let created = p
        .transitions
        .iter()
        .filter(|t| matches!(t, Transition::NextCreated { .. }))
        .count();
    prop_assert!(created <= 1, "two Next keys created in one plan");
    if let (Some(old), 1) = (old, created)
        && let Some(old_next) = old.next()
    {
        let consumed = p
            .ring
            .get(&old_next.kid)
            .is_none_or(|k| k.state != KeyState::Next);
        prop_assert!(consumed, "a second Next key was created for one slot");
    }
    if let Some(Transition::Activated {
        kid,
        exception,
        cause,
        ..
    }) = activations.first()
    {
        prop_assert_eq!(kid, &active.kid);
        prop_assert_eq!(*exception, active.activated_without_prepublication);
        prop_assert_eq!(active.activated_at, Some(now));
        if exception.is_some() {
            memory.excepted.insert(kid.clone());
        } else {
            // Invariant 2 (as far as the plan knows): published for propagationDelay.
            let published = active
                .published_at
                .expect("normal activation of a published key");
            prop_assert!(
                published + policy.propagation_delay <= now,
                "activated too early"
            );
            memory.activations.push((kid.clone(), now));
            let old = old.expect("a normal rotation has a previous ring");
            let old_active = old.active().expect("previous ring had an Active key");
            match cause {
                ActivationCause::Request => {
                    let request = policy.rotate_request.clone().expect("a request value");
                    prop_assert_ne!(Some(&request), old.last_rotate_request.as_ref());
                    prop_assert!(
                        memory.honoured.insert(request),
                        "one rotate request rotated twice"
                    );
                }
                ActivationCause::Revocation => {
                    prop_assert!(policy.revoked.contains(&old_active.kid));
                }
                ActivationCause::Schedule => {
                    prop_assert!(!policy.paused, "scheduled rotation while paused");
                    let due = old_active.activated_at.expect("Active has activatedAt")
                        + policy.rotation_interval;
                    prop_assert!(due <= now, "rotated before the interval ended");
                }
                other => prop_assert!(false, "normal activation caused by {other:?}"),
            }
        }
    }
    // Any activation honours the pending request, so it is never honoured twice.
    if !activations.is_empty() {
        prop_assert_eq!(&p.ring.last_rotate_request, &policy.rotate_request);
    }
    // Idempotence: the plan on its own output, same now, same observations.
    let again_observed = Observed {
        ring: StoredRing::Present(p.ring.clone()),
        ..observed.clone()
    };
    let again = plan(policy, &again_observed, now).expect("plan on own output");
    prop_assert_eq!(&again.ring, &p.ring, "plan is not a fixed point");
    prop_assert!(again.key_requests.is_empty());
    prop_assert!(
        again.transitions.is_empty(),
        "transitions on a second pass: {:?}",
        again.transitions
    );
    prop_assert_eq!(&again.publish, &p.publish);
    prop_assert_eq!(again.wake_at, p.wake_at);
    // Determinism: the same inputs give the same plan and the same bytes.
    let twice = plan(policy, &again_observed, now).expect("plan");
    prop_assert_eq!(&twice, &again);
    let ring_bytes = p.ring.to_bytes();
    let parsed = Ring::parse(&ring_bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&parsed, &p.ring);
    prop_assert_eq!(parsed.to_bytes(), ring_bytes);
    let data = secret::secret_data(&p.ring, policy.certificate)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        &secret::secret_data(&parsed, policy.certificate).unwrap(),
        &data
    );
    prop_assert_eq!(&data[secret::KID], &active.kid.as_bytes().to_vec());
    let jwks_bytes = jwks::render(&p.publish).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&jwks::render(&again.publish).unwrap(), &jwks_bytes);
    // Wake-up strictly in the future.
    if let Some(wake) = p.wake_at {
        prop_assert!(wake > now);
    }
    // Invariant 4 for everything facing the JWKS, status and Events.
    memory.secrets.extend(private_values(&p.ring));
    let doc: serde_json::Value = serde_json::from_slice(&jwks_bytes).unwrap();
    for key in doc["keys"].as_array().unwrap() {
        for member in PRIVATE_MEMBERS {
            prop_assert!(key.get(member).is_none(), "private member {member} in JWKS");
        }
    }
    let facing = format!(
        "{} {:?} {:?} {:?}",
        String::from_utf8_lossy(&jwks_bytes),
        p.transitions,
        p.degraded,
        p.key_summaries()
    );
    for value in &memory.secrets {
        prop_assert!(!facing.contains(value.as_str()), "private material leaked");
    }
    // Remember for later checks.
    for key in &p.ring.keys {
        let entry = memory.state.entry(key.kid.clone()).or_insert(key.state);
        *entry = (*entry).max(key.state);
        if key.published_at.is_some() {
            memory.published.insert(key.kid.clone());
        }
    }
    if let Some(old) = old {
        for key in &old.keys {
            if p.ring.get(&key.kid).is_none() {
                memory.gone.insert(key.kid.clone());
            }
        }
    }
    Ok(())
}

/// Invariants 1 and 3 on the state of the world at `now` (it holds until the next
/// event): every key that signs or signed within the retention is in every target,
/// unless it was revoked, or skipped pre-publication and has not been seen published
/// yet. Targets deleted by a fault and not yet rewritten are skipped.
fn check_world(world: &World, memory: &Memory, now: DateTime<Utc>) -> Result<(), TestCaseError> {
    let retention = world.policy.propagation_delay + world.policy.max_token_lifetime;
    for (kid, intervals) in world.active_intervals() {
        if memory.revoked.contains(&kid) {
            continue;
        }
        if memory.excepted.contains(&kid) && !memory.published.contains(&kid) {
            continue;
        }
        let required = intervals
            .iter()
            .any(|(from, until)| *from <= now && until.is_none_or(|u| now < u + retention));
        if !required {
            continue;
        }
        for target in world.targets.iter().filter(|t| !t.damaged) {
            let present = target.kids().is_some_and(|k| k.contains(&kid));
            prop_assert!(
                present,
                "{} lacks key {} at {} (active {:?})",
                target.name,
                kid,
                now,
                intervals
            );
        }
    }
    Ok(())
}

fn run(s: Scenario) -> Result<(), TestCaseError> {
    let start = DateTime::from_timestamp(s.start, 0).unwrap();
    let mut world = World::new(policy_of(&s), s.targets, s.seed, start);
    let interval = world.policy.rotation_interval;
    let delay = world.policy.propagation_delay;
    let horizon = start + interval * (s.rotations as i32);
    let mut rng = Rng(s.seed ^ 0x5eed);
    let mut memory = Memory::default();
    let mut events: Vec<(DateTime<Utc>, Event)> = s
        .events
        .iter()
        .map(|(permille, e)| {
            let offset = (horizon - start).num_seconds() * i64::from(*permille) / 1_000;
            (start + TimeDelta::seconds(offset), e.clone())
        })
        .collect();
    events.sort_by_key(|(at, _)| *at);
    let mut events = events.into_iter().peekable();
    let mut requests = 0u32;
    let mut down_until: Option<DateTime<Utc>> = None;
    let mut wake: Option<DateTime<Utc>> = Some(start);
    let mut reconcile_pending = false;
    let mut reconciles = 0;
    let slow = s.slow_writes;
    let write_delay = move |rng: &mut Rng| -> TimeDelta {
        match rng.below(10) {
            0..=4 => TimeDelta::zero(),
            5..=7 => rng.duration_up_to(TimeDelta::seconds(60)),
            _ if slow => rng.duration_up_to(delay * 2),
            _ => rng.duration_up_to(TimeDelta::seconds(5)),
        }
    };
    loop {
        let candidates = [
            events.peek().map(|(at, _)| *at),
            world.next_landing(),
            wake,
            down_until,
        ];
        let Some(now) = candidates.into_iter().flatten().min() else {
            break;
        };
        if now > horizon || reconciles > 3_000 {
            break;
        }
        world.now = now;
        if world.land_writes() {
            reconcile_pending = true; // the ConfigMap watch fires
        }
        if wake.is_some_and(|w| w <= now) {
            wake = None;
            reconcile_pending = true;
        }
        if down_until.is_some_and(|d| d <= now) {
            down_until = None;
            reconcile_pending = true; // a restarted operator reconciles everything
        }
        while let Some((_, e)) = events.next_if(|(at, _)| *at <= now) {
            let healthy = world.ring().is_some() && world.targets.iter().all(|t| !t.damaged);
            match e {
                Event::RotateRequest => {
                    requests += 1;
                    world.policy.rotate_request = Some(format!("request-{requests}"));
                }
                Event::TogglePause => world.policy.paused = !world.policy.paused,
                Event::Revoke(i) => {
                    if let Some(ring) = world.ring() {
                        let key = &ring.keys[usize::from(i) % ring.keys.len()];
                        world.policy.revoked.insert(key.kid.clone());
                        memory.revoked.insert(key.kid.clone());
                    }
                }
                // Only one object is damaged at a time (invariant 6's premise).
                Event::DeleteTarget(i) if healthy => {
                    world.delete_target(usize::from(i) % world.targets.len());
                }
                Event::DeleteSecret if healthy => world.delete_secret(),
                Event::CorruptSecret if healthy => world.corrupt_secret(),
                Event::Down(minutes) => {
                    let until = now + TimeDelta::minutes(i64::from(minutes));
                    down_until = Some(down_until.map_or(until, |d| d.max(until)));
                }
                _ => {}
            }
            reconcile_pending = true;
        }
        check_world(&world, &memory, now)?;
        if down_until.is_some() || !reconcile_pending {
            continue;
        }
        reconcile_pending = false;
        reconciles += 1;
        let old = world.ring();
        let (observed, p) = world
            .reconcile(|_| write_delay(&mut rng))
            .map_err(|e| TestCaseError::fail(format!("step failed: {e}")))?;
        check_plan(&world.policy, &observed, old.as_ref(), &p, now, &mut memory)?;
        check_world(&world, &memory, now)?;
        // The controller requeues at wake_at; real wake-ups come a little early or late.
        wake = p.wake_at.map(|w| {
            let span = (w - now).num_seconds().max(1);
            let jitter = rng.below((span * s.max_jitter_percent / 100).max(1) as u64 + 1) as i64;
            let late = rng.below(4) != 0;
            let at = if late {
                w + TimeDelta::seconds(jitter)
            } else {
                w - TimeDelta::seconds(jitter)
            };
            if at <= now { w } else { at }
        });
    }
    // Invariant 2 against what the targets really showed: each normal activation was
    // preceded by `propagationDelay` of continuous presence in every target.
    for (kid, at) in &memory.activations {
        for target in &world.targets {
            prop_assert!(
                target.continuously_contains(kid, *at - world.policy.propagation_delay, *at),
                "{kid} activated at {at} without {:?} of continuous publication in {}",
                world.policy.propagation_delay,
                target.name
            );
        }
    }
    Ok(())
}

proptest! {
    // 256 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn lifecycle_invariants_hold(s in scenario()) {
        run(s)?;
    }
}
