//! Known-answer and round-trip tests for keys, JWKs, PKCS#8 and certificates.

use keyrotor::keys::{
    Algorithm, Certificate, Curve, KeyGenerator, KeyType, PrivateJwk, PublicJwk, RsaBits,
    SeededKeyGenerator, SystemKeyGenerator, certificate, thumbprint,
};

/// RFC 7638 section 3.1: the example RSA key and its thumbprint.
#[test]
fn rfc7638_example_thumbprint() {
    let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    let kid = thumbprint(KeyType::RSA, None, None, None, Some(n), Some("AQAB")).unwrap();
    assert_eq!(kid, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

/// RFC 8037 appendix A.3: the Ed25519 example key's thumbprint.
#[test]
fn rfc8037_example_thumbprint() {
    let kid = thumbprint(
        KeyType::OKP,
        Some(Curve::Ed25519),
        Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
}

fn bits_for(alg: Algorithm) -> RsaBits {
    if alg.is_rsa() {
        RsaBits::B2048
    } else {
        RsaBits::default()
    }
}

#[test]
fn every_algorithm_generates_a_consistent_key() {
    let generator = SeededKeyGenerator::new(7);
    for alg in Algorithm::ALL {
        let key = generator.generate(alg, bits_for(alg)).unwrap();
        let private = key.private_jwk();
        private.validate().unwrap();
        let public = key.public_jwk();
        public.validate().unwrap();
        assert_eq!(public.kid, public.thumbprint().unwrap());
        assert_eq!(public.alg, alg);
        assert_eq!(public.kty, alg.key_type());
        assert_eq!(public.crv, alg.curve());
        // The public JWK serialises with RFC members only.
        let json: serde_json::Value = serde_json::to_value(&public).unwrap();
        let members: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for m in &members {
            assert!(
                ["kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"].contains(m),
                "{alg}: unexpected member {m}"
            );
        }
        assert_eq!(json["use"], "sig");
        let pem = private.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
        // The private JWK survives a JSON round trip.
        let back: PrivateJwk = serde_json::from_slice(&private.to_json()).unwrap();
        assert_eq!(&back, private);
    }
}

#[test]
fn rsa_sizes_are_honoured() {
    let generator = SeededKeyGenerator::new(11);
    for bits in [RsaBits::B2048, RsaBits::B3072] {
        let key = generator.generate(Algorithm::PS256, bits).unwrap();
        assert_eq!(key.public_jwk().rsa_modulus_bits(), Some(bits.bits()));
    }
}

#[test]
fn seeded_generator_is_deterministic_and_system_generator_is_not() {
    let a = SeededKeyGenerator::new(42);
    let b = SeededKeyGenerator::new(42);
    for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
        assert_eq!(
            a.generate(alg, RsaBits::default()).unwrap(),
            b.generate(alg, RsaBits::default()).unwrap()
        );
    }
    let first = a.generate(Algorithm::ES256, RsaBits::default()).unwrap();
    let second = a.generate(Algorithm::ES256, RsaBits::default()).unwrap();
    assert_ne!(first.kid(), second.kid());
    let s1 = SystemKeyGenerator
        .generate(Algorithm::ES256, RsaBits::default())
        .unwrap();
    let s2 = SystemKeyGenerator
        .generate(Algorithm::ES256, RsaBits::default())
        .unwrap();
    assert_ne!(s1.kid(), s2.kid());
}

#[test]
fn debug_output_redacts_private_members() {
    let generator = SeededKeyGenerator::new(3);
    for alg in Algorithm::ALL {
        let key = generator.generate(alg, bits_for(alg)).unwrap();
        let private = key.private_jwk();
        let debug = format!("{key:?} {private:?}");
        let secrets = [
            Some(&private.d),
            private.p.as_ref(),
            private.q.as_ref(),
            private.dp.as_ref(),
            private.dq.as_ref(),
            private.qi.as_ref(),
        ];
        for secret in secrets.into_iter().flatten() {
            assert!(
                !debug.contains(secret.expose()),
                "{alg}: private value in Debug"
            );
        }
        assert!(debug.contains("[redacted]"));
    }
}

#[test]
fn tampered_jwks_are_rejected() {
    let generator = SeededKeyGenerator::new(5);
    let key = generator
        .generate(Algorithm::ES256, RsaBits::default())
        .unwrap();
    let mut public = key.public_jwk();
    public.kid = "not-the-thumbprint".into();
    assert!(public.validate().is_err());
    let mut public = key.public_jwk();
    public.alg = Algorithm::ES384;
    assert!(public.validate().is_err());
    let other = generator
        .generate(Algorithm::ES256, RsaBits::default())
        .unwrap();
    let mut private = key.private_jwk().clone();
    private.d = other.private_jwk().d.clone();
    assert!(
        private.validate().is_err(),
        "d of another key must not validate"
    );
}

#[test]
fn certificates_are_deterministic_and_match_x5t() {
    let generator = SeededKeyGenerator::new(9);
    let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let end = start + chrono::TimeDelta::days(3);
    for alg in Algorithm::ALL {
        let key = generator.generate(alg, bits_for(alg)).unwrap();
        let a = certificate::self_signed(key.private_jwk(), "auth/api-tokens", start, end).unwrap();
        let b = certificate::self_signed(key.private_jwk(), "auth/api-tokens", start, end).unwrap();
        assert_eq!(a, b, "{alg}: certificate not deterministic");
        let parsed = Certificate::from_pem(&a.pem()).unwrap();
        assert_eq!(parsed.der(), a.der());
        let mut public: PublicJwk = key.public_jwk();
        public.x5c = Some(vec![a.x5c()]);
        public.x5t_s256 = Some(a.x5t_s256());
        public.validate().unwrap();
        assert!(
            a.x5c().len().is_multiple_of(4),
            "x5c is padded standard base64"
        );
    }
}
