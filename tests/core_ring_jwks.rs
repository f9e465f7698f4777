//! The ring document's validation and the JWKS renderer, merger, size guard and parser.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use keyrotor::jwks::{self, JwksError, JwksSource, MAX_JWKS_BYTES};
use keyrotor::keys::{Algorithm, KeyGenerator, PublicJwk, RsaBits, SeededKeyGenerator};
use keyrotor::plan::{Observed, Policy, StoredRing, TargetObservation, step};
use keyrotor::ring::{KeyState, Ring, RingError};
use keyrotor::secret;
use serde_json::Value;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

fn policy(alg: Algorithm, certificate: bool) -> Policy {
    Policy {
        alg,
        rsa_bits: RsaBits::B2048,
        rotation_interval: TimeDelta::hours(24),
        max_token_lifetime: TimeDelta::hours(1),
        propagation_delay: TimeDelta::minutes(15),
        paused: false,
        revoked: BTreeSet::new(),
        certificate,
        subject: "auth/api-tokens".into(),
        rotate_request: None,
    }
}

/// A ring with an Active, a Next and a Retired key.
fn full_ring(alg: Algorithm, certificate: bool, seed: u64) -> Ring {
    let generator = SeededKeyGenerator::new(seed);
    let p = policy(alg, certificate);
    let mut observed = Observed {
        ring: StoredRing::Missing,
        targets: vec![],
        recoverable: vec![],
        status_kids: vec![],
    };
    let first = step(&p, &observed, t0(), &generator).unwrap();
    let published = first.publish.iter().map(|k| k.kid.clone()).collect();
    observed.ring = StoredRing::Present(first.ring);
    observed.targets = vec![TargetObservation {
        name: "t".into(),
        kids: Some(published),
        since: Default::default(),
    }];
    let seen = step(&p, &observed, t0() + TimeDelta::seconds(1), &generator).unwrap();
    observed.ring = StoredRing::Present(seen.ring);
    let rotated = step(&p, &observed, t0() + TimeDelta::hours(24), &generator).unwrap();
    assert_eq!(rotated.ring.keys.len(), 3);
    rotated.ring
}

fn edit(ring: &Ring, f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&ring.to_bytes()).unwrap();
    f(&mut value);
    serde_json::to_vec(&value).unwrap()
}

#[test]
fn ring_round_trips_byte_identically_for_every_algorithm() {
    for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
        for certificate in [false, true] {
            let ring = full_ring(alg, certificate, 100 + i as u64);
            let bytes = ring.to_bytes();
            let parsed = Ring::parse(&bytes).unwrap();
            assert_eq!(parsed, ring);
            assert_eq!(parsed.to_bytes(), bytes);
            // Canonical order whatever the order in memory.
            let mut shuffled = ring.clone();
            shuffled.keys.reverse();
            assert_eq!(shuffled.to_bytes(), bytes);
            let states: Vec<KeyState> = parsed.keys.iter().map(|k| k.state).collect();
            assert_eq!(
                states,
                vec![KeyState::Active, KeyState::Next, KeyState::Retired]
            );
        }
    }
}

#[test]
fn ring_parse_rejects_damage_with_descriptive_errors() {
    let ring = full_ring(Algorithm::ES256, false, 1);
    type Expect = fn(&RingError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("not json", b"{".to_vec(), |e| {
            matches!(e, RingError::Malformed { .. })
        }),
        (
            "no version",
            edit(&ring, |v| {
                v.as_object_mut().unwrap().remove("version");
            }),
            |e| matches!(e, RingError::MissingVersion),
        ),
        (
            "newer version",
            edit(&ring, |v| v["version"] = 7.into()),
            |e| matches!(e, RingError::NewerVersion { found: 7, .. }),
        ),
        (
            "version zero",
            edit(&ring, |v| v["version"] = 0.into()),
            |e| matches!(e, RingError::UnsupportedVersion(0)),
        ),
        (
            "alg does not match the key",
            edit(&ring, |v| v["keys"][0]["alg"] = "ES384".into()),
            |e| matches!(e, RingError::Inconsistent { .. }),
        ),
        (
            "JWK alg does not match its curve",
            edit(&ring, |v| {
                v["keys"][2]["alg"] = "ES384".into();
                v["keys"][2]["publicJwk"]["alg"] = "ES384".into();
            }),
            |e| matches!(e, RingError::InvalidKey { .. }),
        ),
        (
            "private half on a retired key",
            edit(&ring, |v| {
                v["keys"][2]["privateJwk"] = v["keys"][0]["privateJwk"].clone()
            }),
            |e| matches!(e, RingError::PrivateOnRetired(_)),
        ),
        (
            "no private half on the active key",
            edit(&ring, |v| {
                v["keys"][0].as_object_mut().unwrap().remove("privateJwk");
            }),
            |e| {
                matches!(
                    e,
                    RingError::MissingPrivate {
                        state: KeyState::Active,
                        ..
                    }
                )
            },
        ),
        (
            "two active keys",
            edit(&ring, |v| {
                v["keys"][1]["state"] = "Active".into();
                v["keys"][1]["activatedAt"] = v["keys"][0]["activatedAt"].clone();
            }),
            |e| {
                matches!(
                    e,
                    RingError::TooMany {
                        state: KeyState::Active,
                        ..
                    }
                )
            },
        ),
        (
            "duplicate kid",
            edit(&ring, |v| {
                let copy = v["keys"][2].clone();
                v["keys"].as_array_mut().unwrap().push(copy);
            }),
            |e| matches!(e, RingError::DuplicateKid(_)),
        ),
        (
            "kid is not the thumbprint",
            edit(&ring, |v| {
                v["keys"][2]["kid"] = "abc".into();
                v["keys"][2]["publicJwk"]["kid"] = "abc".into();
            }),
            |e| matches!(e, RingError::InvalidKey { .. }),
        ),
        (
            "retired key without removesAt",
            edit(&ring, |v| {
                v["keys"][2].as_object_mut().unwrap().remove("removesAt");
            }),
            |e| {
                matches!(
                    e,
                    RingError::MissingTime {
                        field: "removesAt",
                        ..
                    }
                )
            },
        ),
        (
            "private key of another key",
            edit(&ring, |v| {
                v["keys"][0]["privateJwk"]["d"] = v["keys"][1]["privateJwk"]["d"].clone()
            }),
            |e| matches!(e, RingError::InvalidKey { .. }),
        ),
        (
            "no active key",
            edit(&ring, |v| {
                v["keys"].as_array_mut().unwrap().remove(0);
            }),
            |e| matches!(e, RingError::NoActive),
        ),
    ];
    for (name, bytes, expected) in cases {
        let err = Ring::parse(&bytes).expect_err(name);
        assert!(expected(&err), "{name}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn ring_errors_never_quote_private_values() {
    let ring = full_ring(Algorithm::ES256, false, 2);
    let d = ring
        .active()
        .unwrap()
        .private_jwk
        .as_ref()
        .unwrap()
        .d
        .expose()
        .to_owned();
    // A private value in a place where serde would quote it in its own message.
    let bytes = edit(&ring, |v| v["keys"][0]["state"] = d.clone().into());
    let err = Ring::parse(&bytes).unwrap_err();
    assert!(matches!(err, RingError::Malformed { .. }));
    assert!(!err.to_string().contains(&d));
    assert!(!format!("{err:?}").contains(&d));
}

#[test]
fn unknown_members_are_ignored_within_version_1() {
    let ring = full_ring(Algorithm::EdDSA, false, 3);
    let bytes = edit(&ring, |v| v["futureMember"] = "x".into());
    assert_eq!(Ring::parse(&bytes).unwrap(), ring);
}

#[test]
fn secret_data_holds_the_documented_keys() {
    let ring = full_ring(Algorithm::ES256, true, 4);
    let data = secret::secret_data(&ring, true).unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "alg",
            "kid",
            "private.jwk",
            "private.pem",
            "ring.json",
            "tls.crt",
            "tls.key"
        ]
    );
    let active = ring.active().unwrap();
    assert_eq!(data["kid"], active.kid.as_bytes());
    assert_eq!(data["alg"], b"ES256");
    assert_eq!(data["tls.key"], data["private.pem"]);
    assert!(String::from_utf8_lossy(&data["tls.crt"]).starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(Ring::parse(&data["ring.json"]).unwrap(), ring);
    let jwk: Value = serde_json::from_slice(&data["private.jwk"]).unwrap();
    assert_eq!(jwk["kid"], active.kid.as_str());
    assert!(jwk["d"].is_string());
    assert_eq!(
        secret::stored_ring(Some(&data)),
        StoredRing::Present(ring.clone())
    );
    assert_eq!(secret::stored_ring(None), StoredRing::Missing);
    let plain = secret::secret_data(&ring, false).unwrap();
    assert!(!plain.contains_key("tls.crt"));
}

fn keys(seed: u64, n: usize, alg: Algorithm) -> Vec<PublicJwk> {
    let generator = SeededKeyGenerator::new(seed);
    (0..n)
        .map(|_| {
            generator
                .generate(alg, RsaBits::B2048)
                .unwrap()
                .public_jwk()
        })
        .collect()
}

#[test]
fn jwks_renders_ring_order_deterministically() {
    let ring = full_ring(Algorithm::ES256, true, 5);
    let bytes = jwks::render(&ring.public_jwks()).unwrap();
    assert_eq!(jwks::render(&ring.public_jwks()).unwrap(), bytes);
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let kids: Vec<&str> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = [ring.active(), ring.next(), ring.retired().next()]
        .into_iter()
        .map(|k| k.unwrap().kid.as_str())
        .collect();
    assert_eq!(kids, expected);
    for key in doc["keys"].as_array().unwrap() {
        let members: BTreeSet<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let allowed: BTreeSet<&str> = [
            "kty", "crv", "x", "y", "kid", "alg", "use", "x5c", "x5t#S256",
        ]
        .into();
        assert!(members.is_subset(&allowed), "{members:?}");
        assert_eq!(key["use"], "sig");
    }
}

#[test]
fn jwks_merge_orders_sources_by_name_and_dedupes_kids() {
    let a = keys(10, 3, Algorithm::ES256);
    let b = keys(11, 2, Algorithm::EdDSA);
    let mut b_with_dup = b.clone();
    b_with_dup.push(a[0].clone());
    let sources = vec![
        JwksSource {
            name: "ns/b".into(),
            keys: b_with_dup,
        },
        JwksSource {
            name: "ns/a".into(),
            keys: a.clone(),
        },
    ];
    let merged = jwks::merge(&sources).unwrap();
    let mut reversed = sources.clone();
    reversed.reverse();
    assert_eq!(
        jwks::merge(&reversed).unwrap(),
        merged,
        "input order does not matter"
    );
    let doc = jwks::parse(&merged.document).unwrap();
    assert_eq!(doc.len(), 5);
    let kids: Vec<String> = doc.public_jwks().into_iter().map(|k| k.kid).collect();
    let expected: Vec<String> = a.iter().chain(b.iter()).map(|k| k.kid.clone()).collect();
    assert_eq!(kids, expected);
    assert_eq!(merged.sources["ns/a"].len(), 3);
    assert_eq!(
        merged.sources["ns/b"].len(),
        2,
        "duplicate credited to the first source"
    );
}

#[test]
fn jwks_size_guard_fails_closed() {
    // RSA-4096-sized moduli make each key large; build enough to cross the limit.
    let base = keys(12, 1, Algorithm::RS256).remove(0);
    let mut big = Vec::new();
    for i in 0..2_000 {
        let mut k = base.clone();
        k.kid = format!("{}-{i}", base.kid);
        big.push(k);
    }
    match jwks::render(&big) {
        Err(JwksError::TooLarge { size, limit, keys }) => {
            assert!(size > limit);
            assert_eq!(limit, MAX_JWKS_BYTES);
            assert_eq!(keys, 2_000);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    const { assert!(MAX_JWKS_BYTES < 1024 * 1024) };
    // Just under the limit still renders.
    let per_key = jwks::render(std::slice::from_ref(&big[0])).unwrap().len();
    let fits = MAX_JWKS_BYTES / (per_key + 1) - 1;
    let bytes = jwks::render(&big[..fits]).unwrap();
    assert!(bytes.len() <= MAX_JWKS_BYTES);
}

#[test]
fn jwks_parse_reads_kids_and_rejects_private_members() {
    let a = keys(13, 2, Algorithm::ES256);
    let bytes = jwks::render(&a).unwrap();
    let doc = jwks::parse(&bytes).unwrap();
    assert_eq!(doc.kids(), a.iter().map(|k| k.kid.clone()).collect());
    assert_eq!(doc.public_jwk(&a[1].kid).unwrap().unwrap(), a[1]);
    assert!(doc.public_jwk("absent").is_none());
    // Foreign keys are kept for their kid but are not keyrotor public JWKs.
    let foreign = br#"{"keys":[{"kty":"oct","kid":"hmac"},{"kty":"EC","kid":"bad","crv":"P-256","x":"AA","y":"AA","alg":"ES256","use":"sig"}]}"#;
    let doc = jwks::parse(foreign).unwrap();
    assert_eq!(doc.kids().len(), 2);
    assert!(doc.public_jwks().is_empty());
    assert!(doc.public_jwk("bad").unwrap().is_err());
    let private = br#"{"keys":[{"kty":"EC","kid":"k","d":"c2VjcmV0"}]}"#;
    let err = jwks::parse(private).unwrap_err();
    assert!(matches!(err, JwksError::PrivateMaterial { index: 0, .. }));
    assert!(!err.to_string().contains("c2VjcmV0"));
    assert!(matches!(jwks::parse(b"[]"), Err(JwksError::NotAJwks(_))));
    assert!(matches!(
        jwks::parse(b"{"),
        Err(JwksError::Malformed { .. })
    ));
}

mod merge_properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Merging is deterministic whatever the input order; every kid appears once,
        /// credited to the first source (by name) offering it; each source's keys keep
        /// their relative order; the document parses back to the same keys.
        #[test]
        fn merge_is_deterministic_and_complete(
            shape in prop::collection::vec((0u8..6, prop::collection::vec(0usize..12, 0..6)), 0..6),
            rotate in 0usize..6,
        ) {
            let pool = keys(99, 12, Algorithm::EdDSA);
            let sources: Vec<JwksSource> = shape
                .iter()
                .map(|(name, picks)| JwksSource {
                    name: format!("ns/p{name}"),
                    keys: picks.iter().map(|&i| pool[i].clone()).collect(),
                })
                .collect();
            let merged = jwks::merge(&sources).unwrap();
            let mut rotated = sources.clone();
            if !rotated.is_empty() {
                let by = rotate % rotated.len();
                rotated.rotate_left(by);
            }
            // Sources with equal names keep their relative order, so only compare
            // when names are distinct.
            let names: BTreeSet<&str> = sources.iter().map(|s| s.name.as_str()).collect();
            if names.len() == sources.len() {
                prop_assert_eq!(&jwks::merge(&rotated).unwrap(), &merged);
            }
            let doc = jwks::parse(&merged.document).unwrap();
            let kids: Vec<String> = doc.public_jwks().into_iter().map(|k| k.kid).collect();
            let unique: BTreeSet<&String> = kids.iter().collect();
            prop_assert_eq!(unique.len(), kids.len(), "duplicate kid in merged JWKS");
            let offered: BTreeSet<String> = sources
                .iter()
                .flat_map(|s| s.keys.iter().map(|k| k.kid.clone()))
                .collect();
            prop_assert_eq!(kids.iter().cloned().collect::<BTreeSet<_>>(), offered);
            let credited: Vec<String> = merged.sources.values().flatten().cloned().collect();
            prop_assert_eq!(&credited, &kids, "sources list kids in document order");
            for source in &sources {
                let mine: Vec<&String> = merged.sources[&source.name].iter().collect();
                let positions: Vec<usize> = mine
                    .iter()
                    .map(|kid| kids.iter().position(|k| k == *kid).unwrap())
                    .collect();
                prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
