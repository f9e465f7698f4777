//! Conversions between the crypto crates' key types, JWKs and PKCS#8.

use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use p256::elliptic_curve::sec1::ToSec1Point as _;
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use rsa::{BoxedUint, PrivateKey as RsaPrivateKey};
use zeroize::Zeroizing;

use super::KeyError;
use super::algorithm::{Algorithm, Curve, KeyType};
use super::jwk::{KeyUse, PrivateJwk, PublicJwk, Redacted, b64url, b64url_decode, thumbprint};

fn encoding(context: &str) -> KeyError {
    KeyError::Encoding(format!("cannot encode {context} as PKCS#8"))
}

fn decoded(member: &str, value: &Redacted) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    b64url_decode(member, value.expose()).map(Zeroizing::new)
}

fn required<'a>(member: &str, value: &'a Option<Redacted>) -> Result<&'a Redacted, KeyError> {
    value
        .as_ref()
        .ok_or_else(|| KeyError::InvalidJwk(format!("RSA private key without {member:?}")))
}

fn ec_secret<C>(jwk: &PrivateJwk) -> Result<elliptic_curve_types::SecretKey<C>, KeyError>
where
    C: elliptic_curve_types::CurveArithmetic,
{
    let d = decoded("d", &jwk.d)?;
    elliptic_curve_types::SecretKey::<C>::from_slice(&d)
        .map_err(|_| KeyError::InvalidJwk("EC private scalar out of range".into()))
}

mod elliptic_curve_types {
    pub use p256::elliptic_curve::{CurveArithmetic, SecretKey};
}

fn ed25519_secret(jwk: &PrivateJwk) -> Result<ed25519_dalek::SigningKey, KeyError> {
    let d = decoded("d", &jwk.d)?;
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        d.as_slice()
            .try_into()
            .map_err(|_| KeyError::InvalidJwk("Ed25519 private key must be 32 bytes".into()))?,
    );
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Rebuilds the RSA key from the JWK (validating that the components belong together).
pub(crate) fn rsa_secret(jwk: &PrivateJwk) -> Result<RsaPrivateKey, KeyError> {
    let public = |member: &str, v: &Option<String>| -> Result<BoxedUint, KeyError> {
        let v = v
            .as_deref()
            .ok_or_else(|| KeyError::InvalidJwk(format!("RSA key without {member:?}")))?;
        Ok(BoxedUint::from_be_slice_vartime(&b64url_decode(member, v)?))
    };
    let private = |member: &str, v: &Redacted| -> Result<BoxedUint, KeyError> {
        Ok(BoxedUint::from_be_slice_vartime(&decoded(member, v)?))
    };
    let n = public("n", &jwk.n)?;
    let e = public("e", &jwk.e)?;
    let d = private("d", &jwk.d)?;
    let p = private("p", required("p", &jwk.p)?)?;
    let q = private("q", required("q", &jwk.q)?)?;
    RsaPrivateKey::from_components(n, e, d, vec![p, q])
        .map_err(|_| KeyError::InvalidJwk("RSA private key components are inconsistent".into()))
}

pub(crate) fn p256_signing_key(jwk: &PrivateJwk) -> Result<p256::ecdsa::SigningKey, KeyError> {
    Ok(ec_secret::<p256::NistP256>(jwk)?.into())
}

pub(crate) fn p384_signing_key(jwk: &PrivateJwk) -> Result<p384::ecdsa::SigningKey, KeyError> {
    Ok(ec_secret::<p384::NistP384>(jwk)?.into())
}

pub(crate) fn ed25519_signing_key(jwk: &PrivateJwk) -> Result<ed25519_dalek::SigningKey, KeyError> {
    ed25519_secret(jwk)
}

/// PKCS#8 DER of a private JWK.
pub(crate) fn to_pkcs8_der(jwk: &PrivateJwk) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let document = match jwk.alg {
        Algorithm::ES256 => ec_secret::<p256::NistP256>(jwk)?
            .to_pkcs8_der()
            .map_err(|_| encoding("P-256 key"))?,
        Algorithm::ES384 => ec_secret::<p384::NistP384>(jwk)?
            .to_pkcs8_der()
            .map_err(|_| encoding("P-384 key"))?,
        Algorithm::EdDSA => {
            // PKCS#8 version 1 (no embedded public key): the most widely readable form.
            let keypair = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: ed25519_secret(jwk)?.to_bytes(),
                public_key: None,
            };
            keypair
                .to_pkcs8_der()
                .map_err(|_| encoding("Ed25519 key"))?
        }
        Algorithm::RS256 | Algorithm::PS256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            rsa_secret(jwk)?
                .to_pkcs8_der()
                .map_err(|_| encoding("RSA key"))?
        }
    };
    Ok(Zeroizing::new(document.as_bytes().to_vec()))
}

/// PKCS#8 PEM (`PRIVATE KEY`, LF line endings) of a private JWK.
pub(crate) fn to_pkcs8_pem(jwk: &PrivateJwk) -> Result<Zeroizing<String>, KeyError> {
    let der = to_pkcs8_der(jwk)?;
    Ok(Zeroizing::new(pem_encode("PRIVATE KEY", &der)))
}

/// RFC 7468 PEM with 64-character lines and LF endings.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = super::jwk::b64std(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Derives the public JWK from the private members (used to check that they match).
pub(crate) fn public_from_private(jwk: &PrivateJwk) -> Result<PublicJwk, KeyError> {
    let (x, y, n, e) = match jwk.alg {
        Algorithm::ES256 => {
            let (x, y) = ec_point::<p256::NistP256>(
                &ec_secret::<p256::NistP256>(jwk)?
                    .public_key()
                    .to_sec1_point(false),
            )?;
            (Some(x), Some(y), None, None)
        }
        Algorithm::ES384 => {
            let (x, y) = ec_point::<p384::NistP384>(
                &ec_secret::<p384::NistP384>(jwk)?
                    .public_key()
                    .to_sec1_point(false),
            )?;
            (Some(x), Some(y), None, None)
        }
        Algorithm::EdDSA => {
            let x = b64url(ed25519_secret(jwk)?.verifying_key().as_bytes());
            (Some(x), None, None, None)
        }
        Algorithm::RS256 | Algorithm::PS256 => {
            let key = rsa_secret(jwk)?;
            (
                None,
                None,
                Some(b64url(&key.n_bytes())),
                Some(b64url(&key.e_bytes())),
            )
        }
    };
    build_public(jwk.alg, x, y, n, e)
}

fn ec_point<C>(
    point: &p256::elliptic_curve::sec1::Sec1Point<C>,
) -> Result<(String, String), KeyError>
where
    C: p256::elliptic_curve::Curve,
    p256::elliptic_curve::FieldBytesSize<C>: p256::elliptic_curve::sec1::ModulusSize,
{
    match (point.x(), point.y()) {
        (Some(x), Some(y)) => Ok((b64url(x), b64url(y))),
        _ => Err(KeyError::InvalidJwk("EC point at infinity".into())),
    }
}

fn build_public(
    alg: Algorithm,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
) -> Result<PublicJwk, KeyError> {
    let kty = alg.key_type();
    let crv = alg.curve();
    let kid = thumbprint(
        kty,
        crv,
        x.as_deref(),
        y.as_deref(),
        n.as_deref(),
        e.as_deref(),
    )?;
    Ok(PublicJwk {
        kty,
        crv,
        x,
        y,
        n,
        e,
        kid,
        alg,
        key_use: KeyUse::Sig,
        x5c: None,
        x5t_s256: None,
    })
}

fn private_jwk(public: PublicJwk, d: Vec<u8>, rsa: Option<[Vec<u8>; 5]>) -> PrivateJwk {
    let d = Zeroizing::new(d);
    let [p, q, dp, dq, qi] = match rsa {
        Some(parts) => parts.map(|v| Some(Redacted::new(b64url(&Zeroizing::new(v))))),
        None => [None, None, None, None, None],
    };
    PrivateJwk {
        kty: public.kty,
        crv: public.crv,
        x: public.x,
        y: public.y,
        n: public.n,
        e: public.e,
        d: Redacted::new(b64url(&d)),
        p,
        q,
        dp,
        dq,
        qi,
        kid: public.kid,
        alg: public.alg,
        key_use: KeyUse::Sig,
    }
}

/// Private JWK of a P-256 or P-384 key.
pub(crate) fn ec_private_jwk<C>(
    alg: Algorithm,
    secret: &elliptic_curve_types::SecretKey<C>,
) -> Result<PrivateJwk, KeyError>
where
    C: elliptic_curve_types::CurveArithmetic,
    C::AffinePoint:
        p256::elliptic_curve::sec1::FromSec1Point<C> + p256::elliptic_curve::sec1::ToSec1Point<C>,
    p256::elliptic_curve::FieldBytesSize<C>: p256::elliptic_curve::sec1::ModulusSize,
{
    debug_assert_eq!(alg.key_type(), KeyType::EC);
    let (x, y) = ec_point::<C>(&secret.public_key().to_sec1_point(false))?;
    let public = build_public(alg, Some(x), Some(y), None, None)?;
    Ok(private_jwk(public, secret.to_bytes().to_vec(), None))
}

/// Private JWK of an Ed25519 key.
pub(crate) fn ed25519_private_jwk(
    secret: &ed25519_dalek::SigningKey,
) -> Result<PrivateJwk, KeyError> {
    let x = b64url(secret.verifying_key().as_bytes());
    let public = build_public(Algorithm::EdDSA, Some(x), None, None, None)?;
    debug_assert_eq!(public.crv, Some(Curve::Ed25519));
    Ok(private_jwk(public, secret.to_bytes().to_vec(), None))
}

/// Private JWK of an RSA key (RS256 or PS256).
pub(crate) fn rsa_private_jwk(alg: Algorithm, key: &RsaPrivateKey) -> Result<PrivateJwk, KeyError> {
    let incomplete = || KeyError::Generation("RSA key without CRT values".into());
    let primes = key.primes();
    let [p, q] = primes else {
        return Err(KeyError::Generation("RSA key must have two primes".into()));
    };
    let dp = key.dp().ok_or_else(incomplete)?;
    let dq = key.dq().ok_or_else(incomplete)?;
    let qi = key.crt_coefficient().ok_or_else(incomplete)?;
    let public = build_public(
        alg,
        None,
        None,
        Some(b64url(&key.n_bytes())),
        Some(b64url(&key.e_bytes())),
    )?;
    let bytes = |v: &BoxedUint| v.to_be_bytes_trimmed_vartime().to_vec();
    Ok(private_jwk(
        public,
        bytes(key.d()),
        Some([
            bytes(p.as_ref()),
            bytes(q.as_ref()),
            bytes(dp),
            bytes(dq),
            bytes(&qi),
        ]),
    ))
}
