//! Scenario tests of the key lifecycle (`plan`/`step`) with an injected clock.

mod core_support;

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use core_support::{World, activated, hours, minutes, policy, reconcile, t0};
use keyrotor::keys::{Algorithm, KeyGenerator, RsaBits, SeededKeyGenerator};
use keyrotor::plan::{
    ActivationCause, Degraded, Observed, Slot, StoredRing, TargetObservation, Transition, plan,
    plan_with_keys, step, step_when_ready,
};
use keyrotor::ring::{ActivationException, KeyState, Ring, RingError};

#[test]
fn first_key_is_active_at_once_and_a_next_key_follows() {
    let mut world = World::new(policy(), 1, 1, t0());
    let p = reconcile(&mut world, t0());
    assert!(p.key_requests.is_empty());
    let active = p.ring.active().unwrap();
    assert_eq!(
        active.activated_without_prepublication,
        Some(ActivationException::FirstKey)
    );
    assert_eq!(
        activated(&p),
        vec![(active.kid.clone(), ActivationCause::FirstKey)]
    );
    let next = p.ring.next().unwrap();
    assert_eq!(p.publish.len(), 2);
    assert_eq!(p.publish[0].kid, active.kid);
    assert_eq!(p.publish[1].kid, next.kid);
    // Not yet observed in the target: no publishedAt, a fallback wake-up.
    assert_eq!(next.published_at, None);
    assert_eq!(p.wake_at, Some(t0() + minutes(15)));
}

#[test]
fn scheduled_rotation_waits_for_the_interval_and_retires_the_old_key() {
    let mut world = World::new(policy(), 2, 2, t0());
    let first = reconcile(&mut world, t0());
    let k0 = first.ring.active().unwrap().kid.clone();
    let k1 = first.ring.next().unwrap().kid.clone();
    // The watch event after the ConfigMap writes: both keys now observed.
    let seen = reconcile(&mut world, t0() + TimeDelta::seconds(1));
    assert_eq!(
        seen.ring.next().unwrap().published_at,
        Some(t0() + TimeDelta::seconds(1))
    );
    assert_eq!(seen.next_rotation, Some(t0() + hours(24)));
    assert_eq!(seen.wake_at, Some(t0() + hours(24)));
    // One second early: nothing happens.
    let early = reconcile(&mut world, t0() + hours(24) - TimeDelta::seconds(1));
    assert!(early.transitions.is_empty());
    assert_eq!(early.ring.active().unwrap().kid, k0);
    // On time: k1 signs, k0 retires without its private half.
    let rotated = reconcile(&mut world, t0() + hours(24));
    assert_eq!(
        activated(&rotated),
        vec![(k1.clone(), ActivationCause::Schedule)]
    );
    let retired = rotated.ring.get(&k0).unwrap();
    assert_eq!(retired.state, KeyState::Retired);
    assert!(retired.private_jwk.is_none());
    assert_eq!(retired.removes_at, Some(t0() + hours(24) + minutes(75)));
    assert_eq!(rotated.publish.len(), 3);
    assert_eq!(rotated.publish[0].kid, k1);
    assert_eq!(rotated.publish[2].kid, k0);
    // The retired key leaves at retiredAt + propagationDelay + maxTokenLifetime.
    reconcile(&mut world, t0() + hours(24) + TimeDelta::seconds(1));
    let kept = reconcile(
        &mut world,
        t0() + hours(24) + minutes(75) - TimeDelta::seconds(1),
    );
    assert!(kept.ring.get(&k0).is_some());
    let removed = reconcile(&mut world, t0() + hours(24) + minutes(75));
    assert!(removed.ring.get(&k0).is_none());
    assert!(
        removed
            .transitions
            .contains(&Transition::Removed { kid: k0 })
    );
    assert_eq!(removed.publish.len(), 2);
}

#[test]
fn activation_waits_for_publication_plus_propagation_delay() {
    let mut world = World::new(policy(), 1, 3, t0());
    reconcile(&mut world, t0());
    // The target never got the Next key (write lost); rotation is due but must wait.
    world.delete_target(0);
    let due = reconcile(&mut world, t0() + hours(30));
    assert!(activated(&due).is_empty());
    assert!(
        due.degraded
            .iter()
            .any(|d| matches!(d, Degraded::RotationWaiting { .. }))
    );
    // Seen at +30h1s: published then, active only propagationDelay later.
    let seen = reconcile(&mut world, t0() + hours(30) + TimeDelta::seconds(1));
    let p = t0() + hours(30) + TimeDelta::seconds(1);
    assert_eq!(seen.ring.next().unwrap().published_at, Some(p));
    assert_eq!(seen.wake_at, Some(p + minutes(15)));
    let before = reconcile(&mut world, p + minutes(15) - TimeDelta::seconds(1));
    assert!(activated(&before).is_empty());
    let after = reconcile(&mut world, p + minutes(15));
    assert_eq!(activated(&after).len(), 1);
}

#[test]
fn missed_wake_ups_give_one_rotation_not_a_burst() {
    let mut world = World::new(policy(), 1, 4, t0());
    reconcile(&mut world, t0());
    reconcile(&mut world, t0() + TimeDelta::seconds(1));
    // Down for ten intervals.
    let late = reconcile(&mut world, t0() + hours(240));
    assert_eq!(activated(&late).len(), 1);
    // The new Next is fresh: nothing more until it is published and the interval ends.
    let next = reconcile(&mut world, t0() + hours(240) + TimeDelta::seconds(1));
    assert!(activated(&next).is_empty());
    assert_eq!(next.next_rotation, Some(t0() + hours(264)));
    // The next wake-up is the old key's removal.
    assert_eq!(next.wake_at, Some(t0() + hours(240) + minutes(75)));
}

#[test]
fn rotate_request_rotates_once_and_still_prepublishes() {
    let mut world = World::new(policy(), 1, 5, t0());
    reconcile(&mut world, t0());
    reconcile(&mut world, t0() + TimeDelta::seconds(1));
    world.policy.rotate_request = Some("now".into());
    let p = reconcile(&mut world, t0() + hours(1));
    assert_eq!(activated(&p).len(), 1);
    assert_eq!(activated(&p)[0].1, ActivationCause::Request);
    assert_eq!(p.ring.last_rotate_request.as_deref(), Some("now"));
    // The same value again does nothing; a new value waits for the fresh Next key.
    let same = reconcile(&mut world, t0() + hours(2));
    assert!(activated(&same).is_empty());
    world.policy.rotate_request = Some("again".into());
    let waiting = reconcile(&mut world, t0() + hours(2) + TimeDelta::seconds(1));
    assert!(activated(&waiting).is_empty());
    let published = waiting.ring.next().unwrap().published_at.unwrap();
    assert_eq!(waiting.wake_at, Some(published + minutes(15)));
    let done = reconcile(&mut world, published + minutes(15));
    assert_eq!(activated(&done)[0].1, ActivationCause::Request);
}

/// `requests_rotation_of` decides when the controller confirms a request with a fresh
/// read of the policy: any value the ring has not honoured, an older one from a watch
/// cache that is behind included, looks new.
#[test]
fn a_request_the_ring_has_not_honoured_looks_new_even_when_it_is_older() {
    let mut world = World::new(policy(), 1, 5, t0());
    reconcile(&mut world, t0());
    reconcile(&mut world, t0() + TimeDelta::seconds(1));
    world.policy.rotate_request = Some("second".into());
    let honoured = reconcile(&mut world, t0() + hours(1));
    assert_eq!(activated(&honoured)[0].1, ActivationCause::Request);
    let stored = StoredRing::Present(honoured.ring);
    let with_request = |request: Option<&str>| {
        let mut p = policy();
        p.rotate_request = request.map(str::to_owned);
        p
    };
    assert!(!with_request(Some("second")).requests_rotation_of(&stored));
    assert!(!with_request(None).requests_rotation_of(&stored));
    assert!(with_request(Some("third")).requests_rotation_of(&stored));
    assert!(with_request(Some("first")).requests_rotation_of(&stored));
    assert!(with_request(Some("first")).requests_rotation_of(&StoredRing::Missing));
    assert!(!with_request(None).requests_rotation_of(&StoredRing::Missing));
}

#[test]
fn rotate_request_present_at_creation_is_not_a_rotation() {
    let mut p = policy();
    p.rotate_request = Some("from-gitops".into());
    let mut world = World::new(p, 1, 6, t0());
    let first = reconcile(&mut world, t0());
    assert_eq!(
        first.ring.last_rotate_request.as_deref(),
        Some("from-gitops")
    );
    let later = reconcile(&mut world, t0() + hours(1));
    assert!(activated(&later).is_empty());
}

#[test]
fn paused_stops_scheduled_rotation_but_removes_and_honours_requests() {
    let mut world = World::new(policy(), 1, 7, t0());
    reconcile(&mut world, t0());
    reconcile(&mut world, t0() + TimeDelta::seconds(1));
    let rotated = reconcile(&mut world, t0() + hours(24));
    let old = rotated.ring.retired().next().unwrap().kid.clone();
    world.policy.paused = true;
    let paused = reconcile(&mut world, t0() + hours(24) + TimeDelta::seconds(1));
    assert_eq!(paused.next_rotation, None);
    // Only the removal is scheduled.
    assert_eq!(paused.wake_at, Some(t0() + hours(24) + minutes(75)));
    let removed = reconcile(&mut world, t0() + hours(100));
    assert!(activated(&removed).is_empty());
    assert!(removed.ring.get(&old).is_none());
    assert_eq!(removed.wake_at, None);
    world.policy.rotate_request = Some("please".into());
    let requested = reconcile(&mut world, t0() + hours(101));
    assert_eq!(activated(&requested)[0].1, ActivationCause::Request);
}

#[test]
fn revoked_active_is_replaced_by_the_published_next_key() {
    let mut world = World::new(policy(), 1, 8, t0());
    let first = reconcile(&mut world, t0());
    let k0 = first.ring.active().unwrap().kid.clone();
    let k1 = first.ring.next().unwrap().kid.clone();
    reconcile(&mut world, t0() + TimeDelta::seconds(1));
    world.policy.revoked.insert(k0.clone());
    let p = reconcile(&mut world, t0() + hours(1));
    assert!(p.transitions.contains(&Transition::Revoked {
        kid: k0.clone(),
        state: KeyState::Active
    }));
    let active = p.ring.active().unwrap();
    assert_eq!(active.kid, k1);
    // Published for longer than propagationDelay: no exception needed.
    assert_eq!(active.activated_without_prepublication, None);
    assert!(p.publish.iter().all(|k| k.kid != k0));
    assert!(p.ring.get(&k0).is_none());
}

#[test]
fn revoked_active_without_a_published_successor_gets_a_fresh_key() {
    let mut world = World::new(policy(), 1, 9, t0());
    let first = reconcile(&mut world, t0());
    let k0 = first.ring.active().unwrap().kid.clone();
    let k1 = first.ring.next().unwrap().kid.clone();
    // The target never showed k1 (deleted before the watch event).
    world.delete_target(0);
    world.policy.revoked.insert(k0.clone());
    let p = reconcile(&mut world, t0() + TimeDelta::seconds(1));
    let active = p.ring.active().unwrap();
    assert_ne!(active.kid, k0);
    assert_ne!(active.kid, k1);
    assert_eq!(
        active.activated_without_prepublication,
        Some(ActivationException::Revocation)
    );
    assert_eq!(
        p.ring.next().unwrap().kid,
        k1,
        "the unpublished Next stays Next"
    );
    assert!(p.publish.iter().all(|k| k.kid != k0));
}

#[test]
fn revoking_next_and_retired_keys_removes_them_at_once() {
    let mut world = World::new(policy(), 1, 10, t0());
    reconcile(&mut world, t0());
    reconcile(&mut world, t0() + TimeDelta::seconds(1));
    let rotated = reconcile(&mut world, t0() + hours(24));
    let retired = rotated.ring.retired().next().unwrap().kid.clone();
    let next = rotated.ring.next().unwrap().kid.clone();
    world.policy.revoked.extend([retired.clone(), next.clone()]);
    let p = reconcile(&mut world, t0() + hours(24) + TimeDelta::seconds(5));
    assert!(p.ring.get(&retired).is_none());
    assert!(p.ring.get(&next).is_none());
    assert_eq!(p.publish.len(), 2, "Active plus a fresh Next");
    assert!(p.publish.iter().all(|k| k.kid != retired && k.kid != next));
}

#[test]
fn lost_ring_is_rebuilt_from_the_targets() {
    let mut world = World::new(policy(), 2, 11, t0());
    reconcile(&mut world, t0());
    reconcile(&mut world, t0() + TimeDelta::seconds(1));
    let rotated = reconcile(&mut world, t0() + hours(24));
    let published: BTreeSet<String> = rotated.publish.iter().map(|k| k.kid.clone()).collect();
    reconcile(&mut world, t0() + hours(24) + TimeDelta::seconds(1));
    world.delete_secret();
    let now = t0() + hours(25);
    let p = reconcile(&mut world, now);
    let rebuilt = p
        .transitions
        .iter()
        .find_map(|t| match t {
            Transition::RingRebuilt {
                recovered, lost, ..
            } => Some((recovered, lost)),
            _ => None,
        })
        .expect("rebuild reported");
    assert_eq!(
        rebuilt.0.iter().cloned().collect::<BTreeSet<_>>(),
        published,
        "every published key recovered"
    );
    assert!(rebuilt.1.is_empty());
    for kid in &published {
        let key = p.ring.get(kid).unwrap();
        assert_eq!(key.state, KeyState::Retired);
        assert!(key.recovered);
        assert_eq!(key.removes_at, Some(now + minutes(75)));
    }
    let active = p.ring.active().unwrap();
    assert_eq!(
        active.activated_without_prepublication,
        Some(ActivationException::Recovery)
    );
    assert!(
        p.degraded
            .iter()
            .any(|d| matches!(d, Degraded::RingRebuilt { .. }))
    );
    // Active first, the new Next, then the recovered keys.
    assert_eq!(p.publish.len(), 2 + published.len());
}

#[test]
fn corrupt_ring_is_rebuilt_and_a_newer_ring_is_left_alone() {
    let mut world = World::new(policy(), 1, 12, t0());
    reconcile(&mut world, t0());
    world.corrupt_secret();
    let p = reconcile(&mut world, t0() + hours(1));
    assert!(
        p.transitions
            .iter()
            .any(|t| matches!(t, Transition::RingRebuilt { .. }))
    );
    // A ring from a newer keyrotor: no plan at all.
    let observed = Observed {
        ring: StoredRing::from_bytes(Some(br#"{"version":2,"keys":[]}"#)),
        targets: vec![],
        recoverable: vec![],
        status_kids: vec![],
    };
    let err = plan(&policy(), &observed, t0()).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn a_status_without_a_ring_means_recovery_and_names_lost_keys() {
    let observed = Observed {
        ring: StoredRing::Missing,
        targets: vec![TargetObservation {
            name: "auth/jwks".into(),
            kids: Some(BTreeSet::new()),
            since: Default::default(),
        }],
        recoverable: vec![],
        status_kids: vec!["gone-kid".into()],
    };
    let generator = SeededKeyGenerator::new(13);
    let p = step(&policy(), &observed, t0(), &generator).unwrap();
    assert!(p.transitions.iter().any(|t| matches!(
        t,
        Transition::RingRebuilt { lost, .. } if lost == &vec!["gone-kid".to_owned()]
    )));
    assert_eq!(
        p.ring.active().unwrap().activated_without_prepublication,
        Some(ActivationException::Recovery)
    );
}

#[test]
fn key_requests_list_slots_in_consumption_order() {
    let observed = Observed {
        ring: StoredRing::Missing,
        targets: vec![],
        recoverable: vec![],
        status_kids: vec![],
    };
    let p = plan(&policy(), &observed, t0()).unwrap();
    let slots: Vec<Slot> = p.key_requests.iter().map(|r| r.slot).collect();
    assert_eq!(slots, vec![Slot::Active, Slot::Next]);
    // Keys of the wrong algorithm are skipped, not used.
    let generator = SeededKeyGenerator::new(14);
    let wrong = generator
        .generate(Algorithm::EdDSA, RsaBits::default())
        .unwrap();
    let right = generator
        .generate(Algorithm::ES256, RsaBits::default())
        .unwrap();
    let p = plan_with_keys(&policy(), &observed, t0(), &[wrong, right.clone()]).unwrap();
    assert_eq!(p.ring.active().unwrap().kid, right.kid());
    assert_eq!(p.key_requests.len(), 1);
    assert_eq!(p.key_requests[0].slot, Slot::Next);
}

#[test]
fn rsa_policy_generates_keys_of_the_requested_size() {
    let mut p = policy();
    p.alg = Algorithm::PS256;
    p.rsa_bits = RsaBits::B2048;
    let mut world = World::new(p, 1, 15, t0());
    let plan = reconcile(&mut world, t0());
    for key in &plan.ring.keys {
        assert_eq!(key.alg, Algorithm::PS256);
        assert_eq!(key.public_jwk.rsa_modulus_bits(), Some(2048));
    }
    // A size change replaces the Next key (it never signed); the Active key stays.
    let active = plan.ring.active().unwrap().kid.clone();
    world.policy.rsa_bits = RsaBits::B3072;
    let changed = reconcile(&mut world, t0() + TimeDelta::seconds(1));
    assert!(
        changed
            .transitions
            .iter()
            .any(|t| matches!(t, Transition::NextReplaced { .. }))
    );
    assert_eq!(changed.ring.active().unwrap().kid, active);
    assert_eq!(
        changed.ring.next().unwrap().public_jwk.rsa_modulus_bits(),
        Some(3072)
    );
}

#[test]
fn certificates_cover_the_key_and_are_renewed_before_they_run_out() {
    let mut p = policy();
    p.certificate = true;
    let mut world = World::new(p, 1, 16, t0());
    let first = reconcile(&mut world, t0());
    for key in &first.ring.keys {
        let cert = key.certificate.as_ref().expect("certificate issued");
        assert_eq!(cert.not_before, t0());
        assert_eq!(cert.not_after, t0() + hours(72) + minutes(75));
        assert!(key.public_jwk.x5c.is_some() && key.public_jwk.x5t_s256.is_some());
    }
    // Paused for a long time: the Active key's certificate is renewed while it signs.
    world.policy.paused = true;
    let seen = reconcile(&mut world, t0() + TimeDelta::seconds(1));
    let renew_at = t0() + hours(72) + minutes(75) - (hours(24) + minutes(75));
    assert_eq!(seen.wake_at, Some(renew_at));
    let renewed = reconcile(&mut world, renew_at);
    assert!(
        renewed
            .transitions
            .iter()
            .any(|t| matches!(t, Transition::CertificateIssued { .. }))
    );
    let active = renewed.ring.active().unwrap();
    assert_eq!(
        active.certificate.as_ref().unwrap().not_after,
        renew_at + hours(72) + minutes(75)
    );
    // Switching certificates off strips them from every key.
    world.policy.certificate = false;
    let off = reconcile(&mut world, renew_at + TimeDelta::seconds(1));
    assert!(off.ring.keys.iter().all(|k| k.certificate.is_none()));
    assert!(off.publish.iter().all(|k| k.x5c.is_none()));
}

#[test]
fn a_target_that_loses_the_next_key_restarts_its_prepublication() {
    let mut world = World::new(policy(), 2, 17, t0());
    reconcile(&mut world, t0());
    let seen = reconcile(&mut world, t0() + TimeDelta::seconds(1));
    let next = seen.ring.next().unwrap().kid.clone();
    world.now = t0() + hours(20);
    world.delete_target(1);
    let (_, lost) = world.reconcile(|_| TimeDelta::hours(1)).unwrap();
    assert!(lost.transitions.iter().any(|t| matches!(
        t,
        Transition::Unpublished { kid, targets } if *kid == next && targets == &vec!["ns/jwks-1".to_owned()]
    )));
    assert!(
        lost.degraded
            .iter()
            .any(|d| matches!(d, Degraded::TargetMissing { .. }))
    );
    // Rewritten at +21h; rotation at max(+24h, +21h + 15m) = +24h.
    let back = reconcile(&mut world, t0() + hours(21));
    assert_eq!(
        back.ring.next().unwrap().published_at,
        Some(t0() + hours(21))
    );
    assert_eq!(back.next_rotation, Some(t0() + hours(24)));
}

#[test]
fn stored_ring_reports_why_it_is_unusable() {
    assert_eq!(StoredRing::from_bytes(None), StoredRing::Missing);
    assert!(matches!(
        StoredRing::from_bytes(Some(b"not json")),
        StoredRing::Corrupt(RingError::Malformed { .. })
    ));
    let ring = Ring::new();
    assert!(matches!(
        StoredRing::from_bytes(Some(&ring.to_bytes())),
        StoredRing::Corrupt(RingError::NoActive)
    ));
}

#[test]
fn absurd_durations_saturate_instead_of_panicking() {
    let mut p = policy();
    p.rotation_interval = TimeDelta::MAX;
    p.max_token_lifetime = TimeDelta::MAX;
    p.propagation_delay = TimeDelta::MAX;
    p.certificate = true;
    let observed = Observed {
        ring: StoredRing::Missing,
        targets: vec![],
        recoverable: vec![],
        status_kids: vec![],
    };
    let generator = SeededKeyGenerator::new(18);
    let planned = step(&p, &observed, t0(), &generator).unwrap();
    assert!(planned.ring.active().is_some());
    // The certificate cannot express such a validity: reported, not a crash.
    assert!(
        planned
            .degraded
            .iter()
            .any(|d| matches!(d, Degraded::CertificateFailed { .. }))
    );
    let again = plan(
        &p,
        &Observed {
            ring: StoredRing::Present(planned.ring.clone()),
            ..observed
        },
        t0() + TimeDelta::days(365 * 1000),
    )
    .unwrap();
    // No rotation is ever due; the same key keeps signing.
    assert_eq!(
        again.ring.active().unwrap().kid,
        planned.ring.active().unwrap().kid
    );
    assert_eq!(again.next_rotation, Some(DateTime::<Utc>::MAX_UTC));
}

#[test]
fn transitions_are_stamped_when_the_generated_keys_are_ready() {
    // Key generation took 3 s (an RSA key on a busy node): the first key activates at
    // the time it is ready, so nothing counts from an instant before the Secret changes.
    let observed = Observed {
        ring: StoredRing::Missing,
        targets: vec![],
        recoverable: vec![],
        status_kids: vec![],
    };
    let ready = t0() + TimeDelta::seconds(3);
    let reads = std::cell::Cell::new(0);
    let clock = || {
        reads.set(reads.get() + 1);
        if reads.get() == 1 { t0() } else { ready }
    };
    let generator = SeededKeyGenerator::new(7);
    let p = step_when_ready(&policy(), &observed, &clock, &generator).unwrap();
    assert!(reads.get() >= 2, "the clock is read again after generating");
    assert_eq!(p.ring.active().unwrap().activated_at, Some(ready));
    assert_eq!(p.next_rotation, Some(ready + hours(24)));

    // A clock that goes backwards is not followed.
    let backwards = std::cell::Cell::new(0);
    let clock = || {
        backwards.set(backwards.get() + 1);
        if backwards.get() == 1 { ready } else { t0() }
    };
    let p = step_when_ready(&policy(), &observed, &clock, &generator).unwrap();
    assert_eq!(p.ring.active().unwrap().activated_at, Some(ready));
}

#[test]
fn a_rotation_that_lands_late_counts_from_when_it_landed() {
    let mut world = World::new(policy(), 2, 2, t0());
    let first = reconcile(&mut world, t0());
    let k0 = first.ring.active().unwrap().kid.clone();
    let k1 = first.ring.next().unwrap().kid.clone();
    reconcile(&mut world, t0() + TimeDelta::seconds(1));
    let rotation = t0() + hours(24);
    let rotated = reconcile(&mut world, rotation);
    assert_eq!(rotated.planned_at, rotation);
    let older = rotated.ring.get(&k0).unwrap().clone();

    // The Secret write took 4 s (an API server restart held it up).
    let landed = rotation + TimeDelta::seconds(4);
    let moved = rotated.clone().landed_at(landed);
    assert_eq!(moved.planned_at, landed);
    assert_eq!(moved.ring.get(&k1).unwrap().activated_at, Some(landed));
    let retired = moved.ring.get(&k0).unwrap();
    assert_eq!(retired.retired_at, Some(landed));
    assert_eq!(retired.removes_at, Some(landed + minutes(75)));
    // What happened earlier keeps its own times.
    assert_eq!(retired.activated_at, older.activated_at);
    assert_eq!(retired.published_at, older.published_at);
    assert_eq!(
        moved.next_rotation,
        rotated.next_rotation.map(|t| t + TimeDelta::seconds(4))
    );
    // Landing "before" the plan changes nothing.
    assert_eq!(rotated.clone().landed_at(t0()), rotated);
}
