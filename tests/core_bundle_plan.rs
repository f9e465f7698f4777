//! The planner with JwksBundle targets (`TargetObservation::since`), with an injected
//! clock.

mod core_support;

use chrono::TimeDelta;
use core_support::{World, activated, hours, minutes, policy, reconcile, t0};
use keyrotor::keys::SeededKeyGenerator;
use keyrotor::plan::{ActivationCause, StoredRing, TargetObservation, step};

/// A JwksBundle is one target standing for many ConfigMaps: its `since` says when a kid
/// was first in all of them. A Next key published long ago in the policy's own ConfigMap
/// counts as published only from then.
#[test]
fn a_bundle_that_showed_the_next_key_later_delays_its_activation() {
    let mut world = World::new(policy(), 1, 7, t0());
    reconcile(&mut world, t0());
    let p = reconcile(&mut world, t0() + minutes(1));
    let active = p.ring.active().unwrap().kid.clone();
    let next = p.ring.next().unwrap().kid.clone();
    assert_eq!(p.ring.next().unwrap().published_at, Some(t0() + minutes(1)));

    let bundle_since = t0() + hours(24) - minutes(5);
    let mut observed = world.observed();
    let kids = observed.targets[0].kids.clone().unwrap();
    observed.targets.push(TargetObservation {
        name: "JwksBundle platform".into(),
        since: kids.iter().map(|k| (k.clone(), bundle_since)).collect(),
        kids: Some(kids),
    });
    let generator = SeededKeyGenerator::new(99);
    let due = t0() + hours(24);
    let p = step(&policy(), &observed, due, &generator).unwrap();
    assert_eq!(p.ring.active().unwrap().kid, active, "activated too early");
    assert_eq!(p.ring.next().unwrap().published_at, Some(bundle_since));
    assert_eq!(p.next_rotation, Some(bundle_since + minutes(15)));
    assert!(activated(&p).is_empty());

    // Idempotent on its own output.
    observed.ring = StoredRing::Present(p.ring.clone());
    let again = step(&policy(), &observed, due, &generator).unwrap();
    assert_eq!(again.ring, p.ring);

    let almost = bundle_since + minutes(15) - TimeDelta::seconds(1);
    let p = step(&policy(), &observed, almost, &generator).unwrap();
    assert_eq!(p.ring.active().unwrap().kid, active);
    let p = step(&policy(), &observed, bundle_since + minutes(15), &generator).unwrap();
    assert_eq!(
        activated(&p),
        vec![(next.clone(), ActivationCause::Schedule)]
    );

    // A bundle that is missing the key resets the pre-publication, as any target does.
    let mut missing = world.observed();
    missing.targets.push(TargetObservation {
        name: "JwksBundle platform".into(),
        kids: Some([active.clone()].into()),
        since: Default::default(),
    });
    let p = step(&policy(), &missing, due, &generator).unwrap();
    assert_eq!(p.ring.next().unwrap().published_at, None);
    assert_eq!(p.ring.active().unwrap().kid, active);
}
