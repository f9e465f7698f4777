//! Key generation behind a trait, so the lifecycle can be tested with deterministic keys.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use p256::elliptic_curve::Generate as _;
use rand::SeedableRng as _;
use rand::rngs::{ChaCha20Rng, SysRng};
use rand_core::TryCryptoRng;
use sha2::{Digest, Sha256};

use super::KeyError;
use super::algorithm::{Algorithm, RsaBits};
use super::convert;
use super::jwk::{PrivateJwk, PublicJwk};

/// A freshly generated key: its private JWK, from which everything else derives.
///
/// `Debug` redacts the private members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMaterial {
    private: PrivateJwk,
}

impl KeyMaterial {
    /// Wraps a private JWK after checking it ([`PrivateJwk::validate`]).
    pub fn from_private_jwk(private: PrivateJwk) -> Result<Self, KeyError> {
        private.validate()?;
        Ok(KeyMaterial { private })
    }

    /// The key ID (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.private.kid
    }

    /// The key's algorithm.
    pub fn alg(&self) -> Algorithm {
        self.private.alg
    }

    /// The private JWK.
    pub fn private_jwk(&self) -> &PrivateJwk {
        &self.private
    }

    /// Consumes the material, returning the private JWK.
    pub fn into_private_jwk(self) -> PrivateJwk {
        self.private
    }

    /// The public JWK (without certificate members).
    pub fn public_jwk(&self) -> PublicJwk {
        self.private.public()
    }
}

/// Generates signing keys.
///
/// `Send + Sync` so the controller can run it inside `tokio::task::spawn_blocking`
/// (RSA generation takes tenths of a second).
pub trait KeyGenerator: Send + Sync {
    /// Generates one key for `alg`. `rsa_bits` is used only for RS256 and PS256.
    fn generate(&self, alg: Algorithm, rsa_bits: RsaBits) -> Result<KeyMaterial, KeyError>;
}

/// Generates keys from the operating system's random number generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemKeyGenerator;

impl KeyGenerator for SystemKeyGenerator {
    fn generate(&self, alg: Algorithm, rsa_bits: RsaBits) -> Result<KeyMaterial, KeyError> {
        generate_with(&mut SysRng, alg, rsa_bits)
    }
}

/// Deterministic keys for tests: the n-th call returns the same key for the same seed.
///
/// Never use it for real keys: anyone who knows the seed knows the private keys.
pub struct SeededKeyGenerator {
    seed: u64,
    counter: AtomicU64,
}

impl SeededKeyGenerator {
    /// A generator whose sequence of keys is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededKeyGenerator {
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// How many keys it has generated.
    pub fn generated(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for SeededKeyGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeededKeyGenerator")
            .field("generated", &self.generated())
            .finish_non_exhaustive()
    }
}

impl KeyGenerator for SeededKeyGenerator {
    fn generate(&self, alg: Algorithm, rsa_bits: RsaBits) -> Result<KeyMaterial, KeyError> {
        let index = self.counter.fetch_add(1, Ordering::SeqCst);
        let mut hasher = Sha256::new();
        hasher.update(b"keyrotor seeded key generator");
        hasher.update(self.seed.to_be_bytes());
        hasher.update(index.to_be_bytes());
        let seed: [u8; 32] = hasher.finalize().into();
        let mut rng = ChaCha20Rng::from_seed(seed);
        generate_with(&mut rng, alg, rsa_bits)
    }
}

fn generate_with<R: TryCryptoRng + ?Sized>(
    rng: &mut R,
    alg: Algorithm,
    rsa_bits: RsaBits,
) -> Result<KeyMaterial, KeyError> {
    let failed =
        |what: &str| KeyError::Generation(format!("random number generator failed ({what})"));
    let private = match alg {
        Algorithm::ES256 => {
            let secret =
                p256::SecretKey::try_generate_from_rng(rng).map_err(|_| failed("P-256"))?;
            convert::ec_private_jwk(alg, &secret)?
        }
        Algorithm::ES384 => {
            let secret =
                p384::SecretKey::try_generate_from_rng(rng).map_err(|_| failed("P-384"))?;
            convert::ec_private_jwk(alg, &secret)?
        }
        Algorithm::EdDSA => {
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            rng.try_fill_bytes(seed.as_mut())
                .map_err(|_| failed("Ed25519"))?;
            convert::ed25519_private_jwk(&ed25519_dalek::SigningKey::from_bytes(&seed))?
        }
        Algorithm::RS256 | Algorithm::PS256 => {
            let key = rsa::PrivateKey::new(rng, rsa_bits.bits() as usize)
                .map_err(|_| KeyError::Generation("RSA key generation failed".into()))?;
            convert::rsa_private_jwk(alg, &key)?
        }
    };
    // Generated keys are consistent by construction; skip the (slow for RSA) re-check.
    Ok(KeyMaterial { private })
}
