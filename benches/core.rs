//! Benchmarks of the pure core: key generation + JWK + thumbprint, rendering a large
//! merged JWKS, parsing a stored ring, and a steady-state plan.
//!
//! `cargo bench --bench core`. After the criterion groups it prints the p50/p99 of
//! P-256 generation + JWK + thumbprint over 10,000 runs (DESIGN.md target: p99 < 1 ms).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{Criterion, criterion_group};
use keyrotor::jwks::{self, JwksSource};
use keyrotor::keys::{Algorithm, KeyGenerator, RsaBits, SeededKeyGenerator, SystemKeyGenerator};
use keyrotor::plan::{Observed, Policy, StoredRing, TargetObservation, plan, step};
use keyrotor::ring::Ring;

fn p256_jwk_thumbprint() -> Vec<u8> {
    let key = SystemKeyGenerator
        .generate(Algorithm::ES256, RsaBits::default())
        .expect("generate");
    let public = key.public_jwk();
    debug_assert_eq!(public.thumbprint().ok().as_deref(), Some(key.kid()));
    serde_json::to_vec(&public).expect("json")
}

fn bench_keygen(c: &mut Criterion) {
    c.bench_function("p256 generate + JWK + thumbprint", |b| {
        b.iter(|| black_box(p256_jwk_thumbprint()))
    });
}

fn thousand_key_sources() -> Vec<JwksSource> {
    let generator = SeededKeyGenerator::new(1);
    (0..10)
        .map(|s| JwksSource {
            name: format!("ns-{s}/policy"),
            keys: (0..100)
                .map(|_| {
                    generator
                        .generate(Algorithm::ES256, RsaBits::default())
                        .expect("generate")
                        .public_jwk()
                })
                .collect(),
        })
        .collect()
}

fn bench_jwks(c: &mut Criterion) {
    let sources = thousand_key_sources();
    let size = jwks::merge(&sources).expect("merge").document.len();
    println!("1,000-key merged JWKS: {size} bytes");
    c.bench_function("merge + render 1,000-key JWKS", |b| {
        b.iter(|| black_box(jwks::merge(black_box(&sources)).expect("merge")))
    });
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).expect("time")
}

fn policy(alg: Algorithm) -> Policy {
    Policy {
        alg,
        rsa_bits: RsaBits::B3072,
        rotation_interval: TimeDelta::hours(24),
        max_token_lifetime: TimeDelta::hours(1),
        propagation_delay: TimeDelta::minutes(15),
        paused: false,
        revoked: BTreeSet::new(),
        certificate: false,
        subject: "ns/policy".into(),
        rotate_request: None,
    }
}

/// A settled ring (Active, Next, Retired) and the observations that match it.
fn settled(alg: Algorithm) -> (Policy, Observed, DateTime<Utc>) {
    let generator = SeededKeyGenerator::new(2);
    let p = policy(alg);
    let mut observed = Observed {
        ring: StoredRing::Missing,
        targets: vec![],
        recoverable: vec![],
        status_kids: vec![],
    };
    let mut now = t0();
    for at in [
        t0(),
        t0() + TimeDelta::seconds(1),
        t0() + TimeDelta::hours(24),
    ] {
        now = at;
        let planned = step(&p, &observed, now, &generator).expect("step");
        observed.targets = vec![TargetObservation {
            name: "ns/jwks".into(),
            kids: Some(planned.publish.iter().map(|k| k.kid.clone()).collect()),
            since: Default::default(),
        }];
        observed.ring = StoredRing::Present(planned.ring);
    }
    (p, observed, now + TimeDelta::seconds(1))
}

fn bench_ring_and_plan(c: &mut Criterion) {
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let (p, observed, now) = settled(alg);
        let StoredRing::Present(ring) = &observed.ring else {
            unreachable!("settled ring is present")
        };
        let bytes = ring.to_bytes();
        c.bench_function(&format!("parse + validate 3-key {alg} ring"), |b| {
            b.iter(|| black_box(Ring::parse(black_box(&bytes)).expect("parse")))
        });
        c.bench_function(&format!("steady-state plan, 3-key {alg} ring"), |b| {
            b.iter(|| black_box(plan(&p, black_box(&observed), now).expect("plan")))
        });
    }
}

criterion_group!(benches, bench_keygen, bench_jwks, bench_ring_and_plan);

fn percentiles() {
    const RUNS: usize = 10_000;
    let mut samples: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(p256_jwk_thumbprint());
            start.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "p256 generate + JWK + thumbprint over {RUNS} runs: p50 {:?}, p99 {:?}, max {:?}",
        samples[RUNS / 2],
        samples[RUNS * 99 / 100],
        samples[RUNS - 1]
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
