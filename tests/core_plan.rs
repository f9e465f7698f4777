//! Scenario tests of the key lifecycle (`plan`/`step`) with an injected clock.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use keyrotor::keys::{Algorithm, RsaBits, SeededKeyGenerator};
use keyrotor::plan::{
    Observed, Plan, Policy, StoredRing, TargetObservation, Transition, plan, step,
};
use keyrotor::ring::{ActivationException, KeyState};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

fn policy() -> Policy {
    Policy {
        alg: Algorithm::ES256,
        rsa_bits: RsaBits::default(),
        rotation_interval: TimeDelta::hours(24),
        max_token_lifetime: TimeDelta::hours(1),
        propagation_delay: TimeDelta::minutes(15),
        paused: false,
        revoked: BTreeSet::new(),
        certificate: false,
        subject: "auth/api-tokens".into(),
        rotate_request: None,
    }
}

fn observed(ring: StoredRing, targets: &[Option<&Plan>]) -> Observed {
    Observed {
        ring,
        targets: targets
            .iter()
            .enumerate()
            .map(|(i, published)| TargetObservation {
                name: format!("auth/jwks-{i}"),
                kids: published.map(|p| p.publish.iter().map(|k| k.kid.clone()).collect()),
            })
            .collect(),
        recoverable: Vec::new(),
        status_kids: Vec::new(),
    }
}

#[test]
fn first_key_is_active_at_once_and_a_next_key_follows() {
    let generator = SeededKeyGenerator::new(1);
    let p = step(
        &policy(),
        &observed(StoredRing::Missing, &[None]),
        t0(),
        &generator,
    )
    .unwrap();
    assert!(p.key_requests.is_empty());
    let active = p.ring.active().unwrap();
    assert_eq!(
        active.activated_without_prepublication,
        Some(ActivationException::FirstKey)
    );
    let next = p.ring.next().unwrap();
    assert_eq!(next.state, KeyState::Next);
    assert_eq!(p.publish.len(), 2);
    assert_eq!(p.publish[0].kid, active.kid);
    assert!(p.transitions.contains(&Transition::NextCreated {
        kid: next.kid.clone()
    }));
    // Same inputs, no keys: the plan is a fixed point.
    let again = plan(
        &policy(),
        &observed(StoredRing::Present(p.ring.clone()), &[None]),
        t0(),
    )
    .unwrap();
    assert_eq!(again.ring, p.ring);
    assert!(again.key_requests.is_empty());
}
