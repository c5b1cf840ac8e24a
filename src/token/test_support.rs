//! Test keys, JWKs and token minting for the token and JWKS tests.
//!
//! Tokens are signed with the `rsa`, `p256`, `p384` and `ed25519-compact` crates directly (not with
//! the code under test), from committed RSA keys (`tests/fixtures`, RSA key generation is slow)
//! and fixed or once-generated curve keys.

use std::sync::OnceLock;

use jwt_simple::prelude::{Ed25519KeyPair, EdDSAKeyPairLike};
use p256::ecdsa::signature::Signer as _;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

use super::{base64url, Algorithm};

/// The issuer of the default test provider.
pub const ISS: &str = "https://idp.example.org";
/// The issuer of the second test provider.
pub const ISS2: &str = "https://other-idp.example.org";
/// The audience both test providers accept.
pub const AUD: &str = "https://ehr.example.org/fhir";
/// The test clock.
pub const NOW: u64 = 1_700_000_000;

/// The test key pairs.
pub struct Keys {
    pub rsa_a: rsa::RsaPrivateKey,
    pub rsa_b: rsa::RsaPrivateKey,
    pub rsa_1024: rsa::RsaPublicKey,
    pub p256: p256::ecdsa::SigningKey,
    pub p384: p384::ecdsa::SigningKey,
    pub ed25519: Ed25519KeyPair,
}

/// Loaded once per test binary.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa_a: rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("../../tests/fixtures/rsa2048-a.pem"))
            .unwrap(),
        rsa_b: rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("../../tests/fixtures/rsa2048-b.pem"))
            .unwrap(),
        rsa_1024: rsa::RsaPublicKey::from_public_key_pem(include_str!(
            "../../tests/fixtures/rsa1024-public.pem"
        ))
        .unwrap(),
        p256: p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap(),
        p384: p384::ecdsa::SigningKey::from_slice(&[0x22; 48]).unwrap(),
        ed25519: Ed25519KeyPair::generate(),
    })
}

/// Which test key signs (or is described by a JWK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    RsaA,
    RsaB,
    P256,
    P384,
    Ed25519,
}

impl Signer {
    /// The `kid` the default JWKS gives this key.
    pub fn kid(self) -> &'static str {
        match self {
            Signer::RsaA => "rsa-a",
            Signer::RsaB => "rsa-b",
            Signer::P256 => "ec-p256",
            Signer::P384 => "ec-p384",
            Signer::Ed25519 => "ed",
        }
    }

    /// The natural key for an algorithm.
    pub fn for_alg(alg: Algorithm) -> Signer {
        match alg {
            Algorithm::ES256 => Signer::P256,
            Algorithm::ES384 => Signer::P384,
            Algorithm::EdDSA => Signer::Ed25519,
            _ => Signer::RsaA,
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64url::encode(bytes)
}

/// The public JWK of an RSA key.
pub fn rsa_jwk(key: &rsa::RsaPublicKey, kid: Option<&str>, alg: Option<&str>) -> Value {
    let mut jwk = json!({"kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())});
    decorate(&mut jwk, kid, alg);
    jwk
}

/// The public JWK of a test key, with optional `kid` and `alg`.
pub fn jwk(signer: Signer, kid: Option<&str>, alg: Option<&str>) -> Value {
    let k = keys();
    let mut jwk = match signer {
        Signer::RsaA => return rsa_jwk(&k.rsa_a.to_public_key(), kid, alg),
        Signer::RsaB => return rsa_jwk(&k.rsa_b.to_public_key(), kid, alg),
        Signer::P256 => {
            let point = k.p256.verifying_key().to_sec1_point(false);
            let (x, y) = point.as_bytes()[1..].split_at(32);
            json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)})
        }
        Signer::P384 => {
            let point = k.p384.verifying_key().to_sec1_point(false);
            let (x, y) = point.as_bytes()[1..].split_at(48);
            json!({"kty": "EC", "crv": "P-384", "x": b64(x), "y": b64(y)})
        }
        Signer::Ed25519 => {
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&k.ed25519.public_key().to_bytes())})
        }
    };
    decorate(&mut jwk, kid, alg);
    jwk
}

fn decorate(jwk: &mut Value, kid: Option<&str>, alg: Option<&str>) {
    if let Some(kid) = kid {
        jwk["kid"] = kid.into();
    }
    if let Some(alg) = alg {
        jwk["alg"] = alg.into();
    }
}

/// A JWKS document holding `keys`.
pub fn jwks(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

/// The default test JWKS: every test key with its [`Signer::kid`], no `alg`.
pub fn default_jwks() -> Vec<u8> {
    let all = [
        Signer::RsaA,
        Signer::RsaB,
        Signer::P256,
        Signer::P384,
        Signer::Ed25519,
    ];
    jwks(&all.map(|s| jwk(s, Some(s.kid()), None)))
}

/// A deterministic RNG for PSS salts (tests only).
struct TestRng(u64);

impl rsa::rand_core::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = (self.next_u64() >> 56) as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for TestRng {}

/// Signs `input` with `alg` and the key of `signer`, independently of the code under test.
pub fn sign(alg: Algorithm, signer: Signer, input: &[u8]) -> Vec<u8> {
    use rsa::sha2::{Sha256, Sha384, Sha512};
    let k = keys();
    let rsa_key = || match signer {
        Signer::RsaB => k.rsa_b.clone(),
        _ => k.rsa_a.clone(),
    };
    let mut rng = TestRng(42);
    match alg {
        Algorithm::RS256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa_key())
            .sign(input)
            .to_vec(),
        Algorithm::RS384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(rsa_key())
            .sign(input)
            .to_vec(),
        Algorithm::RS512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(rsa_key())
            .sign(input)
            .to_vec(),
        Algorithm::PS256 => rsa::pss::SigningKey::<Sha256>::new(rsa_key())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Algorithm::PS384 => rsa::pss::SigningKey::<Sha384>::new(rsa_key())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Algorithm::PS512 => rsa::pss::SigningKey::<Sha512>::new(rsa_key())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Algorithm::ES256 => {
            let sig: p256::ecdsa::Signature = k.p256.sign(input);
            sig.to_bytes().to_vec()
        }
        Algorithm::ES384 => {
            let sig: p384::ecdsa::Signature = k.p384.sign(input);
            sig.to_bytes().to_vec()
        }
        Algorithm::EdDSA => k.ed25519.key_pair().as_ref().sk.sign(input, None).to_vec(),
    }
}

/// A compact JWS of `header` and `claims` (serialized as given), signed by `signer` with `alg`.
pub fn mint_raw(alg: Algorithm, signer: Signer, header: &str, claims: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signature = sign(alg, signer, input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// A token with header `{"alg", "typ": "JWT", "kid"}` (the signer's kid) and the given claims.
pub fn mint(alg: Algorithm, signer: Signer, claims: &Value) -> String {
    let header = json!({"alg": alg.as_str(), "typ": "JWT", "kid": signer.kid()});
    mint_raw(alg, signer, &header.to_string(), &claims.to_string())
}

/// Claims that pass every rule of the default test configuration at [`NOW`].
pub fn good_claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "user-1",
        "exp": NOW + 300,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "jti": "jti-1",
        "client_id": "app-1",
        "scope": "launch/patient patient/Observation.rs",
        "patient": "123",
        "encounter": "enc-9",
        "fhirUser": "Practitioner/77",
    })
}
