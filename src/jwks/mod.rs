//! JSON Web Key Sets (RFC 7517 §5): parsing into a [`KeySet`] of ready-to-use verification keys.
//!
//! [`KeySet::from_jwks`] reads a JWKS document (at most [`MAX_JWKS_BYTES`], at most [`MAX_KEYS`]
//! keys, strict JSON) and keeps the keys this filter can verify with:
//!
//! * RSA (`n`, `e`): modulus of 2048 to 4096 bits, public exponent 65537 (jwt-simple's policy);
//!   leading zero octets of `n` and `e` are tolerated;
//! * EC P-256 and P-384 (`crv`, `x`, `y`): coordinates of exactly the field size, and the point
//!   must be on the curve (checked by the `p256`/`p384` crates);
//! * OKP Ed25519 (`x`, 32 octets; weak points refused by `ed25519-compact`).
//!
//! A key is skipped, with a [`SkippedKey`] reason, when `use` is present and not `sig`, `key_ops`
//! is present without `verify`, its `alg` is not a supported signature algorithm or does not fit
//! its type, it is symmetric (`oct`), it carries private material (`d`, `p`, ... : a published
//! private key is a leak, never a key to trust), or its parameters are invalid. A document with
//! no usable key is an error. The JWK's own `alg` is kept and restricts the key to that algorithm.
//!
//! Verification objects are built here, once per key set: the jwt-simple public key for every
//! algorithm the key may serve, and the DER `SubjectPublicKeyInfo` that Envoy's
//! `verify_signature` foreign function takes. Requests never construct keys.
//!
//! Fetching and refreshing key sets is [`cache`]'s job.

pub mod cache;

use std::fmt;

use jwt_simple::prelude::{
    ES256PublicKey, ES384PublicKey, Ed25519PublicKey, PS256PublicKey, PS384PublicKey, PS512PublicKey,
    RS256PublicKey, RS384PublicKey, RS512PublicKey,
};
use serde_json::{Map, Value};

use crate::token::{base64url, hex, json, Algorithm, KeyFamily};

/// Largest accepted JWKS document.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest accepted number of entries in `keys`.
pub const MAX_KEYS: usize = 100;
/// Smallest accepted RSA modulus.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest accepted RSA modulus (jwt-simple's limit).
pub const MAX_RSA_BITS: usize = 4096;

/// Why a JWKS document was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// The document exceeds [`MAX_JWKS_BYTES`].
    TooLarge,
    /// Not a JSON object (or a member name is repeated).
    NotJson,
    /// No `keys` array.
    NoKeysArray,
    /// More than [`MAX_KEYS`] entries in `keys`.
    TooManyKeys,
    /// Every key was skipped (or `keys` is empty); the reasons are given.
    NoUsableKey(Vec<SkippedKey>),
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::TooLarge => write!(f, "JWKS exceeds {MAX_JWKS_BYTES} bytes"),
            JwksError::NotJson => f.write_str("JWKS is not a JSON object without repeated members"),
            JwksError::NoKeysArray => f.write_str("JWKS has no `keys` array"),
            JwksError::TooManyKeys => write!(f, "JWKS has more than {MAX_KEYS} keys"),
            JwksError::NoUsableKey(skipped) => {
                write!(f, "JWKS has no usable key ({} skipped)", skipped.len())
            }
        }
    }
}

impl std::error::Error for JwksError {}

/// A key left out of a [`KeySet`], and why (for the operator's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in the document's `keys` array.
    pub index: usize,
    /// The key's `kid`, when it has a string one.
    pub kid: Option<String>,
    /// Why the key is not used.
    pub reason: &'static str,
}

impl fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "keys[{}] (kid {kid:?}): {}", self.index, self.reason),
            None => write!(f, "keys[{}]: {}", self.index, self.reason),
        }
    }
}

/// A jwt-simple public key, prebuilt for one algorithm.
#[derive(Debug, Clone)]
pub enum PrebuiltKey {
    /// For RS256.
    RS256(RS256PublicKey),
    /// For RS384.
    RS384(RS384PublicKey),
    /// For RS512.
    RS512(RS512PublicKey),
    /// For PS256.
    PS256(PS256PublicKey),
    /// For PS384.
    PS384(PS384PublicKey),
    /// For PS512.
    PS512(PS512PublicKey),
    /// For ES256.
    ES256(ES256PublicKey),
    /// For ES384.
    ES384(ES384PublicKey),
    /// For EdDSA (Ed25519).
    EdDSA(Ed25519PublicKey),
}

impl PrebuiltKey {
    /// The algorithm this key object verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PrebuiltKey::RS256(_) => Algorithm::RS256,
            PrebuiltKey::RS384(_) => Algorithm::RS384,
            PrebuiltKey::RS512(_) => Algorithm::RS512,
            PrebuiltKey::PS256(_) => Algorithm::PS256,
            PrebuiltKey::PS384(_) => Algorithm::PS384,
            PrebuiltKey::PS512(_) => Algorithm::PS512,
            PrebuiltKey::ES256(_) => Algorithm::ES256,
            PrebuiltKey::ES384(_) => Algorithm::ES384,
            PrebuiltKey::EdDSA(_) => Algorithm::EdDSA,
        }
    }
}

/// One usable public key of a key set, ready for every algorithm it may serve.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    jwk_alg: Option<Algorithm>,
    family: KeyFamily,
    prebuilt: Vec<PrebuiltKey>,
    spki_der: Vec<u8>,
}

impl VerifyingKey {
    /// The JWK's `kid`.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The JWK's own `alg`, when it names one.
    pub fn jwk_alg(&self) -> Option<Algorithm> {
        self.jwk_alg
    }

    /// The key's type (and curve).
    pub fn family(&self) -> KeyFamily {
        self.family
    }

    /// Whether a token signed with `alg` may be verified with this key: the key type must fit the
    /// algorithm, and the JWK's own `alg`, when present, must be that algorithm.
    pub fn fits(&self, alg: Algorithm) -> bool {
        alg.key_family() == self.family && self.jwk_alg.map_or(true, |a| a == alg)
    }

    /// The prebuilt jwt-simple key for `alg`, when the key fits it.
    pub fn prebuilt(&self, alg: Algorithm) -> Option<&PrebuiltKey> {
        self.prebuilt.iter().find(|k| k.algorithm() == alg)
    }

    /// The DER `SubjectPublicKeyInfo` of the key (what Envoy's `verify_signature` takes).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

/// Why no single key could be chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySelectError {
    /// No key has the token's `kid` (or, without `kid`, no key fits the `alg`).
    Unknown,
    /// The key(s) with the token's `kid` do not fit its `alg`.
    Mismatch,
    /// More than one key fits.
    Ambiguous,
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
    skipped: Vec<SkippedKey>,
    fingerprint: String,
}

impl KeySet {
    /// Parses a JWKS document; see the module documentation for the rules.
    pub fn from_jwks(document: &[u8]) -> Result<KeySet, JwksError> {
        if document.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let doc = json::parse_object(document).map_err(|_| JwksError::NotJson)?;
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwksError::NoKeysArray);
        };
        if entries.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(jwk) = entry else {
                skipped.push(SkippedKey {
                    index,
                    kid: None,
                    reason: "not a JSON object",
                });
                continue;
            };
            match parse_jwk(jwk) {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(SkippedKey {
                    index,
                    kid: jwk.get("kid").and_then(Value::as_str).map(str::to_owned),
                    reason,
                }),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(skipped));
        }
        let fingerprint = fingerprint(&keys);
        Ok(KeySet {
            keys,
            skipped,
            fingerprint,
        })
    }

    /// The usable keys, in document order.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    /// The keys left out, with reasons (for the operator's log).
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// A stable digest of the usable keys (their `kid`, `alg` and public key), independent of
    /// document order and of skipped keys: equal fingerprints mean the same usable keys.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether a usable key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == Some(kid))
    }

    /// Chooses the key for a token: by `kid` when the token has one, otherwise the only key that
    /// fits `alg`. The chosen key always [`fits`](VerifyingKey::fits) `alg`.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyingKey, KeySelectError> {
        let mut candidates: Box<dyn Iterator<Item = &VerifyingKey>> = match kid {
            Some(kid) => {
                if !self.has_kid(kid) {
                    return Err(KeySelectError::Unknown);
                }
                Box::new(
                    self.keys
                        .iter()
                        .filter(move |k| k.kid() == Some(kid) && k.fits(alg)),
                )
            }
            None => Box::new(self.keys.iter().filter(|k| k.fits(alg))),
        };
        match (candidates.next(), candidates.next(), kid) {
            (Some(key), None, _) => Ok(key),
            (Some(_), Some(_), _) => Err(KeySelectError::Ambiguous),
            (None, _, Some(_)) => Err(KeySelectError::Mismatch),
            (None, _, None) => Err(KeySelectError::Unknown),
        }
    }
}

/// Member names that hold private or symmetric key material (RFC 7518 §6.2.2, §6.3.2, §6.4).
const SECRET_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn parse_jwk(jwk: &Map<String, Value>) -> Result<VerifyingKey, &'static str> {
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("kty is missing or not a string")?;
    if kty == "oct" {
        return Err("symmetric keys (kty oct) are never used");
    }
    if SECRET_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err("holds private key material");
    }
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err("use is not sig"),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops
            .as_array()
            .filter(|ops| ops.iter().all(Value::is_string))
            .ok_or("key_ops is not an array of strings")?;
        if !ops.iter().any(|op| op == "verify") {
            return Err("key_ops does not include verify");
        }
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("kid is not a string"),
    };
    let jwk_alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => {
            Some(Algorithm::from_name(a).ok_or("alg is not a supported signature algorithm")?)
        }
        Some(_) => return Err("alg is not a string"),
    };

    let (family, prebuilt, spki_der) = match kty {
        "RSA" => rsa_key(jwk, jwk_alg)?,
        "EC" => ec_key(jwk, jwk_alg)?,
        "OKP" => okp_key(jwk, jwk_alg)?,
        _ => return Err("kty is not RSA, EC or OKP"),
    };
    Ok(VerifyingKey {
        kid,
        jwk_alg,
        family,
        prebuilt,
        spki_der,
    })
}

type Built = (KeyFamily, Vec<PrebuiltKey>, Vec<u8>);

/// The algorithms a key of `family` serves: its JWK `alg` only, or every algorithm of the family.
fn algorithms_for(family: KeyFamily, jwk_alg: Option<Algorithm>) -> Result<Vec<Algorithm>, &'static str> {
    match jwk_alg {
        Some(a) if a.key_family() == family => Ok(vec![a]),
        Some(_) => Err("alg does not match the key type"),
        None => Ok(Algorithm::ALL
            .into_iter()
            .filter(|a| a.key_family() == family)
            .collect()),
    }
}

fn b64_member(jwk: &Map<String, Value>, name: &str, err: &'static str) -> Result<Vec<u8>, &'static str> {
    jwk.get(name)
        .and_then(Value::as_str)
        .and_then(base64url::decode)
        .ok_or(err)
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(top) => (bytes.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

fn rsa_key(jwk: &Map<String, Value>, jwk_alg: Option<Algorithm>) -> Result<Built, &'static str> {
    let algorithms = algorithms_for(KeyFamily::Rsa, jwk_alg)?;
    let n = b64_member(jwk, "n", "n is missing or not base64url")?;
    let e = b64_member(jwk, "e", "e is missing or not base64url")?;
    let (n, e) = (strip_leading_zeros(&n), strip_leading_zeros(&e));
    let bits = bit_length(n);
    if bits < MIN_RSA_BITS {
        return Err("RSA modulus is shorter than 2048 bits");
    }
    if bits > MAX_RSA_BITS {
        return Err("RSA modulus is longer than 4096 bits");
    }
    if e != [1, 0, 1] {
        return Err("RSA public exponent is not 65537");
    }
    const INVALID: &str = "RSA key is invalid";
    let mut prebuilt = Vec::with_capacity(algorithms.len());
    for alg in algorithms {
        prebuilt.push(match alg {
            Algorithm::RS256 => {
                PrebuiltKey::RS256(RS256PublicKey::from_components(n, e).map_err(|_| INVALID)?)
            }
            Algorithm::RS384 => {
                PrebuiltKey::RS384(RS384PublicKey::from_components(n, e).map_err(|_| INVALID)?)
            }
            Algorithm::RS512 => {
                PrebuiltKey::RS512(RS512PublicKey::from_components(n, e).map_err(|_| INVALID)?)
            }
            Algorithm::PS256 => {
                PrebuiltKey::PS256(PS256PublicKey::from_components(n, e).map_err(|_| INVALID)?)
            }
            Algorithm::PS384 => {
                PrebuiltKey::PS384(PS384PublicKey::from_components(n, e).map_err(|_| INVALID)?)
            }
            Algorithm::PS512 => {
                PrebuiltKey::PS512(PS512PublicKey::from_components(n, e).map_err(|_| INVALID)?)
            }
            _ => return Err(INVALID),
        });
    }
    let der = match prebuilt.first() {
        Some(PrebuiltKey::RS256(k)) => k.to_der(),
        Some(PrebuiltKey::RS384(k)) => k.to_der(),
        Some(PrebuiltKey::RS512(k)) => k.to_der(),
        Some(PrebuiltKey::PS256(k)) => k.to_der(),
        Some(PrebuiltKey::PS384(k)) => k.to_der(),
        Some(PrebuiltKey::PS512(k)) => k.to_der(),
        _ => return Err(INVALID),
    }
    .map_err(|_| INVALID)?;
    Ok((KeyFamily::Rsa, prebuilt, der))
}

fn ec_key(jwk: &Map<String, Value>, jwk_alg: Option<Algorithm>) -> Result<Built, &'static str> {
    let (family, size) = match jwk.get("crv").and_then(Value::as_str) {
        Some("P-256") => (KeyFamily::P256, 32),
        Some("P-384") => (KeyFamily::P384, 48),
        _ => return Err("EC curve is not P-256 or P-384"),
    };
    algorithms_for(family, jwk_alg)?;
    let x = b64_member(jwk, "x", "x is missing or not base64url")?;
    let y = b64_member(jwk, "y", "y is missing or not base64url")?;
    if x.len() != size || y.len() != size {
        return Err("EC coordinates do not have the curve's size");
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    const OFF_CURVE: &str = "EC point is not on the curve";
    let (prebuilt, der) = if family == KeyFamily::P256 {
        let key = ES256PublicKey::from_bytes(&point).map_err(|_| OFF_CURVE)?;
        let der = key.to_der().map_err(|_| OFF_CURVE)?;
        (PrebuiltKey::ES256(key), der)
    } else {
        let key = ES384PublicKey::from_bytes(&point).map_err(|_| OFF_CURVE)?;
        let der = key.to_der().map_err(|_| OFF_CURVE)?;
        (PrebuiltKey::ES384(key), der)
    };
    Ok((family, vec![prebuilt], der))
}

fn okp_key(jwk: &Map<String, Value>, jwk_alg: Option<Algorithm>) -> Result<Built, &'static str> {
    if jwk.get("crv").and_then(Value::as_str) != Some("Ed25519") {
        return Err("OKP curve is not Ed25519");
    }
    algorithms_for(KeyFamily::Ed25519, jwk_alg)?;
    let x = b64_member(jwk, "x", "x is missing or not base64url")?;
    if x.len() != 32 {
        return Err("Ed25519 key is not 32 octets");
    }
    let key = Ed25519PublicKey::from_bytes(&x).map_err(|_| "Ed25519 key is invalid")?;
    let der = key.to_der();
    Ok((KeyFamily::Ed25519, vec![PrebuiltKey::EdDSA(key)], der))
}

/// SHA-256 over the sorted, length-prefixed (`kid`, `alg`, SPKI) of every usable key; 16 hex chars.
fn fingerprint(keys: &[VerifyingKey]) -> String {
    let mut entries: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| {
            let mut entry = Vec::new();
            for field in [
                k.kid().unwrap_or("").as_bytes(),
                k.jwk_alg().map_or("", Algorithm::as_str).as_bytes(),
                k.spki_der(),
            ] {
                entry.extend_from_slice(&(field.len() as u64).to_be_bytes());
                entry.extend_from_slice(field);
            }
            entry.push(u8::from(k.kid().is_some()));
            entry
        })
        .collect();
    entries.sort();
    let mut hasher = hmac_sha256::Hash::new();
    for entry in &entries {
        hasher.update((entry.len() as u64).to_be_bytes());
        hasher.update(entry);
    }
    let digest = hasher.finalize();
    hex(digest.get(..8).unwrap_or_default())
}

#[cfg(test)]
mod tests;
