//! Writes interoperability vectors for `tests/interop/run`: for every algorithm, the
//! Secret data and JWKS exactly as the operator renders them (real keys from the
//! system generator, certificates on), plus the Next key's PEM for negative checks.
//! PyJWT and `jose` then sign from our PEM and private JWK and verify with our JWKS.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{TimeDelta, Utc};
use keyrotor::jwks;
use keyrotor::keys::{Algorithm, RsaBits, SystemKeyGenerator};
use keyrotor::plan::{Observed, Policy, StoredRing, step};
use keyrotor::secret;

#[test]
#[ignore = "run by tests/interop/run, which sets KEYROTOR_INTEROP_DIR"]
fn write_interop_vectors() {
    let dir = PathBuf::from(
        std::env::var_os("KEYROTOR_INTEROP_DIR").expect("KEYROTOR_INTEROP_DIR must be set"),
    );
    let cases = [
        ("es256", Algorithm::ES256, RsaBits::default()),
        ("es384", Algorithm::ES384, RsaBits::default()),
        ("eddsa", Algorithm::EdDSA, RsaBits::default()),
        ("rs256-2048", Algorithm::RS256, RsaBits::B2048),
        ("rs256-4096", Algorithm::RS256, RsaBits::B4096),
        ("ps256-3072", Algorithm::PS256, RsaBits::B3072),
    ];
    let now = Utc::now();
    for (name, alg, rsa_bits) in cases {
        let policy = Policy {
            alg,
            rsa_bits,
            rotation_interval: TimeDelta::hours(24),
            max_token_lifetime: TimeDelta::hours(1),
            propagation_delay: TimeDelta::minutes(15),
            paused: false,
            revoked: BTreeSet::new(),
            certificate: true,
            subject: format!("interop/{name}"),
            rotate_request: None,
        };
        let observed = Observed {
            ring: StoredRing::Missing,
            targets: vec![],
            recoverable: vec![],
            status_kids: vec![],
        };
        let plan = step(&policy, &observed, now, &SystemKeyGenerator).expect("plan");
        let data = secret::secret_data(&plan.ring, true).expect("secret data");
        let jwks = jwks::render(&plan.publish).expect("jwks");
        let next = plan.ring.next().expect("a Next key");
        let next_pem = next
            .private_jwk
            .as_ref()
            .expect("Next key has its private half")
            .to_pkcs8_pem()
            .expect("pem");
        let case = dir.join(name);
        std::fs::create_dir_all(&case).expect("mkdir");
        for (key, value) in &data {
            std::fs::write(case.join(key), value).expect("write secret file");
        }
        std::fs::write(case.join("jwks.json"), &jwks).expect("write jwks");
        std::fs::write(case.join("next.pem"), next_pem.as_bytes()).expect("write next.pem");
        std::fs::write(case.join("next.kid"), &next.kid).expect("write next.kid");
        // Sanity on our side: the published kid is the Secret's kid, first in the JWKS.
        let doc = jwks::parse(&jwks).expect("parse");
        assert_eq!(doc.public_jwks()[0].kid.as_bytes(), data["kid"].as_slice());
    }
}
